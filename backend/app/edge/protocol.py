"""uvicorn's httptools protocol with the limits it lacks: a bounded request head,
a deadline for reading a request and for a client to take its response, a bound on
pipelined requests, a cap on open connections per worker, admission of requests
into the app, JSON for a request that is not HTTP, and the body of a request that
offers HTTP/2 (`Upgrade: h2c`), which uvicorn lost.

uvicorn alone reads a request head of any size (a 64 MiB header is parsed and
kept), waits forever for a head that trickles in or never comes, and accepts
connections until the file-descriptor limit. These checks run before the ASGI
app exists for the request, so they cost an unauthenticated client nothing but a
small, fixed answer (specs/006-operations)."""

import asyncio
import fcntl
import re
import socket
import sys
import termios
import time
from collections import deque
from collections.abc import Iterable
from functools import cache
from typing import Any, cast

import httptools
from starlette.types import Scope
from uvicorn._types import (
    ASGI3Application,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
)
from uvicorn._types import Scope as UvicornScope
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from app.config import get_settings
from app.edge.middleware import (
    ARRIVED,
    EXPOSED_HEADERS,
    MAX_BODY_BYTES,
    MAX_DRAIN_BYTES,
    SECURITY_HEADERS,
    SHED,
    SHUTTING_DOWN,
    declares_too_large_a_body,
    refusal_line,
    request_id,
)
from app.errors import (
    AppError,
    HeadersTooLarge,
    HttpVersionNotSupported,
    MalformedRequest,
    MethodNotImplemented,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
)
from app.observability import metrics

# Request line and headers together; browsers send 1-4 KiB, a large JWT ~2 KiB.
MAX_HEAD_BYTES = 32 * 1024
# A head past it is read on to its end for its `Origin` (`_head_grows`) up to this.
HEAD_READ_LIMIT = 2 * MAX_HEAD_BYTES
# Requests a connection may queue behind the one in progress (pipelining clients
# send a handful; browsers none).
MAX_PIPELINED = 16
# What a request offering to switch protocols carries for it (an HTTP/2 offer:
# `Upgrade: h2c`, `HTTP2-Settings`, and both named in `Connection`).
UPGRADE_HEADERS = frozenset({b"upgrade", b"http2-settings"})
# What a client whose response is stalled must take of it in each
# HTTP_REQUEST_TIMEOUT to keep the connection (or all that is pending, if less):
# a reader that takes a trickle would otherwise hold a running place for as long
# as it likes (6.4 KiB/s at the default 10 s, more with a shorter timeout).
MIN_TAKEN = 64 * 1024
# Bytes of responses waiting for their clients to take them that a worker holds
# without their requests' running places, all connections together; past it, a
# request whose client does not read keeps its place while it waits (`_Stalled`).
MAX_STALLED_BYTES = 32 * 2**20
# The start of a request line: a method name (an RFC 9110 token) and a space.
_REQUEST_LINE = re.compile(rb"(?:\r\n)*[-!#$%&'*+.^_`|~0-9A-Za-z]+ ")
# On shutdown, an idle connection is closed this long after, not at once: a
# request a client (a load balancer) sent on it in that instant is still read
# and answered, with `Connection: close`.
SHUTDOWN_GRACE = 0.5
# Linux's `struct tcp_info` up to `tcpi_bytes_acked` (Linux 4.1), and where that is.
TCP_INFO_SIZE = 128
BYTES_ACKED = slice(120, 128)


def _cors(request_headers: Iterable[tuple[bytes, bytes]] | None) -> list[bytes]:
    """What the app's CORS layer gives an answer to an allowed origin, for the
    canned ones: without it a page could not read them (a 431 for the cookies a
    browser sent, a 503 when the server stopped), only "Failed to fetch"."""
    origin = next((v for n, v in request_headers or () if n == b"origin"), None)
    if origin is None:
        return []
    settings = get_settings()
    if origin.decode("latin-1") in settings.cors_origins:
        allowed = origin
    elif "*" in settings.cors_origins:  # never with credentials (config.py)
        allowed = b"*"
    else:
        return []
    headers = [
        b"access-control-allow-origin: %s\r\n" % allowed,
        b"access-control-expose-headers: %s\r\n" % ", ".join(EXPOSED_HEADERS).encode(),
        b"vary: Origin\r\n",
    ]
    if settings.CORS_ALLOW_CREDENTIALS:
        headers.append(b"access-control-allow-credentials: true\r\n")
    return headers


def canned_response(
    error: AppError,
    identifier: str,
    request_headers: Iterable[tuple[bytes, bytes]] | None = None,
    *,
    head: bool = False,
) -> bytes:
    """A complete `Connection: close` HTTP/1.1 response with the error's JSON body,
    and what the app gives every response: the request id, in the body and
    `X-Request-ID`, the security headers, and the CORS headers for the request's
    origin (`request_headers`: as far as they were read). Counted in
    `http_edge_refusals_total` (the access line: `refusal_line`)."""
    metrics.EDGE_REFUSALS.labels(str(error.status_code)).inc()
    body = error.body(identifier).model_dump_json(exclude_none=True).encode()
    headers = [
        STATUS_LINE[error.status_code],
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
        b"x-request-id: %s\r\n" % identifier.encode(),
    ]
    headers += [b"%s: %s\r\n" % header for header in SECURITY_HEADERS]
    headers += _cors(request_headers)
    headers += [f"{k}: {v}\r\n".encode() for k, v in error.headers.items()]
    # A HEAD response has no content (RFC 9110 9.3.2), only its length.
    return b"".join([*headers, b"\r\n", b"" if head else body])


# The errors answered here, before a request reaches the app.
HEAD_TOO_LARGE = HeadersTooLarge()


@cache
def timed_out(seconds: float) -> RequestTimeout:
    """The 408, with the bound it missed (the setting's name meant nothing to a
    client)."""
    return RequestTimeout(
        detail=f"The request head and body must arrive within {seconds:g} s of "
        "their first byte"
    )


TOO_MANY_CONNECTIONS = Overloaded()
TOO_MANY_HEADS = Overloaded(
    detail="Too many requests are being received at once; retry after Retry-After s"
)
MALFORMED = MalformedRequest()
NOT_ONE_HOST = MalformedRequest(
    detail="An HTTP/1.1 request names its host in exactly one Host header"
)
VERSION_NOT_SUPPORTED = HttpVersionNotSupported()
UNKNOWN_METHOD = MethodNotImplemented()
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# A body the app may take is whole before uvicorn stops reading (at this many
# bytes): so every request the app gets is admitted with its body read.
assert MAX_BODY_BYTES <= HIGH_WATER_LIMIT


# Served at once, however many requests wait, in places of their own beyond
# HTTP_MAX_ACTIVE (Admission): a flood of them queues like any request.
OPERATOR_PATHS = frozenset({"/health", "/metrics", "/health/", "/metrics/"})
OPERATOR_PLACES = 8


class _StopReading(Exception):
    """Raised in a parser callback: stops parsing the read it came in."""


class Admission:
    """The worker's requests: at most `active` running in the app at once; the next
    ones wait, parsed but not started (no task, no coroutine frames: a few KB each
    instead of ~24 KB), and start in arrival order as running ones finish. A
    connection has at most one waiting (the next starts only once it is answered);
    one whose client hung up withdraws it (never started, no longer counted).
    Past `in_flight` running and waiting, a request starts at once marked to be shed
    (`SHED`), so the app answers it 503 `overloaded` as it answers any (CORS headers,
    request id). The operators' probes (`OPERATOR_PATHS`) do not queue while one
    of their `OPERATOR_PLACES` is free: a health check answers within its own
    timeout however long the queue. When the server cancels what runs (its
    graceful shutdown timed out), a request not answered yet gets 503
    `SHUTTING_DOWN`, and nothing more starts: the waiting, and any request read
    after, get 503 and are closed."""

    def __init__(self, active: int, in_flight: int) -> None:
        self.active = active
        self.in_flight = in_flight
        self.running = 0
        self.stopping = False
        self.waiting: deque[
            tuple[BoundedHttpToolsProtocol, RequestResponseCycle, ASGI3Application]
        ] = deque()

    def submit(
        self,
        protocol: "BoundedHttpToolsProtocol",
        cycle: RequestResponseCycle,
        app: ASGI3Application,
    ) -> None:
        if self.stopping:
            protocol.close_with(TOO_MANY_CONNECTIONS, cycle)
        elif self.running < self.active or (
            self.running < self.active + OPERATOR_PLACES
            and cycle.scope["path"] in OPERATOR_PATHS
        ):
            self._start(protocol, cycle, app)
        elif self.running + len(self.waiting) < self.in_flight:
            self.waiting.append((protocol, cycle, app))
        else:
            cycle.scope["state"][SHED] = True
            protocol.start(cycle, app)

    def _start(
        self,
        protocol: "BoundedHttpToolsProtocol",
        cycle: RequestResponseCycle,
        app: ASGI3Application,
    ) -> None:
        self.running += 1

        async def then_next(
            scope: UvicornScope, receive: ASGIReceiveCallable, send: ASGISendCallable
        ) -> None:
            async def unstalled(message: ASGISendEvent) -> None:
                await send(message)
                if protocol.flow.write_paused and not cycle.disconnected:
                    await self._wait_writable(protocol)

            try:
                await app(scope, receive, unstalled)
            except asyncio.CancelledError:
                if cycle.response_started:
                    raise
                # Cancelled by the server (its graceful shutdown timed out) before
                # it answered: a 503 to retry, not uvicorn's plain-text 500 (its
                # access line the app's middleware wrote, with its route).
                protocol.close_with(SHUTTING_DOWN, cycle, logged=True)
                cycle.disconnected = True  # uvicorn sends nothing more
            finally:
                task = asyncio.current_task()
                self._finished(stopping=task is not None and task.cancelling() > 0)

        protocol.start(cycle, then_next)

    async def _wait_writable(self, protocol: "BoundedHttpToolsProtocol") -> None:
        """The client does not take what the request wrote as fast as it was
        written: the request waits for it, after each write (its last one too),
        without its running place (as one waiting for its user's turn), while the
        responses waiting so hold at most MAX_STALLED_BYTES in their transports;
        past that it waits in its place. Holding it, 70 connections each
        pipelining four requests for the 1.5 MB Swagger UI bundle, never read,
        held the 64 places, and other users' requests waited up to 10 s, the
        stall's limit (a trial: no token needed). Not waiting after its last
        write, a response written whole in one piece (a list of 1,000 tasks,
        2.5 MB) ended its request at once, and 800 clients that never read grew
        a worker to 1.3 GB (a re-trial)."""
        held = protocol.transport.get_write_buffer_size()
        if _STALLED.held + held > MAX_STALLED_BYTES:
            await protocol.flow.drain()  # in its place: memory stays bounded
            return
        _STALLED.held += held
        self.step_aside()
        try:
            await protocol.flow.drain()
        finally:
            _STALLED.held -= held
            self.step_back()

    def withdraw(self, protocol: "BoundedHttpToolsProtocol") -> None:
        """Its client hung up: the request it has waiting leaves the queue."""
        for entry in self.waiting:
            if entry[0] is protocol:
                self.waiting.remove(entry)
                return

    def _finished(self, *, stopping: bool) -> None:
        if stopping:
            self.stopping = True
            while self.waiting:
                protocol, cycle, _ = self.waiting.popleft()
                protocol.close_with(TOO_MANY_CONNECTIONS, cycle)
        self.step_aside()

    def step_aside(self) -> None:
        """A running request gives up its running place (finished, or waiting
        for its user's turn: `edge.shares`); the next waiting ones start."""
        self.running -= 1
        while self.waiting and self.running < self.active:
            self._start(*self.waiting.popleft())

    def step_back(self) -> None:
        """A request that stepped aside runs again, at once: it was admitted
        already (so `active` may be passed until running ones finish)."""
        self.running += 1


@cache
def worker_admission() -> Admission:
    """One per worker process (uvicorn runs one server in each)."""
    settings = get_settings()
    return Admission(settings.HTTP_MAX_ACTIVE, settings.HTTP_MAX_IN_FLIGHT)


class _Held:
    """Bytes held by every connection of the worker (one event loop a process):
    of heads being read, of responses waiting for their clients. Not a class
    attribute of the protocol: writing one invalidates the interpreter's
    attribute caches for every instance, and the ceiling lost 4% (a wrk A/B)."""

    held = 0


_HEADS = _Held()  # the heads being read
# Bytes of the responses whose requests wait for their clients without a place.
_STALLED = _Held()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """A request must arrive whole within `HTTP_REQUEST_TIMEOUT` seconds of its
    first byte, with a head of at most MAX_HEAD_BYTES; a connection beyond
    `HTTP_MAX_CONNECTIONS` is answered 503 and closed; one whose client takes
    less than `MIN_TAKEN` of a stalled response in `HTTP_REQUEST_TIMEOUT`
    seconds is dropped (its request would wait to write forever). A connection
    with no request under way is idle, whether it has served one or not yet sent
    a byte (a browser's preconnect, a client pool's spare): uvicorn's
    `timeout_keep_alive` closes it. A silent new connection holds no more than
    an idle kept-alive one, which any client can have by sending one small
    request. The heads being read hold `HTTP_MAX_HEADS_MB` at most, together:
    past it, a head that grows is refused (503) and its connection closed.
    12,000 connections each sending 30 KiB of a head that never ended grew a
    worker by 490 MB, never given back (a trial)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_settings()
        self.max_connections = settings.HTTP_MAX_CONNECTIONS
        self.max_heads_held = settings.HTTP_MAX_HEADS_MB * 2**20
        self.request_timeout = settings.HTTP_REQUEST_TIMEOUT
        self.stopped = False  # reads no more: closes once what it has is answered
        self.reading_head = True  # not in a body: between requests, or in a head
        self.head_begun = False  # a request line has begun and its head not ended
        self.began = 0.0  # when the last head began (perf_counter)
        self.head_bytes = 0  # of the reads that fell wholly within the current head
        self.head_size = 0  # of its request line and headers, as parsed
        self.oversized = False  # past MAX_HEAD_BYTES: read on for its Origin only
        self.heads_read = 0
        self.deadline: asyncio.TimerHandle | None = None
        # Armed while the client does not take what is written (writing paused).
        self.stalled: asyncio.TimerHandle | None = None
        self.admission = worker_admission()
        # A request whose head is read and whose body is still coming.
        self.unread: tuple[RequestResponseCycle, ASGI3Application] | None = None
        # Bytes read and dropped of a body refused (413) before the app had it.
        self.discarded: int | None = None
        # The last request handed to admission, and the last started in the app:
        # the same one unless it waits. Either is this connection's oldest request
        # unanswered, if any (uvicorn's `cycle` is the last one parsed).
        self.admitted: RequestResponseCycle | None = None
        self.started: RequestResponseCycle | None = None
        # The head just parsed offered a protocol switch (see `_feed`).
        self.upgrade_offered = False
        self.shutting_down = False  # the server is stopping (`shutdown`)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Writing pauses as soon as the kernel takes no more, so the stall timer
        # runs whatever is left unsent (below uvicorn's 64 KiB mark a connection
        # closing after its response waited forever for a client not reading).
        transport.set_write_buffer_limits(high=0)
        if len(self.connections) > self.max_connections:
            self.close_with(TOO_MANY_CONNECTIONS)
            return
        self._arm_keep_alive()

    def _arm_keep_alive(self) -> None:
        """Close the connection if it stays idle for `timeout_keep_alive`."""
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_ended()
        self._disarm_deadline()
        if self._waits():
            self.admission.withdraw(self)
        if self.admitted is not None and not self.admitted.response_complete:
            # uvicorn tells the last request parsed, not this one if it pipelined
            self.admitted.disconnected = True
            self.admitted.message_event.set()
        self._unwatch_writes()
        # uvicorn cancels it only on a clean close; a reset one would keep this
        # protocol alive until the timer fired.
        self._unset_keepalive_if_required()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return
        if self.deadline is None and not self.transport.is_closing():
            self._arm_deadline()  # the first byte of the next request
        was_reading_head, heads_read = self.reading_head, self.heads_read
        self._feed(data)
        if self.transport.is_closing() or self.stopped:
            return
        if self.pipeline and self._waits():
            # requests queued behind one waiting for admission: this connection
            # is served no more than those (`_stop_reading`)
            self._stop_reading()
            return
        # Only a read that neither ended a head nor began one after a body counts
        # (a whole request with its body may come in one read).
        if was_reading_head and self.reading_head and self.heads_read == heads_read:
            self.head_bytes += len(data)
            _HEADS.held += len(data)
            if self.head_bytes > HEAD_READ_LIMIT:
                self.refuse(HEAD_TOO_LARGE)
            elif _HEADS.held > self.max_heads_held:
                self.refuse(TOO_MANY_HEADS)

    def _head_ended(self) -> None:
        """What the head held is held no more (`HTTP_MAX_HEADS_MB`)."""
        if self.head_bytes:  # most heads come whole, in one read: none held
            _HEADS.held -= self.head_bytes
            self.head_bytes = 0

    def _feed(self, data: bytes) -> None:
        """uvicorn's parsing of a read, but for a request that offers to switch
        protocols (Java's HttpClient and RestClient, Ktor and `curl --http2` offer
        HTTP/2 as `Upgrade: h2c` on ordinary requests): no switch is made, so it is
        served as HTTP/1.1, as if the offer were not there (RFC 9110, 7.8). The
        parser skips the body of such a request and stops after its head (uvicorn
        ran it with an empty body, lost what followed, and logged a warning about
        WebSocket libraries): its head is parsed again without the offer, followed
        by the rest of the read, by a new parser (the old one, having seen a
        request that closes the connection, would drop what comes after it)."""
        self._unset_keepalive_if_required()
        heads_read = self.heads_read
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self.upgrade_offered:
                self.upgrade_offered = False
                head = self._head_without_upgrade()
                self.parser = httptools.HttpRequestParser(self)
                self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
                self._feed(head + data[upgrade.args[0] :])
        except httptools.HttpParserInvalidMethodError:
            # A method name the parser does not know is a 501 (RFC 9110 9.1); a
            # read that is not HTTP at all (a TLS handshake) is a 400.
            if self.heads_read == heads_read and _REQUEST_LINE.match(data):
                self.refuse(UNKNOWN_METHOD)
            else:
                self.send_400_response("")
        except httptools.HttpParserError:
            self.send_400_response("")

    def _head_without_upgrade(self) -> bytes:
        head = [
            b"%s %s HTTP/%s\r\n"
            % (
                self.parser.get_method(),
                self.url,
                self.parser.get_http_version().encode(),
            )
        ]
        for name, value in self.headers:
            if name == b"connection":
                tokens = [t.strip() for t in value.split(b",")]
                value = b", ".join(
                    t for t in tokens if t.lower() not in UPGRADE_HEADERS
                )
                if not value:  # it named only the offer
                    continue
            # Every other header as sent, an empty one too (`If-Match:` matches
            # nothing: dropped, a conditional write became unconditional).
            if name not in UPGRADE_HEADERS:
                head.append(b"%s: %s\r\n" % (name, value))
        return b"".join([*head, b"\r\n"])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_begun = True
        self.began = time.perf_counter()
        self.head_size = 0
        self.oversized = False
        # A request is coming: its deadline bounds it, not the keep-alive timer,
        # which the end of the last one may have armed in this very read (after a
        # 413 sent before its body ended): it closed the connection under this
        # request, whose response was then lost.
        self._unset_keepalive_if_required()
        if self.deadline is None:  # begun in the read that ended the last request
            self._arm_deadline()

    def on_headers_complete(self) -> None:
        """uvicorn parses every request of a read and queues those behind the one
        in progress, and reads again whenever a response completes: a client
        pipelining small requests without reading the answers made a worker queue
        millions (GBs). Past MAX_PIPELINED queued, the connection reads nothing
        more and is closed once the queued ones are answered; a client retries
        the rest, as it must when a server closes a pipelined connection."""
        if self.oversized:
            self.refuse(HEAD_TOO_LARGE)
            raise _StopReading
        if self.parser.should_upgrade() and self.parser.get_method() != b"CONNECT":
            self.upgrade_offered = True  # parsed again without it (`_feed`)
            return
        if len(self.pipeline) >= MAX_PIPELINED and not self.cycle.response_complete:
            self._stop_reading()
            raise _StopReading
        version = self.parser.get_http_version()
        if version not in ("1.0", "1.1"):  # the parser also takes 0.9 and 2.0
            self.refuse(VERSION_NOT_SUPPORTED)
            raise _StopReading
        if not self._one_host():
            self.refuse(NOT_ONE_HOST)
            raise _StopReading
        if version == "1.0":
            # RFC 9110 10.1.1: ignored (an HTTP/1.0 client knows no 100 Continue)
            self.expect_100_continue = False
        self.reading_head = False
        self.head_begun = False
        self._head_ended()
        self.heads_read += 1
        self.scope["state"][ARRIVED] = time.perf_counter()
        super().on_headers_complete()
        if self.shutting_down:  # read in the shutdown's grace: the last one
            self.cycle.keep_alive = False

    def _one_host(self) -> bool:
        """RFC 9112 3.2: one Host header (none allowed in HTTP/1.0); with two, a
        proxy and this server could each take the request for another host."""
        hosts = sum(name == b"host" for name, _ in self.headers)
        return hosts == 1 or (hosts == 0 and self.parser.get_http_version() == "1.0")

    def on_url(self, url: bytes) -> None:
        super().on_url(url)  # first: a refusal's line then has the method
        self._head_grows(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        """A header, its value without the whitespace around it (RFC 9110 5.5;
        the parser leaves what trails). A field of the trailer section, after a
        chunked body, is counted but dropped (RFC 9110 6.5.1): uvicorn added it
        to the request's headers, so an `Authorization`, `Host` or
        `X-Forwarded-For` sent after the body stood for the request's own."""
        self._head_grows(len(name) + len(value) + 4)  # ": " and CRLF
        if self.reading_head and (not self.oversized or name.lower() == b"origin"):
            super().on_header(name, value.strip(b" \t"))

    def _head_grows(self, size: int) -> None:
        """The head as parsed (for one that began in the read that ended the
        request before it, which `data_received` cannot count). Past
        MAX_HEAD_BYTES it is refused (431) once it ends, and read on until then
        keeping only its `Origin`, up to HEAD_READ_LIMIT: a page reads the 431
        only with the CORS headers for its origin, and Chromium sends `Origin`
        after `Authorization` (a 53 KB token: "Failed to fetch", a trial)."""
        self.head_size += size
        if self.head_size > MAX_HEAD_BYTES:
            self.oversized = True
            # A trailer section (after a chunked body) at once: no head end
            # follows to refuse it at.
            if self.head_size > HEAD_READ_LIMIT or not self.reading_head:
                self.refuse(HEAD_TOO_LARGE)
                raise _StopReading

    def _stop_reading(self) -> None:
        """Reads no more requests; closes once those read whole are answered (a
        queued one whose body is not whole is dropped: it never will be). While
        one waits for admission, what the client sends is still read and dropped,
        so that its hanging up is seen and the waiting request withdrawn."""
        self.stopped = True
        self._disarm_deadline()
        if self._waits():
            self.flow.resume_reading()
        else:
            self.flow.pause_reading()
        if self.pipeline and self.pipeline[0][0].more_body:
            self.pipeline.popleft()

    def _linger(self) -> None:
        """Closes without a reset, which could destroy the responses just sent
        before the client reads them: end of stream after them, then what the
        client still sends is read and dropped (`data_received`, stopped) until
        it closes, or for `request_timeout` at most."""
        self.stopped = True
        self._unset_keepalive_if_required()
        self.transport.write_eof()
        self.flow.resume_reading()
        self.deadline = self.loop.call_later(self.request_timeout, self.transport.close)

    def on_message_complete(self) -> None:
        if self.upgrade_offered:
            return
        self.reading_head = True
        self._disarm_deadline()
        if self.discarded is not None:  # the refused body is read: now close
            self._linger()
            raise _StopReading  # what follows in this read is not a request
        super().on_message_complete()
        self._submit_unread()
        if self.cycle.response_complete and not self.pipeline:
            # Answered before its body ended (a declared body over the cap,
            # refused unread): idle only now. uvicorn armed the keep-alive timer
            # at the answer, and the body's arrival disarmed it: such a
            # connection was never closed.
            self._arm_keep_alive()
            self._forget_answered()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.stopped:
            if not self._unanswered():
                self._linger()  # the last queued request is answered
            elif not self._waits():
                self.flow.pause_reading()  # uvicorn resumed it
        elif self.unread is not None:
            # a queued request whose body is still coming: its time in the queue
            # was not the client's, so its deadline starts now
            self._disarm_deadline()
            self._arm_deadline()
        elif self.cycle.response_complete and self.reading_head and not self.head_begun:
            self._forget_answered()  # idle: not in a body, no next head begun

    def _forget_answered(self) -> None:
        """The connection is idle: its last request is answered and no other
        has begun. What that request held (its scope, with what the app added,
        and its body: ~6 KB) goes now, not when the client next sends one."""
        self.admitted = self.started = None
        if not self.flow.write_paused:
            self._unwatch_writes()  # nothing stalled: no window runs on while idle
        self.cycle = None  # type: ignore[assignment]
        self.scope = None  # type: ignore[assignment]
        self.headers = None  # type: ignore[assignment]

    def shutdown(self) -> None:
        """The server is stopping: a request in progress is the connection's last
        (uvicorn's), and an idle connection is closed SHUTDOWN_GRACE later rather
        than at once (uvicorn's), so that a request already on its way is
        answered: closed at once, a client sending on a kept-alive connection in
        that instant got no answer, and could not tell whether a create was made."""
        self.shutting_down = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        else:
            self.loop.call_later(SHUTDOWN_GRACE, self._close_if_idle)

    def _close_if_idle(self) -> None:
        """Unless a request came in the grace (or its head is coming: it has
        the request deadline): then uvicorn closes after answering it."""
        answering = self.cycle is not None and not self.cycle.response_complete
        if not (answering or self.head_begun or self.transport.is_closing()):
            self.transport.close()

    def send_400_response(self, msg: str) -> None:  # noqa: ARG002 - uvicorn's text
        """The parser failed: the JSON error every error has (uvicorn's is plain
        text), unless the parse was stopped on purpose (`_StopReading`)."""
        if not (self.stopped or self.transport.is_closing()):
            self.refuse(MALFORMED)  # its access line says 400 `bad_request`

    def on_body(self, body: bytes) -> None:
        """A body that grows past MAX_BODY_BYTES before its request is admitted
        (a chunked one: a declared length is refused with the head, by the app)
        is refused here, 413 and `Connection: close`, and what follows of it is
        read and dropped, up to MAX_DRAIN_BYTES (closing on unread data would
        reset the connection, and the client could lose the 413): no running
        place is held while a client sends a body that will not be used."""
        if self.discarded is not None:
            self.discarded += len(body)
            if self.discarded > MAX_DRAIN_BYTES:
                self.transport.close()
                raise _StopReading
            return
        super().on_body(body)
        if self.unread is not None and len(self.unread[0].body) > MAX_BODY_BYTES:
            cycle = self.unread[0]
            cycle.body = bytearray()
            self.unread = None
            self.discarded = 0
            self.transport.write(self._answer(PayloadTooLarge(), cycle))
            self.flow.resume_reading()  # uvicorn stops at HIGH_WATER_LIMIT

    def _start_asgi_task(
        self, cycle: RequestResponseCycle, app: ASGI3Application
    ) -> None:
        """uvicorn starts a request's task here, once its head is read. The
        worker's admission takes it once its body is read too: a client that
        trickles a body must not hold one of the running places meanwhile. One
        waiting for `100 Continue` is told to go on here, and admitted likewise;
        only a declared body over the cap is admitted with its head (the app
        refuses it unread, 413, with the headers every response carries)."""
        if cycle.more_body and not declares_too_large_a_body(cast(Scope, cycle.scope)):
            if cycle.waiting_for_100_continue:  # its body comes once it is told to
                cycle.waiting_for_100_continue = False
                self.transport.write(CONTINUE)
            self.unread = (cycle, app)
        else:
            self._admit(cycle, app)

    def _submit_unread(self) -> None:
        if self.unread is not None:
            cycle, app = self.unread
            self.unread = None
            self._admit(cycle, app)

    def _admit(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self.admitted = cycle
        self.admission.submit(self, cycle, app)

    def start(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self.started = cycle
        if self.stopped:
            self.flow.pause_reading()  # read only while it waited (`_stop_reading`)
        super()._start_asgi_task(cycle, app)

    def _waits(self) -> bool:
        """A request of this connection waits for admission."""
        return self.admitted is not self.started

    def _unanswered(self) -> bool:
        """A request of this connection read whole is not answered yet."""
        return self.admitted is not None and not self.admitted.response_complete

    def pause_writing(self) -> None:
        """The kernel takes no more of the response: unless the client takes
        `MIN_TAKEN` of it (or all that is written) within each `request_timeout`,
        the connection is dropped, so the request (waiting to write) ends and
        frees its running place rather than holding it forever. The window runs
        on while the writes resume and stall again, until a check finds nothing
        stalled or the connection idle: a reader that takes a trickle is cut
        however the response is written (in small pieces too), one that keeps
        reading above the floor (a large response over a slow link) never is."""
        super().pause_writing()
        if self.stalled is None:
            self._watch_writes()

    def _watch_writes(self) -> None:
        self.stalled = self.loop.call_later(
            self.request_timeout, self._check_writes, self._acked()
        )

    def _check_writes(self, acked: int) -> None:
        self.stalled = None
        if self._acked() - acked < MIN_TAKEN and self._untaken():
            self.transport.abort()
        elif self.flow.write_paused:
            self._watch_writes()  # it took enough: another `request_timeout`

    def _unwatch_writes(self) -> None:
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None

    def _acked(self) -> int:
        """Bytes of the connection the client has taken: those its TCP has
        acknowledged (Linux's TCP_INFO; where the kernel does not tell, 0, and a
        stall passes only if nothing is left untaken)."""
        sock = self.transport.get_extra_info("socket")
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
        except (AttributeError, OSError, ValueError):  # not Linux, or closed
            return 0
        return int.from_bytes(info[BYTES_ACKED], sys.byteorder)

    def _untaken(self) -> int:
        """Bytes written that the client has not taken: the transport's buffer
        and, where the kernel tells (Linux), the socket's send queue. The kernel
        asks for more only once much of its queue is gone (a slow reader can
        take megabytes before the transport's buffer moves)."""
        untaken = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return untaken
        try:
            queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4))
        except (OSError, ValueError):  # not Linux, or the socket is closed
            return untaken
        return untaken + int.from_bytes(queued, sys.byteorder)

    def _arm_deadline(self) -> None:
        self.deadline = self.loop.call_later(self.request_timeout, self._timed_out)

    def _disarm_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _timed_out(self) -> None:
        """A head that never completed gets a 408, and so does a body that stopped
        coming before the app had it (`unread`: its request id and access line
        too); any other body is cut off (the app, already running, sees the client
        disconnect). Not while requests are queued behind the one in progress:
        uvicorn reads nothing then, so the time is not the client's."""
        self.deadline = None
        if self.transport.is_closing():
            return
        if self.pipeline:
            self._arm_deadline()
        elif self.reading_head and (self.head_bytes or self.head_begun):
            self.refuse(timed_out(self.request_timeout))
        elif self.unread is not None:
            cycle, _ = self.unread
            self.unread = None
            self.close_with(timed_out(self.request_timeout), cycle)
        else:
            self.transport.close()

    def refuse(self, error: AppError) -> None:
        """A canned error response to the request being read, and the connection
        closed; but with requests read before it still unanswered, it would
        overtake their responses: those are answered first, in order, and then
        the connection is closed without it."""
        if self._unanswered():
            self._stop_reading()
        else:
            self.close_with(error)

    def close_with(
        self,
        error: AppError,
        cycle: RequestResponseCycle | None = None,
        *,
        logged: bool = False,
    ) -> None:
        """The error's canned response (with the request id of `cycle`, the request
        it answers, if its head was read), and the connection closed."""
        self._disarm_deadline()
        if not self.transport.is_closing():  # uvloop raises on writing to a closed one
            self.transport.write(self._answer(error, cycle, logged=logged))
            self.transport.close()

    def _answer(
        self,
        error: AppError,
        cycle: RequestResponseCycle | None,
        *,
        logged: bool = False,
    ) -> bytes:
        """The error's canned response to `cycle`'s request, or with None to the
        head being read (its headers as far as they came; none if no head has
        begun: those would be the last request's), and its access line unless
        `logged` already, or unless no request began (a connection past the cap,
        refused before it sent a byte: `http_edge_refusals_total` counts it)."""
        if cycle is not None:
            scope = cast(Scope, cycle.scope)
            method, started = scope["method"], scope["state"][ARRIVED]
        else:
            headers = self.headers if self.head_begun else []
            scope = {"headers": headers}  # enough for its X-Request-ID
            # The method is parsed once the target begins (uvicorn collects it).
            known = self.head_begun and self.url
            method = self.parser.get_method().decode("ascii") if known else None
            started = self.began
            logged = logged or not self.head_begun
        identifier = request_id(scope)
        if not logged:
            refusal_line(error, identifier, method, started)
        head = method == "HEAD"
        return canned_response(error, identifier, scope["headers"], head=head)
