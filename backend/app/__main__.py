"""`python -m app`: check the configuration, start the embedded database when no
DATABASE_URL is set, apply migrations, then serve with uvicorn."""

import contextlib
import errno
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from types import FrameType

import uvicorn
from prometheus_client import multiprocess
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from app.config import ConfigError, Settings, kept_cursor_key, load_settings
from app.edge.protocol import BoundedHttpToolsProtocol
from app.observability.logging import configure_logging
from app.workers import SUPERVISOR_PID

logger = logging.getLogger("app")


# The exit status after a graceful stop: 0, or after a SIGHUP (a "reload" of a
# single worker, stopped instead) what a process killed by it reports, so that a
# supervisor restarting on failure (systemd's Restart=on-failure, Docker's
# on-failure) starts it again, as it did when SIGHUP killed it outright.
_exit_status = 0


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    sys.exit(_exit_status)


def _hang_up(_signum: int, _frame: FrameType | None) -> None:
    global _exit_status
    _exit_status = 128 + signal.SIGHUP
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful stop


class _Supervisor(Multiprocess):
    """uvicorn's supervisor of several workers, but on the way out it closes its
    own copy of the listening socket before stopping them: the socket then stops
    listening as soon as the workers do, and a new connection is refused at once.
    Kept open, the kernel went on accepting connections no worker would take,
    until the last worker exited (up to the 20 s graceful shutdown), then reset
    them."""

    def run(self) -> None:
        # Its workers stop when it dies (`app.workers.die_with_supervisor`).
        os.environ[SUPERVISOR_PID] = str(os.getpid())
        super().run()

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()

    def keep_subprocess_alive(self) -> None:
        """Also says how a worker it replaces ended, as a warning (uvicorn's line
        is at info, without the cause: an OOM kill passed unseen, an operations
        trial), and forgets that worker's share of the live gauges (connections
        in use): its counts stay in the totals, they only ever grow."""
        before = list(self.processes)
        # uvicorn kills those that do not answer its health check: not the cause
        # for a warning to blame on a signal (the OOM killer's SIGKILL, say).
        alive = {process for process in before if process.process.is_alive()}
        super().keep_subprocess_alive()
        for ended in (process for process in before if process not in self.processes):
            how = (
                "it did not answer the supervisor's health check, and was killed"
                if ended in alive
                else _how_it_ended(ended.exitcode)
            )
            logger.warning("worker %s ended (%s); another is started", ended.pid, how)
            if ended.pid is not None and "PROMETHEUS_MULTIPROC_DIR" in os.environ:
                multiprocess.mark_process_dead(ended.pid)  # type: ignore[no-untyped-call]


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is None or exitcode >= 0:
        return f"exit status {exitcode}"
    try:
        return f"killed by {signal.Signals(-exitcode).name}"
    except ValueError:  # a real-time signal has no name
        return f"killed by signal {-exitcode}"


# Descriptors a worker needs besides its client and database connections: Redis,
# log files, the listening socket, Python's own.
_OTHER_FILES = 64
# Migrations that take longer are said to (a start that waited said nothing): past
# the 5 s a connection may take, so a database that never answers fails in one line.
MIGRATION_NOTICE_SECONDS = 10


def _migrate() -> int:
    """`python -m app.db.migrations`, in a process of its own (Alembic and
    psycopg2 never load into the serving process): its exit status. One that
    takes long (waiting on another instance's migration lock, or on a paused
    pooler) is logged every MIGRATION_NOTICE_SECONDS (once, an operator saw
    silence after it); it is killed if this process is stopped meanwhile."""
    migrating = subprocess.Popen([sys.executable, "-m", "app.db.migrations"])
    waited = 0
    try:
        while True:
            try:
                return migrating.wait(MIGRATION_NOTICE_SECONDS)
            except subprocess.TimeoutExpired:
                waited += MIGRATION_NOTICE_SECONDS
                logger.warning(
                    "still migrating the database after %d s: waiting on another "
                    "instance's migration, or on the database (a paused pooler?)",
                    waited,
                )
    finally:
        if migrating.poll() is None:  # a signal stops this process meanwhile
            migrating.kill()
            migrating.wait()


def _open_files_for(settings: Settings) -> None:
    """Raise this process's open-file limit (inherited by its workers) to the
    hard limit, as Go's runtime does at start: systemd's default soft limit is
    1,024, and a worker out of descriptors stops accepting, so past ~1,000 idle
    clients /health went unanswered instead of HTTP_MAX_CONNECTIONS applying.
    Warn when the limit it has then is below what a worker may hold."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit (macOS) is refused: then as much as is needed.
    needed = (
        settings.HTTP_MAX_CONNECTIONS
        + settings.DB_POOL_SIZE
        + settings.DB_MAX_OVERFLOW
        + _OTHER_FILES
    )
    for wanted in (hard, needed):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
            break
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit != resource.RLIM_INFINITY and limit < needed:
        logger.warning(
            "the open-file limit (%d) is below what a worker may hold (%d: "
            "HTTP_MAX_CONNECTIONS, the database pool and %d more): past about %d "
            "connections it stops accepting; raise the limit (ulimit -n, "
            "LimitNOFILE=) or lower HTTP_MAX_CONNECTIONS",
            limit,
            needed,
            _OTHER_FILES,
            limit - needed + settings.HTTP_MAX_CONNECTIONS,
        )


@contextlib.contextmanager
def _shared_metrics() -> Iterator[None]:
    """Workers write their metrics into one new directory, so that a scrape adds
    them up (a scrape reached one worker: its counts alone, and Prometheus saw
    counters go back each time another answered); unless the operator names one
    (PROMETHEUS_MULTIPROC_DIR, which must then be emptied before each start)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        yield
        return
    try:
        directory = tempfile.mkdtemp(prefix="task-api-metrics-")
    except OSError as exc:  # a read-only file system, say: serve all the same
        logger.warning("metrics stay per worker: %s", exc)
        yield
        return
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _for_the_workers(settings: Settings, url: str) -> None:
    """Workers inherit the resolved URL, so they join the same (embedded)
    database, and one cursor key: where none is configured and none can be kept
    in .data/, each made its own, and a cursor or sync token was refused (400) by
    the next worker a connection reached (a review)."""
    os.environ["DATABASE_URL"] = url
    if settings.cursor_key is None:  # outside production, without an auth secret
        os.environ["CURSOR_SECRET"] = kept_cursor_key().decode()


def serve(settings: Settings, url: str) -> None:
    _for_the_workers(settings, url)
    _open_files_for(settings)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal
    # again; these handlers make that a clean exit 0, not death by signal (and
    # so the embedded database is stopped on the way out). Set before the
    # migrations: a signal while they run (waiting on another instance's lock,
    # say) exits as cleanly, and `_migrate` kills its process on the way (it was
    # left running, orphaned). SIGHUP (a process manager's "reload")
    # restarts the workers of the supervisor below, which handles it once it
    # runs; a single worker has none, and died at once, dropping what was in
    # flight: it stops gracefully instead, to be started again.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    signal.signal(signal.SIGHUP, _hang_up)
    migrated = _migrate()
    if migrated != 0:  # killed by signal N: exit as a shell reports it, 128 + N
        sys.exit(migrated if migrated > 0 else 128 - migrated)
    # What this instance may hold open: the figure to size against the database's
    # connection limit (README, "Sizing connections").
    per_worker = settings.DB_POOL_SIZE + settings.DB_MAX_OVERFLOW + 1
    logger.info(
        "at most %d database connections: WEB_CONCURRENCY=%d x "
        "(DB_POOL_SIZE + DB_MAX_OVERFLOW + 1 for /health = %d)",
        settings.WEB_CONCURRENCY * per_worker,
        settings.WEB_CONCURRENCY,
        per_worker,
    )
    config = uvicorn.Config(
        "app.main:create_app",
        factory=True,
        host=settings.HOST,
        port=settings.PORT,
        workers=settings.WEB_CONCURRENCY,
        # X-Forwarded-For/-Proto: the app's ForwardedMiddleware reads them.
        proxy_headers=False,
        access_log=False,
        server_header=False,
        log_config=None,
        timeout_graceful_shutdown=20,
        http=BoundedHttpToolsProtocol,
        ws="none",  # no WebSocket routes: the worker never loads a WebSocket library
        timeout_keep_alive=settings.HTTP_KEEPALIVE_TIMEOUT,
        backlog=settings.HTTP_BACKLOG,
    )
    if config.workers > 1:  # what uvicorn.run does, with the supervisor above
        sock = config.bind_socket()
        # Listening from now (uvicorn's workers each start listening as they come
        # up, 1-2 s after it logged "running on"): a connection made meanwhile
        # waits in the backlog for a worker, instead of being refused.
        sock.listen(config.backlog)
        with _shared_metrics():
            _Supervisor(config, sockets=[sock]).run()
        return
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _port_free(settings: Settings) -> None:
    """No other server listens on HOST:PORT, checked before the embedded database
    and the migrations start: a port in use was said only after them, in
    uvicorn's words and naming no setting (a newcomer's trial). Only that is
    said here; any other failure to listen is left to uvicorn to report. Each
    address is tried as uvicorn will bind it, so nothing it could listen on is
    refused."""
    try:
        addresses = socket.getaddrinfo(
            settings.HOST,
            settings.PORT,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
    except OSError:
        return
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # One worker listens as asyncio does, on IPv6 alone; several on
            # uvicorn's socket, which takes IPv4 too (a re-trial: an IPv4
            # server on the port passed the check).
            if family == socket.AF_INET6 and settings.WEB_CONCURRENCY == 1:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(
                        f"configuration error: PORT: {settings.HOST} port "
                        f"{settings.PORT} is in use (another server there? set "
                        "another PORT)"
                    ) from None


def main() -> None:
    settings = load_settings()
    configure_logging(settings.LOG_LEVEL)
    _port_free(settings)
    with ExitStack() as stack:
        if settings.DATABASE_URL is not None:
            url = settings.DATABASE_URL.get_secret_value()
        else:
            from app.db.embedded import embedded_postgres  # development only

            # Stopped when the server stops (Ctrl-C or SIGTERM).
            url = stack.enter_context(embedded_postgres())
        serve(settings, url)


if __name__ == "__main__":
    main()
