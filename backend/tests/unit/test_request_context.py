"""RequestContextMiddleware's access log line and request metrics: the status a
request ended with. A client that hung up before any response started was sent
nothing: 499 (nginx's "client closed request"), not the 500 of a request that
failed; an unhandled exception is still a 500; one the server's shutdown cancelled
is the 503 the protocol answers it with."""

import asyncio
import contextlib
import logging

import pytest
from prometheus_client import REGISTRY
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.edge.middleware import RequestContextMiddleware

pytestmark = pytest.mark.anyio


SCOPE: Scope = {"type": "http", "method": "POST", "path": "/api/u/tasks", "headers": []}


async def _hung_up() -> Message:
    return {"type": "http.disconnect"}


async def _ignore(message: Message) -> None:
    pass


async def reads_a_hang_up(scope: Scope, receive: Receive, send: Send) -> None:
    """As BodyGuardMiddleware does when the body stops with a disconnect."""
    await receive()


async def fails_after_a_hang_up(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    raise RuntimeError("a bug, whatever the client did")


async def fails(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("a bug")


async def answers_then_reads_a_hang_up(
    scope: Scope, receive: Receive, send: Send
) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})
    await receive()


async def cut_short_by_the_shutdown(scope: Scope, receive: Receive, send: Send) -> None:
    """The server cancels what still runs when its graceful shutdown times out."""
    raise asyncio.CancelledError


def _counted(status: int) -> float:
    labels = {"method": "POST", "route": "<unmatched>", "status": str(status)}
    return REGISTRY.get_sample_value("http_requests_total", labels) or 0.0


@pytest.mark.parametrize(
    ("app", "status"),
    [
        (reads_a_hang_up, 499),
        (fails_after_a_hang_up, 500),
        (fails, 500),
        (answers_then_reads_a_hang_up, 204),
        (cut_short_by_the_shutdown, 503),  # as the protocol answers it
    ],
)
async def test_a_request_is_logged_and_counted_with_the_status_it_ended_with(
    app: ASGIApp, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    counted = _counted(status)
    with (
        caplog.at_level(logging.INFO, logger="app.request"),
        contextlib.suppress(asyncio.CancelledError),
    ):
        await RequestContextMiddleware(app)(dict(SCOPE), _hung_up, _ignore)
    [logged] = [r for r in caplog.records if r.getMessage() == "request"]
    assert logged.status == status  # type: ignore[attr-defined]
    assert _counted(status) == counted + 1


async def not_allowed(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 405, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def test_a_method_no_route_serves_is_counted_as_other() -> None:
    """~37 methods the parser knows, each a label value per route and status:
    /metrics grew 70-fold from unauthenticated requests (a trial)."""
    labels = {"method": "other", "route": "<unmatched>", "status": "405"}
    before = REGISTRY.get_sample_value("http_requests_total", labels) or 0.0
    for method in ("PROPFIND", "MKCOL", "QUERY"):
        scope = {**SCOPE, "method": method}
        await RequestContextMiddleware(not_allowed)(scope, _hung_up, _ignore)
    assert REGISTRY.get_sample_value("http_requests_total", labels) == before + 3
    propfind = {**labels, "method": "PROPFIND"}
    assert REGISTRY.get_sample_value("http_requests_total", propfind) is None
