"""E11, batch: several operations in one request and one transaction, each with
its own result: a run of consecutive creates as one multi-row INSERT (E1's
statement), every other operation through the method its single request uses."""

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Required, TypedDict, TypeVar, cast

import orjson
from pydantic import BaseModel, ValidationError

from app.db.gateway import Transaction
from app.errors import AppError, FailedDependency, validation_error
from app.schemas import (
    BatchOp,
    ErrorBody,
    TaskCreate,
    TaskPatch,
    TaskRecord,
    TaskReplace,
    ToggleBody,
)
from app.services.idempotency import task_from_json
from app.services.statements import INSERT, LOCK_IN_ID_ORDER, insert_values

if TYPE_CHECKING:
    from app.services.task_service import TaskService

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


# The name TaskService uses (inside it, `list` is its method).
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


def outcomes_from_json(stored: str) -> Outcomes:
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
            outcome["task"] = task_from_json(outcome["task"])
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


async def apply_all(
    tasks: "TaskService",
    tx: Transaction,
    user_id: str,
    steps: Sequence[BatchStep],
    atomic: bool,
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
                    done = await _create_all(tx, user_id, run, created)
                else:
                    done = [await _apply(tasks, user_id, run[0], created)]
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
        insert_values(user_id, body) for body in bodies if isinstance(body, TaskCreate)
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
    tasks: "TaskService", user_id: str, step: BatchStep, created: dict[str, int]
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
            return _outcome(step, 200, await tasks.replace(**named, data=data))
        if step.op == "patch":
            patch = _parse(TaskPatch, step.body)
            return _outcome(step, 200, await tasks.patch(**named, data=patch))
        # toggle and delete: a body as their single requests read one (`no_body`)
        _parse(ToggleBody, {} if step.body is None else step.body)
        if step.op == "toggle":
            return _outcome(step, 200, await tasks.toggle(**named))
        await tasks.delete(**named)
        return _outcome(step, 204)
    except AppError as error:
        return _failed(step, error)
