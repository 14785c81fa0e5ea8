"""E10, delta sync: what changed for a user since a sync token, exactly once.

A token carries PostgreSQL snapshots (`_Snapshot`), not timestamps: a change is
sent when the transaction that wrote it had not committed in the token's snapshot,
so commits out of start order, or in one microsecond, are never missed
(specs/008-offline-sync)."""

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Annotated, Any, NamedTuple

from pydantic import Field, StrictInt, StringConstraints, TypeAdapter, ValidationError
from sqlalchemy import (
    BigInteger,
    BindParameter,
    Boolean,
    Column,
    ColumnElement,
    Table,
    Text,
    any_,
    bindparam,
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
)
from sqlalchemy.dialects.postgresql import ARRAY

from app.db.gateway import Database, Query, compile_query
from app.errors import DatabaseRefused, InvalidCursor, SyncTokenExpired
from app.schemas import JsonTaskId, TaskRecord
from app.services.cursor import CursorCodec
from app.services.statements import COLUMNS, TASK, TOMBSTONE, owned

logger = logging.getLogger("app.sync")
# The upper bound of a sync's transaction ids before its first page: none.
NO_CEILING = 2**63 - 1
# A token's snapshot as text, at most: a token carries two, with ~150 characters
# more, and its base64 must stay under the 16,000 characters `since` takes.
MAX_SNAPSHOT_TEXT = 5_800


class _Change(TaskRecord):
    """A row of the changes statement: first the snapshot it ran in (nothing
    else), then a task (`deleted` false) or a tombstone (true, only its ids)."""

    snapshot: str | None
    deleted: bool | None
    change_xid: int


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
        if (upto is None) != (after is None) or (upto is None) != (upto_at is None):
            raise InvalidCursor("since")  # never issued: a page goes on from both
        return cls(
            since_at, since, upto_at, upto, after, _Origin(*origin) if origin else None
        )


# A sync token's state, as `SyncToken.encode` writes it: `pg_snapshot` text,
# transaction ids below 10^18 (a bigint; a cluster's are far below) and the last
# change sent, a (change_xid, task id): any bigint, as a write with triggers off
# may leave one (a negative one was refused, 400, on the page after it).
_Xid = Annotated[StrictInt, Field(ge=0, lt=10**18)]
_ChangeXid = Annotated[StrictInt, Field(ge=-(2**63), lt=10**18)]
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
        tuple[_ChangeXid, JsonTaskId] | None,
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
        .where(owned(), *_changed(TASK, since, continuing))
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
                owned(table=TOMBSTONE),
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
    # start at 3; but see `_snapshot_row`), not in each of 1,000 rows: ~0.2 ms of
    # PostgreSQL's time and ~0.1 ms of the worker's a page. Both parts are
    # ordered by (change_xid, id): PostgreSQL merges them without sorting.
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


def _record(row: _Change) -> TaskRecord:
    """The task in a change row: the row itself, less the sync columns (cheaper
    than a copy, at 1,000 rows a page)."""
    columns: dict[str, Any] = row  # type: ignore[assignment]  # to delete required keys
    del columns["snapshot"], columns["deleted"], columns["change_xid"]
    return row


def _snapshot_row(rows: list[_Change]) -> str:
    """Takes the statement's snapshot row out of `rows`: the first, unless a task's
    `change_xid` is 0 or less (no transaction's: a write with triggers off), which
    comes before it."""
    at = next(at for at, row in enumerate(rows) if row["snapshot"] is not None)
    snapshot = rows.pop(at)["snapshot"]
    assert snapshot is not None
    return snapshot


class DeltaSync:
    """E10 for one worker's task service."""

    def __init__(
        self,
        database: Database,
        cursors: CursorCodec,
        retention: timedelta,
        reset_at: datetime | None = None,
    ) -> None:
        self._db = database
        self._cursors = cursors
        self._retention = retention
        # Tokens issued before it are expired (SYNC_RESET_AT): none by default. In
        # whole seconds, as tokens carry: from the one after the reset's, so a token
        # from the reset's own second is expired too (a sync from scratch, never a
        # change missed; rounded up, a reset in whole seconds let it through, a
        # restore trial).
        self._reset_at = math.floor(reset_at.timestamp()) + 1 if reset_at else 0
        # Whether syncs read the server's origin (crash safety, specs/008): until
        # the server refuses it (a managed PostgreSQL's restriction).
        self._origin = True

    async def changes(self, *, user_id: str, since: str | None, limit: int) -> Changes:
        """E10: the user's tasks changed, and ids deleted, since a sync token
        (every task without one), `limit` at a time, and the token to go on from."""
        now = int(time.time())
        token = SyncToken(now)
        if since is not None:
            token = SyncToken.decode(self._cursors, user_id, since)
            oldest = max(now - self._retention.total_seconds(), self._reset_at)
            if token.since_at < oldest:
                raise SyncTokenExpired()
        # Runs once; twice when the token predates a restart (the cut-back token
        # has no origin) or the server refuses the origin (then never asked again).
        while True:
            query, params = token.statement(limit, self._origin)
            try:
                rows = await self._db.fetch(query, user_id=user_id, **params)
            except DatabaseRefused as exc:
                if not self._origin:
                    raise
                logger.warning("delta sync not safe across a crash: %s", exc.reason)
                self._origin = False  # the server refuses `_STARTS` or its checkpoint
                continue
            first = _snapshot_row(rows)
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
        changed = rows
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
