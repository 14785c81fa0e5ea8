"""Run the real service in a uvicorn process for tests that need one."""

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

import httpx

BACKEND = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_run(count: int) -> int:
    """The first of `count` consecutive free ports, below the kernel's range for
    outgoing connections (32768 and up by default), where a client socket elsewhere
    in the run could take one between this check and the server's bind."""
    while True:
        first = random.randrange(20_000, 32_000 - count)
        with ExitStack() as held:
            try:
                for port in range(first, first + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return first


@contextmanager
def running_server(
    database_url: str, port: int | None = None, **env: str
) -> Iterator[str]:
    """Start `python -m app` (migrations, then uvicorn) and yield its base URL;
    stop it with SIGTERM, as an orchestrator would."""
    with server_process(database_url, port, **env) as (base_url, _process):
        yield base_url


@contextmanager
def server_process(
    database_url: str,
    port: int | None = None,
    command: Sequence[str] = (sys.executable, "-m", "app"),
    log: str | None = None,
    **env: str,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Like running_server, and also yields the process (signals, exit codes).
    `command` starts the server another way; `{port}` in it is replaced. Its
    output is appended to the file at `log` if given (appended: a test reading
    it moves no offset the server writes at)."""
    port = port or free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "ENVIRONMENT": "test",
        "PORT": str(port),
        "LOG_LEVEL": "warning",
        "PYTHONPATH": str(BACKEND),
        **env,
    }
    base_url = f"http://127.0.0.1:{port}"
    # Output goes to a file, not a pipe: a full pipe would block the server.
    with tempfile.TemporaryFile() if log is None else open(log, "a+b") as output:
        process = subprocess.Popen(
            [part.replace("{port}", str(port)) for part in command],
            cwd=BACKEND,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_up(base_url, process, output)
            yield base_url, process
        finally:
            stop(process, timeout=30)


def stop(process: "subprocess.Popen[bytes]", timeout: float) -> None:
    """SIGTERM, as an orchestrator sends; SIGKILL if it is still up `timeout` later."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def logs_no_traceback(log: Path) -> Iterator[None]:
    """Asserts that the server writing to `log` logs no exception while the
    block runs: whatever a client does, no request produces a stack trace."""
    size = log.stat().st_size
    yield
    time.sleep(0.1)  # what it logs as the block ends
    with log.open("rb") as output:
        output.seek(size)
        assert b"Traceback" not in output.read()


def _wait_until_up(
    base_url: str, process: subprocess.Popen[bytes], log: IO[bytes]
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(
                f"server exited with {process.returncode}: {log.read().decode()}"
            )
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not come up within 30 s")
