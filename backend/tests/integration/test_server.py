"""Journeys against a real uvicorn process over a socket, with committed data."""

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import make_url

from tests.factories import create_task, new_user_id, tasks_url
from tests.server import BACKEND, free_port, running_server, server_process, stop
from tests.sessions import wait_until


@pytest.fixture(scope="module")
def server(database_url: str, engine: object) -> object:
    # `engine` migrates the database first; the server then finds it at head.
    with running_server(
        database_url, DB_POOL_SIZE="4", DB_MAX_OVERFLOW="0"
    ) as base_url:
        yield base_url


def test_task_journey_survives_a_server_restart(
    database_url: str, engine: object
) -> None:
    user = new_user_id()
    port = free_port()
    with (
        running_server(database_url, port=port) as base_url,
        httpx.Client(base_url=base_url) as c,
    ):
        task = create_task(c, user, title="Remember me", tags=["Keep"])
        c.patch(tasks_url(user, task["id"]) + "/complete").raise_for_status()
        c.patch(
            tasks_url(user, task["id"]), json={"priority": "high"}
        ).raise_for_status()
        gone = create_task(c, user, title="Delete me")
        assert c.delete(tasks_url(user, gone["id"])).status_code == 204
        before = c.get(tasks_url(user, task["id"])).json()
    with (
        running_server(database_url, port=port) as base_url,
        httpx.Client(base_url=base_url) as c,
    ):
        assert c.get(tasks_url(user, task["id"])).json() == before
        assert [t["id"] for t in c.get(tasks_url(user)).json()] == [task["id"]]
    assert before["completed"] is True
    assert before["priority"] == "high"


def test_the_workers_of_one_instance_read_each_others_cursors(
    database_url: str, engine: object
) -> None:
    """Without CURSOR_SECRET (outside production), one key for the instance:
    a generated key per worker made a cursor or sync token 400 on a connection
    that reached another worker."""
    user = new_user_id()
    with running_server(database_url, WEB_CONCURRENCY="2") as base_url:
        with httpx.Client(base_url=base_url) as c:
            for title in ("a", "b"):
                create_task(c, user, title=title)
        for _ in range(16):  # a new connection each: either worker, each time
            first = httpx.get(base_url + tasks_url(user), params={"limit": 1})
            cursor = first.headers["x-next-cursor"]
            params: dict[str, str | int] = {"limit": 1, "cursor": cursor}
            page = httpx.get(base_url + tasks_url(user), params=params)
            assert page.status_code == 200, page.text


def test_200_concurrent_requests_over_64_connections_all_answer(server: str) -> None:
    """A pool of 4 behind 64 client connections: queueing, never a deadlock."""
    user = new_user_id()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    with httpx.Client(base_url=server, limits=limits, timeout=60) as c:

        def call(i: int) -> int:
            if i % 2:
                return c.post(tasks_url(user), json={"title": f"t{i}"}).status_code
            return c.get(tasks_url(user)).status_code

        with ThreadPoolExecutor(max_workers=64) as pool:
            statuses = list(pool.map(call, range(200)))
        assert statuses.count(201) == 100
        assert statuses.count(200) == 100
        assert len(c.get(tasks_url(user)).json()) == 100
        assert c.get("/health").status_code == 200


def test_concurrent_toggles_leave_the_parity(server: str) -> None:
    user = new_user_id()
    with httpx.Client(base_url=server, timeout=60) as c:
        task = create_task(c, user)
        url = tasks_url(user, task["id"]) + "/complete"
        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(pool.map(lambda _: c.patch(url).status_code, range(25)))
        assert statuses == [200] * 25
        final = c.get(tasks_url(user, task["id"])).json()
        assert final["completed"] is True  # 25 toggles: odd
        assert final["completed_at"] is not None


def _raw_request(base_url: str, head: str, body_chunks: list[bytes]) -> bytes:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer 413 and close before reading it all
        response = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):  # the server closes after answering
                response += chunk
        return response


def test_chunked_body_over_64_kib_is_413(server: str) -> None:
    user = new_user_id()
    chunk = b"x" * 16384
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 5 + [b"0\r\n\r\n"]
    head = (
        f"POST {tasks_url(user)} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    )
    response = _raw_request(server, head, chunks)
    assert response.startswith(b"HTTP/1.1 413 ")
    assert b'"code":"payload_too_large"' in response
    assert httpx.get(server + tasks_url(user)).json() == []


def test_a_head_request_refused_by_the_protocol_gets_no_body(server: str) -> None:
    """RFC 9110 9.3.2: a HEAD response has no content, a canned one included."""
    chunk = b"x" * 16384
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 5 + [b"0\r\n\r\n"]
    head = (
        f"HEAD {tasks_url(new_user_id())} HTTP/1.1\r\nHost: x\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    response = _raw_request(server, head, chunks)
    assert response.startswith(b"HTTP/1.1 413 "), response
    headers, _, content = response.partition(b"\r\n\r\n")
    assert b"content-length: " in headers.lower()  # the size a GET would have had
    assert content == b""


def test_declared_length_over_64_kib_is_413_before_reading(server: str) -> None:
    head = (
        f"POST {tasks_url(new_user_id())} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nContent-Length: 10000000\r\n"
        "Connection: close\r\n\r\n"
    )
    response = _raw_request(server, head, [b"{}"])
    assert response.startswith(b"HTTP/1.1 413 ")


def test_responses_carry_no_server_banner(server: str) -> None:
    assert "server" not in httpx.get(server + "/health").headers


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_request_offering_http2_is_served_as_http_1_1_with_its_body(
    server: str, chunked: bool
) -> None:
    """Java's HttpClient and RestClient, Ktor and `curl --http2` offer HTTP/2
    (`Upgrade: h2c`) on ordinary requests. The offer is ignored: the request is
    served with its body, whether it comes with the head or after it, and the
    connection goes on (the body was dropped: 400 invalid_json, or a chunked
    one read as a malformed request)."""
    user = new_user_id()
    body = json.dumps({"title": "offered h2c"}).encode()
    connection = http.client.HTTPConnection(server.removeprefix("http://"))
    connection.request(
        "POST",
        f"/api/{user}/tasks",
        iter([body]) if chunked else body,
        headers={
            "Content-Type": "application/json",
            "Connection": "Upgrade, HTTP2-Settings",
            "Upgrade": "h2c",
            "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA",
        },
        encode_chunked=chunked,
    )
    response = connection.getresponse()
    assert response.status == 201, response.read()
    assert json.loads(response.read())["title"] == "offered h2c"
    connection.request("GET", f"/api/{user}/tasks")
    listed = connection.getresponse()
    assert [t["title"] for t in json.loads(listed.read())] == ["offered h2c"]
    connection.close()


def _chunked(body: bytes, trailer: bytes = b"") -> bytes:
    return b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(body), body, trailer)


def test_trailer_fields_are_not_taken_for_request_headers(server: str) -> None:
    """RFC 9110 6.5.1: fields after a chunked body are not the request's
    headers (an Authorization, Host or X-Forwarded-For there stood for its
    own): a request id, a Content-Type and an Idempotency-Key are ignored."""
    user = new_user_id()
    head = (
        f"POST {tasks_url(user)} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    )
    trailer = (
        b"X-Request-ID: trailer-id\r\nContent-Type: text/plain\r\n"
        b"Idempotency-Key: k\r\n"
    )
    for _ in range(2):
        response = _raw_request(server, head, [_chunked(b'{"title": "t"}', trailer)])
        assert response.startswith(b"HTTP/1.1 201 "), response
        assert b"trailer-id" not in response
    assert len(httpx.get(server + tasks_url(user)).json()) == 2


def test_a_trailer_section_past_the_head_cap_is_refused(server: str) -> None:
    """Fields after a chunked body count against the head's 32 KiB: 60 KiB of
    them is a 431 and creates nothing (a head past the cap is read on to its
    end for its Origin; trailers were let through that way: a 201, a re-trial)."""
    user = new_user_id()
    head = (
        f"POST {tasks_url(user)} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    )
    trailer = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 1000) for i in range(60))
    response = _raw_request(server, head, [_chunked(b'{"title": "t"}', trailer)])
    assert response.startswith(b"HTTP/1.1 431 "), response[:200]
    assert httpx.get(server + tasks_url(user)).json() == []


def test_whitespace_around_a_header_value_is_not_part_of_it(server: str) -> None:
    """RFC 9110 5.5: a retry whose Idempotency-Key gained a trailing space
    (through a proxy that trims, or not) is the same key."""
    user = new_user_id()
    responses = [
        _raw_request(
            server,
            f"POST {tasks_url(user)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: 14\r\n"
            f"Idempotency-Key: key{spaces}\r\nX-Request-ID: id-1{spaces}\r\n\r\n",
            [b'{"title": "t"}'],
        )
        for spaces in ("", " \t ")
    ]
    assert all(r.startswith(b"HTTP/1.1 201 ") for r in responses), responses
    assert all(b"x-request-id: id-1\r\n" in r for r in responses)
    assert len(httpx.get(server + tasks_url(user)).json()) == 1


def test_an_http2_offer_on_a_request_that_closes_is_served(server: str) -> None:
    head = (
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close"
        "\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
    )
    assert _raw_request(server, head, []).startswith(b"HTTP/1.1 200 ")


def test_an_http2_offer_keeps_the_requests_empty_headers(server: str) -> None:
    """Parsed again without the offer, the head keeps every other header as
    sent: an empty `If-Match` (which matches no version) still makes the
    write conditional, a 412 that changes nothing."""
    user = new_user_id()
    with httpx.Client(base_url=server) as c:
        task = create_task(c, user, title="kept")
    body = b'{"title": "changed"}'
    head = (
        f"PATCH {tasks_url(user, task['id'])} HTTP/1.1\r\nHost: x\r\nIf-Match:\r\n"
        "Connection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n"
        "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    assert _raw_request(server, head, [body]).startswith(b"HTTP/1.1 412 ")
    assert httpx.get(server + tasks_url(user, task["id"])).json()["title"] == "kept"


def test_a_request_of_another_http_version_is_505(server: str) -> None:
    response = _raw_request(server, "GET /health HTTP/2.0\r\nHost: x\r\n\r\n", [])
    assert response.startswith(b"HTTP/1.1 505 ")
    assert b'"code":"http_version_not_supported"' in response


def test_an_http_1_0_client_is_never_told_100_continue(server: str) -> None:
    """RFC 9110 10.1.1: the expectation of an HTTP/1.0 request is ignored."""
    head = (
        f"POST {tasks_url(new_user_id())} HTTP/1.0\r\nExpect: 100-continue\r\n"
        "Content-Type: application/json\r\nContent-Length: 14\r\n\r\n"
    )
    response = _raw_request(server, head, [b'{"title": "t"}'])
    assert response.startswith(b"HTTP/1.1 201 "), response


@pytest.mark.parametrize("method", ["FOO", "get"])
def test_a_method_the_server_does_not_know_is_501(server: str, method: str) -> None:
    """RFC 9110 9.1 (methods are case-sensitive); a known method a path does
    not take is the 405 of the contract."""
    head = f"{method} {tasks_url(new_user_id())} HTTP/1.1\r\nHost: x\r\n\r\n"
    response = _raw_request(server, head, [])
    assert response.startswith(b"HTTP/1.1 501 "), response
    assert b'"code":"not_implemented"' in response


def test_a_request_sent_as_the_server_stops_is_answered(
    database_url: str, engine: object
) -> None:
    """SIGTERM closes idle kept-alive connections only after a grace: a request
    a client (a load balancer) sent on one in that instant is answered, and the
    connection then closed, instead of being dropped unread."""
    with server_process(database_url) as (base_url, process):
        host, port = base_url.removeprefix("http://").split(":")
        request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(request)
            assert _response(sock).status == 200
            process.send_signal(signal.SIGTERM)
            _wait_until_refused(host, int(port))  # the shutdown has begun
            sock.sendall(request)
            response = _response(sock)  # RemoteDisconnected if dropped unread
        assert response.status == 200
        assert response.getheader("connection") == "close"


def _response(sock: socket.socket) -> http.client.HTTPResponse:
    """One whole response off a kept-alive connection."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response


def _wait_until_refused(host: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.005)
    raise AssertionError("the server kept listening")


def _requests_total(base_url: str, route: str) -> float:
    """http_requests_total of GETs on `route`, as one scrape (a new connection,
    so any worker may answer it) says."""
    total = 0.0
    for line in httpx.get(base_url + "/metrics").text.splitlines():
        if line.startswith("http_requests_total{") and f'route="{route}"' in line:
            total += float(line.rsplit(" ", 1)[1]) if 'method="GET"' in line else 0
    return total


def test_workers_stop_when_their_supervisor_is_killed(database_url: str) -> None:
    """SIGKILL of `python -m app` with two workers: they stop too, and free the
    port. Orphaned, they went on serving, and starting the service again failed
    (address in use) until they were killed by hand (a trial)."""
    with server_process(database_url, WEB_CONCURRENCY="2") as (base, supervisor):
        workers = _workers(supervisor.pid)
        assert len(workers) == 2
        supervisor.kill()
        supervisor.wait()
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive
        with pytest.raises(httpx.ConnectError):
            httpx.get(base + "/health")


def test_a_killed_worker_is_said_with_its_cause_and_replaced(
    database_url: str, tmp_path: Path
) -> None:
    """A worker killed (as the OOM killer does): a warning names it and the
    signal, and another takes its place (uvicorn's own line was at info, without
    the cause: an operations trial)."""
    log = tmp_path / "server.log"
    with server_process(database_url, log=str(log), WEB_CONCURRENCY="2") as (
        base,
        supervisor,
    ):
        victim = _workers(supervisor.pid)[0].pid
        os.kill(victim, signal.SIGKILL)
        said = f"worker {victim} ended (killed by SIGKILL); another is started"
        wait_until("the warning", lambda: said in log.read_text(), timeout=30)
        wait_until(
            "two workers again",
            lambda: len({w.pid for w in _workers(supervisor.pid)} - {victim}) == 2,
            timeout=30,
        )
        assert httpx.get(base + "/health").status_code == 200
    [line] = [line for line in log.read_text().splitlines() if said in line]
    assert json.loads(line)["level"] == "warning"


def _workers(supervisor: int) -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process(supervisor).children()
        if "spawn_main" in " ".join(child.cmdline())
    ]


@pytest.mark.parametrize("directory", [None, ""])
def test_metrics_add_up_every_workers_requests(
    database_url: str, engine: object, directory: str | None
) -> None:
    """With several workers, a scrape (answered by any one of them) counts every
    worker's requests: each counted its own, so scrapes went 7, 13, 7, 13, and
    Prometheus saw counters reset (a trial). A blank PROMETHEUS_MULTIPROC_DIR
    (a deployment template's) is unset, as every setting: prometheus_client
    took it for a directory, and every scrape was a 500 (a scale-out trial)."""
    server = (
        running_server(database_url, WEB_CONCURRENCY="2")
        if directory is None
        else running_server(
            database_url, WEB_CONCURRENCY="2", PROMETHEUS_MULTIPROC_DIR=directory
        )
    )
    with server as base:
        user = new_user_id()
        route = "/api/{user_id}/tasks"
        before = _requests_total(base, route)
        for _ in range(20):  # each on a new connection: both workers take some
            assert httpx.get(base + tasks_url(user)).status_code == 200
        scrapes = [_requests_total(base, route) for _ in range(10)]
    assert scrapes == [before + 20] * 10


def _refused_start(database_url: str, **env: str) -> str:
    """What `python -m app` says as it refuses to start: with STARTUP_FAILURE, as
    for every configuration error."""
    done = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=BACKEND,
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "PYTHONPATH": str(BACKEND),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    return done.stderr.strip()


def test_a_metrics_directory_that_is_not_there_stops_start_up(
    database_url: str, tmp_path: Path
) -> None:
    """One line naming the variable: it was a 30-line traceback."""
    missing = tmp_path / "nowhere"
    said = _refused_start(database_url, PROMETHEUS_MULTIPROC_DIR=str(missing))
    assert said == (
        f"configuration error: PROMETHEUS_MULTIPROC_DIR: {missing} is not a "
        "directory this process can write to (create it, or unset the variable)"
    )


def test_a_port_in_use_stops_start_up_with_one_line_before_anything_starts(
    database_url: str,
) -> None:
    """Said before the migrations (and the embedded database) start, naming PORT;
    it came after them, in uvicorn's words (a newcomer's trial)."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        said = _refused_start(database_url, PORT=str(port))
    assert said == (
        f"configuration error: PORT: 127.0.0.1 port {port} is in use (another "
        "server there? set another PORT)"
    )


def test_a_request_the_protocol_refuses_has_its_access_line(
    database_url: str, engine: object, tmp_path: Path
) -> None:
    """C8: one line per request, with its status and request id, for those
    answered before the app (a framing the server refuses, an unknown method, a
    chunked body over the cap) too: an operator handed their request id finds it."""
    log = tmp_path / "server.log"
    url = tasks_url(new_user_id())
    chunk = b"x" * 16384
    refused = {
        "two lengths": (
            f"POST {url} HTTP/1.1\r\nHost: x\r\nX-Request-ID: two-lengths\r\n"
            "Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            [],
            400,
        ),
        "unknown method": (f"FOO {url} HTTP/1.1\r\nHost: x\r\n\r\n", [], 501),
        "head too large": (
            f"GET {url} HTTP/1.1\r\nHost: x\r\nX-Request-ID: big-head\r\n"
            f"Cookie: {'x' * 40_000}\r\n\r\n",
            [],
            431,
        ),
        "target too large": (f"GET /{'x' * 40_000} HTTP/1.1\r\n\r\n", [], 431),
        "chunked over the cap": (
            f"POST {url} HTTP/1.1\r\nHost: x\r\nX-Request-ID: big-chunks\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 5 + [b"0\r\n\r\n"],
            413,
        ),
    }
    with server_process(database_url, log=str(log), LOG_LEVEL="info") as (base, _):
        ids = {}
        for name, (head, chunks, status) in refused.items():
            response = _raw_request(base, head, chunks)
            assert response.startswith(b"HTTP/1.1 %d " % status), (name, response)
            body = json.loads(response.partition(b"\r\n\r\n")[2])
            ids[name] = body["request_id"]
        deadline = time.monotonic() + 10
        while True:  # until the last line is written
            lines = [json.loads(line) for line in log.read_text().splitlines()]
            logged = [
                line.get("request_id") for line in lines if line["msg"] == "request"
            ]
            if set(ids.values()) <= set(logged) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert ids["two lengths"] == "two-lengths"  # X-Request-ID is read, if it came
    assert ids["chunked over the cap"] == "big-chunks"
    requests = {}
    for name, (_, _, status) in refused.items():
        [line] = [line for line in lines if line.get("request_id") == ids[name]]
        assert line["msg"] == "request"
        assert line["status"] == status, name
        assert line["path"] == "<unmatched>"
        assert line["duration_ms"] >= 0
        requests[ids[name]] = line
    assert requests["big-chunks"]["method"] == "POST"
    assert requests["big-chunks"]["code"] == "payload_too_large"
    # Refused mid-head, but past the request line: its method is known.
    assert requests["two-lengths"]["method"] == "POST"
    assert requests["big-head"]["method"] == "GET"
    assert requests["big-head"]["code"] == "headers_too_large"
    assert requests[ids["target too large"]]["method"] == "GET"
    assert not [line for line in lines if "Invalid HTTP request" in line["msg"]]


def test_start_up_says_which_database_it_reached(
    database_url: str, engine: object, tmp_path: Path
) -> None:
    """Defaults fill what DATABASE_URL leaves out: one line names the database,
    server and role reached (an operator trial), never the password."""
    log = tmp_path / "server.log"
    with server_process(database_url, log=str(log), LOG_LEVEL="info"):
        lines = [json.loads(line) for line in log.read_text().splitlines()]
    url = make_url(database_url)
    [reached] = [line["msg"] for line in lines if line["msg"].startswith("database ")]
    assert reached.startswith(f"database {url.database} on ")
    if url.host:  # else a local socket (the embedded server's URL)
        assert f" on {url.host} port {url.port or 5432}, as " in reached
    if url.username:
        assert reached.endswith(f", as {url.username}")
    assert not url.password or url.password not in reached


def test_with_several_workers_a_connection_made_as_they_start_is_served(
    database_url: str, engine: object, tmp_path: Path
) -> None:
    """`python -m app` with WEB_CONCURRENCY=2 logs "Uvicorn running on" before its
    workers have started (1-2 s): a connection made then waits for them, it is not
    refused (an operator trial: a readiness check keyed on that line failed)."""
    port = free_port()
    log = tmp_path / "server.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "ENVIRONMENT": "test",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "PYTHONPATH": str(BACKEND),
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=BACKEND,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while b"Uvicorn running on" not in log.read_bytes():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.1 200 ")
    finally:
        stop(process, timeout=30)
