"""LoadShedMiddleware: at most `limit` requests inside the app; the next gets 503
`overloaded` + Retry-After at once, and a slot frees when a request ends."""

import json
import logging

import anyio
import pytest
from prometheus_client import REGISTRY
from starlette.types import Message, Receive, Scope, Send

from app.edge.middleware import SHEDDING, LoadShedMiddleware

pytestmark = pytest.mark.anyio


SCOPE: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _call(app: LoadShedMiddleware) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(SCOPE, _receive, send)
    return sent


def _shed_counted() -> float:
    labels = {"method": "GET", "route": "<shed>", "status": "503"}
    return REGISTRY.get_sample_value("http_requests_total", labels) or 0.0


async def test_requests_beyond_the_limit_get_503_until_one_finishes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each shed request is counted among the requests (under `<shed>`: an
    error-rate alert missed them, an operations trial), and the shedding is said
    as it starts and as it ends, not in a line each."""
    caplog.set_level(logging.INFO, logger="app.request")
    counted = _shed_counted()
    release = anyio.Event()
    entered = 0

    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal entered
        entered += 1
        await release.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = LoadShedMiddleware(slow_app, limit=2)
    async with anyio.create_task_group() as group:
        group.start_soon(_call, app)
        group.start_soon(_call, app)
        await anyio.wait_all_tasks_blocked()
        start, body = await _call(app)
        assert start["status"] == 503
        assert (b"retry-after", b"1") in start["headers"]
        error = json.loads(body["body"])
        assert error["code"] == "overloaded"
        assert (b"x-request-id", error["request_id"].encode()) in start["headers"]
        assert (await _call(app))[0]["status"] == 503
        release.set()
    assert entered == 2
    assert app.in_flight == 0
    assert _shed_counted() == counted + 2
    assert caplog.messages == [SHEDDING]
    app._shedding.quiet = 0
    assert (await _call(app))[0]["status"] == 204
    assert caplog.messages[1:] == [
        "worker no longer at capacity: requests admitted again"
    ]
