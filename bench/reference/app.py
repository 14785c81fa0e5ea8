"""The typical FastAPI + SQLModel implementation, kept only to be measured beside ours
(`make bench`): sync routes, a `yield` session dependency, ORM objects, response_model
validation, the default engine and pool, an index on user_id. Not part of the service.

    DATABASE_URL=postgresql+psycopg2://… uvicorn bench.reference.app:app
"""

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from sqlmodel import Field, Session, SQLModel, create_engine, select

engine = create_engine(os.environ["DATABASE_URL"])
app = FastAPI()


def now() -> datetime:
    return datetime.now(UTC)


class RefTask(SQLModel, table=True):
    __tablename__ = "ref_task"
    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(index=True)
    title: str
    description: str | None = None
    completed: bool = False
    priority: str = "none"
    created_at: datetime = Field(default_factory=now)
    updated_at: datetime = Field(default_factory=now)


class TaskIn(SQLModel):
    title: str = Field(min_length=1, max_length=200)
    description: str | None = None
    priority: str = "none"


class TaskOut(SQLModel):
    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    priority: str
    created_at: datetime
    updated_at: datetime


def get_session() -> Iterator[Session]:
    with Session(engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def _get(session: Session, user_id: str, task_id: int) -> RefTask:
    task = session.get(RefTask, task_id)
    if task is None or task.user_id != user_id:
        raise HTTPException(404, "Task not found")
    return task


@app.get("/api/{user_id}/tasks", response_model=list[TaskOut])
def list_tasks(user_id: str, session: SessionDep, limit: int = 100) -> list[RefTask]:
    statement = (
        select(RefTask)
        .where(RefTask.user_id == user_id)
        .order_by(RefTask.created_at.desc())  # type: ignore[attr-defined]
        .limit(limit)
    )
    return list(session.exec(statement).all())


@app.post("/api/{user_id}/tasks", response_model=TaskOut, status_code=201)
def create_task(user_id: str, body: TaskIn, session: SessionDep) -> RefTask:
    task = RefTask(user_id=user_id, **body.model_dump())
    session.add(task)
    session.commit()
    session.refresh(task)
    return task


@app.get("/api/{user_id}/tasks/{task_id}", response_model=TaskOut)
def get_task(user_id: str, task_id: int, session: SessionDep) -> RefTask:
    return _get(session, user_id, task_id)


@app.put("/api/{user_id}/tasks/{task_id}", response_model=TaskOut)
def replace_task(
    user_id: str, task_id: int, body: TaskIn, session: SessionDep
) -> RefTask:
    task = _get(session, user_id, task_id)
    for key, value in body.model_dump().items():
        setattr(task, key, value)
    task.updated_at = now()
    session.add(task)
    session.commit()
    session.refresh(task)
    return task


@app.patch("/api/{user_id}/tasks/{task_id}/complete", response_model=TaskOut)
def toggle_task(user_id: str, task_id: int, session: SessionDep) -> RefTask:
    task = _get(session, user_id, task_id)
    task.completed = not task.completed
    task.updated_at = now()
    session.add(task)
    session.commit()
    session.refresh(task)
    return task


@app.delete("/api/{user_id}/tasks/{task_id}", status_code=204)
def delete_task(user_id: str, task_id: int, session: SessionDep) -> None:
    session.delete(_get(session, user_id, task_id))
    session.commit()
