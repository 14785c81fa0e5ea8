"""Journeys against a real uvicorn process over a socket, with committed data."""

import contextlib
import http.client
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.factories import create_task, new_user_id, tasks_url
from tests.server import free_port, running_server


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
