"""Every dependency alias, read as a type."""

from typing import Annotated

from fastapi import Depends, Path, Request

from app.core.db import SessionFactory
from app.schemas import USER_ID_PATTERN, TaskId
from app.services.task_service import TaskService


async def get_session_factory(request: Request) -> SessionFactory:
    factory: SessionFactory = request.app.state.session_factory
    return factory


SessionFactoryDep = Annotated[SessionFactory, Depends(get_session_factory)]


async def get_task_service(sessions: SessionFactoryDep) -> TaskService:
    return TaskService(sessions)


TaskServiceDep = Annotated[TaskService, Depends(get_task_service)]
UserIdPath = Annotated[
    str,
    Path(
        pattern=USER_ID_PATTERN,
        description="The owner's id: 1-128 of `A-Z a-z 0-9 _ - . @ :`",
        examples=["user_2f9a"],
    ),
]
TaskIdPath = Annotated[TaskId, Path(description="The task's id", examples=[1])]
