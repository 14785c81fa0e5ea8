"""`make run` without DATABASE_URL: the embedded PostgreSQL it starts stops with the
server, on Ctrl-C (SIGINT) and on SIGTERM, even after an earlier run was killed
outright and left its server (and its process id) behind; so does the one an app
served by plain uvicorn starts. Uses its own data folder, never the developer's
`.data/postgres`."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import psutil
import pytest

from tests.server import BACKEND, server_process

# `python -m app`, and `uvicorn app.main:app`, with the embedded server's folder
# moved into the test's.
MOVE = (
    "import pathlib, sys; import app.db.embedded as embedded; "
    "embedded.EMBEDDED_DATA_DIR = pathlib.Path(sys.argv[1]); "
)
SERVE = MOVE + "from app.__main__ import main; main()"
UVICORN = MOVE + "import uvicorn; uvicorn.run('app.main:app', port=int(sys.argv[2]))"


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    # Not under pytest's own temporary folder: as root, the server runs as another
    # user, who must be able to pass through it, and any pytest started meanwhile
    # makes that folder private again (CI failed so, beside another pytest run).
    with tempfile.TemporaryDirectory(prefix="embedded-") as parent:
        folder = Path(parent) / "postgres"
        yield folder
        pid = _postmaster_pid(folder)
        if pid is not None and _running(pid):  # never leave one behind
            psutil.Process(pid).terminate()
            psutil.Process(pid).wait(timeout=30)


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _postmaster_stopped(data_dir: Path, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        pid = _postmaster_pid(data_dir)
        if pid is None or not _running(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _serve(
    data_dir: Path, script: str = SERVE
) -> AbstractContextManager[tuple[str, subprocess.Popen[bytes]]]:
    # DATABASE_URL= (blank) means unset: the embedded server is used.
    command = [sys.executable, "-c", script, str(data_dir), "{port}"]
    return server_process("", command=command)


def _stop_with(process: subprocess.Popen[bytes], signum: int) -> int:
    process.send_signal(signum)
    return process.wait(timeout=30)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_embedded_postgres_stops_with_the_server(data_dir: Path, signum: int) -> None:
    with _serve(data_dir) as (base_url, process):
        assert httpx.post(base_url + "/api/me/tasks", json={"title": "x"}).is_success
        postmaster = _postmaster_pid(data_dir)
        assert postmaster is not None
        assert _running(postmaster)
        _stop_with(process, signum)
    assert _postmaster_stopped(data_dir)
    assert not _running(postmaster)


def test_a_killed_run_leaves_nothing_the_next_run_cannot_stop(data_dir: Path) -> None:
    with _serve(data_dir) as (_, process):
        _stop_with(process, signal.SIGKILL)  # no clean-up at all
    assert not _postmaster_stopped(data_dir, timeout=1)  # left behind, as expected
    with _serve(data_dir) as (base_url, process):  # joins the one left running
        assert httpx.get(base_url + "/health").status_code == 200
        _stop_with(process, signal.SIGTERM)
    assert _postmaster_stopped(data_dir)


def test_embedded_postgres_stops_with_an_app_served_by_plain_uvicorn(
    data_dir: Path,
) -> None:
    with _serve(data_dir, UVICORN) as (base_url, process):
        assert httpx.get(base_url + "/api/me/tasks").status_code == 200
        postmaster = _postmaster_pid(data_dir)
        assert postmaster is not None
        _stop_with(process, signal.SIGTERM)
    assert _postmaster_stopped(data_dir)


def test_a_data_folder_that_cannot_be_made_stops_start_up_with_one_line(
    tmp_path: Path,
) -> None:
    """Not writable (here: its parent is a file): one line saying what to do, and
    status 3; it was a traceback (a newcomer's trial)."""
    blocked = tmp_path / "file"
    blocked.write_text("")
    done = subprocess.run(
        [sys.executable, "-c", SERVE, str(blocked / "postgres")],
        cwd=BACKEND,
        env={**os.environ, "DATABASE_URL": "", "PYTHONPATH": str(BACKEND)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    [line] = [line for line in done.stderr.splitlines() if line.strip()]
    assert line.startswith("configuration error: DATABASE_URL: not set, and the ")
    assert str(blocked / "postgres") in line
    assert "set DATABASE_URL" in line
