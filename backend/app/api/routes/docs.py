"""Swagger UI served with its own assets, so /docs works with no internet."""

import os

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette import responses
from starlette.datastructures import Headers
from starlette.responses import FileResponse, Response
from starlette.staticfiles import NotModifiedResponse
from starlette.types import Scope
from swagger_ui_bundle import swagger_ui_path

from app.errors import RangeNotSatisfiable


class _Asset(FileResponse):
    """Ranges as RFC 9110 has them: a Range header that is not a valid bytes range
    is ignored (the whole file, 200), not Starlette's plain-text 400; one that
    starts past the end is the JSON 416 every error is."""

    @classmethod
    def _parse_range_header(
        cls, http_range: str, file_size: int
    ) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except responses.MalformedRangeHeader:
            return []
        except responses.RangeNotSatisfiable:
            raise RangeNotSatisfiable(file_size) from None


class _Assets(StaticFiles):
    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = _Asset(full_path, status_code=status_code, stat_result=stat_result)
        if self.is_not_modified(response.headers, Headers(scope=scope)):
            return NotModifiedResponse(response.headers)
        return response


ASSETS_PATH = "/docs/assets"
assets = _Assets(directory=str(swagger_ui_path))
router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="Task API",
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
    )
