"""The one way the service talks to PostgreSQL: a pool of asyncpg connections
(`pool.py`), and exactly the operations the service needs.

- `fetch` / `fetch_one`: a read. A pooled connection the server dropped (Neon scaling
  to zero, a restart) is replaced and the read retried once.
- `write_one`: one statement, atomic by itself: no BEGIN/COMMIT round trips, and
  not retried when its connection died (it may have committed); only when it
  cannot have run (a pooler lost its prepared statement: `StatementLost`).
- `transaction()`: several statements, one commit (`savepoint()` inside it undoes a
  block that raises, and keeps the rest).

Statements are built with SQLAlchemy Core from the SQLModel tables and compiled once
per shape (`Query`); rows come back as the TypedDict the query names. Driver errors
stop here: a connection-level failure is `DatabaseUnavailable` (503), a lock wait
past `lock_timeout` is `LockTimeout`, a transaction PostgreSQL rolled back to resolve
a deadlock or a serialization failure is `Conflict` (both 503s too, unless the
service handles them), so the service never imports the driver. An operation the
server has not answered within the statement timeout and a grace is abandoned:
`DatabaseUnavailable`."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Generic, TypeVar, cast

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from app.config import Settings
from app.db.pool import Connection, Pool
from app.db.url import DatabaseURL
from app.errors import DatabaseRefused, DatabaseUnavailable
from app.observability import metrics
from app.observability.logging import Throttled, failure

logger = logging.getLogger("app.db")
# One line per reason every 10 s, not one per failing request, in an outage; and
# one when the database answers again.
_unavailable = Throttled(logger)
_cancelled = Throttled(logger)
REACHABLE = "database reachable again"
ABANDONED = "database did not answer in time: connection abandoned"


def unanswered(what: str) -> None:
    """`what` had no answer from the database in its time: said as part of the
    outage (a frozen server was said only when its operations were abandoned,
    17 s in: an operations trial)."""
    _unavailable.log(f"database unavailable: no answer to {what}")


R = TypeVar("R", bound=Mapping[str, Any])
A = TypeVar("A")
_DIALECT = asyncpg_dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
# SQLSTATE classes of a server that cannot serve us now: 08 connection exception,
# 53 insufficient resources (too many connections), 57 operator intervention
# (shutdown, statement timeout, cannot connect now), XX internal error (as from a
# connection's prepared statement naming a type dropped and made again: "cache
# lookup failed for type").
_UNAVAILABLE_CLASSES = ("08", "53", "57", "XX")
# undefined_table, undefined_object: the schema is gone under a running worker (a
# Neon branch reset, a restore into a database never migrated); undefined_column,
# invalid_column_reference (`ON CONFLICT` without its key): half there, as while
# `pg_restore --clean` runs. Unavailable, and the connection is not reused (its
# statement cache is stale), as for the classes above; each was a 500 before
# (trials).
_SCHEMA_GONE = ("42P01", "42704", "42703", "42P10")
_LOCK_NOT_AVAILABLE = "55P03"
# Rolled back whole, so running it again may succeed: deadlock_detected, and
# serialization_failure (a role whose default isolation is repeatable read or
# serializable).
_CONFLICTS = ("40P01", "40001")
# read_only_sql_transaction: the server is (or has just become) a standby, as
# during a failover, and a new connection may reach the new primary; or the role's
# transactions are read-only by default. Refused either way: nothing was written.
_READ_ONLY = "25006"
# invalid_sql_statement_name, duplicate_prepared_statement: a transaction pooler
# (PgBouncer before 1.21, or without max_prepared_statements) ran the statement on
# a server connection that lacks the prepared statement asyncpg named, or has
# another client's of that name. Nothing ran.
_STATEMENT_LOST = ("26000", "42P05")
# query_canceled (statement_timeout, or an operator's pg_cancel_backend): rolled
# back, and the connection is idle again.
_CANCELED = "57014"
# insufficient_privilege, undefined_function: the statement calls what this
# server does not let the role call, or does not have.
_REFUSED = ("42501", "42883")
# The statement timeout sent unless set or behind Neon's pooler. A server that stops
# answering (paused, partitioned) never cancels anything itself: what the client
# waits for one operation is the statement timeout (this one when none is sent,
# e.g. set on the role behind PgBouncer) plus a grace.
STATEMENT_TIMEOUT_MS = 15_000
# The health checks' round trip: it fails where the migrations' table is missing.
PROBE = "SELECT 1 FROM alembic_version LIMIT 1"
_GRACE_SECONDS = 2.0
NO_ANSWER = "The database did not answer in time; retry after Retry-After seconds"
# A write whose connection failed, or got no answer, after it was sent: the server
# may have applied it, or may still.
WRITE_UNKNOWN = (
    "The database failed during the change, which may have been made: retry after "
    "Retry-After seconds, with the same Idempotency-Key or If-Match where the "
    "request takes one, to make it once"
)


class LockTimeout(DatabaseUnavailable):
    """A statement waited longer than lock_timeout (the transaction's, or one
    set on the role or database)."""

    detail = "The tasks are locked by another operation; retry after Retry-After s"


class Cancelled(DatabaseUnavailable):
    """The server cancelled the statement (`_CANCELED`): it ran past the
    statement timeout, waiting on locks or working, or an operator cancelled it
    (`pg_cancel_backend`). Rolled back, so nothing was
    written: unlike a write whose connection failed, retrying cannot make it
    twice."""

    detail = (
        "The database cancelled this operation (it ran past the statement "
        "timeout, or an operator cancelled it): nothing was changed; retry after "
        "Retry-After s"
    )


class Conflict(DatabaseUnavailable):
    """PostgreSQL rolled this transaction back, and running it again may succeed:
    to break a lock cycle or a serialization conflict with another one, or
    because a statement was prepared before a schema change (a migration of a
    rolling deploy) and its result type changed; asyncpg then forgets the
    connection's prepared statements, but retries by itself only outside a
    transaction."""

    detail = "Another operation conflicted with this one; retry after Retry-After s"


class StatementLost(Conflict):
    """A transaction pooler (`_STATEMENT_LOST`) did not find a prepared statement
    where it sent it: nothing ran. The gateway stops preparing named statements
    (`Database._without_prepared_statements`)."""

    detail = (
        "The database's pooler lost a prepared statement; retry after Retry-After s"
    )


class NotSent(Conflict):
    """The driver refused to start a statement (`_never_sent`): it never reached
    the server, and its connection is dropped, which rolls back a transaction it
    was in. Run again (`_single`, `again_on_conflict`), it may succeed."""

    detail = (
        "The connection to the database failed before this operation was sent: "
        "nothing was changed; retry after Retry-After s"
    )


# Runs of a batch or a clear that PostgreSQL rolled back to break a deadlock with
# another transaction, before a 503.
CONFLICT_ATTEMPTS = 3


async def again_on_conflict(attempt: Callable[[], Awaitable[A]]) -> A:
    """Two transactions may lock the same tasks in opposite orders (two batches,
    a batch and a clear); PostgreSQL then rolls one back whole, and it is run
    again, up to CONFLICT_ATTEMPTS times (then the Conflict is a 503). So is a
    transaction whose prepared statement a schema change made stale."""
    for _ in range(CONFLICT_ATTEMPTS - 1):
        try:
            return await attempt()
        except Conflict:
            continue
    return await attempt()


# Makes this process's prepared statements' names its own (`_Connection`).
_PROCESS = secrets.token_hex(4)


class _Connection(asyncpg.Connection):
    """An asyncpg connection whose prepared statements' names no other process
    (worker, instance) uses: asyncpg numbers them per process, so behind a
    transaction pooler that keeps no prepared statements, a statement sent to
    another server connection found another process's of the same name there,
    and ran it with its own values, or was refused them (08P01). Now it finds
    none (`_STATEMENT_LOST`: nothing ran)."""

    # Whether it names and caches its prepared statements (`Database.open`).
    prepares = True

    def _get_unique_id(self, prefix: str) -> str:
        name: str = super()._get_unique_id(prefix)  # type: ignore[misc]
        return f"{name}{_PROCESS}_{os.getpid():x}"  # forked workers share _PROCESS


@dataclass(frozen=True)
class Query(Generic[R]):
    """A statement compiled for asyncpg: its SQL, its parameters' names in
    positional order, and the values the statement itself binds."""

    sql: str
    names: tuple[str, ...]
    bound: Mapping[str, Any]
    row: type[R]

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        """The values in order; KeyError names a parameter given none."""
        return [params[n] if n in params else self.bound[n] for n in self.names]


def compile_query(statement: ClauseElement, row: type[R]) -> Query[R]:
    """Compile once; run many times with `bindparam` values. A placeholder
    without a value of its own (`bindparam("user_id")`) must be given one: a
    forgotten owner or id is an error, never a NULL that matches nothing."""
    compiled = cast(SQLCompiler, statement.compile(dialect=_DIALECT))
    names = tuple(compiled.positiontup or ())
    bound = {
        name: value
        for name, value in compiled.params.items()
        if not compiled.binds[name].required
    }
    return Query(compiled.string, names, bound, row)


_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # a protocol left mid-operation
    OSError,
)


def _never_sent(exc: BaseException) -> bool:
    """asyncpg refused to start the statement: its connection was still taking
    in an error, as when the server closes an idle connection (Neon, an
    `idle_session_timeout`) just as a statement begins on it. Nothing was sent,
    so even a write may run on another connection (a trial: a 503 saying the
    create "may have been made", 5 of 12 at the timeout's edge)."""
    return isinstance(exc, asyncpg.exceptions.InternalClientError) and str(
        exc
    ).startswith("cannot switch to state")


def _closing(exc: BaseException) -> bool:
    """The server, or a pooler (PgBouncer's KILL: `database removed`), says it is
    closing the connection: class 08, or an administrator's or a crash's shutdown.
    The error comes before the close, so the driver does not yet see it closed."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return sqlstate[:2] == "08" or sqlstate in ("57P01", "57P02")


async def _read_timestamps_as_text(connection: Connection) -> None:
    """`timestamptz` in PostgreSQL's text form, parsed by `fromisoformat`: asyncpg
    builds a datetime from the binary form in Python (~0.55 us each: with a
    task's three, most of decoding its row); PostgreSQL's text costs it ~0.1 us
    and the parse ~0.15. The values are the same aware UTC datetimes, to the
    microsecond. What the text form cannot be read back as: 'infinity' (the
    schemas refuse dates Python cannot hold), a timestamptz inside a composite
    or record, and a session that changes DateStyle; the service selects and
    sets none of them."""
    await connection.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=datetime.isoformat,
        decoder=datetime.fromisoformat,
        format="text",
    )


_Dicts = Callable[[list[asyncpg.Record]], list[dict[str, Any]]]


def _rows(records: list[asyncpg.Record]) -> list[dict[str, Any]]:
    """Records as dicts, by a function written for their columns."""
    if not records:
        return []
    return _dicts_for(tuple(records[0].keys()))(records)


@cache
def _dicts_for(names: tuple[str, ...]) -> _Dicts:
    """A function that turns records with these columns into dicts, written out
    for them as namedtuple writes its classes: a dict display over the unpacked
    values, `[{'id': v0, 'title': v1} for (v0, v1,) in records]`. For a task
    row of 14 columns it takes ~0.38 us, against ~0.68 for `dict(zip(names,
    record))`, ~0.95 for `dict(record)` (a lookup by name per value) and ~0.98
    with zip's `strict` check: 0.45 ms of a 1,000-task sync, ~50 us of a page of
    100. The names are the statement's own labels, written as string literals."""
    values = [f"v{i}" for i in range(len(names))]
    items = ", ".join(f"{name!r}: {v}" for name, v in zip(names, values, strict=True))
    unpack = "".join(f"{v}, " for v in values)
    source = f"def dicts(records):\n    return [{{{items}}} for ({unpack}) in records]"
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # the source is built above from the names
    return cast(_Dicts, namespace["dicts"])


def _translate(exc: Exception, connection: Connection | None) -> Exception:
    """A driver error as the service sees it: LockTimeout, Conflict (and
    StatementLost, NotSent), DatabaseRefused,
    DatabaseUnavailable when the connection or the server failed (rather than the
    statement), else itself."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if _never_sent(exc):
        if connection is not None:
            connection.terminate()  # mid-way through an error
        return NotSent()
    if sqlstate == _LOCK_NOT_AVAILABLE:
        return LockTimeout()
    if sqlstate in _REFUSED:
        return DatabaseRefused(failure(exc))
    if sqlstate == _READ_ONLY:
        if connection is not None:
            connection.terminate()  # the next one may reach the new primary
        return DatabaseRefused(failure(exc))
    if sqlstate in _STATEMENT_LOST:
        return StatementLost()
    if sqlstate == _CANCELED:
        _cancelled.log(f"database cancelled a statement: {failure(exc)}")
        return Cancelled()
    if sqlstate in _CONFLICTS or isinstance(exc, asyncpg.InvalidCachedStatementError):
        return Conflict()
    if (
        connection is None  # no connection could be had
        or connection.is_closed()  # it died under us
        or isinstance(
            exc,
            OSError
            | asyncpg.ConnectionDoesNotExistError
            | asyncpg.exceptions.InternalClientError,
        )
        or sqlstate[:2] in _UNAVAILABLE_CLASSES
        or sqlstate in _SCHEMA_GONE
    ):
        # Half-broken (the server is shutting it down, say): never reused.
        if connection is not None and not connection.is_closed():
            connection.terminate()
        # With the server's or the driver's own words (which never carry the
        # password): a refused login, a missing database, a pooler refusing a
        # setting or a certificate would otherwise look like an outage.
        _unavailable.log(f"database unavailable: {failure(exc)}")
        return DatabaseUnavailable()
    return exc


@contextmanager
def _driver_errors(connection: Connection | None) -> Iterator[None]:
    try:
        yield
    except _DRIVER_ERRORS as exc:
        translated = _translate(exc, connection)
        if translated is exc:
            raise
        raise translated from exc


class Transaction:
    """Statements on one connection inside BEGIN … COMMIT."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    async def fetch_one(self, query: Query[R], **params: Any) -> R | None:
        record = await self._connection.fetchrow(query.sql, *query.args(params))
        return None if record is None else cast(R, dict(record))

    async def write_one(self, query: Query[R], **params: Any) -> R | None:
        """A write inside the transaction: its RETURNING row (as `fetch_one`)."""
        return await self.fetch_one(query, **params)

    async def write_many(
        self, query: Query[R], values: Sequence[Mapping[str, Any]]
    ) -> list[R]:
        """The statement once per set of values, pipelined in one round trip;
        every RETURNING row, in the order of `values`."""
        if not values:
            return []
        args = [query.args(params) for params in values]
        records = await self._connection.fetchmany(query.sql, args)
        return cast(list[R], _rows(records))

    async def execute(self, query: Query[Any], **params: Any) -> None:
        await self._connection.execute(query.sql, *query.args(params))

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A block whose statements are undone when it raises (ROLLBACK TO
        SAVEPOINT); the transaction's other statements are kept."""
        async with self._connection.transaction():
            yield


class Database:
    def __init__(self, settings: Settings, url: DatabaseURL) -> None:
        self._settings = settings
        self._url = url
        self._pool: Pool | None = None
        self._connect: Callable[[], Awaitable[Connection]] | None = None
        # The health checks' connection, outside the pool (`ping`).
        self._probe: Connection | None = None
        self._closed = False
        self._ping: asyncio.Future[None] | None = None
        statement_ms = self._statement_timeout_ms() or STATEMENT_TIMEOUT_MS
        self._operation_timeout = statement_ms / 1000 + _GRACE_SECONDS

    async def open(self) -> None:
        """Create the pool. No connection is opened until one is needed, so a
        worker starts (and answers /health with 503) while the database is down."""
        settings = self._settings
        # Timestamps travel as ISO text in UTC (`_read_timestamps_as_text`).
        server_settings = {
            "application_name": self._url.application_name or "task-api",
            "TimeZone": "UTC",
            "DateStyle": "ISO",
        }
        if statement_ms := self._statement_timeout_ms():
            server_settings["statement_timeout"] = str(statement_ms)
        connect_args = {"timeout": 5, **self._url.connect_args}
        self._cache_size = self._statement_cache_size()

        async def connect() -> Connection:
            while True:
                cache_size, sent = self._cache_size, dict(server_settings)
                try:
                    connection: Connection = await asyncpg.connect(
                        self._url.dsn,
                        statement_cache_size=cache_size,
                        connection_class=_Connection,
                        server_settings=sent,
                        **connect_args,
                    )
                    break
                except TimeoutError:
                    # asyncpg's says nothing: an outage's line would read only
                    # "database unavailable: TimeoutError".
                    seconds = connect_args["timeout"]
                    raise TimeoutError(
                        f"no answer to a new connection within {seconds} s"
                    ) from None
                except asyncpg.ProtocolViolationError as exc:
                    timeout_refused = "statement_timeout" in str(exc)
                    if not timeout_refused or "statement_timeout" not in sent:
                        raise
                    # Connects refused at once all try again; one warns.
                    if server_settings.pop("statement_timeout", None) is not None:
                        logger.warning(
                            "the database (a pooler: PgBouncer) refuses "
                            "statement_timeout as a startup setting: connecting "
                            "without it; set DB_STATEMENT_TIMEOUT_MS=0 and the "
                            "timeout on the role"
                        )
            cast(_Connection, connection).prepares = cache_size > 0
            try:
                await _read_timestamps_as_text(connection)
            except BaseException:  # failed or cancelled: never left open
                connection.terminate()
                raise
            return connection

        self._connect = connect
        self._pool = Pool(
            connect,
            size=settings.DB_POOL_SIZE + settings.DB_MAX_OVERFLOW,
            idle_lifetime=settings.DB_POOL_RECYCLE
            if settings.DB_POOL_RECYCLE > 0
            else None,
        )

    def _statement_cache_size(self) -> int:
        """Named prepared statements save a round trip per statement, but a pooler
        in transaction mode may run the next statement on another server
        connection, where the name is unknown: off behind Neon's pooler unless set."""
        if self._settings.DB_STATEMENT_CACHE_SIZE is not None:
            return self._settings.DB_STATEMENT_CACHE_SIZE
        return 0 if self._behind_neons_pooler() else 100

    def _statement_timeout_ms(self) -> int:
        """Sent as a startup parameter, which PgBouncer refuses unless configured
        to ignore it (a connection is then made again without it: `open`), so
        none behind Neon's, known by its host, unless set."""
        if self._settings.DB_STATEMENT_TIMEOUT_MS is not None:
            return self._settings.DB_STATEMENT_TIMEOUT_MS
        return 0 if self._behind_neons_pooler() else STATEMENT_TIMEOUT_MS

    def _behind_neons_pooler(self) -> bool:
        return "-pooler" in self._url.host

    async def close(self) -> None:
        self._closed = True  # no health check opens a connection any more
        if self._probe is not None:
            self._probe.terminate()
        if self._pool is not None:
            await self._pool.close()

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("Database.open() was not called")
        return self._pool

    async def fetch(self, query: Query[R], **params: Any) -> list[R]:
        """All rows of a read (`_single`)."""
        records = await self._single(lambda c: c.fetch(query.sql, *query.args(params)))
        return cast(list[R], _rows(records))

    async def fetch_one(self, query: Query[R], **params: Any) -> R | None:
        """The first row of a read, or None (`_single`)."""
        record = await self._single(
            lambda c: c.fetchrow(query.sql, *query.args(params))
        )
        return None if record is None else cast(R, dict(record))

    async def write_one(self, query: Query[R], **params: Any) -> R | None:
        """Run one statement outside any transaction block (`_single`); its
        RETURNING row."""
        record = await self._single(
            lambda c: c.fetchrow(query.sql, *query.args(params)), writes=True
        )
        return None if record is None else cast(R, dict(record))

    @asynccontextmanager
    async def transaction(
        self, *, lock_timeout_ms: int | None = None
    ) -> AsyncIterator[Transaction]:
        """BEGIN … COMMIT around the block (ROLLBACK when it raises)."""
        async with self._connection(writes=True) as connection:
            with _driver_errors(connection):
                async with connection.transaction():
                    if lock_timeout_ms is not None:
                        await connection.execute(
                            f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"
                        )
                    yield Transaction(connection)

    async def ping(self) -> None:
        """One round trip (health checks); DatabaseUnavailable when it fails.
        Checks that arrive while one is on its way share it: a flood of them
        holds one connection, not one each."""
        if self._ping is None or self._ping.done():
            self._ping = asyncio.ensure_future(self._round_trip())
            # Read even when every check waiting on it gave up first.
            self._ping.add_done_callback(
                lambda ping: None if ping.cancelled() else ping.exception()
            )
        await asyncio.shield(self._ping)

    async def _round_trip(self) -> None:
        """PROBE on a connection of the health checks' own, outside the pool:
        requests holding every pooled connection (waiting on a lock, say) are
        not a database that cannot be reached. Opened when first needed; one
        that fails is dropped, and if it was not new (the server may have closed
        it while idle, as Neon does), the check is made once more on a new one."""
        if self._connect is None:
            raise RuntimeError("Database.open() was not called")
        while True:
            probe = self._probe
            fresh = probe is None or probe.is_closed()
            answer = asyncio.timeout(self._operation_timeout)
            try:
                async with answer:
                    if probe is None or fresh:
                        if self._closed:
                            raise DatabaseUnavailable(detail="shutting down")
                        probe = self._probe = await self._connect()
                    # The simple query protocol: no statement prepared, which
                    # a transaction pooler might not find again. The schema's
                    # table too: a database reset under the worker is not ready.
                    await probe.execute(PROBE)
                    _unavailable.ended(REACHABLE)
                    return
            except (*_DRIVER_ERRORS, TimeoutError) as exc:
                if self._probe is not None:
                    self._probe.terminate()
                    self._probe = None
                if fresh:
                    failed: Exception = exc
                    if answer.expired():  # a bare TimeoutError, as above
                        seconds = self._operation_timeout
                        failed = TimeoutError(f"no answer within {seconds:g} s")
                    raise _translate(failed, None) from exc

    async def _single(
        self, run: Callable[[Connection], Awaitable[Any]], *, writes: bool = False
    ) -> Any:
        """One statement on a pooled connection, run again once on another when
        it cannot have run: a read whose connection was dropped (a write's may
        have been applied), any the driver never sent, or any whose prepared
        statement a pooler lost."""
        for attempt in (1, 2):
            try:
                async with self._connection(writes=writes) as connection:
                    try:
                        return await run(connection)
                    except _DRIVER_ERRORS as exc:
                        dropped = not writes and (
                            connection.is_closed() or _closing(exc)
                        )
                        if attempt == 2 or not dropped:
                            with _driver_errors(connection):
                                raise
                        connection.terminate()
            # Nothing ran (and for StatementLost, `_connection` turned the
            # statement cache off).
            except (NotSent, StatementLost):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _without_prepared_statements(self) -> None:
        """A transaction pooler that keeps no prepared statements (PgBouncer
        before 1.21, or without max_prepared_statements) is in between: new
        connections keep none (asyncpg's statement cache off), and the idle ones,
        whose caches name statements the pooler may not find, are closed."""
        if self._cache_size:
            self._cache_size = 0
            self.pool.close_idle()
            logger.warning(
                "the database is reached through a pooler that keeps no prepared "
                "statements (PgBouncer): statement cache off; set "
                "DB_STATEMENT_CACHE_SIZE=0 to start so"
            )

    @asynccontextmanager
    async def _connection(self, *, writes: bool = False) -> AsyncIterator[Connection]:
        """A pooled connection within DB_POOL_TIMEOUT (waiters served in arrival
        order), or DatabaseUnavailable; and DatabaseUnavailable when the block
        (a read, a write, a transaction) has not finished `_operation_timeout`
        later: the server stopped answering, the connection is dropped. A block
        that `writes` and fails so, or on a failed connection, may have been
        applied: its 503 says so."""
        pool = self.pool
        waiting = asyncio.timeout(self._settings.DB_POOL_TIMEOUT)
        try:
            async with waiting:
                connection = await pool.acquire()
        except TimeoutError as exc:
            if not waiting.expired():  # the connect's own timeout: no answer
                raise _translate(exc, None) from exc
            metrics.POOL_TIMEOUTS.inc()
            raise DatabaseUnavailable(detail="no database connection free") from None
        except _DRIVER_ERRORS as exc:
            raise _translate(exc, None) from exc
        reusable = False  # cancelled or timed out mid-statement: still talking
        silent = False
        no_answer = WRITE_UNKNOWN if writes else NO_ANSWER

        def abandon() -> None:
            """No answer in time: the connection is dropped, so whatever awaits it
            (a statement, a ROLLBACK on the way out of a transaction) fails at
            once instead of waiting on a server that may never answer."""
            nonlocal silent
            silent = True
            # Part of the outage: its end is said too (it was not, an operations
            # trial), and many at once make one line.
            _unavailable.log(ABANDONED)
            connection.terminate()

        deadline = asyncio.get_running_loop().call_later(
            self._operation_timeout, abandon
        )
        try:
            yield connection
            reusable = True
            _unavailable.ended(REACHABLE)
        except TimeoutError:
            raise
        except Exception as exc:
            reusable = True  # an error reported in full: the connection is idle again
            if isinstance(exc, StatementLost):
                self._without_prepared_statements()
            if silent or (writes and type(exc) is DatabaseUnavailable):
                # no answer, or the connection failed (not a lock or a conflict,
                # which roll back): a write's outcome is unknown
                raise DatabaseUnavailable(detail=no_answer) from None
            raise
        finally:
            deadline.cancel()
            # One that names its statements, once a pooler was found to lose
            # them (`_without_prepared_statements`), is not used again.
            stale = not self._cache_size and cast(_Connection, connection).prepares
            pool.release(connection, reusable=reusable and not stale)
        if silent:  # a read gave up on the dropped connection: not retried
            raise DatabaseUnavailable(detail=no_answer)
