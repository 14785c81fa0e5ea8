"""Every query on tasks lives here, and every one is filtered by its owner.

Statements are built from the SQLModel tables with `bindparam` placeholders and
compiled once per shape (which fields, which filters, which sort); each request only
binds its values and runs the compiled statement through the database gateway."""

import copy
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import (
    Annotated,
    Any,
    NamedTuple,
    NoReturn,
    Required,
    TypedDict,
    TypeVar,
    cast,
)

import orjson
from pydantic import (
    BaseModel,
    Field,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from sqlalchemy import (
    BigInteger,
    BindParameter,
    Boolean,
    Column,
    ColumnElement,
    DateTime,
    Interval,
    Select,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    case,
    delete,
    exists,
    extract,
    false,
    func,
    literal_column,
    null,
    or_,
    select,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert

from app.db.gateway import (
    Conflict,
    Database,
    LockTimeout,
    Query,
    Refused,
    Transaction,
    compile_query,
)
from app.errors import (
    AppError,
    DatabaseUnavailable,
    FailedDependency,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidCursor,
    PreconditionFailed,
    SyncTokenExpired,
    TaskNotFound,
    validation_error,
)
from app.models import CURRENT_XID, IdempotencyKey, Priority, Task, TaskTombstone
from app.schemas import (
    BatchOp,
    ErrorBody,
    JsonTaskId,
    TaskCreate,
    TaskListQuery,
    TaskPatch,
    TaskPublic,
    TaskRecord,
    TaskReplace,
    ToggleBody,
)
from app.services.cursor import CursorCodec

logger = logging.getLogger("app.sync")

TASK: Table = Task.__table__  # type: ignore[attr-defined]
# What a statement returns of a task: TaskRecord's fields (never change_xid).
COLUMNS = tuple(TASK.c[name] for name in TaskRecord.__annotations__)
TOMBSTONE: Table = TaskTombstone.__table__  # type: ignore[attr-defined]
# Tombstones outlive the sync tokens that may need them by a day: a delete whose
# transaction began (deleted_at) before a token was issued may commit after it.
TOMBSTONE_GRACE = timedelta(days=1)
# One single-task delete in this many (counted per worker) also sweeps expired
# tombstones, up to SWEEP_BATCH: three per delete, more than a delete leaves, so
# they never pile up, and the other deletes are a plain statement (the sweep
# tripled PostgreSQL's work). A clear-completed sweeps twice what it cleared.
SWEEP_EVERY = 32
SWEEP_BATCH = 100
IDEMPOTENCY: Table = IdempotencyKey.__table__  # type: ignore[attr-defined]
IDEMPOTENCY_TTL = timedelta(hours=24)
# How long a keyed request waits for a lock: the key's (another in-flight request
# with it: 409), or one its work needs (a row, the table: 503).
IDEMPOTENCY_WAIT_MS = 5000
# The upper bound of a sync's transaction ids before its first page: none.
NO_CEILING = 2**63 - 1
# A token's snapshot as text, at most: a token carries two, with ~150 characters
# more, and its base64 must stay under the 16,000 characters `since` takes.
MAX_SNAPSHOT_TEXT = 5_800
# Runs of a batch or a clear that PostgreSQL rolled back to break a deadlock with
# another transaction, before a 503.
CONFLICT_ATTEMPTS = 3

# Defaults an omitted (PUT) or nulled (PATCH) field returns to.
_DEFAULTS: dict[str, Any] = {
    "description": None,
    "priority": Priority.none,
    "tags": [],
    "due_at": None,
}
_TIMESTAMPTZ = DateTime(timezone=True)


class _Id(TypedDict):
    id: int


class _Claim(TypedDict):
    key: str


class _NoRows(TypedDict):
    pass


class _FirstResponse(TypedDict):
    request_hash: str
    response: str | None


_Written = TypeVar("_Written", TaskRecord, _Id)
_Answer = TypeVar("_Answer")
_Body = TypeVar("_Body", bound=BaseModel)


class BatchOutcome(TypedDict, total=False):
    """One operation's result: a task, or a C3 error object; keys in this order."""

    status: Required[int]
    ref: str
    task: TaskRecord
    error: dict[str, Any]


@dataclass(frozen=True)
class BatchStep:
    """One operation of a batch, as validated by the API: `if_match` holds the
    versions its ETags accept, `body` the raw JSON its single request would send."""

    op: BatchOp
    ref: str | None = None
    task_id: int | None = None
    target: str | None = None
    if_match: list[datetime] | None = None
    body: Any = None


# (`list` inside TaskService is its method.)
Outcomes = list[BatchOutcome]


class _Named(TypedDict):
    """The arguments naming a step's task, as its single request's method takes."""

    user_id: str
    task_id: int
    if_match: list[datetime] | None


class _Abort(Exception):
    """An atomic batch stops at its first failure."""

    def __init__(self, index: int, outcome: BatchOutcome) -> None:
        self.index = index
        self.outcome = outcome


class _Change(TaskRecord):
    """A row of the changes statement: first the snapshot it ran in (nothing
    else), then a task (`deleted` false) or a tombstone (true, only its ids)."""

    snapshot: str | None
    deleted: bool | None
    change_xid: int


@dataclass(frozen=True)
class Page:
    tasks: list[TaskRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class Changes:
    tasks: list[TaskRecord]
    deleted: list[int]
    next: str
    has_more: bool


@dataclass(frozen=True)
class SyncToken:
    """Where a client's replica stands. `since` is the snapshot (PostgreSQL's
    `pg_snapshot` text) of the sync it last finished, taken at `since_at` (Unix
    seconds); None before its first. While a sync continues over several pages,
    `upto` is the snapshot its first page ran in (at `upto_at`), and `after` the
    (change_xid, id) of the last change sent. `origin`: the server the snapshots
    were taken on (None in tokens issued before 2026-12-07)."""

    since_at: int
    since: str | None = None
    upto_at: int | None = None
    upto: str | None = None
    after: tuple[int, int] | None = None
    origin: "_Origin | None" = None

    def encode(self, codec: CursorCodec, user_id: str) -> str:
        after = list(self.after) if self.after else None
        origin = list(self.origin) if self.origin else None
        state = [self.since_at, self.since, self.upto_at, self.upto, after, origin]
        return codec.encode(state, _sync_binding(user_id))

    def restarted(self, origin: "_Origin") -> "SyncToken | None":
        """None if the server is the one the snapshots were taken on; else this
        token with them cut back to the transaction ids that outlive any crash:
        PostgreSQL does not flush a rolled-back transaction's records, so after
        a crash it may hand that id out again, to a write the snapshots would
        count as seen. The versions between are sent again (twice, perhaps):
        none is missed."""
        if self.origin is None or self.origin.started == origin.started:
            return None
        durable = self.origin.checkpoint
        since, upto = (
            str(_Snapshot.parse(s).before(durable)) if s else None
            for s in (self.since, self.upto)
        )
        return SyncToken(self.since_at, since, self.upto_at, upto, self.after)

    def statement(
        self, limit: int, origin: bool
    ) -> tuple["Query[_Change]", dict[str, Any]]:
        """The changes statement that goes on from here, and its values (all but
        the user's): `limit` changes and one more, to tell whether more remain;
        with the server's `origin` unless the server refuses it."""
        upto = _Snapshot.parse(self.upto) if self.upto else None
        params: dict[str, Any] = {
            "limit": limit + 1,
            "upto_xmax": upto.xmax if upto else NO_CEILING,
        }
        if self.since is not None:
            since = _Snapshot.parse(self.since)
            params.update(
                since_xmin=since.xmin, since_xmax=since.xmax, since_xip=since.xip
            )
        if upto is not None and self.after is not None:
            params["upto_xip"] = upto.xip
            params["after_xid"], params["after_id"] = self.after
        query = _changes_query(self.since is not None, self.upto is not None, origin)
        return query, params

    @classmethod
    def decode(cls, codec: CursorCodec, user_id: str, token: str) -> "SyncToken":
        try:
            state = codec.decode(token, _sync_binding(user_id), lengths=(5, 6))
        except InvalidCursor:
            raise InvalidCursor("since") from None
        try:  # a token issued before 2026-12-07 has no origin
            since_at, since, upto_at, upto, after, origin = (
                _TOKEN_STATE.validate_python([*state, None][:6])
            )
        except ValidationError:  # signed, but not this release's shape
            raise InvalidCursor("since") from None
        return cls(
            since_at, since, upto_at, upto, after, _Origin(*origin) if origin else None
        )


# A sync token's state, as `SyncToken.encode` writes it: `pg_snapshot` text,
# transaction ids below 10^18 (a bigint; a cluster's are far below) and a task id.
_Xid = Annotated[StrictInt, Field(ge=0, lt=10**18)]
_SnapshotText = Annotated[
    str,
    StringConstraints(
        pattern=r"^[0-9]{1,18}:[0-9]{1,18}:([0-9]{1,18}(,[0-9]{1,18})*)?$"
    ),
]
_TOKEN_STATE = TypeAdapter(
    tuple[
        StrictInt,
        _SnapshotText | None,
        StrictInt | None,
        _SnapshotText | None,
        tuple[_Xid, JsonTaskId] | None,
        tuple[StrictInt, _Xid] | None,
    ]
)


def _sync_binding(user_id: str) -> dict[str, Any]:
    """A sync token is signed for its user, and is never a list cursor."""
    return {"user": user_id, "sync": True}


class _Snapshot(NamedTuple):
    """A `pg_snapshot` (`xmin:xmax:xip,...`): every transaction below `xmin` had
    ended when it was taken; those from `xmax` on had not begun; between the two,
    the ones in `xip` were in flight."""

    xmin: int
    xmax: int
    xip: list[int]

    @classmethod
    def parse(cls, text: str) -> "_Snapshot":
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), [int(x) for x in xip.split(",") if x])

    def __str__(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(map(str, self.xip))}"

    def before(self, xid: int) -> "_Snapshot":
        """This snapshot as if no transaction from `xid` on had begun when it was
        taken: it sees less, never more, and a later sync sends what it does not
        see."""
        if self.xmax <= xid:
            return self
        return _Snapshot(min(self.xmin, xid), xid, [x for x in self.xip if x < xid])

    def short(self) -> "_Snapshot":
        """At most MAX_SNAPSHOT_TEXT characters as text: past that (some 300 to
        800 transactions in flight at once), as if taken before the first in
        flight that does not fit. Commits after it wait for those before it to
        end: a token that lists them all would be refused."""
        length = len(f"{self.xmin}:{self.xmax}:") - 1  # no comma before the first
        for xid in self.xip:
            length += 1 + len(str(xid))
            if length > MAX_SNAPSHOT_TEXT:
                return self.before(xid)
        return self


class _Origin(NamedTuple):
    """The PostgreSQL server a snapshot was taken on: when it last started from
    its write-ahead log (microseconds since the epoch: `_STARTS`), and its last
    checkpoint's next transaction id, below which every id handed out outlives a
    crash (recovery starts from that checkpoint)."""

    started: int
    checkpoint: int

    @classmethod
    def parse(cls, started: str, checkpoint: str) -> "_Origin":
        epoch, xid = checkpoint.split(":")  # pg_control's `epoch:xid`
        return cls(int(started), (int(epoch) << 32) + int(xid))


def _owned(*, table: Table = TASK, by_id: bool = False) -> ColumnElement[bool]:
    """The owner filter every statement starts from (`user_id`, and `task_id` with
    `by_id`, are bound when the statement runs)."""
    condition = table.c.user_id == bindparam("user_id")
    if by_id:
        condition = and_(condition, table.c.id == bindparam("task_id"))
    return condition


def _version_matches() -> ColumnElement[bool]:
    """If-Match: the task's current version (its updated_at) is one of `versions`."""
    return TASK.c.updated_at == any_(bindparam("versions", type_=ARRAY(_TIMESTAMPTZ)))


def _touch() -> dict[str, Any]:
    """`updated_at` strictly increases with every change, even when two concurrent
    transactions see the same clock: the row lock orders them, and the later one
    moves at least a microsecond past the earlier one's value. `change_xid`
    records the writing transaction for delta sync (an insert gets it by default)."""
    return {
        "updated_at": func.greatest(
            func.clock_timestamp(), TASK.c.updated_at + timedelta(microseconds=1)
        ),
        "change_xid": CURRENT_XID,
    }


def _completion(completed: bool) -> dict[str, Any]:
    """`completed_at` is set when a task becomes complete, cleared when it reopens."""
    completed_at = (
        func.coalesce(TASK.c.completed_at, func.clock_timestamp())
        if completed
        else None
    )
    return {"completed": completed, "completed_at": completed_at}


GET = compile_query(select(*COLUMNS).where(_owned(by_id=True)), TaskRecord)
EXISTS = compile_query(select(TASK.c.id).where(_owned(by_id=True)), _Id)
LOCK_IN_ID_ORDER = compile_query(
    select(TASK.c.id)
    .where(_owned(), TASK.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger))))
    .order_by(TASK.c.id)
    .with_for_update(),
    _Id,
)
INSERT = compile_query(
    insert(TASK)
    .values(
        user_id=bindparam("user_id"),
        title=bindparam("title"),
        description=bindparam("description"),
        priority=bindparam("priority"),
        tags=bindparam("tags"),
        due_at=bindparam("due_at"),
        completed=bindparam("completed", type_=Boolean),
        completed_at=case((bindparam("completed", type_=Boolean), func.now())),
        created_at=func.now(),
        updated_at=func.now(),
    )
    .returning(*COLUMNS),
    TaskRecord,
)


def _sweep_tombstones() -> Any:
    """Tombstones past retention go without a cron, like idempotency keys:
    deletes remove up to `sweep_limit` expired ones (anyone's: it only deletes),
    oldest first: in `deleted_at` order the planner always takes its index, one
    probe when none has expired (without it, on a table whose statistics were
    stale, it scanned every tombstone)."""
    expired = TOMBSTONE.c.deleted_at < func.now() - bindparam(
        "keep_tombstones", type_=Interval
    )
    key = tuple_(TOMBSTONE.c.user_id, TOMBSTONE.c.id)
    batch = select(  # owner-filter: exempt
        TOMBSTONE.c.user_id, TOMBSTONE.c.id
    )
    batch = batch.where(expired).order_by(TOMBSTONE.c.deleted_at)
    batch = batch.limit(bindparam("sweep_limit")).with_for_update(skip_locked=True)
    sweep = delete(TOMBSTONE)  # owner-filter: exempt
    return sweep.where(key.in_(batch))


def _bury(*conditions: ColumnElement[bool], sweep: bool) -> Any:
    """Delete the user's tasks that match, leaving a tombstone for each (written
    by this transaction: delta sync reports it), in one statement, and sweep
    expired tombstones; returns the deleted ids."""
    gone = (
        delete(TASK)
        .where(_owned(), *conditions)
        .returning(TASK.c.user_id, TASK.c.id)
        .cte("gone")
    )
    bury = insert(TOMBSTONE).from_select(["user_id", "id"], gone.select())
    # A task id with a tombstone already (its row restored from a backup after it
    # was deleted): the tombstone is marked anew, so syncs report this deletion.
    bury = bury.on_conflict_do_update(
        index_elements=[TOMBSTONE.c.user_id, TOMBSTONE.c.id],
        set_={"change_xid": CURRENT_XID, "deleted_at": func.now()},
    )
    if sweep:
        bury = bury.add_cte(_sweep_tombstones().cte("swept"))
    return bury.returning(TOMBSTONE.c.id)


class _Count(TypedDict):
    count: int


SWEEP_TOMBSTONES = compile_query(_sweep_tombstones(), _NoRows)


_cleared = _bury(TASK.c.completed, sweep=False).cte("cleared")
CLEAR_COMPLETED = compile_query(
    select(func.count().label("count")).select_from(  # owner-filter: exempt (_bury)
        _cleared
    ),
    _Count,
)


@cache
def _delete_query(conditional: bool, sweep: bool) -> Query[_Id]:
    conditions = [_version_matches()] if conditional else []
    by_id = TASK.c.id == bindparam("task_id")
    return compile_query(_bury(by_id, *conditions, sweep=sweep), _Id)


def _update(values: dict[str, Any], conditional: bool) -> Query[TaskRecord]:
    conditions = [_version_matches()] if conditional else []
    statement = (
        update(TASK)
        .where(_owned(by_id=True), *conditions)
        .values(**values, **_touch())
        .returning(*COLUMNS)
    )
    return compile_query(statement, TaskRecord)


@cache
def _update_query(
    fields: frozenset[str], completed: bool | None, conditional: bool
) -> Query[TaskRecord]:
    """UPDATE … RETURNING of these content fields; `completed` True or False sets
    it (and `completed_at`), None leaves it."""
    values = {name: bindparam(name, type_=TASK.c[name].type) for name in fields}
    if completed is not None:
        values.update(_completion(completed))
    return _update(values, conditional)


@cache
def _toggle_query(conditional: bool) -> Query[TaskRecord]:
    toggled = {
        "completed": ~TASK.c.completed,
        "completed_at": case((TASK.c.completed, None), else_=func.clock_timestamp()),
    }
    return _update(toggled, conditional)


def _nulls_last(due_at: ColumnElement[Any], descending: bool) -> ColumnElement[Any]:
    """`due_at` sorts undated tasks last in both directions: as the matching
    infinity, exactly as models.DUE_AT_ASC / DUE_AT_DESC index it."""
    infinity = "'-infinity'" if descending else "'infinity'"
    return func.coalesce(due_at, literal_column(f"{infinity}::timestamptz"))


def _sort_expression(
    key: str, descending: bool, column: ColumnElement[Any]
) -> ColumnElement[Any]:
    """The indexed expression each sort key orders by (see models.Task), applied to
    the column itself or to a cursor's stored value of it."""
    if key == "title":
        return func.lower(column)
    if key == "due_at":
        return _nulls_last(column, descending)
    return column


def list_statement(sort: str, used: frozenset[str]) -> Select[Any]:
    """The listing query for a sort and the filters in `used` (names of
    TaskListQuery's filters, and `after` when continuing from a cursor): one more
    row than the page (`limit`), to know if another follows. `after` starts past
    the (sort value, id) position of the previous page's last task."""
    key = sort.removeprefix("-")
    descending = sort.startswith("-")
    order = _sort_expression(key, descending, TASK.c[key])
    conditions: list[ColumnElement[bool]] = []
    if "completed" in used:
        conditions.append(TASK.c.completed == bindparam("completed", type_=Boolean))
    if "priority" in used:
        priorities = bindparam("priority", type_=ARRAY(TASK.c.priority.type))
        conditions.append(TASK.c.priority == any_(priorities))
    if "tag" in used:
        conditions.append(TASK.c.tags.contains(bindparam("tag", type_=ARRAY(Text))))
    if "q" in used:
        pattern = bindparam("q", type_=Text)
        conditions.append(
            TASK.c.title.ilike(pattern, escape="\\")
            | TASK.c.description.ilike(pattern, escape="\\")
        )
    if "due_after" in used:
        conditions.append(TASK.c.due_at >= bindparam("due_after", type_=_TIMESTAMPTZ))
    if "due_before" in used:
        conditions.append(TASK.c.due_at < bindparam("due_before", type_=_TIMESTAMPTZ))
    if "after" in used:
        value = bindparam("after_value", type_=TASK.c[key].type)
        position = tuple_(order, TASK.c.id)
        bound = tuple_(_sort_expression(key, descending, value), bindparam("after_id"))
        conditions.append(position < bound if descending else position > bound)
    return (
        select(*COLUMNS)
        .where(_owned(), *conditions)
        .order_by(
            order.desc() if descending else order.asc(),
            TASK.c.id.desc() if descending else TASK.c.id.asc(),
        )
        .limit(bindparam("limit"))
    )


@cache
def _compiled_list(sort: str, used: frozenset[str]) -> Query[TaskRecord]:
    return compile_query(list_statement(sort, used), TaskRecord)


def list_query(
    query: TaskListQuery, after: tuple[Any, int] | None = None
) -> tuple[Query[TaskRecord], dict[str, Any]]:
    """The compiled listing statement for these options, and its values (all but
    `user_id`): the filters in use, the page size plus one, and the position."""
    params = {k: v for k, v in _list_params(query).items() if v is not None}
    used = frozenset(params)
    if after is not None:
        used |= {"after"}
        params["after_value"], params["after_id"] = after
    params["limit"] = query.limit + 1
    return _compiled_list(query.sort, used), params


def not_seen(xid: ColumnElement[int], snapshot: str) -> ColumnElement[bool]:
    """Whether transaction `xid` had not committed when the snapshot bound as
    `{snapshot}_xmax` and `{snapshot}_xip` was taken (`_Snapshot`): PostgreSQL's
    `NOT pg_visible_in_snapshot`, in integer comparisons (the function, with a
    cast of each row's xid and of the snapshot's text, cost ~0.12 ms a page of
    1,000)."""
    xip = bindparam(f"{snapshot}_xip", type_=ARRAY(BigInteger))
    return or_(xid >= bindparam(f"{snapshot}_xmax"), xid == any_(xip))


def _changed(table: Table, since: bool, continuing: bool) -> list[ColumnElement[bool]]:
    """The rows (tasks or tombstones) a sync reports: written by a transaction the
    client's last snapshot did not see (`since`); when continuing, also one the
    first page's snapshot (`upto`) saw, past the last (change_xid, id) sent. A row
    changed again since that first page is left to the next sync."""
    xid = table.c.change_xid
    conditions: list[ColumnElement[bool]] = []
    if since:
        conditions += [xid >= bindparam("since_xmin"), not_seen(xid, "since")]
    if since or continuing:
        # Before a first page, no bound at all (NO_CEILING), but a parameter: with
        # both ends of the range unknown, PostgreSQL estimates the generic plan at
        # its default for a range (0.5% of the user's rows), close to the custom
        # plans' cost, and switches to it after five runs. With only `since_xmin`
        # it estimated a third of the rows and planned every sync anew: 0.15 ms,
        # more than an empty sync's execution.
        conditions.append(xid < bindparam("upto_xmax"))
    if continuing:
        after = tuple_(bindparam("after_xid"), bindparam("after_id"))
        conditions += [~not_seen(xid, "upto"), tuple_(xid, table.c.id) > after]
    return conditions


def _blank(column: Column[Any]) -> ColumnElement[Any]:
    return null().cast(column.type).label(column.name)


# When the server last started from its write-ahead log: its own start, or a crash
# recovery without one (a backend killed, by the OOM killer say, takes every other
# down and replays the log), which discards the shared statistics and so resets
# their time (any other reset of them is taken for one too: a few versions sent
# twice, nothing missed).
_STARTS = (func.pg_postmaster_start_time(), func.pg_stat_get_bgwriter_stat_reset_time())


@cache
def _changes_query(since: bool, continuing: bool, origin: bool) -> Query[_Change]:
    """One statement, whatever the answer: first a row with the snapshot it runs
    in (and its `origin`), then up to `limit` changes in (change_xid, id) order
    (tasks and, after a first sync, tombstones)."""
    limit: BindParameter[int] = bindparam("limit")
    no_snapshot = null().cast(Text).label("snapshot")
    changes: Any = (
        select(no_snapshot, TASK.c.change_xid, false().label("deleted"), *COLUMNS)
        .where(_owned(), *_changed(TASK, since, continuing))
        .order_by(TASK.c.change_xid, TASK.c.id)
        .limit(limit)
    )
    if since:
        ids = ("user_id", "id")
        columns = [TOMBSTONE.c[c.name] if c.name in ids else _blank(c) for c in COLUMNS]
        gone = (
            select(
                no_snapshot, TOMBSTONE.c.change_xid, true().label("deleted"), *columns
            )
            .where(
                _owned(table=TOMBSTONE),
                *_changed(TOMBSTONE, since, continuing),
                # A task restored with its id (from a backup) is sent as a task.
                ~exists().where(
                    TASK.c.user_id == TOMBSTONE.c.user_id, TASK.c.id == TOMBSTONE.c.id
                ),
            )
            .order_by(TOMBSTONE.c.change_xid, TOMBSTONE.c.id)
            .limit(limit)
        )
        # Each part is ordered and limited by itself, walking its (user_id,
        # change_xid, id) index: a page reads `limit` rows of each at most, not
        # every change left (a sort of all 20,000 for each page of 1,000).
        changes = union_all(changes, gone)
    order: list[ColumnElement[Any]] = [
        literal_column("change_xid"),
        literal_column("id"),
    ]
    page = changes.order_by(*order).limit(limit).subquery("c")
    # The snapshot once, in a row of its own ordered before every change (xids
    # start at 3), not in each of 1,000 rows: ~0.2 ms of PostgreSQL's time and
    # ~0.1 ms of the worker's a page. Both parts are ordered by (change_xid, id):
    # PostgreSQL merges them without sorting.
    # `xmin:xmax:xip/started/epoch:xid`: the snapshot and its _Origin.
    snapshot_and_origin = func.concat_ws(
        literal_column("'/'"),
        func.pg_current_snapshot().cast(Text),
        (extract("epoch", func.greatest(*_STARTS)) * literal_column("1000000")).cast(
            BigInteger
        ),
        literal_column("(pg_control_checkpoint()).next_xid"),
    )
    first = snapshot_and_origin if origin else func.pg_current_snapshot().cast(Text)
    snapshot = select(  # owner-filter: exempt (reads no table)
        first.label("snapshot"),
        literal_column("0").cast(BigInteger).label("change_xid"),
        null().cast(Boolean).label("deleted"),
        *(_blank(c) for c in COLUMNS),
    )
    rows = select(page)  # owner-filter: exempt (filtered above)
    return compile_query(union_all(snapshot, rows).order_by(*order), _Change)


def _list_params(query: TaskListQuery) -> dict[str, Any]:
    """The bound values of the filters in use (None: the filter is not used)."""
    q = None
    if query.q is not None:
        # %, _ and \\ in q are literal: escape them for ILIKE.
        escaped = query.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = f"%{escaped}%"
    return {
        "completed": query.completed,
        "priority": [p.value for p in query.priority] or None,
        "tag": list(dict.fromkeys(query.tag)) or None,
        "q": q,
        "due_after": query.due_after,
        "due_before": query.due_before,
    }


def _cursor_value(task: TaskRecord, key: str) -> Any:
    value = task[key]  # type: ignore[literal-required]
    return value.isoformat() if isinstance(value, datetime) else value


def _position(key: str, position: list[Any]) -> tuple[Any, int]:
    """A decoded cursor's (sort value, id), typed as its column."""
    value, task_id = position
    if not isinstance(task_id, int):
        raise InvalidCursor()
    if key in ("created_at", "updated_at", "due_at") and value is not None:
        try:
            value = datetime.fromisoformat(value).astimezone(UTC)
        except (TypeError, ValueError):
            raise InvalidCursor() from None
    elif not isinstance(value, str | None):
        raise InvalidCursor()
    return value, task_id


def _record(row: _Change) -> TaskRecord:
    """The task in a change row: the row itself, less the sync columns (cheaper
    than a copy, at 1,000 rows a page)."""
    columns: dict[str, Any] = row  # type: ignore[assignment]  # to delete required keys
    del columns["snapshot"], columns["deleted"], columns["change_xid"]
    return row


def _content(data: TaskCreate | TaskPatch, fields: set[str]) -> dict[str, Any]:
    """The given fields' values; a `None` returns the field to its default."""
    values: dict[str, Any] = {}
    for name in fields - {"completed"}:
        value = getattr(data, name)
        values[name] = _DEFAULTS[name] if value is None else value
    return values


async def _again_on_conflict(attempt: Callable[[], Awaitable[_Answer]]) -> _Answer:
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


def _digest(values: object) -> str:
    canonical = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _request_hash(data: TaskCreate) -> str:
    """Two bodies are "the same" when they would create the same task."""
    return _digest(
        {
            **_content(data, set(_DEFAULTS)),
            "title": data.title,
            "completed": bool(data.completed),
        }
    )


def _task_from_json(value: Any) -> TaskRecord:
    """A task read back from a stored response (datetimes parsed)."""
    return cast(TaskRecord, TaskPublic.model_validate(value).model_dump())


def _outcomes_from_json(stored: str) -> Outcomes:
    """A batch's stored results as first answered: `jsonb` keeps an object's keys
    in an order of its own (shortest first), so each outcome, and its error, is
    put back in the order it was written in (`BatchOutcome`, `ErrorBody`)."""
    outcomes: Outcomes = []
    for value in orjson.loads(stored):
        outcome = cast(
            BatchOutcome,
            {k: value[k] for k in BatchOutcome.__annotations__ if k in value},
        )
        if "task" in outcome:
            outcome["task"] = _task_from_json(outcome["task"])
        if "error" in outcome:
            error = ErrorBody.model_validate(outcome["error"])
            outcome["error"] = error.model_dump(exclude_none=True)
        outcomes.append(outcome)
    return outcomes


def _parse(model: type[_Body], body: Any) -> _Body:
    """A batch operation's body, validated as its single request's body is: the
    same 400 (`invalid_json` or `validation_error` naming the field)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise validation_error(errors) from None


def _runs(steps: Sequence[BatchStep]) -> list[list[BatchStep]]:
    """The steps in order, consecutive creates together, every other step alone."""
    runs: list[list[BatchStep]] = []
    for step in steps:
        if step.op == "create" and runs and runs[-1][0].op == "create":
            runs[-1].append(step)
        else:
            runs.append([step])
    return runs


def _outcome(
    step: BatchStep, status: int, task: TaskRecord | None = None
) -> BatchOutcome:
    outcome: BatchOutcome = {"status": status}
    if step.ref is not None:
        outcome["ref"] = step.ref
    if task is not None:
        outcome["task"] = task
    return outcome


def _failed(step: BatchStep, error: AppError) -> BatchOutcome:
    outcome = _outcome(step, error.status_code)
    outcome["error"] = error.body().model_dump(exclude_none=True)
    return outcome


_this_key = IDEMPOTENCY.c.key == bindparam("key")
CLAIM_KEY = compile_query(
    insert(IDEMPOTENCY)
    .values(
        user_id=bindparam("user_id"),
        key=bindparam("key"),
        request_hash=bindparam("request_hash"),
    )
    .on_conflict_do_update(
        index_elements=[IDEMPOTENCY.c.user_id, IDEMPOTENCY.c.key],
        set_={
            "request_hash": bindparam("request_hash"),
            "response": None,
            "created_at": func.now(),
        },
        where=IDEMPOTENCY.c.created_at < func.now() - IDEMPOTENCY_TTL,
    )
    .returning(IDEMPOTENCY.c.key),
    _Claim,
)
FIRST_RESPONSE = compile_query(
    select(IDEMPOTENCY.c.request_hash, IDEMPOTENCY.c.response).where(
        _owned(table=IDEMPOTENCY), _this_key
    ),
    _FirstResponse,
)
STORE_RESPONSE = compile_query(
    update(IDEMPOTENCY)
    .where(_owned(table=IDEMPOTENCY), _this_key)
    .values(response=bindparam("response", type_=IDEMPOTENCY.c.response.type)),
    _NoRows,
)


def _expire_keys_statement() -> Any:
    """Keys older than 24 h go without a cron: every keyed create deletes up to
    100 expired keys (anyone's: not filtered by owner, like the tombstone sweep,
    and it only deletes), oldest first. When none has expired this is a single probe of
    the created_at index (the order makes the planner take it whatever its
    statistics say); SKIP LOCKED keeps concurrent creates from queueing."""
    expired = IDEMPOTENCY.c.created_at < func.now() - IDEMPOTENCY_TTL
    key = tuple_(IDEMPOTENCY.c.user_id, IDEMPOTENCY.c.key)
    batch = select(  # owner-filter: exempt
        IDEMPOTENCY.c.user_id, IDEMPOTENCY.c.key
    )
    batch = batch.where(expired).order_by(IDEMPOTENCY.c.created_at).limit(100)
    batch = batch.with_for_update(skip_locked=True)
    sweep = delete(IDEMPOTENCY)  # owner-filter: exempt
    return sweep.where(key.in_(batch))


EXPIRE_KEYS = compile_query(_expire_keys_statement(), _NoRows)


class TaskService:
    def __init__(
        self, database: Database, cursors: CursorCodec, sync_retention: timedelta
    ) -> None:
        self._db = database
        # Where writes run: the pool (one statement each), or a batch's transaction.
        self._run: Database | Transaction = database
        self._cursors = cursors
        self._sync_retention = sync_retention
        # Bound by a statement that sweeps expired tombstones.
        self._sweep = {
            "keep_tombstones": sync_retention + TOMBSTONE_GRACE,
            "sweep_limit": SWEEP_BATCH,
        }
        self._deletes = itertools.count()  # shared with `_within`'s copies
        # Whether syncs read the server's origin (crash safety, specs/008): until
        # the server refuses it (a managed PostgreSQL's restriction).
        self._origin = True

    async def list(self, *, user_id: str, query: TaskListQuery) -> Page:
        """One page of the user's tasks, filtered and sorted (keyset pagination)."""
        key = query.sort.removeprefix("-")
        binding = {"user": user_id, "sort": query.sort, "filters": query.filters()}
        after = None
        if query.cursor is not None:
            after = _position(key, self._cursors.decode(query.cursor, binding))
        statement, params = list_query(query, after)
        rows = await self._db.fetch(statement, user_id=user_id, **params)
        tasks = rows[: query.limit]
        next_cursor = None
        if len(rows) > query.limit:
            last = tasks[-1]
            position = [_cursor_value(last, key), last["id"]]
            next_cursor = self._cursors.encode(position, binding)
        return Page(tasks, next_cursor)

    async def changes(self, *, user_id: str, since: str | None, limit: int) -> Changes:
        """E10: the user's tasks changed, and ids deleted, since a sync token
        (every task without one), `limit` at a time, and the token to go on from."""
        now = int(time.time())
        token = SyncToken(now)
        if since is not None:
            token = SyncToken.decode(self._cursors, user_id, since)
        if token.since_at < now - self._sync_retention.total_seconds():
            raise SyncTokenExpired()
        # Runs once; twice when the token predates a restart (the cut-back token
        # has no origin) or the server refuses the origin (then never asked again).
        while True:
            query, params = token.statement(limit, self._origin)
            try:
                rows = await self._db.fetch(query, user_id=user_id, **params)
            except Refused:
                if not self._origin:
                    raise
                logger.warning("delta sync not safe across a crash (refused above)")
                self._origin = False  # the server refuses `_STARTS` or its checkpoint
                continue
            first = rows[0]["snapshot"]
            assert first is not None  # the statement's first row
            text, *server = first.split("/")
            snapshot = _Snapshot.parse(text)
            origin = _Origin.parse(*server) if server else None
            restarted = token.restarted(origin) if origin else None
            if restarted is None:
                break
            token = restarted  # and once more, from the cut-back snapshots
        taken = (_Snapshot.parse(s) for s in (token.since, token.upto) if s)
        if any(earlier.xmax > snapshot.xmax for earlier in taken):
            # Taken on another cluster (a logical restore): the ids mean nothing.
            raise SyncTokenExpired()
        changed = rows[1:]
        if token.upto is None:  # a first page: its snapshot goes into the token
            short = snapshot.short()
            if short is not snapshot:  # in change_xid order: what it does not see
                changed = [row for row in changed if row["change_xid"] < short.xmax]
            snapshot = short
        page, has_more = changed[:limit], len(changed) > limit
        upto_at, upto = token.upto_at or now, token.upto or str(snapshot)
        if has_more:
            last = (page[-1]["change_xid"], page[-1]["id"])
            after = SyncToken(token.since_at, token.since, upto_at, upto, last, origin)
        else:
            after = SyncToken(upto_at, upto, origin=origin)
        tasks: list[TaskRecord] = []
        deleted: list[int] = []
        for row in page:
            if row["deleted"]:
                deleted.append(row["id"])
            else:
                tasks.append(_record(row))
        next_token = after.encode(self._cursors, user_id)
        return Changes(tasks, deleted, next_token, has_more)

    async def get(self, *, user_id: str, task_id: int) -> TaskRecord:
        """One task of the user, or TaskNotFound."""
        task = await self._db.fetch_one(GET, user_id=user_id, task_id=task_id)
        if task is None:
            raise TaskNotFound()
        return task

    async def create(
        self, *, user_id: str, data: TaskCreate, idempotency_key: str | None = None
    ) -> TaskRecord:
        """Insert a task owned by `user_id`. With an Idempotency-Key, a repeat of the
        same body returns the first response and creates nothing."""
        values = self._insert_values(user_id, data)
        if idempotency_key is None:
            return await self._insert(values)
        return await self._once(
            user_id,
            idempotency_key,
            _request_hash(data),
            lambda tx: self._within(tx)._insert(values),
            lambda stored: _task_from_json(orjson.loads(stored)),
        )

    async def replace(
        self,
        *,
        user_id: str,
        task_id: int,
        data: TaskReplace,
        if_match: Sequence[datetime] | None = None,
    ) -> TaskRecord:
        """PUT: replace the content; `completed` changes only when given."""
        fields = {"title", *_DEFAULTS}
        return await self._update(user_id, task_id, data, fields, if_match)

    async def patch(
        self,
        *,
        user_id: str,
        task_id: int,
        data: TaskPatch,
        if_match: Sequence[datetime] | None = None,
    ) -> TaskRecord:
        """PATCH: change only the given fields."""
        fields = set(data.model_fields_set)
        return await self._update(user_id, task_id, data, fields, if_match)

    async def toggle(
        self, *, user_id: str, task_id: int, if_match: Sequence[datetime] | None = None
    ) -> TaskRecord:
        """Flip `completed` atomically in the database."""
        statement = _toggle_query(if_match is not None)
        return await self._write(statement, user_id, task_id, if_match, {})

    async def delete(
        self, *, user_id: str, task_id: int, if_match: Sequence[datetime] | None = None
    ) -> None:
        """Delete the task, or TaskNotFound / PreconditionFailed."""
        sweep = next(self._deletes) % SWEEP_EVERY == 0
        statement = _delete_query(if_match is not None, sweep)
        await self._write(
            statement, user_id, task_id, if_match, self._sweep if sweep else {}
        )

    async def clear_completed(self, *, user_id: str) -> int:
        """E12: delete the user's completed tasks (tombstones included); how many.
        Then sweep up to twice as many expired tombstones as it left (at least
        SWEEP_BATCH): a clear leaves many at once, more than deletes take."""
        cleared = await _again_on_conflict(
            lambda: self._run.write_one(CLEAR_COMPLETED, user_id=user_id)
        )
        assert cleared is not None  # an aggregate always has its row
        count = cleared["count"]
        if count:
            sweep = {**self._sweep, "sweep_limit": max(SWEEP_BATCH, 2 * count)}
            # The clear is done: a failed sweep leaves its work to later deletes.
            with suppress(DatabaseUnavailable):
                await self._run.write_one(SWEEP_TOMBSTONES, **sweep)
        return count

    async def batch(
        self,
        *,
        user_id: str,
        steps: Sequence[BatchStep],
        atomic: bool,
        idempotency_key: str | None = None,
    ) -> Outcomes:
        """E11: each step as its single request, in order, in one transaction.
        Atomic: all or nothing; otherwise one step's failure stops no other."""

        async def run(tx: Transaction) -> Outcomes:
            return await self._within(tx)._apply_all(tx, user_id, steps, atomic)

        async def unkeyed() -> Outcomes:
            async with self._db.transaction() as tx:
                return await run(tx)

        if idempotency_key is None:
            return await _again_on_conflict(unkeyed)
        request = {"atomic": atomic, "operations": [asdict(s) for s in steps]}
        return await self._once(
            user_id, idempotency_key, _digest(request), run, _outcomes_from_json
        )

    async def _apply_all(
        self, tx: Transaction, user_id: str, steps: Sequence[BatchStep], atomic: bool
    ) -> Outcomes:
        """The steps in order; atomic ones inside a savepoint, up to the first
        failure, which undoes them all."""
        created: dict[str, int] = {}  # ref -> id of the task its create made
        outcomes: Outcomes = []
        named = sorted({step.task_id for step in steps if step.task_id is not None})
        if len(named) > 1:
            # Batches naming the same tasks in different orders would deadlock
            # (and be run again, holding pooled connections while PostgreSQL
            # finds the cycles): the tasks are locked in id order first.
            await tx.execute(LOCK_IN_ID_ORDER, user_id=user_id, ids=named)
        try:
            async with tx.savepoint() if atomic else nullcontext():
                for run in _runs(steps):
                    if run[0].op == "create":
                        done = await self._create_all(tx, user_id, run, created)
                    else:
                        done = [await self._apply(user_id, run[0], created)]
                    for outcome in done:
                        if atomic and "error" in outcome:
                            raise _Abort(len(outcomes), outcome)  # undoes the savepoint
                        outcomes.append(outcome)
        except _Abort as abort:
            return [
                abort.outcome if i == abort.index else _failed(s, FailedDependency())
                for i, s in enumerate(steps)
            ]
        return outcomes

    async def _create_all(
        self,
        tx: Transaction,
        user_id: str,
        steps: Sequence[BatchStep],
        created: dict[str, int],
    ) -> Outcomes:
        """Consecutive creates: each body validated as E1's, the valid ones
        inserted by E1's statement pipelined in one round trip (ids follow the
        steps' order), which is what makes a batch of creates cheap."""
        bodies: list[TaskCreate | AppError] = []
        for step in steps:
            try:
                bodies.append(_parse(TaskCreate, step.body))
            except AppError as error:
                bodies.append(error)
        values = [
            self._insert_values(user_id, body)
            for body in bodies
            if isinstance(body, TaskCreate)
        ]
        tasks = iter(await tx.write_many(INSERT, values))
        outcomes: Outcomes = []
        for step, body in zip(steps, bodies, strict=True):
            if isinstance(body, AppError):
                outcomes.append(_failed(step, body))
                continue
            task = next(tasks)
            if step.ref is not None:
                created[step.ref] = task["id"]
            outcomes.append(_outcome(step, 201, task))
        return outcomes

    async def _apply(
        self, user_id: str, step: BatchStep, created: dict[str, int]
    ) -> BatchOutcome:
        """One step on an existing task, through its single request's method; an
        error becomes its outcome. The failures a step can have (400, 404, 412,
        424) write nothing, so the transaction goes on."""
        try:
            task_id = step.task_id
            if step.target is not None:
                if step.target not in created:
                    raise FailedDependency(
                        "Not applied: the create it targets failed",
                        detail="Fix that create and send both operations again",
                    )
                task_id = created[step.target]
            assert task_id is not None  # BatchOperation: id or target
            named = _Named(user_id=user_id, task_id=task_id, if_match=step.if_match)
            if step.op == "replace":
                data = _parse(TaskReplace, step.body)
                return _outcome(step, 200, await self.replace(**named, data=data))
            if step.op == "patch":
                patch = _parse(TaskPatch, step.body)
                return _outcome(step, 200, await self.patch(**named, data=patch))
            if step.op == "toggle":
                _parse(ToggleBody, {} if step.body is None else step.body)
                return _outcome(step, 200, await self.toggle(**named))
            await self.delete(**named)
            return _outcome(step, 204)
        except AppError as error:
            return _failed(step, error)

    async def _update(
        self,
        user_id: str,
        task_id: int,
        data: TaskCreate | TaskPatch,
        fields: set[str],
        if_match: Sequence[datetime] | None,
    ) -> TaskRecord:
        values = _content(data, fields)
        completed = data.completed if "completed" in data.model_fields_set else None
        statement = _update_query(frozenset(values), completed, if_match is not None)
        return await self._write(statement, user_id, task_id, if_match, values)

    async def _write(
        self,
        statement: Query[_Written],
        user_id: str,
        task_id: int,
        if_match: Sequence[datetime] | None,
        values: dict[str, Any],
    ) -> _Written:
        """One conditional write; nothing matched: not the user's task (404), or
        If-Match failed (412)."""
        versions: dict[str, Any] = {}
        if if_match is not None:
            versions["versions"] = list(if_match)
        row = await self._run.write_one(
            statement, user_id=user_id, task_id=task_id, **versions, **values
        )
        if row is None:
            await self._raise_missing_or_changed(user_id, task_id)
        return row

    async def _raise_missing_or_changed(self, user_id: str, task_id: int) -> NoReturn:
        if await self._run.fetch_one(EXISTS, user_id=user_id, task_id=task_id) is None:
            raise TaskNotFound()
        raise PreconditionFailed()

    @staticmethod
    def _insert_values(user_id: str, data: TaskCreate) -> dict[str, Any]:
        return {
            **_content(data, set(_DEFAULTS)),
            "user_id": user_id,
            "title": data.title,
            "completed": bool(data.completed),
        }

    async def _insert(self, values: dict[str, Any]) -> TaskRecord:
        task = await self._run.write_one(INSERT, **values)
        assert task is not None  # INSERT … RETURNING always returns its row
        return task

    def _within(self, tx: Transaction) -> "TaskService":
        """This service with its writes inside `tx`: a batch's operations run
        through the very methods their single requests use."""
        view = copy.copy(self)
        view._run = tx
        return view

    async def _once(
        self,
        user_id: str,
        key: str,
        request_hash: str,
        run: Callable[[Transaction], Awaitable[_Answer]],
        replay: Callable[[str], _Answer],
    ) -> _Answer:
        """Idempotency-Key (E1, E11): `_claim_and_run`, run again on a Conflict
        (the whole transaction, claim included, was rolled back)."""
        return await _again_on_conflict(
            lambda: self._claim_and_run(user_id, key, request_hash, run, replay)
        )

    async def _claim_and_run(
        self,
        user_id: str,
        key: str,
        request_hash: str,
        run: Callable[[Transaction], Awaitable[_Answer]],
        replay: Callable[[str], _Answer],
    ) -> _Answer:
        """Claim (user, key) by inserting its row, `run` and store the answer in
        the same transaction. A concurrent request with the same key waits on that
        row until this transaction ends (409 after IDEMPOTENCY_WAIT_MS), then
        `replay`s the stored answer; another body under the key is a 422. An
        expired key (older than 24 h) is claimed afresh."""
        owner = {"user_id": user_id, "key": key}
        claiming = True
        try:
            async with self._db.transaction(lock_timeout_ms=IDEMPOTENCY_WAIT_MS) as tx:
                claimed = await tx.fetch_one(
                    CLAIM_KEY, **owner, request_hash=request_hash
                )
                claiming = False
                if claimed is None:
                    first = await tx.fetch_one(FIRST_RESPONSE, **owner)
                    # The claim conflicted with this row, committed with its answer.
                    assert first is not None
                    assert first["response"] is not None
                    if first["request_hash"] != request_hash:
                        raise IdempotencyKeyReused()
                    return replay(first["response"])
                answer = await run(tx)
                response = orjson.dumps(answer, option=orjson.OPT_UTC_Z).decode()
                await tx.execute(STORE_RESPONSE, **owner, response=response)
                await tx.execute(EXPIRE_KEYS)
        except LockTimeout:
            if claiming:  # on the key's row: its first request is still running
                raise IdempotencyKeyInUse() from None
            raise  # the work itself waited on another lock (a task's row): a 503
        return answer
