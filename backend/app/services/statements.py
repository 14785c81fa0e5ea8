"""The statements of the single-task requests, the listing and clear completed,
on tasks and their tombstones, each filtered by its owner (`owned`, which delta
sync's and Idempotency-Key's statements start from too; checked by
tests/unit/test_owner_filter.py).

Statements are built from the SQLModel tables with `bindparam` placeholders and
compiled once per shape (which fields, which filters, which sort); each request only
binds its values and runs the compiled statement through the database gateway."""

import re
from datetime import timedelta
from functools import cache
from typing import Any, TypedDict

from sqlalchemy import (
    BigInteger,
    Boolean,
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
    func,
    literal_column,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert

from app.db.gateway import Query, compile_query
from app.models import Priority, Task, TaskTombstone
from app.schemas import TaskCreate, TaskListQuery, TaskPatch, TaskRecord

TASK: Table = Task.__table__  # type: ignore[attr-defined]
# What a statement returns of a task: TaskRecord's fields (never change_xid).
COLUMNS = tuple(TASK.c[name] for name in TaskRecord.__annotations__)
TOMBSTONE: Table = TaskTombstone.__table__  # type: ignore[attr-defined]

# Defaults an omitted (PUT) or nulled (PATCH) field returns to.
DEFAULTS: dict[str, Any] = {
    "description": None,
    "priority": Priority.none,
    "tags": [],
    "due_at": None,
}
_TIMESTAMPTZ = DateTime(timezone=True)


class Id(TypedDict):
    id: int


class NoRows(TypedDict):
    pass


def owned(*, table: Table = TASK, by_id: bool = False) -> ColumnElement[bool]:
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
    moves at least a microsecond past the earlier one's value. (`change_xid`, the
    writing transaction for delta sync, the database sets itself: migration 0004.)"""
    return {
        "updated_at": func.greatest(
            func.clock_timestamp(), TASK.c.updated_at + timedelta(microseconds=1)
        )
    }


def _completion(completed: bool) -> dict[str, Any]:
    """`completed_at` is set when a task becomes complete, cleared when it reopens."""
    completed_at = (
        func.coalesce(TASK.c.completed_at, func.clock_timestamp())
        if completed
        else None
    )
    return {"completed": completed, "completed_at": completed_at}


GET = compile_query(select(*COLUMNS).where(owned(by_id=True)), TaskRecord)
EXISTS = compile_query(select(TASK.c.id).where(owned(by_id=True)), Id)


def _in_id_order(*conditions: ColumnElement[bool]) -> Select[tuple[int]]:
    """The ids of the user's tasks that match, each row locked in id order.
    Every statement that locks several tasks takes them this way (a batch the
    tasks it names, a clear the tasks it deletes), so two never hold each other's
    next task: they queue, and never deadlock. A clear that locked in the order
    it found its tasks (the heap's) deadlocked with batches and other clears,
    and a single request waiting behind them could be the victim (a 503)."""
    locked = select(TASK.c.id).where(owned(), *conditions).order_by(TASK.c.id)
    return locked.with_for_update()


LOCK_IN_ID_ORDER = compile_query(
    _in_id_order(TASK.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))), Id
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
    """Delete the user's tasks that match, and sweep expired tombstones; returns
    the deleted ids. The database leaves a tombstone for each task deleted, by
    any statement, written by the deleting transaction: delta sync reports it
    (migration 0004; a task id deleted before, its row restored since, has its
    tombstone marked anew)."""
    gone = delete(TASK).where(owned(), *conditions).returning(TASK.c.id)
    return gone.add_cte(_sweep_tombstones().cte("swept")) if sweep else gone


class _Count(TypedDict):
    count: int


SWEEP_TOMBSTONES = compile_query(_sweep_tombstones(), NoRows)


_cleared = _bury(TASK.c.id.in_(_in_id_order(TASK.c.completed)), sweep=False)
_cleared = _cleared.cte("cleared")
CLEAR_COMPLETED = compile_query(
    select(func.count().label("count")).select_from(  # owner-filter: exempt (_bury)
        _cleared
    ),
    _Count,
)


@cache
def delete_query(conditional: bool, sweep: bool) -> Query[Id]:
    conditions = [_version_matches()] if conditional else []
    by_id = TASK.c.id == bindparam("task_id")
    return compile_query(_bury(by_id, *conditions, sweep=sweep), Id)


def _update(values: dict[str, Any], conditional: bool) -> Query[TaskRecord]:
    conditions = [_version_matches()] if conditional else []
    statement = (
        update(TASK)
        .where(owned(by_id=True), *conditions)
        .values(**values, **_touch())
        .returning(*COLUMNS)
    )
    return compile_query(statement, TaskRecord)


@cache
def update_query(
    fields: frozenset[str], completed: bool | None, conditional: bool
) -> Query[TaskRecord]:
    """UPDATE … RETURNING of these content fields; `completed` True or False sets
    it (and `completed_at`), None leaves it."""
    values = {name: bindparam(name, type_=TASK.c[name].type) for name in fields}
    if completed is not None:
        values.update(_completion(completed))
    return _update(values, conditional)


@cache
def toggle_query(conditional: bool) -> Query[TaskRecord]:
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


# pg_trgm looks up the trigrams inside a pattern's runs of three or more letters
# or digits (what counts as one depends on the database's locale: only ASCII's are
# sure); a pattern with none has only the trigrams of word edges (`  a`, ` ab`),
# which many users' tasks have, or none at all: every entry of the index matches.
_TRIGRAM = re.compile(r"[A-Za-z0-9]{3}")


def list_statement(sort: str, used: frozenset[str]) -> Select[Any]:
    """The listing query for a sort and the filters in `used` (names of
    TaskListQuery's filters, `q_unindexed` for a `q` without a trigram, and
    `after` when continuing from a cursor): one more row than the page (`limit`),
    to know if another follows. `after` starts past
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
        title: ColumnElement[Any] = TASK.c.title
        description: ColumnElement[Any] = TASK.c.description
        if "q_unindexed" in used:
            # Not the trigram indexes: for a `q` without a sure trigram they
            # would read the entries of every user's tasks (1.3 s for a search
            # of 100 tasks beside another user's 510,000: a hostile trial).
            title, description = title.concat(""), description.concat("")
        conditions.append(
            title.ilike(pattern, escape="\\") | description.ilike(pattern, escape="\\")
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
        .where(owned(), *conditions)
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
    if query.q is not None and not _TRIGRAM.search(query.q):
        used |= {"q_unindexed"}  # the user's own tasks are read instead
    if after is not None:
        used |= {"after"}
        params["after_value"], params["after_id"] = after
    params["limit"] = query.limit + 1
    return _compiled_list(query.sort, used), params


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


def content(data: TaskCreate | TaskPatch, fields: set[str]) -> dict[str, Any]:
    """The given fields' values; a `None` returns the field to its default."""
    values: dict[str, Any] = {}
    for name in fields - {"completed"}:
        value = getattr(data, name)
        values[name] = DEFAULTS[name] if value is None else value
    return values


def insert_values(user_id: str, data: TaskCreate) -> dict[str, Any]:
    """INSERT's values for a new task of the user."""
    return {
        **content(data, set(DEFAULTS)),
        "user_id": user_id,
        "title": data.title,
        "completed": bool(data.completed),
    }
