"""The one exception hierarchy, and the handlers that render every error as C3 JSON."""

import logging
from collections.abc import Sequence
from datetime import datetime
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.observability import metrics
from app.observability.logging import Throttled
from app.schemas import PATTERN_MESSAGES, ErrorBody, FieldError

# A role that may not write refuses every write: one line per reason every 10 s.
_refused = Throttled(logging.getLogger("app.errors"), level=logging.ERROR)


class AppError(Exception):
    """`message` is the short sentence (`error`), `detail` what happened and what to
    do about it: every error body carries both (frontends show `body.detail`)."""

    status_code = 500
    code = "internal_error"
    message = "Internal server error"
    detail = "Something unexpected failed; the request id finds it in the server log"
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
        self.detail = detail or self.detail
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
    detail = "The body, path, query or a header is not valid"


# A header or parameter that takes one value, sent twice: a proxy and the app, or
# two readers of a query string, could each take another one.
SENT_ONCE = "must be sent once"


def sent_twice(header: str) -> ValidationFailed:
    """The 400 for a header that takes one value, sent more than once."""
    return ValidationFailed(
        detail=f"{header}: {SENT_ONCE}",
        fields=[FieldError(field=header, message=SENT_ONCE)],
    )


class InvalidJSON(AppError):
    status_code = 400
    code = "invalid_json"
    message = "Request body must be a JSON object"
    detail = 'The body must be one JSON object, e.g. {"title": "Buy milk"}'

    @classmethod
    def unreadable(cls, detail: str) -> "InvalidJSON":
        """A body that is not JSON this API reads (malformed, not UTF-8, nested
        or with numbers beyond its limits): it may well be an object."""
        return cls("Request body is not readable JSON", detail=detail)


class UnauthorizedError(AppError):
    """`reason` names the check that failed (logged; `detail` says it to the client).
    No credentials at all is `missing`: RFC 6750 then sends no error code."""

    status_code = 401
    code = "unauthorized"
    message = "Authentication required"
    detail = "Send the request with Authorization: Bearer <JWT>"
    # Failures a genuine token never has (it is signed by a known key, for us), so
    # they count towards the per-address limit on failed authentications. A missing
    # token costs nothing to refuse; an expired one was validly signed.
    _NOT_COUNTED = frozenset({"missing", "expired", "not_yet_valid"})

    def __init__(
        self,
        reason: str = "missing",
        detail: str | None = None,
        *,
        context: dict[str, str] | None = None,
    ) -> None:
        self.reason = reason
        self.context = context or {}  # for the log line, never the body
        if reason == "missing":
            challenge = "Bearer"
        else:
            description = (detail or "").replace("\\", "").replace('"', "'")
            challenge = (
                f'Bearer error="invalid_token", error_description="{description}"'
            )
        super().__init__(detail=detail, headers={"WWW-Authenticate": challenge})

    @property
    def counts_as_failure(self) -> bool:
        return self.reason not in self._NOT_COUNTED


class ForbiddenError(AppError):
    status_code = 403
    code = "forbidden"
    message = "This token may not access this user's tasks"
    detail = "The token's user is not the {user_id} in the path"


class AuthUnavailable(AppError):
    status_code = 503
    code = "auth_unavailable"
    message = "Token signing keys are unavailable, try again shortly"
    detail = "The signing keys could not be fetched from the key server"
    retry_after = 2

    def __init__(self, detail: str | None = None, retry_after: int = 2) -> None:
        self.retry_after = max(retry_after, 1)
        super().__init__(detail=detail)


class NotFoundError(AppError):
    status_code = 404
    code = "not_found"
    message = "Not found"
    detail = "No route matches this path"


class TaskNotFound(NotFoundError):
    message = "Task not found"
    detail = "This user has no task with this id"


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
    detail = "Drop the local copy and sync again without a token"


class PreconditionFailed(AppError):
    status_code = 412
    code = "precondition_failed"
    message = "If-Match does not match the task's current ETag"
    detail = "The task changed since that ETag: GET it again for the current one"

    @classmethod
    def against(cls, versions: Sequence[datetime] | None) -> "PreconditionFailed":
        """The 412 for If-Match's `versions`: with none (an empty list), no tag
        sent was an ETag of this task at all, and reading it again would not help."""
        if versions is None or versions:
            return cls()
        return cls(
            detail="If-Match names no ETag of this task: send the ETag header "
            'it was given as it came, quotes included ("<id>.<version>"); a weak '
            "one (W/, as a compressing proxy may make it) never matches If-Match"
        )


class FailedDependency(AppError):
    status_code = 424
    code = "failed_dependency"
    message = "Not applied: another operation in this atomic batch failed"
    detail = (
        "Nothing in this atomic batch was written; fix the failing operation and "
        "send the batch again"
    )


class IdempotencyKeyInUse(AppError):
    status_code = 409
    code = "idempotency_key_in_use"
    message = "A request with this Idempotency-Key is still in flight"
    detail = "Retry once the first request with this key has finished"
    retry_after = 1


class IdempotencyKeyReused(AppError):
    status_code = 422
    code = "idempotency_key_reused"
    message = "This Idempotency-Key was used with a different body"
    detail = "A different body needs a new Idempotency-Key"


class RateLimited(AppError):
    status_code = 429
    code = "rate_limited"
    message = "Too many requests, slow down"
    detail = "Over the rate limit: retry after Retry-After seconds"

    def __init__(
        self, retry_after: int, detail: str | None = None, reason: str = "rate_limit"
    ) -> None:
        self.retry_after = max(retry_after, 1)
        self.reason = reason  # which limit: `rate_limited_total`'s label
        super().__init__(
            detail=detail or f"Over the rate limit: retry in {self.retry_after} s"
        )


class MethodNotAllowed(AppError):
    status_code = 405
    code = "method_not_allowed"
    message = "Method not allowed"
    detail = "This path does not support this method (see the Allow header)"


class RangeNotSatisfiable(AppError):
    status_code = 416
    code = "range_not_satisfiable"
    message = "The range starts past the end of the file"
    detail = "Content-Range names the file's size in bytes"

    def __init__(self, size: int) -> None:
        super().__init__(headers={"Content-Range": f"bytes */{size}"})


class TransferCodingNotImplemented(AppError):
    status_code = 501
    code = "not_implemented"
    message = "Only the chunked transfer coding is supported"
    detail = "Send the body with Content-Length, or Transfer-Encoding: chunked alone"


class MethodNotImplemented(AppError):
    """A method the server does not know at all (RFC 9110 9.1); a known one
    that a path does not take is a 405."""

    status_code = 501
    code = "not_implemented"
    message = "Method not implemented"
    detail = "The API takes GET, HEAD, POST, PUT, PATCH, DELETE (and OPTIONS: CORS)"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"
    message = "Request body is too large"
    detail = "Bodies are limited to 64 KiB (65,536 bytes)"


class CorsNotAllowed(AppError):
    status_code = 400
    code = "cors_not_allowed"
    message = "Cross-origin request not allowed"
    detail = "Not allowed by the API's CORS settings: origin, method or headers"

    def __init__(self, refused: str, origin: str, headers: dict[str, str]) -> None:
        """`refused`: Starlette's "origin", "method", "headers", or some of them."""
        hints = {
            "origin": f"origin {origin} (not in CORS_ORIGINS)",
            "headers": "headers (one not in CORS_ALLOW_HEADERS)",
        }
        named = ", ".join(hints.get(part, part) for part in refused.split(", "))
        super().__init__(
            detail=f"Not allowed by the API's CORS settings: {named}", headers=headers
        )


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "unsupported_media_type"
    message = "Request body must be application/json"
    detail = "Send the body as JSON with Content-Type: application/json"


class MalformedRequest(AppError):
    status_code = 400
    code = "bad_request"
    message = "The request is not valid HTTP/1.1"
    detail = "Its request line, headers or body framing could not be parsed"


class HttpVersionNotSupported(AppError):
    status_code = 505
    code = "http_version_not_supported"
    message = "HTTP version not supported"
    detail = "Send the request as HTTP/1.1 (or HTTP/1.0)"


class RequestTimeout(AppError):
    status_code = 408
    code = "request_timeout"
    message = "The request did not arrive in time"
    detail = "The request head and body must arrive in time (HTTP_REQUEST_TIMEOUT)"


class HeadersTooLarge(AppError):
    status_code = 431
    code = "headers_too_large"
    message = "The request line and headers are too large"
    detail = "The request line and headers together are limited to 32 KiB"


class Overloaded(AppError):
    status_code = 503
    code = "overloaded"
    message = "The service is at capacity, try again shortly"
    detail = "Every request slot of this instance is busy; retry after Retry-After s"
    retry_after = 1


class DatabaseUnavailable(AppError):
    status_code = 503
    code = "database_unavailable"
    message = "The database is unavailable, try again shortly"
    detail = "The database could not be reached; retry after Retry-After seconds"
    retry_after = 2


class DatabaseRefused(DatabaseUnavailable):
    """The database refused the statement (the gateway's `_translate`): the role
    may not touch a table (a read-only role) or call a function, or the server
    lacks the function (a managed PostgreSQL's restrictions). It serves again
    once an operator grants what is missing, without a restart. `reason`, the
    server's words, is logged where the error is rendered: the service may
    handle it instead (delta sync, without its crash safety)."""

    detail = "The database refused this operation; retry after Retry-After seconds"

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


# A worker started while the database was down, until it has checked the schema.
SCHEMA_NOT_CHECKED = (
    "The database's schema is not checked yet (the database was unreachable when "
    "this server started); retry after Retry-After seconds"
)


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(error: AppError, request_id: str | None) -> JSONResponse:
    return JSONResponse(
        error.body(request_id).model_dump(exclude_none=True),
        status_code=error.status_code,
        headers=error.headers or None,
    )


# A field name the client made up (an unknown one) is echoed at most this long.
MAX_FIELD_NAME = 100


def _field_name(loc: Sequence[Any]) -> str:
    """('body', 'tags', 2) -> 'tags[2]'; ('query', 'limit') -> 'limit'."""
    name = ""
    for part in loc[1:] if len(loc) > 1 else loc:
        if isinstance(part, str):
            if len(part) > MAX_FIELD_NAME:
                part = part[:MAX_FIELD_NAME] + "…"
            # Written as JSON writes it: an error body may be stored (a keyed
            # batch's), and PostgreSQL's text and jsonb cannot hold NUL.
            part = part.replace("\x00", "\\u0000")
        name += (
            f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
        )
    return name


# Pydantic's words for a lone surrogate escape in the JSON ("unable to parse raw
# data as a unicode string") told a client nothing it could fix.
_UNPAIRED = "must not contain unpaired surrogates (\\ud800 to \\udfff escapes)"


def validation_error(errors: Sequence[Any]) -> AppError:
    fields: list[FieldError] = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "batch_operation":  # at an operation's own field
            loc += tuple(err["ctx"]["at"])
        if err.get("type") == "json_invalid":
            at = f" (at character {loc[1]})" if len(loc) > 1 else ""
            return InvalidJSON.unreadable(f"The body is not valid JSON{at}")
        unpaired = err.get("type") == "string_unicode"  # an escape \ud800 to \udfff
        if loc == ("body",):
            if unpaired:  # in a name: no field to name
                return InvalidJSON.unreadable(
                    "A name in the body holds an unpaired surrogate (a \\ud800 to "
                    "\\udfff escape)"
                )
            return InvalidJSON()
        pattern = err.get("ctx", {}).get("pattern")
        if unpaired:
            message = _UNPAIRED
        elif err.get("type") == "extra_forbidden":
            message = "Unknown field"
        elif pattern in PATTERN_MESSAGES:
            message = PATTERN_MESSAGES[pattern]
        else:
            message = str(err.get("msg", "Invalid value")).removeprefix("Value error, ")
        fields.append(FieldError(field=_field_name(loc), message=message))
    detail = "; ".join(f"{f.field}: {f.message}" for f in fields)
    return ValidationFailed(detail=detail, fields=fields)


def undecodable_body(cause: BaseException | None) -> InvalidJSON:
    """FastAPI answers a body that `json.loads` fails on with anything but a
    JSONDecodeError (bad UTF-8, nesting past the recursion limit, an integer past
    Python's 4,300 digits: the `cause`) with a bare 400: it is malformed JSON
    all the same."""
    if isinstance(cause, UnicodeDecodeError):
        return InvalidJSON.unreadable("The body is not valid UTF-8")
    if isinstance(cause, RecursionError):
        return InvalidJSON.unreadable("The JSON is nested too deeply")
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return InvalidJSON.unreadable("A number in the body has too many digits")
    return InvalidJSON.unreadable("The body is not valid JSON")


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
            metrics.RATE_LIMITED.labels(exc.reason).inc()
        elif isinstance(exc, DatabaseUnavailable):
            metrics.DB_ERRORS.inc()
            if isinstance(exc, DatabaseRefused):
                _refused.log(f"database refused the statement: {exc.reason}")
        return error_response(exc, request_id_of(request))

    async def request_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc.errors()), request_id_of(request))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers) if exc.headers else None
        detail = None
        if exc.status_code == 400:  # FastAPI: a body json.loads could not decode
            unread = undecodable_body(exc.__cause__)
            return error_response(unread, request_id_of(request))
        if exc.status_code == 405:  # a mounted app (/docs/assets) names its own
            allowed = _allowed_methods(request) or (headers or {}).get("Allow", "")
            headers = {"Allow": allowed}
            detail = f"This path supports {headers['Allow']}"
        if exc.status_code in _HTTP_ERRORS:
            error = _HTTP_ERRORS[exc.status_code](detail=detail, headers=headers)
        else:  # any other status Starlette raises: keep it, name it plainly
            status = HTTPStatus(exc.status_code)
            error = AppError(status.phrase, detail=status.description, headers=headers)
            error.status_code = exc.status_code
            error.code = status.phrase.lower().replace(" ", "_").replace("-", "_")
        return error_response(error, request_id_of(request))

    app.add_exception_handler(AppError, app_error)
    app.add_exception_handler(RequestValidationError, request_validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
