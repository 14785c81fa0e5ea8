"""The one exception hierarchy, and the handlers that render every error as C3 JSON."""

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.observability import metrics
from app.schemas import ErrorBody, FieldError

logger = logging.getLogger("app.errors")


class AppError(Exception):
    status_code = 500
    code = "internal_error"
    message = "Internal server error"
    # Seconds a client should wait before retrying; sent as Retry-After when set.
    retry_after: int | None = None

    def __init__(
        self,
        message: str | None = None,
        *,
        detail: str | None = None,
        fields: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.detail = detail
        self.fields = fields
        self.headers = dict(headers or {})
        if self.retry_after is not None:
            self.headers["Retry-After"] = str(self.retry_after)

    def body(self, request_id: str | None = None) -> ErrorBody:
        """The C3 error object."""
        return ErrorBody(
            error=self.message,
            code=self.code,
            detail=self.detail,
            fields=self.fields,
            request_id=request_id,
        )


class ValidationFailed(AppError):
    status_code = 400
    code = "validation_error"
    message = "Request validation failed"


class InvalidJSON(AppError):
    status_code = 400
    code = "invalid_json"
    message = "Request body must be a JSON object"


class UnauthorizedError(AppError):
    status_code = 401
    code = "unauthorized"
    message = "Authentication required"

    def __init__(
        self, message: str | None = None, *, detail: str | None = None
    ) -> None:
        # RFC 6750: no error code when no credentials were sent at all.
        challenge = 'Bearer error="invalid_token"' if detail else "Bearer"
        super().__init__(
            message, detail=detail, headers={"WWW-Authenticate": challenge}
        )


class ForbiddenError(AppError):
    status_code = 403
    code = "forbidden"
    message = "This token may not access this user's tasks"


class AuthUnavailable(AppError):
    status_code = 503
    code = "auth_unavailable"
    message = "Token signing keys are unavailable, try again shortly"
    retry_after = 2


class NotFoundError(AppError):
    status_code = 404
    code = "not_found"
    message = "Not found"


class TaskNotFound(NotFoundError):
    message = "Task not found"


class InvalidCursor(ValidationFailed):
    message = "Invalid cursor"

    def __init__(self, field: str = "cursor") -> None:
        detail = f"{field} is malformed, tampered with, or from another listing"
        super().__init__(
            detail=detail, fields=[FieldError(field=field, message=detail)]
        )


class SyncTokenExpired(AppError):
    status_code = 410
    code = "sync_token_expired"
    message = "This sync token is older than deletions are kept: sync from scratch"


class PreconditionFailed(AppError):
    status_code = 412
    code = "precondition_failed"
    message = "If-Match does not match the task's current ETag"


class FailedDependency(AppError):
    status_code = 424
    code = "failed_dependency"
    message = "Not applied: another operation in this atomic batch failed"


class IdempotencyKeyInUse(AppError):
    status_code = 409
    code = "idempotency_key_in_use"
    message = "A request with this Idempotency-Key is still in flight"
    retry_after = 1


class IdempotencyKeyReused(AppError):
    status_code = 422
    code = "idempotency_key_reused"
    message = "This Idempotency-Key was used with a different body"


class RateLimited(AppError):
    status_code = 429
    code = "rate_limited"
    message = "Too many requests, slow down"

    def __init__(self, retry_after: int) -> None:
        self.retry_after = max(retry_after, 1)
        super().__init__()


class MethodNotAllowed(AppError):
    status_code = 405
    code = "method_not_allowed"
    message = "Method not allowed"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"
    message = "Request body is too large"


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "unsupported_media_type"
    message = "Request body must be application/json"


class RequestTimeout(AppError):
    status_code = 408
    code = "request_timeout"
    message = "The request did not arrive in time"


class HeadersTooLarge(AppError):
    status_code = 431
    code = "headers_too_large"
    message = "The request line and headers are too large"


class Overloaded(AppError):
    status_code = 503
    code = "overloaded"
    message = "The service is at capacity, try again shortly"
    retry_after = 1


class DatabaseUnavailable(AppError):
    status_code = 503
    code = "database_unavailable"
    message = "The database is unavailable, try again shortly"
    retry_after = 2


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(error: AppError, request_id: str | None) -> JSONResponse:
    return JSONResponse(
        error.body(request_id).model_dump(exclude_none=True),
        status_code=error.status_code,
        headers=error.headers or None,
    )


def _field_name(loc: Sequence[Any]) -> str:
    """('body', 'tags', 2) -> 'tags[2]'; ('query', 'limit') -> 'limit'."""
    name = ""
    for part in loc[1:] if len(loc) > 1 else loc:
        name += (
            f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
        )
    return name


def validation_error(errors: Sequence[Any]) -> AppError:
    fields: list[FieldError] = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid" or loc == ("body",):
            return InvalidJSON()
        if err.get("type") == "extra_forbidden":
            message = "Unknown field"
        else:
            message = str(err.get("msg", "Invalid value")).removeprefix("Value error, ")
        fields.append(FieldError(field=_field_name(loc), message=message))
    detail = "; ".join(f"{f.field}: {f.message}" for f in fields)
    return ValidationFailed(detail=detail, fields=fields)


_HTTP_ERRORS: dict[int, type[AppError]] = {
    404: NotFoundError,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def _allowed_methods(request: Request) -> str:
    """Starlette names the methods of the first route whose path matched; the
    `Allow` header must name those of every route on this path."""
    allowed = [
        method
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]
    if "GET" in allowed:  # HEAD is served wherever GET is (edge/middleware.py)
        allowed.insert(allowed.index("GET") + 1, "HEAD")
    return ", ".join(allowed)


def register_exception_handlers(app: FastAPI) -> None:
    async def app_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AppError)
        if isinstance(exc, RateLimited):
            metrics.RATE_LIMITED.inc()
        return error_response(exc, request_id_of(request))

    async def request_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc.errors()), request_id_of(request))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405:
            headers = {"Allow": _allowed_methods(request)}
        if exc.status_code in _HTTP_ERRORS:
            error = _HTTP_ERRORS[exc.status_code](headers=headers)
        else:  # any other status Starlette raises: keep it, name it plainly
            phrase = HTTPStatus(exc.status_code).phrase
            error = AppError(phrase, headers=headers)
            error.status_code = exc.status_code
            error.code = phrase.lower().replace(" ", "_").replace("-", "_")
        return error_response(error, request_id_of(request))

    app.add_exception_handler(AppError, app_error)
    app.add_exception_handler(RequestValidationError, request_validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
