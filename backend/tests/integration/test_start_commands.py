"""FastAPI's usual start commands serve the app too, from `backend/`:
`uvicorn app.main:app`, `fastapi run` and `fastapi dev` (which find `app/main.py` and
its `app` by themselves). `make run` (`python -m app`) stays the documented way.
Without its protocol, the app reads request bodies as they come."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.factories import create_task, new_user_id, tasks_url
from tests.server import BACKEND, free_port, server_process

BIN = Path(sys.executable).parent
COMMANDS = {
    "uvicorn": [str(BIN / "uvicorn"), "app.main:app", "--port", "{port}"],
    "fastapi run": [
        str(BIN / "fastapi"),
        "run",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
    ],
    "fastapi dev": [str(BIN / "fastapi"), "dev", "--port", "{port}"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_start_command_serves_the_api(
    database_url: str, engine: object, name: str, tmp_path: Path
) -> None:
    """Once the app has started, every line it writes is JSON: `fastapi run`
    configured uvicorn's loggers after building the app, and printed a plain-text
    access line beside each JSON one (a trial)."""
    log = tmp_path / "server.log"
    command = COMMANDS[name]
    with server_process(database_url, command=command, log=str(log)) as (base, process):
        with httpx.Client(base_url=base) as client:
            user = new_user_id()
            task = create_task(client, user, title=name)
            got = client.get(tasks_url(user, task["id"]))
            assert got.json()["title"] == name
            assert "x-request-id" in got.headers  # our middleware, so our app
        assert process.poll() is None
        time.sleep(0.2)  # the last access line
        lines = log.read_text().splitlines()
    started = next(i for i, line in enumerate(lines) if "startup complete" in line)
    assert [line for line in lines[started:] if not line.startswith("{")] == []


@pytest.mark.parametrize("name", ["python -m app", "uvicorn", "fastapi dev"])
def test_a_sync_token_outlives_a_restart_without_a_cursor_secret(
    database_url: str, engine: object, name: str
) -> None:
    """Outside production with no CURSOR_SECRET (nor an auth secret to derive it
    from), the key is kept in .data/: an offline client's sync token still works
    after a restart (`fastapi dev` restarts at every change saved). A new key each
    start made it a 400, the answer to a tampered token (a trial)."""
    command = COMMANDS.get(name, [sys.executable, "-m", "app"])
    unset = {"CURSOR_SECRET": "", "BETTER_AUTH_SECRET": "", "JWT_SECRET": ""}
    user = new_user_id()
    with (
        server_process(database_url, None, command, **unset) as (base, _),
        httpx.Client(base_url=base) as client,
    ):
        create_task(client, user, title="before the restart")
        token = client.get(tasks_url(user) + "/changes").json()["next"]
    with server_process(database_url, None, command, **unset) as (base, _):
        changes = base + tasks_url(user) + "/changes"
        synced = httpx.get(changes, params={"since": token})
    assert synced.status_code == 200, synced.text
    assert synced.json()["tasks"] == []


@pytest.mark.parametrize(
    "mistake",
    [{"RATE_LIMIT": "lots"}, {"PROMETHEUS_MULTIPROC_DIR": "/nonexistent/metrics"}],
)
def test_uvicorn_workers_stop_on_a_configuration_error(
    database_url: str, mistake: dict[str, str]
) -> None:
    """Exit status 3, uvicorn's for a worker that failed to start: its supervisor
    stops (with status 0, uvicorn's choice). With status 1 it started the worker
    again, once a second, forever, printing the line each time (a re-trial)."""
    port = str(free_port())
    command = [str(BIN / "uvicorn"), "app.main:app", "--port", port, "--workers", "2"]
    done = subprocess.run(
        command,
        cwd=BACKEND,
        env={**os.environ, "DATABASE_URL": database_url, **mistake},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "failed to start, stopping the parent process" in done.stderr
    [name] = mistake
    errors = [
        line for line in done.stderr.splitlines() if "configuration error" in line
    ]
    assert 1 <= len(errors) <= 2, done.stderr  # one per worker, each once
    assert all(name in line for line in errors)
    assert "Traceback" not in done.stderr


def test_uvicorn_workers_with_the_log_config_write_only_json(
    database_url: str, engine: object, tmp_path: Path
) -> None:
    """`uvicorn --workers N` runs a supervisor that never loads the app, so its
    lines (started, a worker restarted, stopping) were plain text among the JSON
    ones; `--log-config logging.json` makes them JSON too, from the first line to
    the last."""
    log = tmp_path / "server.log"
    command = [
        str(BIN / "uvicorn"),
        "app.main:app",
        "--port",
        "{port}",
        "--workers",
        "2",
        "--log-config",
        "logging.json",
    ]
    with server_process(database_url, command=command, log=str(log)) as (base, _):
        assert httpx.get(base + "/health").status_code == 200
    lines = log.read_text().splitlines()
    assert any("parent process" in line for line in lines)  # the supervisor's
    assert [line for line in lines if not line.startswith("{")] == []


def _task_creates(base_url: str) -> dict[str, float]:
    """http_requests_total of task creates, by status (those that end before
    routing are counted under their route too)."""
    route = re.escape('route="/api/{user_id}/tasks"')
    pattern = rf'http_requests_total\{{method="POST",{route},status="(\d+)"\}} (\S+)'
    metrics = httpx.get(base_url + "/metrics").text
    return {status: float(count) for status, count in re.findall(pattern, metrics)}


def test_a_client_hanging_up_mid_body_is_counted_499_not_500(
    database_url: str, engine: object
) -> None:
    """The app was reading the body when the client closed: no response was sent,
    and none is counted as a 500. (`python -m app` starts a request only once its
    body is read, and withdraws it when its client hangs up before.)"""
    with server_process(database_url, command=COMMANDS["uvicorn"]) as (server, _):
        before = _task_creates(server)
        head = (
            f"POST {tasks_url(new_user_id())} HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        host, port = server.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(head.encode() + b'{"title": ')
            time.sleep(0.2)  # the app is reading the body
        deadline = time.monotonic() + 5
        while (after := _task_creates(server)) == before:
            assert time.monotonic() < deadline, "the request was not counted"
            time.sleep(0.05)
        assert after == {**before, "499": before.get("499", 0) + 1}
