"""Every query on tasks lives here, and every one is filtered by its owner."""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from psycopg2 import errors as pg_errors
from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    Table,
    Text,
    and_,
    case,
    cast,
    delete,
    false,
    func,
    literal,
    literal_column,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from app.db.engine import Sessions
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
IDEMPOTENCY_WAIT = "5s"

# Defaults an omitted (PUT) or nulled (PATCH) field returns to.
_DEFAULTS: dict[str, Any] = {
    "description": None,
    "priority": Priority.none,
    "tags": [],
    "due_at": None,
}


_KEYS = tuple(column.name for column in TASK.c)
_DATETIMES = tuple(name for name in _KEYS if name.endswith("_at"))


@dataclass(frozen=True)
class Page:
    tasks: list[TaskRecord]
    next_cursor: str | None


def _record(row: Sequence[Any]) -> TaskRecord:
    """A row as the API shows it. Rows need no validation (every value came through
    the schemas on the way in); datetimes are made UTC whatever the session's zone."""
    task = dict(zip(_KEYS, row, strict=True))
    if task["created_at"].tzinfo is not UTC:  # the session's TimeZone is not UTC
        for name in _DATETIMES:
            if task[name] is not None:
                task[name] = task[name].astimezone(UTC)
    return task


def _owned(
    user_id: str, task_id: int | None = None, *, table: Table = TASK
) -> ColumnElement[bool]:
    """The owner filter every statement starts from."""
    condition = table.c.user_id == user_id
    if task_id is not None:
        condition = and_(condition, table.c.id == task_id)
    return condition


def _version_matches(versions: Sequence[datetime] | None) -> ColumnElement[bool]:
    """If-Match: the task's current version (its updated_at) is one of these."""
    if versions is None:
        return literal(True)
    return TASK.c.updated_at.in_(versions) if versions else false()


def _completion(completed: bool) -> dict[str, Any]:
    """`completed_at` is set when a task becomes complete, cleared when it reopens."""
    completed_at = (
        func.coalesce(TASK.c.completed_at, func.clock_timestamp())
        if completed
        else None
    )
    return {"completed": completed, "completed_at": completed_at}


def _touch() -> dict[str, Any]:
    """`updated_at` strictly increases with every change, even when two concurrent
    transactions see the same clock: the row lock orders them, and the later one
    moves at least a microsecond past the earlier one's value."""
    return {
        "updated_at": func.greatest(
            func.clock_timestamp(), TASK.c.updated_at + timedelta(microseconds=1)
        )
    }


def _content(data: TaskCreate | TaskPatch, fields: set[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in fields - {"completed"}:
        value = getattr(data, name)
        values[name] = _DEFAULTS[name] if value is None else value
    if "completed" in fields and data.completed is not None:
        values.update(_completion(data.completed))
    return values


def _nulls_last(due_at: ColumnElement[Any], descending: bool) -> ColumnElement[Any]:
    """`due_at` sorts undated tasks last in both directions: as the matching
    infinity, exactly as models.DUE_AT_ASC / DUE_AT_DESC index it."""
    infinity = "'-infinity'" if descending else "'infinity'"
    return func.coalesce(due_at, literal_column(f"{infinity}::timestamptz"))


def _sort_expression(key: str, descending: bool) -> ColumnElement[Any]:
    """The indexed expression each sort key orders by (see models.Task)."""
    if key == "title":
        return func.lower(TASK.c.title)
    if key == "due_at":
        return _nulls_last(TASK.c.due_at, descending)
    column: ColumnElement[Any] = TASK.c[key]
    return column


def _sort_value(key: str, descending: bool, value: Any) -> ColumnElement[Any]:
    """A cursor's stored value, transformed exactly like the sorted column."""
    if key == "title":
        return func.lower(cast(value, Text))
    if key == "due_at":
        return _nulls_last(cast(value, TASK.c.due_at.type), descending)
    return cast(value, TASK.c[key].type)


def _cursor_value(task: TaskRecord, key: str) -> Any:
    value = task[key]
    return value.isoformat() if isinstance(value, datetime) else value


def _filters(query: TaskListQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if query.completed is not None:
        conditions.append(TASK.c.completed.is_(query.completed))
    if query.priority:
        conditions.append(TASK.c.priority.in_(query.priority))
    if query.tag:
        conditions.append(TASK.c.tags.contains(list(dict.fromkeys(query.tag))))
    if query.q is not None:
        # %, _ and \\ in q are literal: escape them for ILIKE.
        escaped = query.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        conditions.append(
            TASK.c.title.ilike(pattern, escape="\\")
            | TASK.c.description.ilike(pattern, escape="\\")
        )
    if query.due_after is not None:
        conditions.append(TASK.c.due_at >= query.due_after)
    if query.due_before is not None:
        conditions.append(TASK.c.due_at < query.due_before)
    return conditions


def list_statement(
    user_id: str, query: TaskListQuery, after: Sequence[Any] | None = None
) -> Select[Any]:
    """The listing query: one more row than the page, to know if another follows.
    `after` is the (sort value, id) position of the previous page's last task."""
    key = query.sort.removeprefix("-")
    descending = query.sort.startswith("-")
    order = _sort_expression(key, descending)
    conditions = _filters(query)
    if after is not None:
        position = tuple_(order, TASK.c.id)
        bound = tuple_(_sort_value(key, descending, after[0]), literal(after[1]))
        conditions.append(position < bound if descending else position > bound)
    return (
        select(*TASK.c)
        .where(_owned(user_id), *conditions)
        .order_by(
            order.desc() if descending else order.asc(),
            TASK.c.id.desc() if descending else TASK.c.id.asc(),
        )
        .limit(query.limit + 1)
    )


def _request_hash(data: TaskCreate) -> str:
    """Two bodies are "the same" when they would create the same task."""
    values = {
        **_content(data, set(_DEFAULTS)),
        "title": data.title,
        "completed": bool(data.completed),
    }
    canonical = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class TaskService:
    def __init__(self, sessions: Sessions, cursors: CursorCodec) -> None:
        self._sessions = sessions
        self._cursors = cursors

    def list(self, *, user_id: str, query: TaskListQuery) -> Page:
        """One page of the user's tasks, filtered and sorted (keyset pagination)."""
        binding = {"user": user_id, "sort": query.sort, "filters": query.filters()}
        after = None
        if query.cursor is not None:
            after = self._cursors.decode(query.cursor, binding)
            if not isinstance(after[1], int):
                raise InvalidCursor()
        rows = self._read(list_statement(user_id, query, after))
        tasks = [_record(row) for row in rows[: query.limit]]
        next_cursor = None
        if len(rows) > query.limit:
            last = tasks[-1]
            position = [_cursor_value(last, query.sort.removeprefix("-")), last["id"]]
            next_cursor = self._cursors.encode(position, binding)
        return Page(tasks, next_cursor)

    def get(self, *, user_id: str, task_id: int) -> TaskRecord:
        """One task of the user, or TaskNotFound."""
        rows = self._read(select(*TASK.c).where(_owned(user_id, task_id)))
        if not rows:
            raise TaskNotFound()
        return _record(rows[0])

    def create(
        self, *, user_id: str, data: TaskCreate, idempotency_key: str | None = None
    ) -> TaskRecord:
        """Insert a task owned by `user_id`. With an Idempotency-Key, a repeat of the
        same body returns the first response and creates nothing."""
        if idempotency_key is None:
            with self._sessions.autocommit() as session:
                task = self._insert(session, user_id, data)
                session.commit()
            return task
        with self._sessions.transaction() as session:
            task = self._insert_once(session, user_id, data, idempotency_key)
            session.commit()
        return task

    def replace(
        self,
        *,
        user_id: str,
        task_id: int,
        data: TaskReplace,
        if_match: Sequence[datetime] | None = None,
    ) -> TaskRecord:
        """PUT: replace the content; `completed` changes only when given."""
        fields = {"title", *_DEFAULTS} | (data.model_fields_set & {"completed"})
        return self._update(user_id, task_id, _content(data, fields), if_match)

    def patch(
        self,
        *,
        user_id: str,
        task_id: int,
        data: TaskPatch,
        if_match: Sequence[datetime] | None = None,
    ) -> TaskRecord:
        """PATCH: change only the given fields."""
        values = _content(data, data.model_fields_set)
        return self._update(user_id, task_id, values, if_match)

    def toggle(
        self, *, user_id: str, task_id: int, if_match: Sequence[datetime] | None = None
    ) -> TaskRecord:
        """Flip `completed` atomically in the database."""
        values = {
            "completed": ~TASK.c.completed,
            "completed_at": case(
                (TASK.c.completed, None), else_=func.clock_timestamp()
            ),
        }
        return self._update(user_id, task_id, values, if_match)

    def delete(
        self, *, user_id: str, task_id: int, if_match: Sequence[datetime] | None = None
    ) -> None:
        """Delete the task, or TaskNotFound / PreconditionFailed."""
        statement = (
            delete(TASK)
            .where(_owned(user_id, task_id), _version_matches(if_match))
            .returning(TASK.c.id)
        )
        with self._sessions.autocommit() as session:
            deleted = session.execute(statement).one_or_none()
            if deleted is None:
                self._raise_missing_or_changed(session, user_id, task_id)
            session.commit()

    def _read(self, statement: Select[Any]) -> Sequence[Row[Any]]:
        """Run a read. A pooled connection that turns out to be dead (the server
        dropped it: Neon scaling to zero, a restart) is replaced and the read
        retried once; writes are never retried (a write may have committed)."""
        for attempt in (1, 2):
            try:
                with self._sessions.autocommit() as session:
                    return session.execute(statement).all()
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def _update(
        self,
        user_id: str,
        task_id: int,
        values: dict[str, Any],
        if_match: Sequence[datetime] | None,
    ) -> TaskRecord:
        statement = (
            update(TASK)
            .where(_owned(user_id, task_id), _version_matches(if_match))
            .values(**values, **_touch())
            .returning(*TASK.c)
        )
        with self._sessions.autocommit() as session:
            row = session.execute(statement).one_or_none()
            if row is None:
                self._raise_missing_or_changed(session, user_id, task_id)
            session.commit()
        return _record(row)

    @staticmethod
    def _raise_missing_or_changed(
        session: Session, user_id: str, task_id: int
    ) -> NoReturn:
        """Nothing matched: not the user's task (404), or If-Match failed (412)."""
        statement = select(TASK.c.id).where(_owned(user_id, task_id))
        if session.execute(statement).one_or_none() is None:
            raise TaskNotFound()
        raise PreconditionFailed()

    @staticmethod
    def _insert(session: Session, user_id: str, data: TaskCreate) -> TaskRecord:
        now = func.now()
        completed = bool(data.completed)
        statement = (
            insert(TASK)
            .values(
                user_id=user_id,
                title=data.title,
                completed=completed,
                completed_at=now if completed else None,
                created_at=now,
                updated_at=now,
                **_content(data, set(_DEFAULTS)),
            )
            .returning(*TASK.c)
        )
        return _record(session.execute(statement).one())

    def _insert_once(
        self, session: Session, user_id: str, data: TaskCreate, key: str
    ) -> TaskRecord:
        """Claim (user, key) by inserting its row; a concurrent request with the same
        key waits on that row until this transaction ends, then replays its answer.
        An expired key (older than 24 h) is claimed afresh."""
        request_hash = _request_hash(data)
        session.execute(text(f"SET LOCAL lock_timeout = '{IDEMPOTENCY_WAIT}'"))
        claim = (
            insert(IDEMPOTENCY)
            .values(user_id=user_id, key=key, request_hash=request_hash)
            .on_conflict_do_update(
                index_elements=[IDEMPOTENCY.c.user_id, IDEMPOTENCY.c.key],
                set_={
                    "request_hash": request_hash,
                    "response": None,
                    "created_at": func.now(),
                },
                where=IDEMPOTENCY.c.created_at < func.now() - IDEMPOTENCY_TTL,
            )
            .returning(IDEMPOTENCY.c.key)
        )
        try:
            claimed = session.execute(claim).one_or_none()
        except OperationalError as exc:
            if isinstance(exc.orig, pg_errors.LockNotAvailable):
                raise IdempotencyKeyInUse() from None
            raise
        this_key = IDEMPOTENCY.c.key == key
        if claimed is None:
            first = session.execute(
                select(IDEMPOTENCY.c.request_hash, IDEMPOTENCY.c.response).where(
                    _owned(user_id, table=IDEMPOTENCY), this_key
                )
            ).one()
            if first.request_hash != request_hash:
                raise IdempotencyKeyReused()
            return TaskPublic.model_validate(first.response).model_dump()
        task = self._insert(session, user_id, data)
        session.execute(
            update(IDEMPOTENCY)
            .where(_owned(user_id, table=IDEMPOTENCY), this_key)
            .values(response=TaskPublic.model_validate(task).model_dump(mode="json"))
        )
        self._expire_keys(session)
        return task

    @staticmethod
    def _expire_keys(session: Session) -> None:
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
        session.execute(sweep.where(key.in_(batch)))
