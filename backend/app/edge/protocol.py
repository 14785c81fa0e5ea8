"""uvicorn's httptools protocol with the limits it lacks: a bounded request head,
a deadline for reading a request, and a cap on open connections per worker.

uvicorn alone reads a request head of any size (a 64 MiB header is parsed and
kept), waits forever for a head that trickles in or never comes, and accepts
connections until the file-descriptor limit. These checks run before the ASGI
app exists for the request, so they cost an unauthenticated client nothing but a
small, fixed answer (specs/006-operations)."""

import asyncio
import json
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.config import get_settings
from app.errors import AppError, HeadersTooLarge, Overloaded, RequestTimeout

# Request line and headers together; browsers send 1-4 KiB, a large JWT ~2 KiB.
MAX_HEAD_BYTES = 32 * 1024


def canned_response(error: AppError) -> bytes:
    """A complete `Connection: close` HTTP/1.1 response with the error's JSON body."""
    body = json.dumps(
        {"error": error.message, "code": error.code, "detail": error.detail}
    ).encode()
    headers = [
        STATUS_LINE[error.status_code],
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
    ]
    headers += [f"{k}: {v}\r\n".encode() for k, v in error.headers.items()]
    return b"".join([*headers, b"\r\n", body])


HEAD_TOO_LARGE = canned_response(HeadersTooLarge())
TIMED_OUT = canned_response(RequestTimeout())
TOO_MANY_CONNECTIONS = canned_response(Overloaded())


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """A request must arrive whole within `HTTP_REQUEST_TIMEOUT` seconds of its
    first byte, with a head of at most MAX_HEAD_BYTES; a connection beyond
    `HTTP_MAX_CONNECTIONS` is answered 503 and closed. A connection with no request
    under way is idle, whether it has served one or not yet sent a byte (a
    browser's preconnect, a client pool's spare): uvicorn's `timeout_keep_alive`
    closes it. A silent new connection holds no more than an idle kept-alive one,
    which any client can have by sending one small request."""

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
        self.request_timeout = settings.HTTP_REQUEST_TIMEOUT
        self.reading_head = True
        self.head_bytes = 0
        self.heads_read = 0
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(TOO_MANY_CONNECTIONS)
            return
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_deadline()
        # uvicorn cancels it only on a clean close; a reset one would keep this
        # protocol alive until the timer fired.
        self._unset_keepalive_if_required()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.deadline is None and not self.transport.is_closing():
            self._arm_deadline()  # the first byte of the next request
        was_reading_head, heads_read = self.reading_head, self.heads_read
        super().data_received(data)
        if self.transport.is_closing():
            return
        # Only a read that neither ended a head nor began one after a body counts
        # (a whole request with its body may come in one read).
        if was_reading_head and self.reading_head and self.heads_read == heads_read:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._refuse(HEAD_TOO_LARGE)

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self.head_bytes = 0
        self.heads_read += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.reading_head = True
        self._disarm_deadline()
        super().on_message_complete()

    def _arm_deadline(self) -> None:
        self.deadline = self.loop.call_later(self.request_timeout, self._timed_out)

    def _disarm_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _timed_out(self) -> None:
        """A head that never completed gets a 408; a body that stopped coming is
        cut off (the app, already running, sees the client disconnect)."""
        self.deadline = None
        if self.transport.is_closing():
            return
        if self.reading_head and self.head_bytes:
            self._refuse(TIMED_OUT)
        else:
            self.transport.close()

    def _refuse(self, response: bytes) -> None:
        self._disarm_deadline()
        self.transport.write(response)
        self.transport.close()
