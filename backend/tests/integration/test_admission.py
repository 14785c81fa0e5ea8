"""Admission in the HTTP protocol, on a real server process: past HTTP_MAX_ACTIVE
running requests the next ones wait, parsed but not started; past HTTP_MAX_IN_FLIGHT
running and waiting, 503 `overloaded` at once; a waiting request whose client hung
up is never run nor counted, and one whose client stops reading its response does
not keep its running place (specs/006-operations)."""

import http.client
import json
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.factories import new_user_id
from tests.server import logs_no_traceback, server_process


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("admission") / "server.log"


@pytest.fixture(scope="module")
def base_url(database_url: str, engine: Engine, server_log: Path) -> Iterator[str]:
    with server_process(
        database_url,
        log=str(server_log),
        HTTP_MAX_ACTIVE="1",
        HTTP_MAX_IN_FLIGHT="3",
        HTTP_REQUEST_TIMEOUT="2",
    ) as (base_url, _):
        yield base_url


@pytest.fixture(autouse=True)
def no_stack_traces(base_url: str, server_log: Path) -> Iterator[None]:
    with logs_no_traceback(server_log):
        yield


def _send(base_url: str, request: bytes) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(request)
    return sock


def _response(sock: socket.socket) -> tuple[int, bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.read()


def _answered_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except TimeoutError:
        return False
    finally:
        sock.settimeout(5)


@contextmanager
def _slow_request(base_url: str, engine: Engine) -> Iterator[bytes]:
    """Yields a toggle that, once sent, runs until the block ends: it waits on a
    row lock the test holds."""
    user = new_user_id()
    task = httpx.post(f"{base_url}/api/{user}/tasks", json={"title": "held"}).json()
    with engine.connect() as admin, admin.begin():
        admin.execute(
            text("SELECT 1 FROM task WHERE user_id = :u AND id = :i FOR UPDATE"),
            {"u": user, "i": task["id"]},
        )
        try:
            yield (
                f"PATCH /api/{user}/tasks/{task['id']}/complete HTTP/1.1\r\n"
                "Host: t\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        finally:
            admin.rollback()


@contextmanager
def _one_request_running(base_url: str, engine: Engine) -> Iterator[socket.socket]:
    """The one running request, until the block ends. Yields its socket."""
    with _slow_request(base_url, engine) as slow:
        running = _send(base_url, slow)
        time.sleep(0.3)  # it has started, and waits for the lock
        yield running
    assert _response(running)[0] == 200
    running.close()


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# A request that queues (the operators' /health and /metrics never do).
LIST = b"GET /api/admission/tasks?limit=1 HTTP/1.1\r\nHost: t\r\n\r\n"


def test_health_never_waits_behind_queued_requests(
    base_url: str, engine: Engine
) -> None:
    with _one_request_running(base_url, engine):
        waiting = _send(base_url, LIST)
        assert not _answered_within(waiting, 0.3)
        started = time.monotonic()
        with _send(base_url, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n") as health:
            assert _response(health)[0] == 200
        assert time.monotonic() - started < 1.5
        assert not _answered_within(waiting, 0.1)  # still behind the running one
    assert _response(waiting)[0] == 200
    waiting.close()


def test_requests_past_the_active_limit_wait_then_run_and_past_in_flight_get_503(
    base_url: str, engine: Engine
) -> None:
    with _one_request_running(base_url, engine):
        waiting = [_send(base_url, LIST) for _ in range(2)]
        assert not any(_answered_within(sock, 0.3) for sock in waiting)
        with _send(base_url, LIST) as refused:
            status, body = _response(refused)
        assert status == 503
        assert json.loads(body)["code"] == "overloaded"
    for sock in waiting:
        assert _response(sock)[0] == 200
        sock.close()


def test_a_waiting_request_whose_client_hung_up_is_never_run(
    base_url: str, engine: Engine
) -> None:
    user, title = new_user_id(), f"abandoned {uuid.uuid4().hex}"
    body = json.dumps({"title": title}).encode()
    with _one_request_running(base_url, engine):
        head = (
            f"POST /api/{user}/tasks HTTP/1.1\r\nHost: t\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        abandoned = _send(base_url, head.encode() + body)
        time.sleep(0.2)
        abandoned.close()
        time.sleep(0.2)
    time.sleep(0.3)
    assert httpx.get(f"{base_url}/api/{user}/tasks").json() == []


def test_a_client_trickling_a_body_holds_no_running_place(base_url: str) -> None:
    """Admitted once its body is read: with one running place, a POST whose body
    stalls does not make the next request wait for the request deadline."""
    with _send(
        base_url,
        b"POST /api/someone/tasks HTTP/1.1\r\nHost: t\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    ):
        time.sleep(0.2)
        with _send(base_url, LIST) as next_request:
            assert _answered_within(next_request, 2)
            assert _response(next_request)[0] == 200


def test_a_client_waiting_for_100_continue_gets_it(base_url: str) -> None:
    """curl sends `Expect: 100-continue` with larger bodies and waits: such a
    request is admitted with its head, so the app's first read can answer."""
    body = json.dumps({"title": "continued"}).encode()
    head = (
        f"POST /api/{new_user_id()}/tasks HTTP/1.1\r\nHost: t\r\n"
        "Content-Type: application/json\r\nExpect: 100-continue\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with _send(base_url, head.encode()) as sock:
        sock.settimeout(2)
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        assert _response(sock)[0] == 201


@contextmanager
def _never_reading(base_url: str, requests: bytes) -> Iterator[None]:
    """A client (its receive buffer 4 KiB) that sends `requests` and never reads
    what comes back, until the block ends; the server has begun answering."""
    host, port = base_url.removeprefix("http://").split(":")
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect((host, int(port)))
    with stuck:
        stuck.sendall(requests)
        time.sleep(0.5)
        yield


def test_a_client_that_stops_reading_its_responses_frees_its_running_place(
    base_url: str,
) -> None:
    """Large responses it never reads fill the socket: once writing has made no
    progress for HTTP_REQUEST_TIMEOUT (2 s here), the connection is dropped and
    the next request runs (it waited forever before)."""
    large = b"GET /docs/assets/swagger-ui-bundle.js.map HTTP/1.1\r\nHost: t\r\n\r\n"
    with (
        _never_reading(base_url, large * 8),  # ~15 MB of responses
        _send(base_url, LIST) as next_request,
    ):
        assert _answered_within(next_request, 5)
        assert _response(next_request)[0] == 200


def test_a_response_waiting_for_its_client_holds_no_running_place(
    database_url: str,
) -> None:
    """HTTP_MAX_ACTIVE=1, a stall allowed for 30 s: a client pipelines requests
    for the 1.5 MB Swagger UI bundle and never reads. Its request waiting to
    write gives up the one running place, and another client's request is
    answered at once, not when the stall is cut (a trial: 70 such clients, no
    token needed, held a worker's 64 places, and other users waited up to 10 s)."""
    with server_process(
        database_url, HTTP_MAX_ACTIVE="1", HTTP_REQUEST_TIMEOUT="30"
    ) as (base, _):
        bundle = b"GET /docs/assets/swagger-ui-bundle.js HTTP/1.1\r\nHost: t\r\n\r\n"
        with (
            _never_reading(base, bundle * 4),  # ~6 MB of responses
            _send(base, LIST) as next_request,
        ):
            assert _answered_within(next_request, 10)
            assert _response(next_request)[0] == 200


@contextmanager
def _trickling(base_url: str, request: bytes, every: float) -> Iterator[None]:
    """A client that sends `request`, then takes 1 KiB of what comes back every
    `every` seconds (its receive buffer 4 KiB), until the block ends."""
    host, port = base_url.removeprefix("http://").split(":")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((host, int(port)))
    done = threading.Event()

    def trickle() -> None:
        while not done.is_set():
            try:
                if not slow.recv(1024):
                    return
            except OSError:  # the server dropped it
                return
            time.sleep(every)

    reader = threading.Thread(target=trickle)
    with slow:
        slow.sendall(request)
        reader.start()
        try:
            yield
        finally:
            done.set()
            reader.join()


def test_a_client_reading_a_trickle_of_its_responses_frees_its_running_place(
    base_url: str,
) -> None:
    """A slow-read attack: the client takes ~10 KB/s of large responses, so the
    writes keep moving but it takes less than 64 KiB in HTTP_REQUEST_TIMEOUT (2 s
    here). The connection is dropped and the next request runs (a trickle held
    the running place for as long as the client liked)."""
    large = b"GET /docs/assets/swagger-ui-bundle.js.map HTTP/1.1\r\nHost: t\r\n\r\n"
    with _trickling(base_url, large * 8, every=0.1):
        time.sleep(0.5)
        with _send(base_url, LIST) as next_request:
            assert _answered_within(next_request, 5)
            assert _response(next_request)[0] == 200


# The service under uvicorn on a listening socket whose accepted connections
# have a 32 KiB send buffer (as a slow reader's connection over a real network
# keeps; on loopback the kernel grows it to megabytes).
SMALL_SEND_BUFFER = """
import socket, sys, uvicorn
from app.edge.protocol import BoundedHttpToolsProtocol
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen()
uvicorn.run(
    "app.main:create_app",
    factory=True,
    fd=listener.fileno(),
    http=BoundedHttpToolsProtocol,
    log_config=None,
)
"""


def test_a_trickle_of_a_response_written_in_small_pieces_is_cut_too(
    database_url: str, engine: Engine, server_log: Path
) -> None:
    """A multipart range response (100 parts of 14,000 bytes, each written as
    its part header, its bytes and a CRLF) taken at ~16 KB/s, half the floor at
    a 2 s HTTP_REQUEST_TIMEOUT: the kernel keeps asking for the next small piece,
    so the writes resume and stall again and again. The floor counts what the
    client takes across those stalls: the connection is dropped within a few
    windows and the next request runs (it held the running place 30 s and more
    while each resume started a new window)."""
    ranges = ",".join(f"{i * 15_000}-{i * 15_000 + 13_999}" for i in range(100))
    request = (
        "GET /docs/assets/swagger-ui-bundle.js HTTP/1.1\r\nHost: t\r\n"
        f"Range: bytes={ranges}\r\n\r\n"
    ).encode()
    server = server_process(
        database_url,
        command=(sys.executable, "-c", SMALL_SEND_BUFFER, "{port}"),
        log=str(server_log),
        HTTP_MAX_ACTIVE="1",
        HTTP_REQUEST_TIMEOUT="2",
    )
    with server as (small_buffers, _), _trickling(small_buffers, request, 1 / 16):
        time.sleep(0.5)
        with _send(small_buffers, LIST) as next_request:
            assert _answered_within(next_request, 10)
            assert _response(next_request)[0] == 200


@pytest.mark.parametrize(
    "sent", [LIST, LIST * 2, LIST * 20], ids=["one", "pipelined", "past the cap"]
)
def test_waiting_requests_whose_clients_hung_up_no_longer_count(
    base_url: str, engine: Engine, sent: bytes
) -> None:
    """With one running and room for two more: two clients that left while
    waiting free their places, so the next request waits and is served (it was
    refused 503 overloaded before). Pipelining clients too: uvicorn reads nothing
    while a request is queued, so their hang-up went unseen."""
    with _one_request_running(base_url, engine):
        for _ in range(2):
            _send(base_url, sent).close()
        time.sleep(0.2)
        live = _send(base_url, LIST)
        assert not _answered_within(live, 0.3)  # waiting, not refused
    assert _response(live)[0] == 200
    live.close()


def test_a_client_that_never_sends_the_body_it_announced_holds_no_running_place(
    base_url: str,
) -> None:
    """`Expect: 100-continue`, then nothing: told to go on, it is admitted once
    its body is read, like any other (it held the one running place until the
    request deadline before)."""
    with _send(
        base_url,
        b"POST /api/someone/tasks HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
        b"Content-Type: application/json\r\nContent-Length: 20\r\n\r\n",
    ) as silent:
        silent.settimeout(2)
        assert silent.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        with _send(base_url, LIST) as next_request:
            assert _answered_within(next_request, 1)
            assert _response(next_request)[0] == 200


def test_a_chunked_body_past_the_cap_is_refused_without_a_running_place(
    base_url: str,
) -> None:
    """70,000 bytes in one chunk, then the client stalls: 413 at once from the
    protocol, and the next request does not wait for the stalled one."""
    chunk = b"x" * 70_000
    with _send(
        base_url,
        b"POST /api/someone/tasks HTTP/1.1\r\nHost: t\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(chunk)
        + chunk
        + b"\r\n",
    ) as stalled:
        status, body = _response(stalled)
        assert status == 413
        assert json.loads(body)["code"] == "payload_too_large"
        with _send(base_url, LIST) as next_request:
            assert _answered_within(next_request, 1)
            assert _response(next_request)[0] == 200


def test_a_chunked_body_past_the_cap_is_read_to_its_end_after_the_413(
    base_url: str,
) -> None:
    """The rest of a refused body is read and dropped (up to 1 MiB), then the
    connection ends cleanly: the client, still sending, is not reset and reads
    its 413 (reading had stopped at uvicorn's 64 KiB mark, and the request
    deadline reset the connection)."""
    chunks = b"".join(b"%x\r\n%s\r\n" % (50_000, b"x" * 50_000) for _ in range(16))
    with _send(
        base_url,
        b"POST /api/someone/tasks HTTP/1.1\r\nHost: t\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunks
        + b"0\r\n\r\n",
    ) as sock:
        response = _read_all(sock)
    assert response.startswith(b"HTTP/1.1 413 ")
    assert response.count(b"HTTP/1.1 ") == 1


def test_a_request_queued_behind_a_slow_one_is_read_when_its_turn_comes(
    base_url: str, engine: Engine
) -> None:
    """A POST with `Expect: 100-continue` pipelined behind a request that runs
    past HTTP_REQUEST_TIMEOUT (2 s here): it is told to go on when its turn
    comes, and its deadline starts then, not when it was queued (the deadline
    closed the connection under the slow request, and later cut a body sent
    1 s after the 100 Continue)."""
    body = json.dumps({"title": "queued"}).encode()
    post = (
        f"POST /api/{new_user_id()}/tasks HTTP/1.1\r\nHost: t\r\n"
        "Content-Type: application/json\r\nExpect: 100-continue\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with _slow_request(base_url, engine) as slow:
        sock = _send(base_url, slow + post)
        time.sleep(3.5)
    with sock:
        response = b""
        while not response.endswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, response
            response += chunk
        assert response.startswith(b"HTTP/1.1 200 ")
        time.sleep(1)
        sock.sendall(body)
        status, created = _response(sock)
    assert status == 201
    assert json.loads(created)["title"] == "queued"


@pytest.mark.parametrize(
    "trailing",
    [
        b"GET /health HTTP/1.1\r\nHo",  # stops coming: 408 at the deadline
        b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["stalled head", "malformed body"],
)
def test_an_error_behind_an_unanswered_request_does_not_overtake_it(
    base_url: str, engine: Engine, trailing: bytes
) -> None:
    """A request that fails behind a slow one: its error (408, 400) would be read
    as the slow one's response. The slow one is answered, then the connection is
    closed without the error (it was written first)."""
    with _slow_request(base_url, engine) as slow:
        sock = _send(base_url, slow + trailing)
        time.sleep(4)  # past the 2 s deadline, which leaves no trace to wait for
    with sock:
        response = _read_all(sock)
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.count(b"HTTP/1.1 ") == 1


def test_requests_queued_behind_a_waiting_one_stop_the_reading(
    base_url: str, engine: Engine
) -> None:
    """A pipelining client whose request waits for admission: what it sends
    after the requests already queued is not read (it was, one read after
    another, kept in memory until the queue reached its cap). The requests read
    are answered, then the connection is closed; the client retries the rest."""
    with _one_request_running(base_url, engine):
        sock = _send(base_url, LIST)
        time.sleep(0.2)
        sock.sendall(LIST)
        time.sleep(0.2)
        sock.sendall(LIST)
        time.sleep(0.2)
    with sock:
        response = _read_all(sock)
    assert response.count(b"HTTP/1.1 200 ") == 2


def _served_slower_than_a_second(base_url: str) -> float:
    """Lists that took over 1 s, as the latency histogram has them."""
    metrics = httpx.get(f"{base_url}/metrics").text
    series = 'method="GET",route="/api/{user_id}/tasks"'
    count = re.search(
        rf"http_request_duration_seconds_count{{{series}}} (\S+)", metrics
    )
    fast = re.search(
        rf'http_request_duration_seconds_bucket{{le="1.0",{series}}} (\S+)', metrics
    )
    return float(count[1]) - float(fast[1]) if count and fast else 0.0


def test_a_waiting_requests_duration_counts_its_wait(
    base_url: str, engine: Engine
) -> None:
    """The latency histogram and the access line measure from the request's
    arrival: they showed a request that waited seconds for a running place as
    served in milliseconds, hiding overload when it matters."""
    before = _served_slower_than_a_second(base_url)
    with _one_request_running(base_url, engine):
        waiting = _send(base_url, LIST)
        time.sleep(1.5)
    assert _response(waiting)[0] == 200
    waiting.close()
    assert _served_slower_than_a_second(base_url) == before + 1
