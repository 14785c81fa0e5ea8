"""The routers. The /api ones (`api_router`) join the app's own route list rather
than being included (`app.main`), so each carries what an include would add: the
app's `strict_content_type` and operationIds are set here too, and
`app.dependency_overrides` does not reach these routes (no test uses it: tests run
the real dependencies)."""

from fastapi import APIRouter, Depends

from app.api.deps import admit
from app.api.openapi import operation_id


def api_router(tag: str) -> APIRouter:
    """/api/{user_id}/tasks…: authenticated and rate limited (`admit`), a body
    without Content-Type read as JSON (specs/001), operationIds from handler names."""
    return APIRouter(
        prefix="/api/{user_id}/tasks",
        tags=[tag],
        dependencies=[Depends(admit)],
        generate_unique_id_function=operation_id,
        strict_content_type=False,
    )
