"""Everything the OpenAPI document says beyond what FastAPI derives from the routes:
the error responses each operation documents, the optional headers and the query
parameters routes read themselves, the bearer scheme, and no 422 (validation errors
are 400s). `python -m app.api.openapi` prints the document committed in specs/."""

import json
import logging
import sys
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue

from app.schemas import ErrorBody

_DESCRIPTIONS = {
    400: "Validation error or malformed JSON",
    401: "Missing or invalid bearer token (with WWW-Authenticate)",
    403: "The token's user is not the path's user_id",
    404: "No such task for this user",
    409: "A request with this Idempotency-Key is still in flight (with Retry-After)",
    410: "The sync token is older than deletions are kept: sync from scratch",
    412: "If-Match does not match the task's current ETag",
    413: "Body over 64 KiB",
    415: "Body is not application/json",
    422: "This Idempotency-Key was used with a different body",
    429: "Over the rate limit (with Retry-After)",
    500: "Unexpected error",
    503: "Database unavailable (with Retry-After)",
}


def operation_id(route: APIRoute) -> str:
    """operationId = the handler's name (`list_tasks`): generated clients get
    `listTasks()` / `list_tasks.sync()`, not `list_tasks_api__user_id__tasks_get`."""
    return route.name


RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer"},
    }
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": 'Bearer, with error="invalid_token" when one was sent',
            "schema": {"type": "string"},
        }
    },
    409: RETRY_AFTER,
    429: RETRY_AFTER,
    503: RETRY_AFTER,
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error responses of an /api operation: its own, and those every one has
    (with the headers they carry)."""
    return {
        status: {
            "model": ErrorBody,
            "description": _DESCRIPTIONS[status],
            **({"headers": _HEADERS[status]} if status in _HEADERS else {}),
        }
        # 413 and 415 too: a GET sent with a body has it checked like any other
        for status in (*statuses, 400, 401, 403, 413, 415, 429, 500, 503)
    }


def optional_header(
    name: str, description: str, pattern: str | None = None
) -> dict[str, Any]:
    """An optional request header, documented as FastAPI documents a declared
    `Header()`: for routes that read it from the request themselves, because each
    declared parameter costs every request of the route (specs/005-performance)."""
    string = (
        {"type": "string"}
        if pattern is None
        else {"type": "string", "pattern": pattern}
    )
    return {
        "name": name,
        "in": "header",
        "required": False,
        "schema": {**string, "description": description, "title": name},
        "description": description,
    }


def _present(field: dict[str, Any]) -> dict[str, Any]:
    """An optional parameter's schema without its `null`: a query string or a
    header cannot carry one, and generated clients that honour it send the text
    `null` (orval: `since=null`, a 400 on a first sync; a trial)."""
    options = field.get("anyOf", [])
    kept = [option for option in options if option != {"type": "null"}]
    if len(kept) == len(options) or len(kept) != 1:
        return field
    rest = {k: v for k, v in field.items() if k != "anyOf"}
    return {**kept[0], **rest}


class _AsFastAPIWrites(GenerateJsonSchema):
    """Keys in the order pydantic makes them, as in FastAPI's own schemas."""

    def sort(
        self,
        value: JsonSchemaValue,
        parent_key: str | None = None,  # noqa: ARG002 - the overridden signature
    ) -> JsonSchemaValue:
        return value


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """A query model's fields as query parameters, documented as FastAPI documents
    a declared `Annotated[Model, Query()]`: for routes that read their query string
    themselves (`deps.query`)."""
    schema = model.model_json_schema(
        ref_template="#/components/schemas/{model}", schema_generator=_AsFastAPIWrites
    )
    required = schema.get("required", [])
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": _present(field),
            **({"description": field["description"]} if "description" in field else {}),
            # Swagger UI's "Try it out" starts from a parameter's own example only.
            **({"example": field["examples"][0]} if "examples" in field else {}),
        }
        for name, field in schema["properties"].items()
    ]


# Authentication is `deps.admit`, run by each /api route itself (`AdmittedRoute`),
# not FastAPI's HTTPBearer (whose resolution costs per request): the scheme is
# declared here.
BEARER = {
    "type": "http",
    "description": "A JWT from Better Auth (or signed with the shared secret).",
    "scheme": "bearer",
    "bearerFormat": "JWT",
}


# Every response carries one: the request's own (if valid), else a new one (C8).
_REQUEST_ID_HEADER = {
    "description": "The request's id, in the server's log line for it",
    "schema": {"type": "string"},
}
_REQUEST_ID_REF = {"$ref": "#/components/headers/X-Request-ID"}
_REQUEST_ID_PARAMETER = optional_header(
    "X-Request-ID",
    "An id for this request, echoed and logged (else the server makes one)",
    r"^[A-Za-z0-9._-]{1,128}$",
)


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI documents a 422 we never send: validation errors are 400s. Every
    /api operation needs a bearer token. Every operation takes and answers
    X-Request-ID."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        for url, path in schema["paths"].items():
            for operation in path.values():
                default = operation["responses"].get("422", {})
                if default.get("description") == "Validation Error":
                    del operation["responses"]["422"]
                if url.startswith("/api/"):
                    operation["security"] = [{"HTTPBearer": []}]
                # New lists and dicts: FastAPI's may be the routes' own constants.
                parameters = operation.get("parameters", [])
                operation["parameters"] = [*parameters, _REQUEST_ID_PARAMETER]
                for response in operation["responses"].values():
                    headers = response.get("headers", {})
                    response["headers"] = {
                        **headers,
                        "X-Request-ID": _REQUEST_ID_REF,
                    }
        for name in ("HTTPValidationError", "ValidationError"):
            schema["components"]["schemas"].pop(name, None)
        schema["components"]["securitySchemes"] = {"HTTPBearer": BEARER}
        schema["components"]["headers"] = {"X-Request-ID": _REQUEST_ID_HEADER}
        app.openapi_schema = schema
    return app.openapi_schema


def document() -> str:
    """The document as committed in specs/ (no database is touched)."""
    from app.config import Settings
    from app.main import create_app

    settings = Settings(
        DATABASE_URL="postgresql://localhost/openapi",
        CURSOR_SECRET="a key for a document that signs nothing",  # none kept in .data
        _env_file=None,
    )
    return (
        json.dumps(create_app(settings).openapi(), indent=2, ensure_ascii=False) + "\n"
    )


if __name__ == "__main__":
    logging.disable(logging.WARNING)  # the app's start-up warnings are not the doc's
    sys.stdout.write(document())
