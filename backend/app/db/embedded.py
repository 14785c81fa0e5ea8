"""The embedded PostgreSQL for development: `make run` (and tests) without a URL.

pgserver keeps, in the data folder, the ids of the processes using the server, and
the last one to leave stops it (at exit). Two things would keep it running after
the server stopped: uvicorn re-raises SIGTERM once it has drained, and a process
killed by a signal runs no exit handlers; and the id of a process that died that way
stays on the list, so no later process is ever the last. Both are handled here."""

import contextlib
import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from app.config import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[3]
EMBEDDED_DATA_DIR = PROJECT_ROOT / ".data" / "postgres"
SYSTEM_USER = "pgserver"  # pgserver's choice: PostgreSQL refuses to run as root

logger = logging.getLogger("app.embedded")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process, alive
        pass
    return True


def _forget_dead_processes(data_dir: Path) -> None:
    """Drop the ids of processes that died without leaving (SIGKILL, a crash)."""
    handles = data_dir / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
    sys.exit(128 + signum)  # exit handlers run: the server is stopped


def _start(data_dir: Path) -> Any:
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import PostgresServer, get_server
    except ImportError:
        raise ConfigError(
            "configuration error: DATABASE_URL: not set, and the embedded PostgreSQL "
            "(pgserver) is not installed"
        ) from None
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        logger.warning(
            "running as root: the embedded PostgreSQL runs as the system user %r "
            "(created if missing), and the folders above %s are made traversable",
            SYSTEM_USER,
            data_dir,
        )
    with PostgresServer._lock:
        _forget_dead_processes(data_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = get_server(data_dir, cleanup_mode="stop")
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        with contextlib.suppress(ValueError):  # only the main thread may set it
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logger.info("embedded PostgreSQL in %s", data_dir)
    return server


def embedded_database_url(data_dir: Path | None = None) -> str:
    """Start (or join) the embedded PostgreSQL under `.data/` and return its URL;
    it stops when the last process using it exits (SIGTERM included)."""
    server = _start(data_dir or EMBEDDED_DATA_DIR)
    url: str = server.get_uri()
    return url


@contextmanager
def embedded_postgres(data_dir: Path | None = None) -> Iterator[str]:
    """The same, stopped when the block ends, unless another process still uses it."""
    data_dir = (data_dir or EMBEDDED_DATA_DIR).resolve()
    server = _start(data_dir)
    try:
        yield server.get_uri()
    finally:
        server.cleanup()  # stops it if this process was the last one using it
        if (data_dir / "postmaster.pid").exists():
            logger.info("embedded PostgreSQL left running: another process uses it")
        else:
            logger.info("embedded PostgreSQL stopped")
