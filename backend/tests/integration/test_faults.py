"""C3/C7/C8 under real faults: connections killed (Neon scaling to zero), the
database restarted, the pool exhausted, SIGTERM under load, TLS required."""

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg2
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, create_engine, text

from app import errors
from app.db.migrations import migrate
from app.edge.protocol import OPERATOR_PLACES
from app.edge.shares import ShareInUse
from app.errors import DatabaseRefused
from app.observability.logging import Throttled
from tests.conftest import ClientFactory, fresh_database
from tests.factories import metric, new_user_id, tasks_url
from tests.pg import PrivatePostgres
from tests.server import (
    BACKEND,
    free_port,
    logs_no_traceback,
    running_server,
    server_process,
    stop,
)
from tests.sessions import sessions, wait_for_a_lock_wait, wait_until

C3_KEYS = {"error", "code", "detail", "fields", "request_id"}


def assert_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert set(response.json()) <= C3_KEYS
    assert response.json()["code"] == "database_unavailable"
    assert int(response.headers["retry-after"]) > 0


def db_ids(url: str, user: str) -> set[int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id FROM task WHERE user_id = :u"), {"u": user}
            )
            return {row.id for row in rows}
    finally:
        engine.dispose()


def kill_connections(url: str) -> int:
    """What Neon's scale-to-zero does to every open connection of the database."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            return int(killed.scalar_one())
    finally:
        engine.dispose()


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture
def engine(database: str) -> Iterator[Engine]:
    """The test's database, to watch its sessions."""
    engine = create_engine(database)
    yield engine
    engine.dispose()


def test_killed_connections_give_503s_then_recover_and_lose_nothing(
    database: str,
) -> None:
    user = new_user_id()
    acknowledged: list[int] = []
    statuses: list[int] = []
    stop = threading.Event()
    with running_server(database, DB_POOL_SIZE="4") as base:

        def traffic(worker: int) -> None:
            with httpx.Client(base_url=base, timeout=10) as client:
                n = 0
                while not stop.is_set():
                    n += 1
                    r = client.post(tasks_url(user), json={"title": f"w{worker}-{n}"})
                    statuses.append(r.status_code)
                    if r.status_code == 201:
                        acknowledged.append(r.json()["id"])
                    elif r.status_code == 503:
                        assert_503(r)

        threads = [threading.Thread(target=traffic, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.8)
        assert kill_connections(database) >= 1
        time.sleep(0.8)
        kill_connections(database)
        time.sleep(0.8)
        stop.set()
        for thread in threads:
            thread.join()
        recovered = httpx.post(base + tasks_url(user), json={"title": "after"})
        assert recovered.status_code == 201
        acknowledged.append(recovered.json()["id"])
        assert httpx.get(base + "/health").status_code == 200
    assert set(statuses) <= {201, 503}
    assert statuses.count(201) > 10
    assert set(acknowledged) <= db_ids(database, user)  # no acknowledged write lost


def test_reads_survive_connections_killed_while_idle(database: str) -> None:
    """A read on a pooled connection the server dropped is retried on a fresh one."""
    user = new_user_id()
    with (
        running_server(database, DB_POOL_SIZE="2") as base,
        httpx.Client(base_url=base) as c,
    ):
        task = c.post(tasks_url(user), json={"title": "read me"}).json()
        for _ in range(4):  # every pooled connection has been used and is idle
            assert c.get(tasks_url(user, task["id"])).status_code == 200
        assert kill_connections(database) >= 1
        assert c.get(tasks_url(user, task["id"])).status_code == 200
        assert c.get(tasks_url(user)).status_code == 200


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    yield server
    server.remove()


def test_database_restart_503_then_recovers_without_restart(
    private_pg: PrivatePostgres,
) -> None:
    user = new_user_id()
    with (
        running_server(private_pg.url()) as base,
        httpx.Client(base_url=base, timeout=10) as c,
    ):
        task = c.post(tasks_url(user), json={"title": "survives"}).json()
        private_pg.stop()
        started = time.monotonic()
        assert_503(c.get(tasks_url(user, task["id"])))
        assert_503(c.post(tasks_url(user), json={"title": "during"}))
        assert time.monotonic() - started < 12  # bounded by connect_timeout, no hang
        health_started = time.monotonic()
        health = c.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy"
        assert time.monotonic() - health_started < 2.5
        private_pg.start()
        deadline = time.monotonic() + 15
        while c.get(tasks_url(user, task["id"])).status_code != 200:
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.2)
        assert c.get(tasks_url(user, task["id"])).json() == task
        assert c.post(tasks_url(user), json={"title": "after"}).status_code == 201
        assert c.get("/health").status_code == 200


@pytest.mark.parametrize("crash", ["server", "backend"])
def test_a_sync_misses_no_write_across_a_database_crash(
    private_pg: PrivatePostgres, crash: str
) -> None:
    """PostgreSQL does not flush a rolled-back transaction's records: after a
    crash it hands that transaction id out again (made certain here: the WAL
    writer sleeps 10 s). A sync token issued between the rollback and the crash
    counts the id as ended; the write that gets it after recovery must still be
    sent (found by a fault trial: it was missed for good). The crash of the
    whole server, or of one backend (the OOM killer's): PostgreSQL then recovers
    without restarting, and the fix for the first missed it (a re-trial)."""
    private_pg.stop()
    private_pg.configure(wal_writer_delay="10s")
    private_pg.start()
    user = new_user_id()
    changes = tasks_url(user) + "/changes"
    with (
        running_server(private_pg.url()) as base,
        httpx.Client(base_url=base, timeout=10) as c,
    ):
        c.post(tasks_url(user), json={"title": "before"})
        first = c.get(changes).json()["next"]
        keyed = {"Idempotency-Key": "k"}
        assert c.post(tasks_url(user), json={"title": "A"}, headers=keyed).is_success
        refused = c.post(tasks_url(user), json={"title": "B"}, headers=keyed)
        assert refused.status_code == 422  # its transaction rolled back
        token = c.get(changes, params={"since": first}).json()["next"]
        if crash == "server":
            private_pg.crash()
            private_pg.start()
        else:
            private_pg.kill_a_backend()
        deadline = time.monotonic() + 15
        while c.post(tasks_url(user), json={"title": "after"}).status_code != 201:
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.2)
        synced = c.get(changes, params={"since": token}).json()
    assert "after" in [task["title"] for task in synced["tasks"]]


def test_delta_sync_works_where_the_server_state_functions_are_refused(
    private_pg: PrivatePostgres,
) -> None:
    """A managed PostgreSQL may refuse `pg_control_checkpoint()` to its users: a
    sync then goes on without its crash safety (a warning says so), never a 500
    on every sync (a review)."""
    admin = psycopg2.connect(private_pg.url())
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("CREATE ROLE app LOGIN")
        cursor.execute("CREATE DATABASE app OWNER app")
    admin.close()
    database = private_pg.url().rsplit("/", 1)[0] + "/app"
    with psycopg2.connect(database) as admin, admin.cursor() as cursor:  # its own
        cursor.execute("REVOKE EXECUTE ON FUNCTION pg_control_checkpoint() FROM PUBLIC")
    url = database.replace("postgres@", "app@")
    user = new_user_id()
    changes = tasks_url(user) + "/changes"
    with (
        running_server(url) as base,
        httpx.Client(base_url=base, timeout=10) as c,
    ):
        first = c.get(changes)
        assert first.status_code == 200, first.text
        task = c.post(tasks_url(user), json={"title": "synced"}).json()
        after = c.get(changes, params={"since": first.json()["next"]})
        assert after.status_code == 200, after.text
        assert after.json()["tasks"] == [task]


def test_a_role_the_database_refuses_writes_gets_503_never_500(
    private_pg: PrivatePostgres,
    make_client: ClientFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deployed with a role that may only read (a read-only user, a replica's):
    a write is refused by PostgreSQL (insufficient_privilege). A 503 whose log
    line names the refusal, as for any database fault, never a 500 (a trial)."""
    # A throttle of its own: the process's may have logged this reason already.
    refused = Throttled(logging.getLogger("app.errors"), level=logging.ERROR)
    monkeypatch.setattr(errors, "_refused", refused)
    make_client(DATABASE_URL=SecretStr(private_pg.url()))  # migrates, as the owner
    with psycopg2.connect(private_pg.url()) as admin, admin.cursor() as cursor:
        cursor.execute("CREATE ROLE reader LOGIN")
        cursor.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader")
    reader = make_client(
        DATABASE_URL=SecretStr(private_pg.url().replace("postgres@", "reader@"))
    )
    user = new_user_id()
    assert reader.get(tasks_url(user)).status_code == 200
    refused = reader.post(tasks_url(user), json={"title": "nope"})
    assert_503(refused)
    assert "refused" in refused.json()["detail"]
    for _ in range(3):  # every write is refused: one line for all, not one each
        assert_503(reader.post(tasks_url(user), json={"title": "nope"}))
    lines = [
        json.loads(line)
        for line in capsys.readouterr().err.splitlines()
        if "permission denied for table task" in line
    ]
    assert [line["level"] for line in lines] == ["error"]
    assert reader.get(tasks_url(user)).json() == []


def test_a_role_that_may_not_read_the_schema_version_stops_start_up(
    private_pg: PrivatePostgres, make_client: ClientFactory
) -> None:
    """Not a database that cannot be reached yet (a 503 "schema not checked"
    for ever, and an error logged every second, a review): start-up fails with
    the refusal."""
    make_client(DATABASE_URL=SecretStr(private_pg.url()))  # migrates, as the owner
    with psycopg2.connect(private_pg.url()) as admin, admin.cursor() as cursor:
        cursor.execute("CREATE ROLE blind LOGIN")
    blind = SecretStr(private_pg.url().replace("postgres@", "blind@"))
    with pytest.raises(DatabaseRefused):
        make_client(DATABASE_URL=blind)


def test_a_worker_started_while_the_database_is_down_checks_the_schema_later(
    private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    """`uvicorn app.main:app` (no `python -m app` to migrate first) started while
    the database is down: 503s, then, once it is back, the schema is checked (and
    migrated) before any request reaches it. It was never checked: every request
    was a 500 (no task table) behind a healthy /health (an outside trial)."""
    private_pg.stop()
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": private_pg.url(),
        "ENVIRONMENT": "test",
        "PYTHONPATH": str(BACKEND),
    }
    uvicorn = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)]
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        uvicorn, cwd=BACKEND, env=environment, stdout=log, stderr=subprocess.STDOUT
    )
    user = new_user_id()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            wait_until("the server answers", lambda: _answers(c), timeout=30)
            assert_503(c.post(tasks_url(user), json={"title": "down"}))
            assert c.get("/health").status_code == 503
            private_pg.start()
            deadline = time.monotonic() + 20
            while (response := c.post(tasks_url(user), json={"title": "x"})).is_error:
                assert response.status_code == 503, response.text  # never a 500
                assert time.monotonic() < deadline, "the schema was never checked"
                time.sleep(0.2)
            assert c.get("/health").status_code == 200
    finally:
        stop(process, timeout=30)
        log.close()


def _answers(client: httpx.Client) -> bool:
    try:
        client.get("/health")
    except httpx.TransportError:
        return False
    return True


def _signal_postgres(server: PrivatePostgres, signum: signal.Signals) -> None:
    """`signum` to the postmaster and every process it started."""
    postmaster = psutil.Process(
        int((server.data / "postmaster.pid").read_text().split()[0])
    )
    for process in [postmaster, *postmaster.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # a session just ended
            process.send_signal(signum)


def test_a_database_that_stops_answering_gives_503_not_a_hang(
    private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    """A paused or partitioned server cancels nothing itself: past the statement
    timeout and a grace of 2 s the gateway abandons the connection (503). The
    log says what timed out (it said only `TimeoutError`: an operator trial)."""
    user = new_user_id()
    log = tmp_path / "server.log"
    with (
        server_process(
            private_pg.url(), log=str(log), DB_STATEMENT_TIMEOUT_MS="500"
        ) as (base, _),
        httpx.Client(base_url=base, timeout=30) as c,
    ):
        task = c.post(tasks_url(user), json={"title": "frozen"}).json()
        _signal_postgres(private_pg, signal.SIGSTOP)
        try:
            requests: list[tuple[Callable[[], httpx.Response], bool]] = [
                # on the pooled connection, which is then dropped
                (lambda: c.post(tasks_url(user), json={"title": "during"}), True),
                (lambda: c.get(tasks_url(user, task["id"])), False),
            ]
            for request, writes in requests:
                started = time.monotonic()
                response = request()
                assert_503(response)
                assert time.monotonic() - started < 8  # 0.5 s + 2 s, or a connect's 5 s
                # A write the server may still apply once it answers again: a
                # client told only "retry" made it twice (an outside trial).
                may_be_made = "may have been made" in response.json()["detail"]
                assert may_be_made == writes
        finally:
            _signal_postgres(private_pg, signal.SIGCONT)
        deadline = time.monotonic() + 15
        while c.get(tasks_url(user, task["id"])).status_code != 200:
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.2)
        assert c.post(tasks_url(user), json={"title": "after"}).status_code == 201
        # The read's new connection got no answer within asyncpg's 5 s.
        unavailable = "TimeoutError: no answer to a new connection within 5 s"
        assert f"database unavailable: {unavailable}" in log.read_text()


def test_health_checks_at_once_share_one_round_trip_outside_the_pool(
    private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    """Six health checks at once share one round trip on the checks' own
    connection (six on one connection would fail each other): all 200; while
    the database does not answer, all 503 within their 1.5 s, and not one of
    the API's pooled connections waits on it (a flood of /health cannot take
    the pool from the API). The log says how long it waited."""
    log = tmp_path / "server.log"
    with (
        server_process(
            private_pg.url(), log=str(log), DB_STATEMENT_TIMEOUT_MS="500"
        ) as (base, _),
        httpx.Client(base_url=base, timeout=30) as c,
        ThreadPoolExecutor(6) as pool,
    ):
        warm = [pool.submit(c.get, "/health") for _ in range(6)]
        assert {answer.result().status_code for answer in warm} == {200}
        _signal_postgres(private_pg, signal.SIGSTOP)
        try:
            checks = [pool.submit(c.get, "/health") for _ in range(6)]
            time.sleep(0.7)
            assert metric(c, "db_pool_connections_in_use") == 0
            assert {check.result().status_code for check in checks} == {503}
            # Said at the first check's 1.5 s (it was said 17 s in, by default).
            unanswered = "no answer to the health check within 1.5 s"
            assert f"database unavailable: {unanswered}" in log.read_text()
            # The probe's connection is dropped after 0.5 + 2 s; a new one
            # gets no answer either, within the same 2.5 s.
            wait_until("the line", lambda: "no answer within 2.5 s" in log.read_text())
        finally:
            _signal_postgres(private_pg, signal.SIGCONT)


def test_a_database_that_stops_answering_mid_transaction_gives_503_not_a_hang(
    private_pg: PrivatePostgres,
) -> None:
    """A keyed create is a transaction: frozen after its claim, while it waits on
    the table's lock, the dropped connection fails its ROLLBACK at once too."""
    user = new_user_id()
    with (
        running_server(private_pg.url(), DB_STATEMENT_TIMEOUT_MS="1000") as base,
        httpx.Client(base_url=base, timeout=30) as c,
    ):
        assert c.post(tasks_url(user), json={"title": "warm"}).status_code == 201
        holder = psycopg2.connect(private_pg.url())
        holder.cursor().execute("LOCK TABLE task IN ACCESS EXCLUSIVE MODE")
        answers: list[httpx.Response] = []
        keyed = threading.Thread(
            target=lambda: answers.append(
                c.post(
                    tasks_url(user),
                    json={"title": "in a frozen transaction"},
                    headers={"Idempotency-Key": "frozen"},
                )
            )
        )
        started = time.monotonic()
        keyed.start()
        try:
            watcher = create_engine(private_pg.url())
            wait_for_a_lock_wait(watcher)  # claimed, now waiting on the lock
            watcher.dispose()
            _signal_postgres(private_pg, signal.SIGSTOP)
            keyed.join(timeout=10)
            assert not keyed.is_alive(), "hung on the frozen database"
        finally:
            _signal_postgres(private_pg, signal.SIGCONT)
            holder.close()
            keyed.join()
        assert_503(answers[0])
        assert time.monotonic() - started < 6  # 1 s + 2 s
        deadline = time.monotonic() + 15
        while (
            retried := c.post(
                tasks_url(user),
                json={"title": "again"},
                headers={"Idempotency-Key": "r"},
            )
        ).status_code != 201:
            assert time.monotonic() < deadline, retried.text
            time.sleep(0.2)


def _lock_task(url: str, task_id: int) -> Any:
    """Another client holds the task's row lock, so requests on it wait."""
    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://", 1))
    conn.cursor().execute("SELECT 1 FROM task WHERE id = %s FOR UPDATE", (task_id,))
    return conn


@contextmanager
def _toggling(base: str, user: str, task_id: int, count: int) -> Iterator[list[int]]:
    """`count` toggles of the task sent at once, a thread each; their statuses,
    once every one has answered (as the block ends)."""
    url = base + tasks_url(user, task_id) + "/complete"
    results: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(httpx.patch(url, timeout=30).status_code)
        )
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    try:
        yield results
    finally:
        for thread in threads:
            thread.join()


@dataclass
class _Contended:
    """A server, a client of it, one user's task locked by another client (the
    test commits `lock` when done), and another user's task, free."""

    base: str
    client: httpx.Client
    task: dict[str, Any]
    theirs: dict[str, Any]
    lock: Any


@contextmanager
def _contended(database: str, **env: str) -> Iterator[_Contended]:
    user, other = new_user_id(), new_user_id()
    with (
        running_server(database, None, **env) as base,
        httpx.Client(base_url=base, timeout=30) as c,
    ):
        task = c.post(tasks_url(user), json={"title": "contended"}).json()
        theirs = c.post(tasks_url(other), json={"title": "free"}).json()
        yield _Contended(base, c, task, theirs, _lock_task(database, task["id"]))


def test_exhausted_pool_gives_503_after_pool_timeout_not_a_hang(
    database: str, engine: Engine
) -> None:
    user = new_user_id()
    env = {"DB_POOL_SIZE": "2", "DB_MAX_OVERFLOW": "0", "DB_POOL_TIMEOUT": "1"}
    with (
        running_server(database, None, **env) as base,
        httpx.Client(base_url=base, timeout=30) as c,
    ):
        task = c.post(tasks_url(user), json={"title": "contended"}).json()
        lock = _lock_task(database, task["id"])
        with _toggling(base, user, task["id"], 2) as results:
            wait_until(  # both pooled connections wait on the lock
                "2 requests wait on the lock",
                lambda: sessions(engine, ours=True, on_a_lock=True) == 2,
            )
            started = time.monotonic()
            # Another user's (the first user's own would wait for their share)
            assert_503(c.get(tasks_url(new_user_id())))
            assert 0.8 < time.monotonic() - started < 5
            lock.commit()
            lock.close()
        assert results == [200, 200]
        assert c.get(tasks_url(user)).status_code == 200


def test_one_users_requests_hold_only_their_share_of_the_pool(
    database: str, engine: Engine
) -> None:
    """USER_MAX_ACTIVE=1 of a pool of 2: a user's second request waits for the
    user's turn (429 once DB_POOL_TIMEOUT has passed) instead of taking the last
    connection, which another user's request finds free. Without the share, the
    first user's two requests held both, and the other's read was a 503."""
    env = {"DB_POOL_SIZE": "2", "DB_POOL_TIMEOUT": "1", "USER_MAX_ACTIVE": "1"}
    with _contended(database, **env) as at:
        c, task, theirs, lock = at.client, at.task, at.theirs, at.lock
        user = task["user_id"]
        waits = metric(c, "user_share_waits_total")
        shared = 'rate_limited_total{reason="user_share"}'
        before = metric(c, shared)
        with _toggling(at.base, user, task["id"], 2) as results:
            wait_until(  # one runs (on the lock); the other waits for its turn
                "a request on the lock and one waiting for its turn",
                lambda: (
                    sessions(engine, ours=True, on_a_lock=True) == 1
                    and metric(c, "user_share_waits_total") == waits + 1
                ),
            )
            # Found a connection free: waiting for one would be a 503 in 1 s.
            assert c.get(tasks_url(theirs["user_id"], theirs["id"])).json() == theirs
            refused = c.get(tasks_url(user))
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["code"] == "rate_limited"
            assert refused.json()["error"] == ShareInUse.message
            assert refused.json()["detail"] == ShareInUse.detail
            assert sessions(engine, ours=True, on_a_lock=True) == 1
            lock.commit()
            lock.close()
        # The waiting toggle gave up with its turn not had, and changed nothing.
        assert sorted(results) == [200, 429]
        assert metric(c, shared) == before + 2  # its 429 and the read's
        assert c.get(tasks_url(user, task["id"])).json()["completed"] is True


def test_a_users_requests_waiting_for_their_turn_hold_no_running_place(
    database: str, engine: Engine
) -> None:
    """HTTP_MAX_ACTIVE=2, USER_MAX_ACTIVE=1: one user's request runs (on a locked
    task) and two more wait for the user's turn, having given up their running
    places, so another user's read starts at once. Holding them, the two places
    were full and the read waited for the waiters to give up (a hostile trial:
    70 slow searches of one user, other users' reads 3 s)."""
    env = {"DB_POOL_SIZE": "2", "USER_MAX_ACTIVE": "1", "DB_POOL_TIMEOUT": "8"}
    with _contended(database, **env, HTTP_MAX_ACTIVE="2") as at:
        c, task, theirs, lock = at.client, at.task, at.theirs, at.lock
        user = task["user_id"]
        waits = metric(c, "user_share_waits_total")
        with _toggling(at.base, user, task["id"], 3) as results:
            wait_until(  # one on the lock, two waiting for the user's turn
                "a request on the lock and two waiting for their turn",
                lambda: (
                    sessions(engine, ours=True, on_a_lock=True) == 1
                    and metric(c, "user_share_waits_total") == waits + 2
                ),
            )
            started = time.monotonic()
            assert c.get(tasks_url(theirs["user_id"], theirs["id"])).json() == theirs
            assert time.monotonic() - started < 2
            lock.commit()
            lock.close()
        assert results == [200, 200, 200]
        assert c.get(tasks_url(user, task["id"])).json()["completed"] is True


def test_one_users_flood_of_waiting_requests_never_sheds_another_users(
    database: str, engine: Engine
) -> None:
    """HTTP_MAX_IN_FLIGHT leaves room for 3 waiting requests past the running
    ones and the operators' places: of 13 toggles of one user at once, one runs
    (on a locked task), 3 wait their turn and 9 are 429s at once (that user waits
    the most), and another user's read is served. Without it the 12 waiting
    filled the in-flight places, and the read was a 503. (Who gives way to
    another user's waiting request: `tests/unit/test_shares.py`.)"""
    in_flight = 2 + OPERATOR_PLACES + 3
    env = {"DB_POOL_SIZE": "2", "USER_MAX_ACTIVE": "1", "DB_POOL_TIMEOUT": "8"}
    with _contended(
        database, **env, HTTP_MAX_ACTIVE="2", HTTP_MAX_IN_FLIGHT=str(in_flight)
    ) as at:
        c, task, theirs, lock = at.client, at.task, at.theirs, at.lock
        user = task["user_id"]
        waits = metric(c, "user_share_waits_total")
        with _toggling(at.base, user, task["id"], in_flight) as results:
            wait_until(
                "a toggle on the lock, 3 waiting for their turn and 9 refused",
                lambda: (
                    sessions(engine, ours=True, on_a_lock=True) == 1
                    and metric(c, "user_share_waits_total") == waits + 3
                    and results.count(429) == 9
                ),
            )
            assert c.get(tasks_url(theirs["user_id"], theirs["id"])).json() == theirs
            lock.commit()
            lock.close()
        assert sorted(results) == [200] * 4 + [429] * 9
        assert c.get(tasks_url(user, task["id"])).json()["completed"] is False


def test_a_request_whose_client_hung_up_while_it_waited_its_turn_is_not_run(
    database: str, engine: Engine, tmp_path: Path
) -> None:
    """USER_MAX_ACTIVE=1: a toggle and a read wait for the user's turn behind one
    on a locked task, and their clients hang up. When the turn comes neither is
    run (a review: it toggled for nobody, ahead of the user's live requests),
    and each is a 499, not a 500 with a stack trace (reading the body of a
    request whose client had gone raised: a re-trial)."""
    user = new_user_id()
    log = tmp_path / "server.log"
    with (
        server_process(
            database, log=str(log), DB_POOL_SIZE="2", USER_MAX_ACTIVE="1"
        ) as (base, _),
        httpx.Client(base_url=base, timeout=30) as c,
        logs_no_traceback(log),
    ):
        task = c.post(tasks_url(user), json={"title": "once"}).json()
        waits = metric(c, "user_share_waits_total")
        lock = _lock_task(database, task["id"])
        with _toggling(base, user, task["id"], 1) as results:
            wait_until(
                "a request waits on the lock",
                lambda: sessions(engine, ours=True, on_a_lock=True) == 1,
            )
            host, port = base.removeprefix("http://").split(":")
            with (
                socket.create_connection((host, int(port)), timeout=10) as toggle,
                socket.create_connection((host, int(port)), timeout=10) as read,
            ):
                toggle.sendall(
                    f"PATCH {tasks_url(user, task['id'])}/complete HTTP/1.1\r\n"
                    "Host: t\r\nContent-Length: 0\r\n\r\n".encode()
                )
                read.sendall(
                    f"GET {tasks_url(user)} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
                )
                wait_until(
                    "both wait for their turn",
                    lambda: metric(c, "user_share_waits_total") == waits + 2,
                )
            time.sleep(0.3)  # the server sees the hang-ups
            lock.commit()
            lock.close()
        assert results == [200]
        time.sleep(1)  # the second, had it run, has long finished
        assert c.get(tasks_url(user, task["id"])).json()["completed"] is True
        counted = c.get("/metrics").text
        assert 'route="/api/{user_id}/tasks/{id}/complete",status="499"' in counted
        assert 'route="/api/{user_id}/tasks",status="499"' in counted
        assert 'status="500"' not in counted


def test_a_schema_dropped_under_a_running_worker_gives_503_until_it_is_back(
    database: str, engine: Engine
) -> None:
    """A Neon branch reset, or a restore into a database never migrated: the
    tables are gone under a running worker. Every request was a 500 (undefined
    table) and /health said healthy; after the schema came back, the first write
    on an old pooled connection was a 500 again ("cache lookup failed for type",
    its prepared statement naming the dropped enum). An outside trial."""
    user = new_user_id()
    with (
        running_server(database, None) as base,
        httpx.Client(base_url=base, timeout=30) as c,
    ):
        assert c.post(tasks_url(user), json={"title": "before"}).status_code == 201
        assert c.get("/health").status_code == 200
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
        for _ in range(3):  # each pooled connection, a new one too
            assert_503(c.post(tasks_url(user), json={"title": "gone"}))
            assert_503(c.get(tasks_url(user)))
        assert c.get("/health").status_code == 503
        migrate(engine)
        wait_until("/health", lambda: c.get("/health").status_code == 200)
        for _ in range(12):  # every pooled connection's cached statements
            created = c.post(tasks_url(user), json={"title": "after"})
            assert created.status_code in (201, 503), created.text
        assert c.post(tasks_url(user), json={"title": "after"}).status_code == 201


def test_a_schema_half_restored_under_a_running_worker_gives_503(
    database: str, engine: Engine
) -> None:
    """`pg_restore --clean` into the database a worker serves: for a moment a
    table is back without its primary key. A keyed create (`ON CONFLICT` on that
    key) was a 500 (a restore trial); it is a 503, as with the table gone."""
    user = new_user_id()
    keyed = {"Idempotency-Key": "during"}
    with (
        running_server(database, None) as base,
        httpx.Client(base_url=base, timeout=30) as c,
    ):
        assert c.post(tasks_url(user), json={"title": "before"}).status_code == 201
        with engine.begin() as connection:
            connection.execute(
                text("ALTER TABLE idempotency_key DROP CONSTRAINT pk_idempotency_key")
            )
        try:
            assert_503(c.post(tasks_url(user), json={"title": "x"}, headers=keyed))
        finally:
            with engine.begin() as connection:
                connection.execute(
                    text(
                        "ALTER TABLE idempotency_key ADD CONSTRAINT pk_idempotency_key"
                        " PRIMARY KEY (user_id, key)"
                    )
                )
        created = c.post(tasks_url(user), json={"title": "x"}, headers=keyed)
        assert created.status_code == 201, created.text


def test_statement_timeout_bounds_a_stuck_query(database: str) -> None:
    user = new_user_id()
    with running_server(database, DB_STATEMENT_TIMEOUT_MS="500") as base:
        task = httpx.post(base + tasks_url(user), json={"title": "stuck"}).json()
        lock = _lock_task(database, task["id"])
        started = time.monotonic()
        response = httpx.patch(base + tasks_url(user, task["id"]), json={"title": "x"})
        assert time.monotonic() - started < 3
        assert_503(response)
        # cancelled, so rolled back: not the "may have been made" of a lost write
        assert "nothing was changed" in response.json()["detail"]
        lock.rollback()
        lock.close()
        assert httpx.get(base + tasks_url(user, task["id"])).json()["title"] == "stuck"


def _wait_until_connections_are_refused(url: str) -> None:
    """Once draining, a new connection is refused at once: never accepted and
    left hanging. (The supervisor of several workers reads its signals every
    0.5 s, so the first tries may still be served.)"""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)  # a timeout: accepted, then left hanging
        except httpx.ConnectError:
            return
        time.sleep(0.05)
    pytest.fail("new connections were still served 5 s after SIGTERM")


@pytest.mark.parametrize(
    ("workers", "signum"),
    [
        ("1", signal.SIGTERM),
        ("2", signal.SIGTERM),
        # One worker has no supervisor to restart it (two restart theirs on a
        # SIGHUP, uvicorn's way): it stops as on SIGTERM, with the status of a
        # process the signal killed (it died at once) so that it is restarted.
        ("1", signal.SIGHUP),
    ],
    ids=["1-SIGTERM", "2-SIGTERM", "1-SIGHUP"],
)
def test_sigterm_lets_in_flight_requests_finish_then_exits(
    database: str, engine: Engine, workers: str, signum: signal.Signals
) -> None:
    user = new_user_id()
    with server_process(  # the user's three requests all reach the database
        database, WEB_CONCURRENCY=workers, USER_MAX_ACTIVE="3"
    ) as (base, process):
        task = httpx.post(base + tasks_url(user), json={"title": "in flight"}).json()
        lock = _lock_task(database, task["id"])
        with _toggling(base, user, task["id"], 3) as results:
            wait_until(
                "3 requests wait on the lock",
                lambda: sessions(engine, ours=True, on_a_lock=True) == 3,
            )
            process.send_signal(signum)
            _wait_until_connections_are_refused(base + "/health")
            lock.commit()
            lock.close()
        # a clean shutdown, not death by signal
        assert process.wait(timeout=15) == (129 if signum == signal.SIGHUP else 0)
    assert results == [200, 200, 200]
    # The pool was closed (PostgreSQL ends a session soon after its client).
    wait_until("no session left", lambda: sessions(engine, ours=True) == 0)


@pytest.fixture
def tls_pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres(tls=True)
    server.start()
    yield server
    server.remove()


def test_tls_required_server_works_with_sslmode_require(
    tls_pg: PrivatePostgres,
) -> None:
    user = new_user_id()
    with running_server(tls_pg.url(sslmode="require")) as base:
        assert (
            httpx.post(base + tasks_url(user), json={"title": "tls"}).status_code == 201
        )


def test_plain_text_url_against_tls_only_server_fails_with_one_line(
    tls_pg: PrivatePostgres,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=BACKEND,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(BACKEND),
            "DATABASE_URL": tls_pg.url(sslmode="disable"),
            "PORT": "1",
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("cannot prepare the database:")
    assert "Traceback" not in done.stderr
