"""The worker's admission of requests when the server cancels what runs (its
graceful shutdown timed out): the requests still waiting are refused, never
started on an app that is shutting down (specs/006-operations)."""

import asyncio
import logging
from types import SimpleNamespace
from typing import Any, cast

import pytest
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.flow_control import FlowControl

from app.edge.middleware import SHUTTING_DOWN, RequestContextMiddleware
from app.edge.protocol import (
    MAX_STALLED_BYTES,
    OPERATOR_PLACES,
    TOO_MANY_CONNECTIONS,
    Admission,
    BoundedHttpToolsProtocol,
)
from app.errors import AppError


class Connection:
    """What admission uses of a protocol: start a request, or close with a response."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.refused: AppError | None = None
        self.logged = False  # whether the refusal's access line was written already

    def start(self, cycle: Any, app: Any) -> None:
        self.task = asyncio.ensure_future(app(cycle.scope, None, None))

    def close_with(self, error: AppError, _cycle: Any, *, logged: bool = False) -> None:
        self.refused = error
        self.logged = logged


pytestmark = pytest.mark.anyio


def _request() -> Any:
    return SimpleNamespace(
        scope={
            "type": "http",
            "method": "GET",
            "path": "/api/u/tasks",
            "headers": [],
            "state": {},
        },
        response_started=False,
        disconnected=False,
    )


async def test_requests_waiting_when_the_running_ones_are_cancelled_are_refused() -> (
    None
):
    admission = Admission(active=1, in_flight=10)
    started: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        started.append("app")
        await asyncio.sleep(60)

    running, waiting = Connection(), Connection()
    for connection in (running, waiting):
        admission.submit(cast(BoundedHttpToolsProtocol, connection), _request(), app)
    await asyncio.sleep(0)
    assert running.task is not None
    running.task.cancel()  # as uvicorn does past its graceful shutdown timeout
    await running.task  # answered, not raised to uvicorn (its 500)
    assert running.refused == SHUTTING_DOWN
    assert started == ["app"]
    assert waiting.task is None
    assert waiting.refused == TOO_MANY_CONNECTIONS
    assert not admission.waiting


async def test_a_request_read_after_the_running_ones_are_cancelled_is_refused() -> None:
    admission = Admission(active=1, in_flight=10)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(60)

    running, late = Connection(), Connection()
    admission.submit(cast(BoundedHttpToolsProtocol, running), _request(), app)
    await asyncio.sleep(0)
    assert running.task is not None
    running.task.cancel()
    await running.task
    admission.submit(cast(BoundedHttpToolsProtocol, late), _request(), app)
    assert late.task is None
    assert late.refused == TOO_MANY_CONNECTIONS


async def test_health_checks_have_places_of_their_own_and_no_more() -> None:
    admission = Admission(active=1, in_flight=100)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(60)

    def probe() -> Any:
        request = _request()
        request.scope["path"] = "/health"
        return request

    running, queued = Connection(), Connection()
    admission.submit(cast(BoundedHttpToolsProtocol, running), _request(), app)
    admission.submit(cast(BoundedHttpToolsProtocol, queued), _request(), app)
    probes = [Connection() for _ in range(OPERATOR_PLACES + 2)]
    for connection in probes:
        admission.submit(cast(BoundedHttpToolsProtocol, connection), probe(), app)
    await asyncio.sleep(0)
    assert running.task is not None
    assert queued.task is None  # an API request waits for the one place
    started = [c for c in probes if c.task is not None]
    assert len(started) == OPERATOR_PLACES  # probes beyond their places queue too
    assert len(admission.waiting) == 3
    tasks = [c.task for c in (running, *started) if c.task is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks)


async def test_a_request_cancelled_by_the_shutdown_has_one_access_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The app's middleware writes its line (503 `overloaded`, as the protocol
    answers it), and the protocol's answer adds none: C8's one line a request."""
    admission = Admission(active=1, in_flight=10)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(60)

    running = Connection()
    submitted = cast(ASGI3Application, RequestContextMiddleware(app))
    admission.submit(cast(BoundedHttpToolsProtocol, running), _request(), submitted)
    await asyncio.sleep(0)
    assert running.task is not None
    with caplog.at_level(logging.INFO, logger="app.request"):
        running.task.cancel()
        await running.task
    [line] = [r for r in caplog.records if r.getMessage() == "request"]
    assert (line.__dict__["status"], line.__dict__["code"]) == (503, "overloaded")
    assert running.refused == SHUTTING_DOWN
    assert running.logged  # so the protocol writes no second line


class Stalled:
    """A connection whose client takes nothing: `buffered` bytes wait in its
    transport until `flow.resume_writing()`."""

    def __init__(self, buffered: int) -> None:
        self.transport = SimpleNamespace(get_write_buffer_size=lambda: buffered)
        self.flow = FlowControl(cast(Any, SimpleNamespace()))
        self.flow.pause_writing()


async def test_responses_waiting_for_their_clients_give_up_places_within_a_budget() -> (
    None
):
    """A request whose client does not read waits without its running place
    (other requests start), while such responses hold at most MAX_STALLED_BYTES;
    past that, it keeps its place (memory stays bounded)."""
    admission = Admission(active=4, in_flight=10)
    admission.running = 3
    half = MAX_STALLED_BYTES // 2
    first, second, third = Stalled(half), Stalled(half), Stalled(1)
    waits = [
        asyncio.ensure_future(admission._wait_writable(cast(Any, c)))
        for c in (first, second)
    ]
    await asyncio.sleep(0)
    assert admission.running == 1  # both stepped aside
    in_place = asyncio.ensure_future(admission._wait_writable(cast(Any, third)))
    await asyncio.sleep(0)
    assert not in_place.done()  # it waits too, past the budget in its place
    assert admission.running == 1
    for connection in (first, second, third):
        connection.flow.resume_writing()
    await asyncio.wait_for(asyncio.gather(*waits, in_place), 1)
    assert admission.running == 3
