"""The HTTP edge of a real server process: request heads are bounded, requests
that do not arrive in time (counted from their first byte) and idle connections,
new or kept alive, are closed, and a worker holds at
most HTTP_MAX_CONNECTIONS connections (specs/006-operations)."""

import contextlib
import http.client
import json
import select
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import Engine, text

from tests.factories import new_user_id
from tests.server import logs_no_traceback, server_process
from tests.sessions import wait_until

LIMITS = {
    "HTTP_REQUEST_TIMEOUT": "1",
    "HTTP_KEEPALIVE_TIMEOUT": "3",
    "HTTP_MAX_CONNECTIONS": "20",
}


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("limits") / "server.log"


@pytest.fixture(scope="module")
def server(
    database_url: str, engine: object, server_log: Path
) -> Iterator[tuple[str, int]]:
    with server_process(database_url, None, log=str(server_log), **LIMITS) as (
        base_url,
        process,
    ):
        yield base_url, process.pid


@pytest.fixture(autouse=True)
def no_stack_traces(server: tuple[str, int], server_log: Path) -> Iterator[None]:
    with logs_no_traceback(server_log):
        yield


def _connect(base_url: str) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_response(sock: socket.socket) -> int:
    """Read one whole response (head and body) off a kept-alive connection."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response.status


def _error(response: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


def test_the_heads_being_read_hold_at_most_http_max_heads_mb(
    database_url: str,
) -> None:
    """Each head is capped, and all those a worker is reading together: past
    HTTP_MAX_HEADS_MB, the connection whose head grows gets 503 and is closed;
    heads that end, or whose connections close, give their share back. 12,000
    connections each 30 KiB into a head they never ended grew a worker by 490 MB
    (a memory trial)."""
    part = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 30_000
    with server_process(database_url, HTTP_MAX_HEADS_MB="1") as (base_url, _):
        held = []
        for _ in range(40):  # 1.2 MB of heads that do not end
            sock = _connect(base_url)
            sock.sendall(part)
            held.append(sock)
            time.sleep(0.01)  # read in this order
        time.sleep(0.5)  # well within the request timeout: none is a 408
        answered, _, _ = select.select(held, [], [], 0)
        assert 0 < len(answered) <= 8, len(answered)  # ~34 x 30 KB fit in 1 MiB
        status, headers, body = _error(_read_all(answered[0]))
        assert (status, body["code"], headers["retry-after"]) == (
            503,
            "overloaded",
            "1",
        )
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 5
        while True:  # once they are gone, a head as large is read again
            with _connect(base_url) as sock:
                sock.sendall(part + b"\r\nConnection: close\r\n\r\n")
                if _read_all(sock).startswith(b"HTTP/1.1 200"):
                    break
            assert time.monotonic() < deadline, "the heads' share was not given back"
            time.sleep(0.1)


def test_an_oversized_head_is_refused_431_and_costs_no_memory(
    server: tuple[str, int],
) -> None:
    base_url, pid = server
    worker = psutil.Process(pid)
    before = worker.memory_info().rss
    for _ in range(5):
        with _connect(base_url) as sock:
            header = b"X-Big: " + b"a" * (8 * 1024 * 1024) + b"\r\n"
            request = b"GET /health HTTP/1.1\r\nHost: t\r\n" + header + b"\r\n"
            # The server may close after its 431, before the rest was sent.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(request)
            status, headers, body = _error(_read_all(sock))
        assert status == 431
        assert headers["connection"] == "close"
        assert body["code"] == "headers_too_large"
    assert worker.memory_info().rss - before < 10 * 1024 * 1024
    assert httpx.get(base_url + "/health").status_code == 200
    # Not in the access log (answered before the app): counted instead.
    metrics = httpx.get(base_url + "/metrics").text
    assert 'http_edge_refusals_total{status="431"}' in metrics


@pytest.mark.parametrize(
    ("origin", "granted"),
    [("http://localhost:3000", True), ("https://elsewhere.example", False)],
)
@pytest.mark.parametrize("origin_first", [True, False])
def test_a_canned_error_carries_cors_headers_for_an_allowed_origin(
    server: tuple[str, int], origin: str, granted: bool, origin_first: bool
) -> None:
    """A 431 (a browser's cookies, say) answered before the app: a page reads it
    only with the CORS headers the app would have given it. Chromium sends
    `Origin` after `Authorization`: after a 53 KB token, it was never parsed,
    and the page saw "Failed to fetch" (a trial)."""
    base_url, _ = server
    origin_line = f"Origin: {origin}\r\n".encode()
    large = b"Authorization: Bearer " + b"t" * 33_000 + b"\r\n"
    with _connect(base_url) as sock:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: t\r\n"
            + (origin_line + large if origin_first else large + origin_line)
            + b"\r\n"
        )
        status, headers, _ = _error(_read_all(sock))
    assert status == 431
    if granted:
        assert headers["access-control-allow-origin"] == origin
        assert "Retry-After" in headers["access-control-expose-headers"]
    else:
        assert "access-control-allow-origin" not in headers


def test_a_431_carries_cors_headers_for_an_origin_that_came_in_a_later_read(
    server: tuple[str, int],
) -> None:
    """Over a network a large head arrives in pieces: the Origin after the
    header that passed the cap came in a later read than the one that passed it
    (a review). A head without one, followed by a request that has one, gets no
    CORS headers: the Origin must be the refused head's own."""
    base_url, _ = server
    origin = "http://localhost:3000"
    head = (
        b"GET /health HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
        + b"t" * 40_000
        + f"\r\nOrigin: {origin}\r\n\r\n".encode()
    )
    with _connect(base_url) as sock:
        for start in range(0, len(head), 14_000):
            sock.sendall(head[start : start + 14_000])
            time.sleep(0.05)
        status, headers, _ = _error(_read_all(sock))
    assert status == 431
    assert headers["access-control-allow-origin"] == origin
    with _connect(base_url) as sock:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: t\r\nCookie: "
            + b"c" * 40_000
            + b"\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n"
            + f"Origin: {origin}\r\n\r\n".encode()
        )
        status, headers, _ = _error(_read_all(sock))
    assert status == 431
    assert "access-control-allow-origin" not in headers


def test_a_canned_error_carries_no_earlier_requests_origin(
    server: tuple[str, int],
) -> None:
    """A 408 for bytes that start no request, after a request with an allowed
    Origin on the same connection: the CORS headers are those of the head being
    read (none), not the last request's."""
    base_url, _ = server
    with _connect(base_url) as sock:
        sock.sendall(
            b"POST /api/u1/tasks HTTP/1.1\r\nHost: t\r\n"
            b"Origin: http://localhost:3000\r\nContent-Type: application/json\r\n"
            b"Content-Length: 70000\r\n\r\n"
        )
        assert _read_response(sock) == 413  # refused unread, then read and dropped
        sock.sendall(b"x" * 70_000)
        _all_read_by_the_server(sock)  # the body is read and dropped
        sock.sendall(b"\r\n")  # bytes that begin no request, then nothing
        status, headers, _ = _error(_read_all(sock))
    assert status == 408
    assert "access-control-allow-origin" not in headers


def test_a_connection_answered_before_its_body_ended_is_closed_when_idle(
    server: tuple[str, int],
) -> None:
    """A declared body over the cap is refused unread (413); once the client has
    sent it anyway, the connection is idle and closed after the keep-alive
    timeout (3 s here). It was never closed: the body's arrival disarmed the
    timer armed at the answer, so such connections could pile up to the cap."""
    base_url, _ = server
    with _connect(base_url) as sock:
        sock.settimeout(10)
        sock.sendall(
            b"POST /api/u1/tasks HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 70000\r\n\r\n"
        )
        assert _read_response(sock) == 413
        sock.sendall(b"x" * 70_000)
        sent = time.monotonic()
        assert _read_all(sock) == b""  # closed, not answered
    assert time.monotonic() - sent < 8


def test_a_request_read_with_the_end_of_a_refused_body_is_answered(
    server: tuple[str, int], engine: Engine
) -> None:
    """After a 413 sent before its body ended, the body's last bytes and the next
    request come in one read; that request runs longer than the keep-alive
    timeout (3 s here, waiting on a row lock). Its answer arrives: the timer armed
    at the end of the body closed the connection under it, and a create was made
    whose 201 never came."""
    base_url, _ = server
    user = new_user_id()
    task = httpx.post(f"{base_url}/api/{user}/tasks", json={"title": "held"}).json()
    toggle = f"PATCH /api/{user}/tasks/{task['id']}/complete HTTP/1.1\r\nHost: t\r\n"
    with engine.connect() as admin, admin.begin(), _connect(base_url) as sock:
        admin.execute(
            text("SELECT 1 FROM task WHERE user_id = :u AND id = :i FOR UPDATE"),
            {"u": user, "i": task["id"]},
        )
        sock.settimeout(15)
        sock.sendall(
            b"POST /api/u1/tasks HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 70000\r\n\r\n"
        )
        assert _read_response(sock) == 413
        sock.sendall(b"x" * 70_000 + (toggle + "Content-Length: 0\r\n\r\n").encode())
        time.sleep(4)  # past the keep-alive timeout, the toggle still waiting
        admin.rollback()
        assert _read_response(sock) == 200


def test_a_head_trickled_in_pieces_is_cut_off_at_the_cap(
    server: tuple[str, int],
) -> None:
    base_url, _ = server
    with _connect(base_url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        refused = False
        for _ in range(64):  # 64 x 4 KiB = 256 KiB, eight times the cap
            try:
                sock.sendall(b"X-Pad: " + b"p" * 4096 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                refused = True
                break
            time.sleep(0.005)
        response = _read_all(sock)
    assert refused or response
    assert _error(response)[0] == 431


def test_a_large_head_pipelined_in_one_write_is_not_served(
    server: tuple[str, int],
) -> None:
    """A 150 KB head behind a whole request, in the same write: the first request
    is answered, the second is not read past the cap (it was served before: its
    bytes came in the read that ended the first, which the per-read count skips)."""
    base_url, _ = server
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(150))
    with _connect(base_url) as sock:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /health HTTP/1.1\r\nHost: t\r\n" + padding + b"\r\n"
        )
        response = _read_all(sock)  # closed without a reset: nothing is lost
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.count(b"HTTP/1.1 ") == 1


def test_a_whole_request_with_a_large_body_in_one_write_is_not_a_large_head(
    server: tuple[str, int],
) -> None:
    """Head and a 48 KiB body sent at once, likely read at once: only the head counts
    towards the 32 KiB cap (the body's own cap is 64 KiB)."""
    base_url, _ = server
    body = b'{"title": "' + b"x" * (48 * 1024) + b'"}'
    head = (
        b"POST /api/big/tasks HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with _connect(base_url) as sock:
        sock.sendall(head + body)
        status, _, answer = _error(_read_all(sock))
    assert status == 400, answer
    assert answer["code"] == "validation_error"


def test_a_head_that_stops_coming_gets_408_within_the_request_timeout(
    server: tuple[str, int],
) -> None:
    base_url, _ = server
    with _connect(base_url) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n")  # and no blank line
        status, _, body = _error(_read_all(sock))
    assert status == 408
    assert body["code"] == "request_timeout"
    assert "within 1 s" in str(body["detail"])  # the bound, not the setting's name
    assert 0.9 < time.monotonic() - started < 4


def test_a_body_that_stops_coming_gets_408_with_its_request_id(
    server: tuple[str, int],
) -> None:
    """Its head was read, so it is a request: answered 408 with its own request id
    (and so an access line, C8), not a connection closed without a word."""
    base_url, _ = server
    with _connect(base_url) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /api/u1/tasks HTTP/1.1\r\nHost: t\r\nX-Request-ID: body-stalls\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        status, _, body = _error(_read_all(sock))
    assert status == 408
    assert body["code"] == "request_timeout"
    assert body["request_id"] == "body-stalls"
    assert 0.9 < time.monotonic() - started < 4


def test_a_pipelined_head_that_stops_coming_gets_408_too(
    server: tuple[str, int],
) -> None:
    """A second request begun in the very read that ends the first has a deadline
    of its own (from its first byte), not just the keep-alive timeout."""
    base_url, _ = server
    with _connect(base_url) as sock:
        started = time.monotonic()
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHo"
        )
        response = _read_all(sock)
    first, _, second = response.partition(b"HTTP/1.1 408")
    assert first.startswith(b"HTTP/1.1 200")
    assert second, response
    assert time.monotonic() - started < 2.5  # the keep-alive timeout is 3 s


def test_a_connection_queues_at_most_16_pipelined_requests(
    server: tuple[str, int],
) -> None:
    """1,000 requests in one write: the one in progress and 16 queued behind it
    are answered, the rest are not read, and the connection is closed (before,
    each was queued: a client that never read made the worker grow by GBs)."""
    base_url, _ = server
    with _connect(base_url) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n" * 1000)
        response = _read_all(sock)  # closed without a reset: nothing is lost
    assert 17 <= response.count(b"HTTP/1.1 ") < 100
    assert response.count(b"HTTP/1.1 ") == response.count(b"HTTP/1.1 200 ")
    assert time.monotonic() - started < 2.5  # closed, not left to the keep-alive


def test_a_request_that_is_not_http_gets_a_json_400(server: tuple[str, int]) -> None:
    base_url, _ = server
    with _connect(base_url) as sock:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        )
        status, headers, body = _error(_read_all(sock))
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert body["code"] == "bad_request"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"FOO /health HTTP/1.1\r\nHost: t\r\n\r\n", 501),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # TLS hello
        (b"GET /health HTTP/1.1\r\nX: " + b"a" * 40_000 + b"\r\n\r\n", 431),
        (b"GET /health HTTP/1.1\r\nHost: t\r\n", 408),  # the head never ends
    ],
)
def test_an_error_answered_before_the_app_carries_a_request_id(
    server: tuple[str, int], request_bytes: bytes, status: int
) -> None:
    """C8: every response has X-Request-ID, in the header and the body as the
    app's errors have it, with the security headers."""
    base_url, _ = server
    with _connect(base_url) as sock:
        sock.sendall(request_bytes)
        answered, headers, body = _error(_read_all(sock))
    assert answered == status
    assert len(headers["x-request-id"]) == 32
    assert body["request_id"] == headers["x-request-id"]
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "head",
    [
        b"GET /health HTTP/1.1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /health HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
    ],
)
def test_a_request_without_exactly_one_host_is_400(
    server: tuple[str, int], head: bytes
) -> None:
    """RFC 9112 3.2: an HTTP/1.1 request without Host, or any with two, is a 400
    (two hosts let a proxy and the app each route by another one)."""
    base_url, _ = server
    with _connect(base_url) as sock:
        sock.sendall(head)
        status, _, body = _error(_read_all(sock))
    assert status == 400
    assert body["code"] == "bad_request"
    assert "Host" in str(body["detail"])


@pytest.mark.parametrize(
    ("coding", "chunks"),
    [
        (b"gzip, chunked", b'f\r\n{"title": "te"}\r\n'),
        (b"deflate, chunked", b'f\r\n{"title": "te"}\r\n'),
        (b"gzip, chunked", b""),  # no chunk at all: the same 501, not a 400
    ],
)
def test_a_transfer_coding_other_than_chunked_is_501(
    server: tuple[str, int], coding: bytes, chunks: bytes
) -> None:
    """RFC 9112 6.1: a transfer coding the server does not decode is a 501; read
    as if only chunked, the body is not what a proxy that decodes it would see."""
    base_url, _ = server
    user = new_user_id()
    with _connect(base_url) as sock:
        sock.sendall(
            b"POST /api/%s/tasks HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: %s\r\n\r\n"
            b"%s0\r\n\r\n" % (user.encode(), coding, chunks)
        )
        status, _, body = _error(_read_all(sock))
    assert status == 501
    assert body["code"] == "not_implemented"
    assert httpx.get(f"{base_url}/api/{user}/tasks").json() == []


def test_an_http_1_0_request_may_omit_host(server: tuple[str, int]) -> None:
    base_url, _ = server
    with _connect(base_url) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        assert _read_all(sock).startswith(b"HTTP/1.1 200")


def test_a_chunked_body_over_the_cap_echoes_the_request_id(
    server: tuple[str, int],
) -> None:
    base_url, _ = server
    with _connect(base_url) as sock:
        sock.sendall(
            b"POST /api/u/tasks HTTP/1.1\r\nHost: t\r\nX-Request-ID: mine.1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"10000\r\n"
            + b"a" * 0x10000
            + b"\r\n"
            + b"1\r\na\r\n0\r\n\r\n"
        )
        answered, headers, body = _error(_read_all(sock))
    assert answered == 413
    assert headers["x-request-id"] == body["request_id"] == "mine.1"


def test_a_new_connection_that_sends_nothing_is_idle_until_the_keep_alive_timeout(
    server: tuple[str, int],
) -> None:
    """Not cut at the request deadline: a preconnected socket is idle, not slow."""
    base_url, _ = server
    started = time.monotonic()  # before the server's timer starts, at its accept
    with _connect(base_url) as sock:
        assert _read_all(sock) == b""
    assert 2.9 < time.monotonic() - started < 6


def test_a_request_begun_late_on_a_new_connection_is_served(
    server: tuple[str, int],
) -> None:
    """Its deadline runs from its first byte, not from the connection's opening."""
    base_url, _ = server
    with _connect(base_url) as sock:
        time.sleep(1.5)  # past HTTP_REQUEST_TIMEOUT, within the keep-alive timeout
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _read_response(sock) == 200


def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(
    server: tuple[str, int],
) -> None:
    base_url, _ = server
    with _connect(base_url) as sock:
        started = time.monotonic()  # before the server's timer starts, at its answer
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _read_response(sock) == 200
        assert _read_all(sock) == b""
    assert 2.9 < time.monotonic() - started < 6


def test_connections_beyond_the_cap_get_503_and_the_rest_are_served(
    server: tuple[str, int],
) -> None:
    base_url, _ = server
    held = [_connect(base_url) for _ in range(20)]
    try:
        time.sleep(0.2)
        with _connect(base_url) as extra:
            status, headers, body = _error(_read_all(extra))
        assert status == 503
        assert headers["retry-after"] == "1"
        assert body["code"] == "overloaded"
        held[0].sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _read_response(held[0]) == 200
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(base_url + "/health").status_code == 200


def _kernel_queues(local_port: int, remote_port: int) -> tuple[int, int] | None:
    """Bytes the kernel holds unsent and unread on the loopback connection
    between these ports, from `local_port`'s end; None once there is none."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == local_port and (
            int(remote.split(":")[1], 16) == remote_port
        ):
            unsent, unread = fields[4].split(":")
            return int(unsent, 16), int(unread, 16)
    return None


def _all_read_by_the_server(sock: socket.socket) -> None:
    """Until what the client has sent has left its end and been read at the
    server's (the server's protocol handles each read as it comes)."""
    client_port, server_port = sock.getsockname()[1], sock.getpeername()[1]
    wait_until(
        "the server has read everything sent",
        lambda: (
            _kernel_queues(client_port, server_port) == (0, 0)
            and _kernel_queues(server_port, client_port) == (0, 0)
        ),
    )


def test_a_connection_closing_on_a_client_that_reads_nothing_is_dropped(
    server: tuple[str, int],
) -> None:
    """Responses the client never reads fill the kernel's buffers, then a
    `Connection: close` request: its response, and what was left of the one
    before, wait to be written. With less than 64 KiB left, writing never
    paused, and the connection waited forever to close (one of
    HTTP_MAX_CONNECTIONS held for good); it is dropped once writing has made
    no progress for HTTP_REQUEST_TIMEOUT (1 s here)."""
    base_url, pid = server
    host, port = base_url.removeprefix("http://").split(":")
    size = len(httpx.get(f"{base_url}/openapi.json").content)
    assert size < 64 * 1024
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect((host, int(port)))
    client_port = reader.getsockname()[1]
    with reader:
        queued = 0
        for _ in range(500):  # until the kernel takes no more of a response
            reader.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.05)
            queues = _kernel_queues(int(port), client_port)
            assert queues is not None
            now = queues[0]
            if queued and now - queued < size // 2:
                break
            queued = now
        else:
            pytest.fail("the kernel took every response")
        reader.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        worker, deadline = psutil.Process(pid), time.monotonic() + 4
        while any(
            c.raddr and c.raddr.port == client_port for c in worker.net_connections()
        ):
            assert time.monotonic() < deadline, "the connection was kept"
            time.sleep(0.1)


def test_an_idle_kept_alive_connection_keeps_nothing_of_its_last_request(
    database_url: str, engine: object
) -> None:
    """1,000 clients that listed their tasks and keep their connection open, as
    browsers and client pools do: the worker grows by what the connections
    hold (~6.5 MB), not also by each one's last request, kept until its next
    (~6 KB more each: 12.4 MB in all before)."""
    with server_process(database_url) as (base_url, process):
        worker = psutil.Process(process.pid)
        for _ in range(20):  # warm: the first requests fill the worker's caches
            httpx.get(f"{base_url}/api/{new_user_id()}/tasks")
        before = worker.memory_info().rss
        with contextlib.ExitStack() as connections:
            for _ in range(1000):
                sock = connections.enter_context(_connect(base_url))
                path = f"/api/{new_user_id()}/tasks"
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                assert _read_response(sock) == 200
            grown = worker.memory_info().rss - before
    assert grown < 10 * 1024 * 1024


def test_a_client_reading_large_responses_slowly_but_steadily_is_not_cut(
    server: tuple[str, int],
) -> None:
    """Three Swagger bundle maps (~5.8 MB) read at under 1 MB/s, as over a slow
    link: the kernel queues megabytes and asks for more only once much of them
    is gone, so the server's writes make no progress for longer than
    HTTP_REQUEST_TIMEOUT (1 s here) while the client reads all along. Progress
    is counted in the kernel's queue too, and the connection is kept (it was
    dropped in the third response)."""
    base_url, _ = server
    path = "/docs/assets/swagger-ui-bundle.js.map"
    size = len(httpx.get(f"{base_url}{path}").content)
    asset = f"GET {path} HTTP/1.1\r\nHost: t\r\n"
    last = f"{asset}Connection: close\r\n\r\n"
    with _connect(base_url) as sock:
        sock.sendall((f"{asset}\r\n" * 2 + last).encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            time.sleep(0.06)
    response = b"".join(chunks)
    assert response.count(b"HTTP/1.1 200 ") == 3
    assert len(response) > 3 * size


def test_a_low_open_file_limit_is_raised_and_a_hard_one_named(
    database_url: str, engine: object, tmp_path: Path
) -> None:
    """Started under a soft limit of 80 descriptors (systemd's default is 1,024):
    past it, the worker stopped accepting and /health went unanswered. The limit
    is raised to the hard one; a hard one below HTTP_MAX_CONNECTIONS is named."""
    log = tmp_path / "server.log"
    command = ("prlimit", "--nofile=80:2048", sys.executable, "-m", "app")
    with server_process(database_url, command=command, log=str(log)) as (base, _):
        host, port = base.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port))) for _ in range(120)]
        try:
            assert httpx.get(base + "/health", timeout=5).status_code == 200
        finally:
            for sock in idle:
                sock.close()
    assert (
        "the open-file limit (2048) is below what a worker may hold" in log.read_text()
    )
