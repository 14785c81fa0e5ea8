"""FastAPI's usual start commands serve the app too, from `backend/`:
`uvicorn app.main:app`, `fastapi run` and `fastapi dev` (which find `app/main.py` and
its `app` by themselves). `make run` (`python -m app`) stays the documented way."""

import sys
from pathlib import Path

import httpx
import pytest

from tests.factories import create_task, new_user_id, tasks_url
from tests.server import server_process

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
    database_url: str, engine: object, name: str
) -> None:
    with server_process(database_url, command=COMMANDS[name]) as (base_url, process):
        with httpx.Client(base_url=base_url) as client:
            user = new_user_id()
            task = create_task(client, user, title=name)
            got = client.get(tasks_url(user, task["id"]))
            assert got.json()["title"] == name
            assert "x-request-id" in got.headers  # our middleware, so our app
        assert process.poll() is None
