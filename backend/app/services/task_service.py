"""The task service the routes call: E1-E7 and E12 here, delta sync (E10) in
`sync`, batches (E11) in `batch`, Idempotency-Key in `idempotency`. The statements
on tasks are in `statements`; sync's and the keys' own are with their code. Every
one is filtered by owner (tests/unit/test_owner_filter.py)."""

import copy
import itertools
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import orjson

from app.db.gateway import Database, Query, Transaction, again_on_conflict
from app.errors import (
    DatabaseUnavailable,
    InvalidCursor,
    PreconditionFailed,
    TaskNotFound,
)
from app.schemas import TaskCreate, TaskListQuery, TaskPatch, TaskRecord, TaskReplace
from app.services.batch import BatchStep, Outcomes, apply_all, outcomes_from_json
from app.services.cursor import CursorCodec
from app.services.idempotency import digest, once, task_from_json
from app.services.statements import (
    CLEAR_COMPLETED,
    DEFAULTS,
    EXISTS,
    GET,
    INSERT,
    SWEEP_TOMBSTONES,
    Id,
    content,
    delete_query,
    insert_values,
    list_query,
    toggle_query,
    update_query,
)
from app.services.sync import Changes, DeltaSync

# Tombstones outlive the sync tokens that may need them by a day: a delete whose
# transaction began (deleted_at) before a token was issued may commit after it.
TOMBSTONE_GRACE = timedelta(days=1)
# One single-task delete in this many (counted per worker) also sweeps expired
# tombstones, up to SWEEP_BATCH: three per delete, more than a delete leaves, so
# they never pile up, and the other deletes are a plain statement (the sweep
# tripled PostgreSQL's work). A clear-completed sweeps twice what it cleared.
SWEEP_EVERY = 32
SWEEP_BATCH = 100


_Written = TypeVar("_Written", TaskRecord, Id)


@dataclass(frozen=True)
class Page:
    tasks: list[TaskRecord]
    next_cursor: str | None


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


def _request_hash(values: dict[str, Any]) -> str:
    """Two bodies are "the same" when they would create the same task: its
    INSERT values, but its owner (a key is the user's own; so hashes stored
    before the owner was among those values still match)."""
    return digest({name: v for name, v in values.items() if name != "user_id"})


class TaskService:
    def __init__(
        self,
        database: Database,
        cursors: CursorCodec,
        sync_retention: timedelta,
        sync_reset_at: datetime | None = None,
    ) -> None:
        self._db = database
        # Where writes run: the pool (one statement each), or a batch's transaction.
        self._run: Database | Transaction = database
        self._cursors = cursors
        # Bound by a statement that sweeps expired tombstones.
        self._sweep = {
            "keep_tombstones": sync_retention + TOMBSTONE_GRACE,
            "sweep_limit": SWEEP_BATCH,
        }
        self._deletes = itertools.count()  # shared with `_within`'s copies
        self._sync = DeltaSync(database, cursors, sync_retention, sync_reset_at)

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
        """E10 (`sync`)."""
        return await self._sync.changes(user_id=user_id, since=since, limit=limit)

    async def get(self, *, user_id: str, task_id: int) -> TaskRecord:
        """One task of the user, or TaskNotFound."""
        task = await self._db.fetch_one(GET, user_id=user_id, task_id=task_id)
        if task is None:
            raise TaskNotFound()
        return task

    async def create(
        self, *, user_id: str, data: TaskCreate, idempotency_key: str | None = None
    ) -> tuple[TaskRecord, bool]:
        """Insert a task owned by `user_id`. With an Idempotency-Key, a repeat of the
        same body returns the first response and creates nothing. The task, and
        whether it is a repeat's."""
        values = insert_values(user_id, data)
        if idempotency_key is None:
            return await self._insert(values), False
        return await once(
            self._db,
            user_id,
            idempotency_key,
            _request_hash(values),
            lambda tx: self._within(tx)._insert(values),
            lambda stored: task_from_json(orjson.loads(stored)),
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
        fields = {"title", *DEFAULTS}
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
        statement = toggle_query(if_match is not None)
        return await self._write(statement, user_id, task_id, if_match, {})

    async def delete(
        self, *, user_id: str, task_id: int, if_match: Sequence[datetime] | None = None
    ) -> None:
        """Delete the task, or TaskNotFound / PreconditionFailed."""
        sweep = next(self._deletes) % SWEEP_EVERY == 0
        statement = delete_query(if_match is not None, sweep)
        await self._write(
            statement, user_id, task_id, if_match, self._sweep if sweep else {}
        )

    async def clear_completed(self, *, user_id: str) -> int:
        """E12: delete the user's completed tasks (tombstones included); how many.
        Then sweep up to twice as many expired tombstones as it left (at least
        SWEEP_BATCH): a clear leaves many at once, more than deletes take."""
        cleared = await again_on_conflict(
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
    ) -> tuple[Outcomes, bool]:
        """E11: each step as its single request would, in order, in one
        transaction (consecutive creates in one INSERT: services/batch.py).
        Atomic: all or nothing; otherwise one step's failure stops no other.
        The outcomes, and whether they are a keyed repeat's."""

        async def run(tx: Transaction) -> Outcomes:
            return await apply_all(self._within(tx), tx, user_id, steps, atomic)

        async def unkeyed() -> Outcomes:
            async with self._db.transaction() as tx:
                return await run(tx)

        if idempotency_key is None:
            return await again_on_conflict(unkeyed), False
        request = {"atomic": atomic, "operations": [asdict(s) for s in steps]}
        return await once(
            self._db, user_id, idempotency_key, digest(request), run, outcomes_from_json
        )

    async def _update(
        self,
        user_id: str,
        task_id: int,
        data: TaskCreate | TaskPatch,
        fields: set[str],
        if_match: Sequence[datetime] | None,
    ) -> TaskRecord:
        values = content(data, fields)
        completed = data.completed if "completed" in data.model_fields_set else None
        statement = update_query(frozenset(values), completed, if_match is not None)
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
            await self._raise_missing_or_changed(user_id, task_id, if_match)
        return row

    async def _raise_missing_or_changed(
        self, user_id: str, task_id: int, if_match: Sequence[datetime] | None
    ) -> NoReturn:
        if await self._run.fetch_one(EXISTS, user_id=user_id, task_id=task_id) is None:
            raise TaskNotFound()
        raise PreconditionFailed.against(if_match)

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
