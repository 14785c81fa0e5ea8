"""Every query on tasks lives here, and every one is filtered by its owner."""

from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, func, insert, update
from sqlmodel import col, select

from app.core.db import SessionFactory
from app.core.errors import TaskNotFound
from app.models import Priority, Task
from app.schemas import TaskCreate, TaskPatch, TaskReplace

# Defaults an omitted (PUT) or nulled (PATCH) field returns to.
_DEFAULTS: dict[str, Any] = {
    "description": None,
    "priority": Priority.none,
    "tags": [],
    "due_at": None,
}


def _owned(user_id: str, task_id: int | None = None) -> ColumnElement[bool]:
    """The owner filter every statement starts from."""
    condition = col(Task.user_id) == user_id
    if task_id is not None:
        condition = and_(condition, col(Task.id) == task_id)
    return condition


def _completion(completed: bool) -> dict[str, Any]:
    """`completed_at` is set when a task becomes complete, cleared when it reopens."""
    completed_at = (
        func.coalesce(col(Task.completed_at), func.clock_timestamp())
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
            func.clock_timestamp(), col(Task.updated_at) + timedelta(microseconds=1)
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


class TaskService:
    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    def list(self, *, user_id: str) -> list[Task]:
        """The user's tasks, newest first."""
        statement = (
            select(Task)
            .where(_owned(user_id))
            .order_by(
                col(Task.created_at).desc(),
                col(Task.id).desc(),
            )
        )
        with self._sessions() as session:
            return list(session.scalars(statement))

    def get(self, *, user_id: str, task_id: int) -> Task:
        """One task of the user, or TaskNotFound."""
        statement = select(Task).where(_owned(user_id, task_id))
        with self._sessions() as session:
            task = session.scalars(statement).one_or_none()
        if task is None:
            raise TaskNotFound()
        return task

    def create(self, *, user_id: str, data: TaskCreate) -> Task:
        """Insert a task owned by `user_id`."""
        now = func.now()
        completed = bool(data.completed)
        statement = (
            insert(Task)
            .values(
                user_id=user_id,
                title=data.title,
                completed=completed,
                completed_at=now if completed else None,
                created_at=now,
                updated_at=now,
                **_content(data, set(_DEFAULTS)),
            )
            .returning(Task)
        )
        with self._sessions() as session:
            task = session.scalars(statement).one()
            session.commit()
        return task

    def replace(self, *, user_id: str, task_id: int, data: TaskReplace) -> Task:
        """PUT: replace the content; `completed` changes only when given."""
        fields = {"title", *_DEFAULTS} | (data.model_fields_set & {"completed"})
        return self._update(user_id, task_id, _content(data, fields))

    def patch(self, *, user_id: str, task_id: int, data: TaskPatch) -> Task:
        """PATCH: change only the given fields."""
        return self._update(user_id, task_id, _content(data, data.model_fields_set))

    def toggle(self, *, user_id: str, task_id: int) -> Task:
        """Flip `completed` atomically in the database."""
        values = {
            "completed": ~col(Task.completed),
            "completed_at": case(
                (col(Task.completed), None), else_=func.clock_timestamp()
            ),
        }
        return self._update(user_id, task_id, values)

    def delete(self, *, user_id: str, task_id: int) -> None:
        """Delete the task, or TaskNotFound."""
        statement = delete(Task).where(_owned(user_id, task_id)).returning(col(Task.id))
        with self._sessions() as session:
            deleted = session.scalars(statement).one_or_none()
            session.commit()
        if deleted is None:
            raise TaskNotFound()

    def _update(self, user_id: str, task_id: int, values: dict[str, Any]) -> Task:
        statement = (
            update(Task)
            .where(_owned(user_id, task_id))
            .values(**values, **_touch())
            .returning(Task)
        )
        with self._sessions() as session:
            task = session.scalars(statement).one_or_none()
            session.commit()
        if task is None:
            raise TaskNotFound()
        return task
