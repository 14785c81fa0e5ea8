"""Three real server processes on one database, sharing one Redis and one
CURSOR_SECRET, as behind a load balancer: cursors, ETags, idempotency keys and rate
limits hold whichever instance each request reaches (specs/006-operations)."""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import psutil

from tests.cross_instance import check_across_instances
from tests.jwt_helpers import SECRET, hs_token
from tests.pg import PrivatePostgres
from tests.server import BACKEND, free_port_run, running_server

ROOT = BACKEND.parent

# db 7 of the machine's Redis (specs/006-operations); keys are per user and expire.
REDIS_URL = "redis://127.0.0.1:6379/7"


def test_cursors_etags_idempotency_and_rate_limits_hold_across_instances(
    database_url: str,
) -> None:
    shared = {
        "ENVIRONMENT": "production",
        "CURSOR_SECRET": secrets.token_urlsafe(32),
        "JWT_SECRET": SECRET,
        "REDIS_URL": REDIS_URL,
        "RATE_LIMIT": "20/minute",
    }
    with ExitStack() as stack:
        instances = [
            stack.enter_context(running_server(database_url, None, **shared))
            for _ in range(3)
        ]
        check_across_instances(
            instances,
            lambda user: {"Authorization": f"Bearer {hs_token(user)}"},
            (20, 60),
        )


def _listening_pid(port: int) -> int:
    return next(
        c.pid
        for c in psutil.net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid
    )


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_scale_out_script_moves_a_killed_instances_traffic_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    """scripts/scale-out.sh for real (it installs HAProxy and PgBouncer when missing),
    on a PostgreSQL of its own: round robin over three instances, one SIGKILLed and its
    traffic on the others, then SIGTERM stops everything with exit 0."""
    postgres = PrivatePostgres()
    postgres.start()
    lb = free_port_run(5)
    pooler = lb + 4
    ports = [lb, *(lb + i for i in (1, 2, 3)), pooler]
    environment = {
        **os.environ,
        "UPSTREAM_PORT": str(postgres.port),
        "SCALE_PORT": str(lb),
        "PGBOUNCER_PORT": str(pooler),
        "REDIS_URL": REDIS_URL,
        "PYTHON": sys.executable,
    }
    log = (tmp_path / "scale-out.log").open("wb")
    script = subprocess.Popen(
        [str(ROOT / "scripts" / "scale-out.sh")],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{lb}", timeout=5) as client:
            deadline = time.monotonic() + 300  # a first run installs HAProxy
            while not _accepts(lb):
                assert script.poll() is None, (tmp_path / "scale-out.log").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.2)
            served = [client.get("/health").headers["x-served-by"] for _ in range(6)]
            assert sorted(served) == ["app1", "app1", "app2", "app2", "app3", "app3"]
            app1 = _listening_pid(lb + 1)
            assert app1 in {p.pid for p in psutil.Process(script.pid).children()}
            os.kill(app1, signal.SIGKILL)
            after = [client.get("/health") for _ in range(20)]
            assert [r.status_code for r in after] == [200] * 20
            assert {r.headers["x-served-by"] for r in after} == {"app2", "app3"}
            # The database down: every instance's /health fails, none is left in
            # HAProxy, whose own 503 is still the API's JSON error (it was an
            # HTML page without Retry-After: an outside trial).
            postgres.stop()
            deadline = time.monotonic() + 10
            while "x-served-by" in (response := client.get("/health")).headers:
                assert time.monotonic() < deadline, "the instances stayed up"
                time.sleep(0.2)
            response = client.get("/api/alice/tasks")
            assert response.status_code == 503
            assert response.json()["code"] == "database_unavailable"
            assert response.headers["retry-after"] == "2"
        assert _stop(script) == 0
        assert not any(_accepts(port) for port in ports)
    finally:
        if script.poll() is None:
            _stop(script)
        log.close()
        postgres.remove()


def _stop(script: subprocess.Popen[bytes]) -> int:
    """SIGTERM, so that the script stops what it started (PgBouncer runs detached)."""
    script.send_signal(signal.SIGTERM)
    try:
        return script.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(script.pid, signal.SIGKILL)
        return script.wait()
