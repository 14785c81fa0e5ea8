"""Every query on tasks lives here, and every one is filtered by its owner.

Statements are built from the SQLModel tables with `bindparam` placeholders and
compiled once per shape (which fields, which filters, which sort); each request only
binds its values and runs the compiled statement through the database gateway."""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, NoReturn, TypedDict, TypeVar, cast

import orjson
from sqlalchemy import (
    Boolean,
    ColumnElement,
    DateTime,
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

from app.db.gateway import Database, LockTimeout, Query, compile_query
from app.errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidCursor,
    PreconditionFailed,
    TaskNotFound,
)
from app.models import IdempotencyKey, Priority, Task
from app.schemas import (
    TaskCreate,
    TaskListQuery,
    TaskPatch,
    TaskPublic,
    TaskRecord,
    TaskReplace,
)
from app.services.cursor import CursorCodec

TASK: Table = Task.__table__  # type: ignore[attr-defined]
IDEMPOTENCY: Table = IdempotencyKey.__table__  # type: ignore[attr-defined]
IDEMPOTENCY_TTL = timedelta(hours=24)
# How long a create waits for another in-flight request with its Idempotency-Key.
IDEMPOTENCY_WAIT_MS = 5000

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


@dataclass(frozen=True)
class Page:
    tasks: list[TaskRecord]
    next_cursor: str | None


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
    moves at least a microsecond past the earlier one's value."""
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


GET = compile_query(select(*TASK.c).where(_owned(by_id=True)), TaskRecord)
EXISTS = compile_query(select(TASK.c.id).where(_owned(by_id=True)), _Id)
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
    .returning(*TASK.c),
    TaskRecord,
)


@cache
def _delete_query(conditional: bool) -> Query[_Id]:
    conditions = [_version_matches()] if conditional else []
    return compile_query(
        delete(TASK).where(_owned(by_id=True), *conditions).returning(TASK.c.id), _Id
    )


def _update(values: dict[str, Any], conditional: bool) -> Query[TaskRecord]:
    conditions = [_version_matches()] if conditional else []
    statement = (
        update(TASK)
        .where(_owned(by_id=True), *conditions)
        .values(**values, **_touch())
        .returning(*TASK.c)
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
        select(*TASK.c)
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


def _content(data: TaskCreate | TaskPatch, fields: set[str]) -> dict[str, Any]:
    """The given fields' values; a `None` returns the field to its default."""
    values: dict[str, Any] = {}
    for name in fields - {"completed"}:
        value = getattr(data, name)
        values[name] = _DEFAULTS[name] if value is None else value
    return values


def _request_hash(data: TaskCreate) -> str:
    """Two bodies are "the same" when they would create the same task."""
    values = {
        **_content(data, set(_DEFAULTS)),
        "title": data.title,
        "completed": bool(data.completed),
    }
    canonical = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


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
    100 expired keys (anyone's: the one statement not filtered by owner, and it
    only deletes). When none has expired this is a single probe of the
    created_at index; SKIP LOCKED keeps concurrent creates from queueing."""
    expired = IDEMPOTENCY.c.created_at < func.now() - IDEMPOTENCY_TTL
    key = tuple_(IDEMPOTENCY.c.user_id, IDEMPOTENCY.c.key)
    batch = select(  # owner-filter: exempt
        IDEMPOTENCY.c.user_id, IDEMPOTENCY.c.key
    )
    batch = batch.where(expired).limit(100).with_for_update(skip_locked=True)
    sweep = delete(IDEMPOTENCY)  # owner-filter: exempt
    return sweep.where(key.in_(batch))


EXPIRE_KEYS = compile_query(_expire_keys_statement(), _NoRows)


class TaskService:
    def __init__(self, database: Database, cursors: CursorCodec) -> None:
        self._db = database
        self._cursors = cursors

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
            task = await self._db.write_one(INSERT, **values)
            assert task is not None  # INSERT … RETURNING always returns its row
            return task
        try:
            return await self._insert_once(user_id, values, idempotency_key, data)
        except LockTimeout:
            raise IdempotencyKeyInUse() from None

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
        statement = _delete_query(if_match is not None)
        await self._write(statement, user_id, task_id, if_match, {})

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
        row = await self._db.write_one(
            statement, user_id=user_id, task_id=task_id, **versions, **values
        )
        if row is None:
            await self._raise_missing_or_changed(user_id, task_id)
        return row

    async def _raise_missing_or_changed(self, user_id: str, task_id: int) -> NoReturn:
        if await self._db.fetch_one(EXISTS, user_id=user_id, task_id=task_id) is None:
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

    async def _insert_once(
        self, user_id: str, values: dict[str, Any], key: str, data: TaskCreate
    ) -> TaskRecord:
        """Claim (user, key) by inserting its row; a concurrent request with the same
        key waits on that row until this transaction ends, then replays its answer.
        An expired key (older than 24 h) is claimed afresh."""
        request_hash = _request_hash(data)
        owner = {"user_id": user_id, "key": key}
        async with self._db.transaction(lock_timeout_ms=IDEMPOTENCY_WAIT_MS) as tx:
            claimed = await tx.fetch_one(CLAIM_KEY, **owner, request_hash=request_hash)
            if claimed is None:
                first = await tx.fetch_one(FIRST_RESPONSE, **owner)
                # The claim conflicted with this row, committed with its response.
                assert first is not None
                assert first["response"] is not None
                if first["request_hash"] != request_hash:
                    raise IdempotencyKeyReused()
                replay = TaskPublic.model_validate_json(first["response"])
                return cast(TaskRecord, replay.model_dump())
            task = await tx.fetch_one(INSERT, **values)
            assert task is not None
            response = orjson.dumps(task, option=orjson.OPT_UTC_Z).decode()
            await tx.execute(STORE_RESPONSE, **owner, response=response)
            await tx.execute(EXPIRE_KEYS)
        return task
