"""Offline-first clients (CONTRACT C9): delta sync, batches, clear completed.

Registered before the single-task routes, so `/tasks/changes` and `/tasks/batch`
are never read as a task id."""

from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Response

from app.api.deps import TaskServiceDep, UserIdPath, authorize, rate_limit
from app.api.http import JSON
from app.api.openapi import errors
from app.schemas import ChangesPublic, ChangesQuery, Cleared

router = APIRouter(
    prefix="/api/{user_id}/tasks",
    tags=["sync"],
    dependencies=[Depends(authorize), Depends(rate_limit)],
)


@router.get("/changes", response_model=ChangesPublic, responses=errors(410))
async def list_changes(
    user_id: UserIdPath,
    query: Annotated[ChangesQuery, Query()],
    service: TaskServiceDep,
) -> Response:
    """Tasks changed and ids deleted since a sync token (`since`); all without one."""
    changes = await service.changes(
        user_id=user_id, since=query.since, limit=query.limit
    )
    body = {
        "tasks": changes.tasks,
        "deleted": changes.deleted,
        "next": changes.next,
        "has_more": changes.has_more,
    }
    return Response(orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type=JSON)


@router.delete("", response_model=Cleared, responses=errors())
async def clear_completed(
    user_id: UserIdPath,
    service: TaskServiceDep,
    completed: Annotated[  # noqa: ARG001 - a guard: validated, carries nothing
        Literal["true"],
        Query(description="Required, and only `true`: never delete everything"),
    ],
) -> Cleared:
    """Delete the user's completed tasks; later syncs report them as deleted."""
    return Cleared(deleted=await service.clear_completed(user_id=user_id))
