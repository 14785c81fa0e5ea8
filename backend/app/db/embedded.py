"""The embedded PostgreSQL for development: `make run` (and tests) without a URL.

pgserver keeps, in the data folder, the ids of the processes using the server, and
the last one to leave stops it, by default at exit. That was not enough: uvicorn
re-raises SIGTERM once it has drained, and a process killed by a signal runs no exit
handlers; and the id of a process that died that way stayed on the list, so no later
process was ever the last. So the server leaves explicitly when it stops serving
(`embedded_postgres()` around `python -m app`, the lifespan for an app built by
`uvicorn app.main:app` or `fastapi dev`), and dead processes are dropped from the
list before joining."""

import json
import logging
import os
import subprocess
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.config import PROJECT_ROOT, ConfigError

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
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            logger.warning(
                "running as root: the embedded PostgreSQL runs as the system user "
                "%r (created if missing), and the folders above %s are made "
                "traversable",
                SYSTEM_USER,
                data_dir,
            )
        with PostgresServer._lock:
            _forget_dead_processes(data_dir)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = get_server(data_dir, cleanup_mode="stop")
    # A traceback, until a trial (RuntimeError: pgserver's own, as for a socket
    # path too long or a postmaster.pid it cannot read).
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        if isinstance(exc, subprocess.SubprocessError):
            reason = f"its server did not start (its log: {data_dir / 'log'})"
        raise ConfigError(
            "configuration error: DATABASE_URL: not set, and the embedded PostgreSQL "
            f"cannot run in {data_dir}: {reason} (make that folder writable, or set "
            "DATABASE_URL)"
        ) from None
    logger.info("embedded PostgreSQL in %s", data_dir)
    return server


def embedded_database(data_dir: Path | None = None) -> tuple[str, Callable[[], None]]:
    """Start (or join) the embedded PostgreSQL under `.data/`: its URL, and a function
    that leaves it, stopping it unless another process still uses it. A process that
    never calls it leaves at exit."""
    data_dir = (data_dir or EMBEDDED_DATA_DIR).resolve()
    server = _start(data_dir)

    def leave() -> None:
        server.cleanup()  # stops it if this process was the last one using it
        if (data_dir / "postmaster.pid").exists():
            logger.info("embedded PostgreSQL left running: another process uses it")
        else:
            logger.info("embedded PostgreSQL stopped")

    url: str = server.get_uri()
    return url, leave


def embedded_database_url(data_dir: Path | None = None) -> str:
    """Start (or join) the embedded PostgreSQL; this process leaves it at exit."""
    return embedded_database(data_dir)[0]


@contextmanager
def embedded_postgres(data_dir: Path | None = None) -> Iterator[str]:
    """The embedded PostgreSQL for the block's duration (unless others still use it)."""
    url, leave = embedded_database(data_dir)
    try:
        yield url
    finally:
        leave()
