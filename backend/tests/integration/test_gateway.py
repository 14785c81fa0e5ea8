"""The database gateway against a real PostgreSQL: one statement is atomic without
BEGIN, a transaction commits all or nothing, reads (never writes) survive a dropped
connection, a connection abandoned mid-statement (its statement cancelled on the
server) or idle past DB_POOL_RECYCLE is closed, a full pool is a 503 after
DB_POOL_TIMEOUT (and a connect that times out is not taken for one), errors that
mean "come back later" are 503s, waiters for a connection are served in arrival
order, and timestamps (read as text) come back exactly whatever the session's
defaults."""

import os
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any, TypedDict

import anyio
import asyncpg
import pytest
from sqlalchemy import Engine, make_url, text

from app.config import Settings
from app.db import gateway
from app.db.gateway import (
    ABANDONED,
    REACHABLE,
    WRITE_UNKNOWN,
    Cancelled,
    Conflict,
    Database,
    LockTimeout,
    Query,
    compile_query,
)
from app.db.url import parse_database_url
from app.errors import DatabaseRefused, DatabaseUnavailable
from tests.factories import new_user_id

pytestmark = pytest.mark.anyio


class Count(TypedDict):
    n: int


INSERT = compile_query(
    text("INSERT INTO task (user_id, title) VALUES (:user_id, 'x') RETURNING id"),
    dict,
)
COUNT = compile_query(
    text("SELECT count(*) AS n FROM task WHERE user_id = :user_id"), Count
)
FAIL = compile_query(text("SELECT 1 / 0 AS n"), Count)
SLEEP = compile_query(text("SELECT count(pg_sleep(5)) AS n"), Count)
STILL_CONNECTED = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def database(settings: Settings, engine: Engine) -> AsyncIterator[Database]:
    one = settings.model_copy(update={"DB_POOL_SIZE": 1, "DB_POOL_TIMEOUT": 0.5})
    url = settings.DATABASE_URL
    assert url is not None
    database = Database(one, parse_database_url(url.get_secret_value()))
    await database.open()
    yield database
    await database.close()


class Name(TypedDict):
    name: str


async def test_the_urls_application_name_names_the_connections(
    settings: Settings,
) -> None:
    """`?application_name=` in DATABASE_URL is what pg_stat_activity shows (the
    service's own name replaced it: an operator trial); without it, task-api."""
    url = settings.DATABASE_URL
    assert url is not None
    name = compile_query(
        text("SELECT current_setting('application_name') AS name"), Name
    )
    base = url.get_secret_value()
    joined = "&" if "?" in base else "?"
    for query, expected in ((f"{joined}application_name=opr", "opr"), ("", "task-api")):
        parsed = parse_database_url(base + query)
        database = Database(settings, parsed)
        await database.open()
        try:
            assert await database.fetch_one(name) == {"name": expected}
        finally:
            await database.close()


async def _log_queries(database: Database) -> list[str]:
    """Every statement the pool's one connection sends from now on."""
    sent: list[str] = []
    connection = await database.pool.acquire()
    connection.add_query_logger(lambda logged: sent.append(logged.query))
    database.pool.release(connection)
    return sent


async def test_write_one_sends_no_begin(database: Database) -> None:
    sent = await _log_queries(database)
    await database.write_one(INSERT, user_id=new_user_id())
    await anyio.sleep(0)  # query loggers are called soon after, not during
    assert sent == [INSERT.sql]


async def test_transaction_wraps_its_statements(database: Database) -> None:
    sent = await _log_queries(database)
    async with database.transaction() as tx:
        await tx.execute(INSERT, user_id=new_user_id())
    await anyio.sleep(0)
    assert [q.split()[0].upper().rstrip(";") for q in sent] == [
        "BEGIN",
        "INSERT",
        "COMMIT",
    ]


async def test_failing_second_statement_leaves_nothing_behind(
    database: Database,
) -> None:
    user = new_user_id()
    with pytest.raises(asyncpg.DivisionByZeroError):  # noqa: PT012 - the block is the unit
        async with database.transaction() as tx:
            await tx.execute(INSERT, user_id=user)
            await tx.fetch_one(FAIL)
    assert await database.fetch_one(COUNT, user_id=user) == {"n": 0}


async def _server_pid(database: Database) -> int:
    """The server process of the connection the pool hands out next."""
    connection = await database.pool.acquire()
    pid = connection.get_server_pid()
    database.pool.release(connection)
    return pid


async def _drop_the_connection(database: Database, engine: Engine) -> None:
    pid = await _server_pid(database)
    with engine.begin() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


async def test_a_statement_abandoned_mid_way_leaves_no_busy_connection(
    database: Database,
) -> None:
    """A cancelled request's connection may still be waiting for the server: it
    is closed, and the next request gets a fresh one that works."""
    pid = await _server_pid(database)
    with anyio.move_on_after(0.2):
        await database.fetch_one(SLEEP)
    assert await database.fetch_one(COUNT, user_id="anyone") == {"n": 0}
    assert await _server_pid(database) != pid


async def test_a_statement_abandoned_mid_way_stops_on_the_server(
    database: Database, engine: Engine
) -> None:
    """Its connection is closed politely, after asyncpg's cancel request: the
    statement does not run on (holding a server connection, and its locks)."""
    pid = await _server_pid(database)
    with anyio.move_on_after(0.2):
        await database.fetch_one(SLEEP)
    alive = 1
    with anyio.move_on_after(2):  # the statement would run 5 s
        while alive:
            await anyio.sleep(0.1)
            with engine.connect() as admin:
                alive = admin.execute(STILL_CONNECTED, {"pid": pid}).scalar_one()
    assert alive == 0


async def test_idle_connections_are_closed_after_db_pool_recycle(
    settings: Settings, engine: Engine
) -> None:
    url = settings.DATABASE_URL
    assert url is not None
    recycled = settings.model_copy(update={"DB_POOL_RECYCLE": 1})
    database = Database(recycled, parse_database_url(url.get_secret_value()))
    await database.open()
    try:
        pid = await _server_pid(database)
        alive = 1
        with anyio.move_on_after(5):
            while alive:
                await anyio.sleep(0.25)
                with engine.connect() as admin:
                    alive = admin.execute(STILL_CONNECTED, {"pid": pid}).scalar_one()
        assert alive == 0
        assert await database.fetch_one(COUNT, user_id="anyone") == {"n": 0}
    finally:
        await database.close()


async def test_read_is_retried_on_a_dropped_connection(
    database: Database, engine: Engine
) -> None:
    user = new_user_id()
    await database.write_one(INSERT, user_id=user)
    await _drop_the_connection(database, engine)
    assert await database.fetch_one(COUNT, user_id=user) == {"n": 1}


async def test_read_is_retried_when_the_server_reports_its_connection_failing(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PgBouncer's KILL (and a server shutting down) sends an error, then closes
    the connection: the read fails before the driver sees it closed. It is run
    again on a new connection, as for a dropped one, and that one is not reused
    (a scale-out trial: 503s, `ProtocolViolationError: database removed`)."""
    user = new_user_id()
    await database.write_one(INSERT, user_id=user)
    fetchrow = gateway._Connection.fetchrow
    failed: list[Any] = []

    async def removed(connection: Any, *args: Any, **kwargs: Any) -> Any:
        if not failed:
            failed.append(connection)
            raise asyncpg.exceptions.ProtocolViolationError("database removed")
        return await fetchrow(connection, *args, **kwargs)

    monkeypatch.setattr(gateway._Connection, "fetchrow", removed)
    assert await database.fetch_one(COUNT, user_id=user) == {"n": 1}
    assert failed[0].is_closed()


async def test_write_is_not_retried_when_the_server_reports_its_connection_failing(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unlike a read: the error may have come after the write was applied."""
    user = new_user_id()
    fetchrow = gateway._Connection.fetchrow
    calls: list[Any] = []

    async def removed(connection: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(connection)
        raise asyncpg.exceptions.ProtocolViolationError("database removed")

    monkeypatch.setattr(gateway._Connection, "fetchrow", removed)
    with pytest.raises(DatabaseUnavailable):
        await database.write_one(INSERT, user_id=user)
    assert len(calls) == 1
    monkeypatch.setattr(gateway._Connection, "fetchrow", fetchrow)
    assert await database.fetch_one(COUNT, user_id=user) == {"n": 0}


async def test_write_is_not_retried_on_a_dropped_connection(
    database: Database, engine: Engine
) -> None:
    user = new_user_id()
    await _drop_the_connection(database, engine)
    with pytest.raises(DatabaseUnavailable):
        await database.write_one(INSERT, user_id=user)
    assert await database.fetch_one(COUNT, user_id=user) == {"n": 0}


async def test_a_write_the_driver_never_sent_runs_on_another_connection(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server closes an idle connection just as a write begins on it: asyncpg,
    still taking in the server's error, refuses to start the statement. Nothing
    was sent, so it runs once on another connection (a trial: a 503 saying the
    create "may have been made"), and that connection is not reused."""
    user = new_user_id()
    fetchrow = gateway._Connection.fetchrow
    refused: list[Any] = []

    async def mid_error(connection: Any, *args: Any, **kwargs: Any) -> Any:
        if not refused:
            refused.append(connection)
            raise asyncpg.exceptions.InternalClientError(
                "cannot switch to state 12; another operation (2) is in progress"
            )
        return await fetchrow(connection, *args, **kwargs)

    monkeypatch.setattr(gateway._Connection, "fetchrow", mid_error)
    await database.write_one(INSERT, user_id=user)
    assert refused[0].is_closed()
    assert await database.fetch_one(COUNT, user_id=user) == {"n": 1}


@pytest.mark.parametrize("refused_at", ["BEGIN", "INSERT", "COMMIT"])
async def test_a_transaction_the_driver_could_not_send_is_run_again(
    database: Database, monkeypatch: pytest.MonkeyPatch, refused_at: str
) -> None:
    """As above, at a transaction's BEGIN or a statement inside it: the
    connection is dropped, so the server rolls back whatever the transaction had
    done, and nothing of it is left. `again_on_conflict` runs it again (it was a
    503 saying the change "may have been made")."""
    user = new_user_id()
    execute = gateway._Connection.execute
    fetchrow = gateway._Connection.fetchrow
    refused: list[Any] = []

    def refuse(connection: Any, sql: str) -> None:
        if sql.startswith(refused_at) and not refused:
            refused.append(connection)
            raise asyncpg.exceptions.InternalClientError(
                "cannot switch to state 12; another operation (2) is in progress"
            )

    async def execute_or_refuse(connection: Any, sql: str, *args: Any) -> Any:
        refuse(connection, sql)
        return await execute(connection, sql, *args)

    async def fetchrow_or_refuse(connection: Any, sql: str, *args: Any) -> Any:
        refuse(connection, sql)
        return await fetchrow(connection, sql, *args)

    monkeypatch.setattr(gateway._Connection, "execute", execute_or_refuse)
    monkeypatch.setattr(gateway._Connection, "fetchrow", fetchrow_or_refuse)

    async def two_inserts() -> None:
        async with database.transaction() as tx:
            await tx.write_one(INSERT, user_id=user)
            await tx.write_one(INSERT, user_id=user)

    await gateway.again_on_conflict(two_inserts)
    assert refused[0].is_closed()
    assert await database.fetch_one(COUNT, user_id=user) == {"n": 2}


async def test_a_statement_a_pooler_lost_is_run_again_without_the_cache(
    database: Database,
) -> None:
    """As behind PgBouncer 1.18 in transaction mode: the server connection a
    statement reaches lacks the prepared statement asyncpg cached (here: it is
    deallocated behind asyncpg's back). Nothing ran, so it is run once more, on
    a new connection, and the cache is turned off for good: it was a 500."""
    user = new_user_id()
    await database.write_one(INSERT, user_id=user)  # INSERT prepared and cached
    idle = database.pool._idle[-1][0]
    await idle.execute("DEALLOCATE ALL")
    await database.write_one(INSERT, user_id=user)
    assert idle.is_closed()
    assert database._cache_size == 0
    assert await database.fetch_one(COUNT, user_id=user) == {"n": 2}


async def test_prepared_statements_are_named_for_their_process(
    database: Database,
) -> None:
    """asyncpg numbers statements per process: two workers behind one pooler
    named different statements alike, and one ran with the other's values."""
    await database.fetch_one(COUNT, user_id=new_user_id())
    connection = database.pool._idle[-1][0]
    names = await connection.fetch("SELECT name FROM pg_prepared_statements")
    assert names
    assert all(n["name"].endswith(f"_{os.getpid():x}") for n in names)


@pytest.mark.parametrize(
    ("condition", "error"),
    [
        ("deadlock_detected", Conflict),
        ("serialization_failure", Conflict),  # a role's default isolation
        ("lock_not_available", LockTimeout),  # a role's lock_timeout
        # a failover, or a role whose transactions are read-only by default
        ("read_only_sql_transaction", DatabaseRefused),
        # statement_timeout: rolled back (its 503 said it "may have been made")
        ("query_canceled", Cancelled),
    ],
)
async def test_errors_that_mean_come_back_later_are_503s(
    database: Database, condition: str, error: type[DatabaseUnavailable]
) -> None:
    """What PostgreSQL raises when running the statement again later may
    succeed; the service handles some itself (a batch's deadlock), the rest
    reach the client as 503 + Retry-After, never as a 500."""
    with pytest.raises(error) as raised:
        await database.write_one(_raising(condition))
    assert raised.value.status_code == 503
    assert raised.value.headers["Retry-After"]
    assert raised.value.detail != WRITE_UNKNOWN  # refused: nothing was written


async def test_an_unavailable_database_is_logged_with_the_servers_reason(
    settings: Settings,
    database: Database,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database that does not exist, a refused login, a pooler refusing a
    setting: permanent, and only the server's words tell them from an outage
    (the log named the exception class alone). Once, not once per request; and
    once more when the database answers again, with how many requests failed."""
    url = make_url(
        str(settings.DATABASE_URL and settings.DATABASE_URL.get_secret_value())
    )
    missing = url.set(database="no_such_database_test").render_as_string(False)
    unreachable = Database(settings, parse_database_url(missing))
    await unreachable.open()
    try:
        for _ in range(3):  # one line for the three (every request, in an outage)
            with pytest.raises(DatabaseUnavailable):
                await unreachable.fetch_one(COUNT, user_id="u")
    finally:
        await unreachable.close()
    reason = (
        "database unavailable: InvalidCatalogNameError: database "
        '"no_such_database_test" does not exist'
    )
    assert caplog.messages.count(reason) == 1
    monkeypatch.setattr(gateway._unavailable, "quiet", 0)  # long enough since
    await database.fetch_one(COUNT, user_id="u")  # a database that answers
    [again] = [r for r in caplog.records if r.getMessage() == REACHABLE]
    assert again.__dict__["failures"] >= 3


async def test_an_abandoned_connection_is_part_of_the_outage_whose_end_is_said(
    database: Database,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that does not answer in time: its abandoned connections count in
    the outage, so the line saying it answers again comes too (it did not, and a
    frozen database had no end in the log: an operations trial)."""
    monkeypatch.setattr(database, "_operation_timeout", 0.3)
    monkeypatch.setattr(gateway._unavailable, "quiet", 0)
    with pytest.raises(DatabaseUnavailable):
        await database.fetch_one(SLEEP)
    assert caplog.messages.count(ABANDONED) == 1
    await database.fetch_one(COUNT, user_id="u")
    [again] = [r for r in caplog.records if r.getMessage() == REACHABLE]
    assert again.__dict__["failures"] >= 1


async def test_a_statement_timeout_keeps_its_connection(database: Database) -> None:
    """A statement cancelled by statement_timeout is a 503, but the server
    answered and the connection is idle again: reused, not replaced by a new
    one (a TLS handshake with Neon) for every slow statement."""
    pid = await _server_pid(database)
    with pytest.raises(DatabaseUnavailable):
        await database.write_one(_raising("query_canceled"))
    assert await _server_pid(database) == pid


async def test_a_statement_prepared_before_a_schema_change_is_a_conflict(
    database: Database, engine: Engine
) -> None:
    """A migration that changes a column's type (a rolling deploy) makes a
    statement prepared before it fail inside a transaction (asyncpg re-prepares
    it only outside one): a Conflict, which the service runs again, not a 500;
    the next run prepares it anew."""
    table = f"changing_{uuid.uuid4().hex}"
    with engine.begin() as admin:
        admin.execute(text(f"CREATE TABLE {table} (v integer)"))
    try:
        read = compile_query(text(f"SELECT v AS n FROM {table}"), Count)
        async with database.transaction() as tx:
            await tx.fetch_one(read)
        with engine.begin() as admin:
            admin.execute(text(f"ALTER TABLE {table} ALTER COLUMN v TYPE bigint"))
        with pytest.raises(Conflict):
            async with database.transaction() as tx:
                await tx.fetch_one(read)
        async with database.transaction() as tx:
            await tx.fetch_one(read)
    finally:
        with engine.begin() as admin:
            admin.execute(text(f"DROP TABLE {table}"))


def _raising(condition: str) -> Query[dict[str, object]]:
    return compile_query(
        text(f"DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '{condition}'; END $$"),
        dict,
    )


async def test_connects_refused_the_statement_timeout_at_once_go_on_without_it(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As PgBouncer refuses it (`unsupported startup parameter`): every connect
    refused at the same moment is made again without it, and one warning says
    so. Seven of eight concurrent first reads were 503s (a review)."""
    connect = asyncpg.connect

    async def like_pgbouncer(
        *args: Any, server_settings: dict[str, str], **kw: Any
    ) -> Any:
        await anyio.sleep(0.05)  # every connect is in flight before one is refused
        if "statement_timeout" in server_settings:
            raise asyncpg.ProtocolViolationError(
                "unsupported startup parameter: statement_timeout"
            )
        return await connect(*args, server_settings=server_settings, **kw)

    monkeypatch.setattr(asyncpg, "connect", like_pgbouncer)
    eight = settings.model_copy(update={"DB_POOL_SIZE": 8})
    url = settings.DATABASE_URL
    assert url is not None
    database = Database(eight, parse_database_url(url.get_secret_value()))
    await database.open()
    counts: list[Count | None] = []

    async def read() -> None:
        counts.append(await database.fetch_one(COUNT, user_id=new_user_id()))

    try:
        async with anyio.create_task_group() as readers:
            for _ in range(8):
                readers.start_soon(read)
    finally:
        await database.close()
    assert counts == [{"n": 0}] * 8
    refused = [m for m in caplog.messages if "refuses statement_timeout" in m]
    assert len(refused) == 1


async def test_full_pool_is_unavailable_after_the_pool_timeout(
    database: Database,
) -> None:
    held = await database.pool.acquire()
    try:
        with pytest.raises(DatabaseUnavailable):
            await database.fetch(COUNT, user_id="anyone")
    finally:
        database.pool.release(held)


async def test_a_connect_that_times_out_is_not_a_full_pool(settings: Settings) -> None:
    """A server that accepts and never answers: the connect's own timeout means
    the database is unavailable, not that the pool had no connection free (which
    would tell an operator to grow the pool)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        url = f"postgresql://postgres@127.0.0.1:{port}/x?connect_timeout=1"
        patient = settings.model_copy(update={"DB_POOL_TIMEOUT": 10})
        database = Database(patient, parse_database_url(url))
        await database.open()
        try:
            with pytest.raises(DatabaseUnavailable) as raised:
                await database.fetch(COUNT, user_id="anyone")
        finally:
            await database.close()
    assert raised.value.detail == DatabaseUnavailable.detail


async def test_waiters_for_a_connection_are_served_in_arrival_order(
    settings: Settings, engine: Engine
) -> None:
    """400 clients in a closed loop on a pool of 10, 4,000 requests: each is
    numbered when it asks for a connection. Served in arrival order, a request
    finishes a few dozen numbers at most behind the newest finished one.
    asyncpg's own queue lets newcomers take a freed connection before the waiter it
    woke, and that waiter goes to the back of the line: hundreds behind here.
    (Order, not time, so a slow machine cannot fail it.)"""
    ten = settings.model_copy(update={"DB_POOL_SIZE": 10})
    url = settings.DATABASE_URL
    assert url is not None
    database = Database(ten, parse_database_url(url.get_secret_value()))
    await database.open()
    user = new_user_id()

    async def read() -> None:
        await database.fetch_one(COUNT, user_id=user)

    async with anyio.create_task_group() as group:  # all ten connections open first
        for _ in range(10):
            group.start_soon(read)
    asked = 0
    finished: list[int] = []  # arrival numbers, in the order the requests finished

    async def client() -> None:
        nonlocal asked
        while asked < 4000:
            number, asked = asked, asked + 1
            await read()
            finished.append(number)

    try:
        async with anyio.create_task_group() as group:
            for _ in range(400):
                group.start_soon(client)
    finally:
        await database.close()
    newest, behind = 0, 0
    for number in finished:
        newest = max(newest, number)
        behind = max(behind, newest - number)
    assert behind < 200, f"a request finished {behind} arrivals late"


class Stamp(TypedDict):
    at: datetime


ECHO_STAMP = compile_query(text("SELECT CAST(:at AS timestamptz) AS at"), Stamp)


async def test_health_checks_are_answered_while_every_pooled_connection_is_held(
    database: Database,
) -> None:
    """Requests holding the whole pool (waiting on a lock, say) are not a
    database that cannot be reached: the checks have a connection of their own."""
    async with database.transaction():  # the pool's one connection
        with anyio.fail_after(2):
            await database.ping()
            await database.ping()


async def test_no_health_check_connection_is_opened_once_closed(
    settings: Settings,
) -> None:
    url = settings.DATABASE_URL
    assert url is not None
    database = Database(settings, parse_database_url(url.get_secret_value()))
    await database.open()
    await database.ping()
    await database.close()
    with pytest.raises(DatabaseUnavailable):
        await database.ping()


async def test_a_health_check_connection_the_server_closed_is_replaced(
    database: Database, engine: Engine
) -> None:
    sessions = text(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'task-api'"
    )
    with engine.connect() as admin:
        before = set(admin.scalars(sessions))
    await database.ping()
    with engine.begin() as admin:
        [probe] = set(admin.scalars(sessions)) - before
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": probe})
    await database.ping()


async def test_timestamps_read_back_exactly_whatever_the_session_defaults(
    settings: Settings,
) -> None:
    """Timestamps travel as text: a database (or a URL's `options`) with another
    DateStyle and TimeZone must not change what is read."""
    url = settings.DATABASE_URL
    assert url is not None
    options = {"options": "-c DateStyle=SQL,DMY -c TimeZone=Asia/Kolkata"}
    with_options = make_url(url.get_secret_value()).update_query_dict(options)
    database = Database(
        settings,
        parse_database_url(with_options.render_as_string(hide_password=False)),
    )
    await database.open()
    try:
        sent = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-3)))
        row = await database.fetch_one(ECHO_STAMP, at=sent)
    finally:
        await database.close()
    assert row is not None
    assert row["at"] == sent
    assert row["at"].utcoffset() == timedelta(0)
    assert row["at"].microsecond == 6
