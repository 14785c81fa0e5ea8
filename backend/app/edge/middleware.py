"""Pure ASGI middleware: CORS refusals in JSON, load shedding, request ids and
access logs, the request body guard, and canonical requests (trailing slash, HEAD)."""

import asyncio
import json
import logging
import os
import re
import time
from urllib.parse import unquote

import orjson
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import (
    AppError,
    CorsNotAllowed,
    InvalidJSON,
    Overloaded,
    PayloadTooLarge,
    TransferCodingNotImplemented,
    UnsupportedMediaType,
    error_response,
    sent_twice,
)
from app.observability import metrics
from app.observability.logging import Throttled

logger = logging.getLogger("app.request")

MAX_BODY_BYTES = 64 * 1024
MAX_DRAIN_BYTES = 1024 * 1024
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_JSON_TYPE = re.compile(r"application/(?:[\w.-]+\+)?json", re.IGNORECASE)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


# The methods the API's routes serve: those CORS allows. Metrics count any other
# (PROPFIND, QUERY, … some 37 the parser knows) as `other`: each was a label value
# of its own per route and status, and ~1,100 unauthenticated requests made
# /metrics 70 times larger (a trial).
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_COUNTED = frozenset(METHODS)

# Response headers a cross-origin page may read (CORS).
EXPOSED_HEADERS = [
    "ETag",
    "Location",
    "Link",
    "X-Next-Cursor",
    "X-Request-ID",
    "Retry-After",
    "Idempotent-Replayed",
    "WWW-Authenticate",
]


# Only the documentation may be cached: a stored task list, health status or
# error would be stale (or another user's, in a shared cache) when served again.
_CACHEABLE = ("/docs", "/openapi.json")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def declares_too_large_a_body(scope: Scope) -> bool:
    """A Content-Length over MAX_BODY_BYTES: refused (413) without reading it."""
    declared = _header(scope, b"content-length")
    return (
        declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES
    )


# The 503 of a request the server's shutdown cancelled before it answered (the
# protocol sends it; this middleware writes its access line).
SHUTTING_DOWN = Overloaded(
    detail="This instance stopped before it answered; retry after Retry-After s"
)


def request_id(scope: Scope) -> str:
    """The request's id: the incoming X-Request-ID when it is 1-128 of
    `A-Z a-z 0-9 . _ -`, else a new one; kept in the scope's state."""
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        incoming = _header(scope, b"x-request-id")
        valid = incoming is not None and _REQUEST_ID.fullmatch(incoming)
        state["request_id"] = incoming if valid and incoming else os.urandom(16).hex()
    identifier: str = state["request_id"]
    return identifier


def _identified(response: Response, identifier: str) -> Response:
    """The headers every response carries, on one answered before
    RequestContextMiddleware (which adds them to all the others)."""
    response.headers["x-request-id"] = identifier
    for name, value in SECURITY_HEADERS:
        response.headers[name.decode()] = value.decode()
    return response


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in the C3 error shape
    (400 `cors_not_allowed`) instead of its text/plain `Disallowed CORS origin,
    method`; the refusal keeps the preflight's CORS headers. Preflights are
    answered here, outside the request-context layer: they get their request id
    and access-log line here."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            headers = Headers(scope=scope)
            if "origin" in headers and "access-control-request-method" in headers:
                started = _started(scope)
                identifier = request_id(scope)
                response = _identified(self._preflight(headers, identifier), identifier)
                await response(scope, receive, send)
                status = response.status_code
                error = _error_of(status, bytes(response.body)) if status >= 400 else {}
                _access_line(scope, status, started, identifier, error)
                return
        await super().__call__(scope, receive, send)

    def _preflight(self, request_headers: Headers, identifier: str) -> Response:
        response = self.preflight_response(request_headers)
        if response.status_code != 400:
            return response
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        headers = {
            name: value
            for name, value in response.headers.items()
            if not name.startswith("content-")
        }
        refusal = CorsNotAllowed(refused, request_headers["origin"], headers)
        return error_response(refusal, identifier)


# Set in a request's scope state by the HTTP protocol's admission (`protocol.py`)
# when the worker already holds HTTP_MAX_IN_FLIGHT requests, running or waiting.
SHED = "shed"
# Set there too: when its head was read (`time.perf_counter()`), before it waited
# for a running place.
ARRIVED = "arrived"


def _started(scope: Scope) -> float:
    """When the request's duration starts: its arrival, so that the time it
    waited for admission counts (the log and the histogram showed requests that
    waited seconds as served in milliseconds); now, if no protocol noted it."""
    arrived: float | None = scope.get("state", {}).get(ARRIVED)
    return arrived if arrived is not None else time.perf_counter()


SHEDDING = (
    "worker at capacity (HTTP_MAX_IN_FLIGHT): requests refused with 503 overloaded"
)


class LoadShedMiddleware:
    """At most `limit` requests in the app at once, and none the HTTP protocol
    marked `SHED`; beyond that, 503 + Retry-After at once. Under overload the
    service keeps answering at its full rate with a bounded wait, instead of
    sharing the CPU among an ever-growing crowd of requests that all become slow
    (and whose clients give up)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0
        self._shedding = Throttled(logger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit or scope.get("state", {}).get(SHED):
            # Counted, and said every 10 s while it lasts, not a line each: that
            # would add work when there is most. Counted among the requests too,
            # under `<shed>` (they were in `shed_total` only, and an error-rate
            # alert never saw them: an operations trial).
            metrics.SHED.inc()
            self._shedding.log(SHEDDING)
            identifier = request_id(scope)
            response = error_response(Overloaded(), identifier)
            await _identified(response, identifier)(scope, receive, send)
            _counted(scope, "<shed>", Overloaded.status_code, _started(scope))
            return
        self._shedding.ended("worker no longer at capacity: requests admitted again")
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


# nginx's "client closed request": the client hung up before any response started.
CLIENT_CLOSED_REQUEST = 499


class RequestContextMiddleware:
    """Gives every response an X-Request-ID, logs one line per request, and turns
    anything unexpected into a C3 500 body (never a stack trace). The line and the
    metrics carry the response's status, or 499 when the app learnt that the client
    hung up (`http.disconnect`) before any response started: nothing was sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        identifier = request_id(scope)
        started = _started(scope)
        status = 500
        response_started = False
        error: dict[str, str] = {}  # an error's code (and detail), from its body

        async def receive_noting_hang_up() -> Message:
            nonlocal status
            message = await receive()
            if message["type"] == "http.disconnect" and not response_started:
                status = CLIENT_CLOSED_REQUEST
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started, error
            if status >= 400 and message["type"] == "http.response.body":
                error = error or _error_of(status, message.get("body", b""))
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", identifier.encode()))
                headers.extend(SECURITY_HEADERS)
                if not scope["path"].startswith(_CACHEABLE):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive_noting_hang_up, send_with_id)
        except asyncio.CancelledError:
            if not response_started:  # the server's shutdown gave up on it: the
                status = SHUTTING_DOWN.status_code  # protocol answers this
                error = _described(status, SHUTTING_DOWN.code, SHUTTING_DOWN.detail)
            raise
        except Exception:
            logger.exception("unhandled error", extra={"request_id": identifier})
            if not response_started:
                await error_response(AppError(), identifier)(
                    scope, receive, send_with_id
                )
        finally:
            _access_line(scope, status, started, identifier, error)


def _error_of(status: int, body: bytes) -> dict[str, str]:
    """What an access line says of an error: its body's (`_described`)."""
    try:
        error = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(error, dict):
        return {}
    return _described(status, error.get("code"), error.get("detail"))


def _described(status: int, code: object, detail: object) -> dict[str, str]:
    """An error's `code` (C3), and for a 5xx its `detail` too (the server's
    condition: a database unreachable, a lock, no connection free, the schema not
    checked yet), or a 429's (which limit: the rate, failed authentications, the
    user's share; an operations trial could not tell them apart), never a
    client's input."""
    described = {"code": code} if isinstance(code, str) else {}
    if (status >= 500 or status == 429) and isinstance(detail, str):
        described["detail"] = detail
    return described


def _route_of(scope: Scope) -> str:
    """The route template a request is counted and logged under: its route's;
    for one answered before routing (a 413, a 415, a client gone mid-body), not
    matched for its method (405), or served by a route of Starlette's own
    (/openapi.json, the /docs assets), the first whose path matches; else
    `<unmatched>` (never a raw path: metrics' labels stay few)."""
    route = scope.get("route")
    if route is not None:
        return str(route.path)
    # As before routing: a mount (the assets) moved its prefix into root_path.
    root_path = scope.get("app_root_path", scope.get("root_path", ""))
    unrouted = {**scope, "root_path": root_path}
    for candidate in getattr(scope.get("app"), "routes", ()):
        if candidate.matches(unrouted)[0] is not Match.NONE:
            return str(candidate.path)
    return "<unmatched>"


def _access_line(
    scope: Scope, status: int, started: float, identifier: str, error: dict[str, str]
) -> None:
    """The request's metrics and its one access-log line (`_error_of` an error)."""
    route = _route_of(scope)
    seconds = _counted(scope, route, status, started)
    _log_request(scope["method"], route, status, seconds, identifier, error)


def _counted(scope: Scope, route: str, status: int, started: float) -> float:
    """The request counted in the request metrics: its duration, in seconds."""
    seconds = time.perf_counter() - started
    method = scope["method"]
    metrics.observe(method if method in _COUNTED else "other", route, status, seconds)
    return seconds


def refusal_line(
    error: AppError, identifier: str, method: str | None, started: float
) -> None:
    """The access line of a request the server's protocol answered itself with
    a canned error (edge/protocol.py), never routed: `method` None when its
    head was not read whole. Counted in `http_edge_refusals_total`, not in the
    request metrics."""
    status = error.status_code
    seconds = time.perf_counter() - started
    described = _described(status, error.code, error.detail)
    _log_request(method, "<unmatched>", status, seconds, identifier, described)


def _log_request(
    method: str | None,
    path: str,
    status: int,
    seconds: float,
    identifier: str,
    error: dict[str, str],
) -> None:
    logger.info(
        "request",
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "request_id": identifier,
            **error,
        },
    )


async def _drain(receive: Receive, more: bool) -> None:
    """Read (and drop) what is left of a refused body, up to a bound: a server that
    closes with unread data makes the kernel send a reset, and the client may lose
    the 413 before it reads it."""
    drained = 0
    while more and drained < MAX_DRAIN_BYTES:
        message = await receive()
        drained += len(message.get("body", b""))
        more = message.get("more_body", False)


def _encoded(scope: Scope, header: bytes, decoded: bytes) -> bool:
    """The body has a coding this server does not decode: in `header`, any but
    `decoded`. A content coding (gzip, br, …), read as JSON, was a misleading 400
    (RFC 9110 15.5.16: a 415); a transfer coding besides chunked was ignored, so
    the body read was not the one a decoding proxy saw (RFC 9112 6.1: a 501)."""
    return any(
        name == header
        and any(
            coding.strip().lower() not in (b"", decoded) for coding in value.split(b",")
        )
        for name, value in scope["headers"]
    )


def carries_a_body(scope: Scope) -> bool:
    """A Content-Length other than 0, or a Transfer-Encoding: a body follows."""
    return any(
        (name == b"content-length" and value != b"0") or name == b"transfer-encoding"
        for name, value in scope["headers"]
    )


class _NotJsonNumber(Exception):
    pass


def _refuse_constant(constant: str) -> None:
    raise _NotJsonNumber(constant)


def _holds_nan_or_infinity(body: bytes) -> bool:
    """NaN, Infinity or -Infinity as a value (not inside a string): Python's json
    reads them, JSON (RFC 8259) has no such numbers. Parsed only when one of the
    words occurs; a body malformed otherwise is left to the route's 400."""
    if b"NaN" not in body and b"Infinity" not in body:
        return False
    try:
        json.loads(body, parse_constant=_refuse_constant)
    except _NotJsonNumber:
        return True
    except (ValueError, RecursionError):
        pass  # malformed otherwise: the route's 400 says where
    return False


class BodyGuardMiddleware:
    """Reads the whole body (at most 64 KiB, whatever Content-Length claims) before
    the app sees it, and rejects non-JSON bodies: of any request that has one,
    whatever its method (a GET's or a DELETE's is never let through larger or of
    another type; what it holds, the route checks: `deps.no_body`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            scope["method"] not in _BODY_METHODS and not carries_a_body(scope)
        ):
            await self.app(scope, receive, send)
            return
        request_id = scope.get("state", {}).get("request_id")
        if declares_too_large_a_body(scope):
            await error_response(PayloadTooLarge(), request_id)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > MAX_BODY_BYTES:
                await _drain(receive, more)
                await error_response(PayloadTooLarge(), request_id)(
                    scope, receive, send
                )
                return
            chunks.append(chunk)
        body = b"".join(chunks)
        content_type = _header(scope, b"content-type")
        media_type = (content_type or "application/json").split(";")[0].strip()
        error: AppError | None = None
        if body and sum(name == b"content-type" for name, _ in scope["headers"]) > 1:
            error = sent_twice("Content-Type")  # which one describes the body?
        elif body and not _JSON_TYPE.fullmatch(media_type):
            error = UnsupportedMediaType()
        elif body and _encoded(scope, b"content-encoding", b"identity"):
            error = UnsupportedMediaType(
                detail="Content-Encoding is not supported: send the body uncompressed",
                headers={"Accept-Encoding": "identity"},
            )
        elif _encoded(scope, b"transfer-encoding", b"chunked"):  # empty, too
            error = TransferCodingNotImplemented()
        elif body[:1] in (b"\xfe", b"\xff") or b"\x00" in body[:4]:
            error = InvalidJSON.unreadable("The body is not valid UTF-8")
        elif _holds_nan_or_infinity(body):
            error = InvalidJSON.unreadable("NaN and Infinity are not JSON numbers")
        if error is not None:
            await error_response(error, request_id)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _with_encoded_slashes(raw_path: bytes) -> str:
    """The path decoded segment by segment, a `%2F` staying `%2F` (RFC 3986 2.2:
    an encoded slash is data, not a separator): the server's decoded path made
    `tasks%2Fbatch` the batch route, past any proxy rule on `*/tasks/batch`. No
    route has a segment holding a slash, so such a path is a 404 (or the 400 of an
    invalid `{user_id}` or `{id}`)."""
    return "/".join(
        unquote(segment).replace("/", "%2F")
        for segment in raw_path.decode("latin-1").split("/")
    )


class CanonicalRequestMiddleware:
    """Two things FastAPI's routes don't do, in one layer (one call per request):

    - `/…/` is served as `/…` (one slash: `/api/…//` is no route).
      Starlette's answer is a 307 whose Location is an absolute URL built from what
      the app sees (plain `http://` behind a TLS proxy), sent before
      authentication; here there is no redirect at all. And `%2F` in the path is
      not a separator (`_with_encoded_slashes`).
    - HEAD on every GET route (uptime monitors, `curl -I`): the GET's status and
      headers (ETag, Content-Length, Link…) without its body. Routes stay GET-only,
      so the OpenAPI document has no second operation per path.

    The path is changed in place so the access log still finds the route; HEAD runs
    on a copy, because the server reads the method from its own scope to know that
    the response has no body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path")
        if isinstance(raw_path, bytes) and b"%2f" in raw_path.lower():
            scope["path"] = _with_encoded_slashes(raw_path)
        path: str = scope["path"]
        if path.endswith("/") and not path.endswith("//"):
            scope["path"] = path[:-1]
            if isinstance(raw_path, bytes):
                scope["raw_path"] = raw_path[:-1]
        if scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, receive, send_headers_only)
        finally:
            if "route" in as_get:  # for the access log and metrics
                scope["route"] = as_get["route"]
