"""Thin handlers: declare inputs, call one service method, return a schema."""

from fastapi import APIRouter, Depends, Response, status

from app.api.deps import TaskIdPath, TaskServiceDep, UserIdPath, authorize
from app.api.responses import errors
from app.schemas import TaskCreate, TaskPatch, TaskPublic, TaskReplace, ToggleBody

router = APIRouter(
    prefix="/api/{user_id}/tasks", tags=["tasks"], dependencies=[Depends(authorize)]
)

_LOCATION = {
    "Location": {"description": "URL of the new task", "schema": {"type": "string"}}
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={201: {"headers": _LOCATION}, **errors(413, 415)},
)
def create_task(
    user_id: UserIdPath, body: TaskCreate, service: TaskServiceDep, response: Response
) -> TaskPublic:
    """Create a task."""
    task = TaskPublic.model_validate(service.create(user_id=user_id, data=body))
    response.headers["Location"] = f"/api/{user_id}/tasks/{task.id}"
    return task


@router.get("", responses=errors())
def list_tasks(user_id: UserIdPath, service: TaskServiceDep) -> list[TaskPublic]:
    """List the user's tasks, newest first."""
    return [TaskPublic.model_validate(t) for t in service.list(user_id=user_id)]


@router.get("/{task_id}", responses=errors(404))
def get_task(
    user_id: UserIdPath, task_id: TaskIdPath, service: TaskServiceDep
) -> TaskPublic:
    """Get one task."""
    return TaskPublic.model_validate(service.get(user_id=user_id, task_id=task_id))


@router.put("/{task_id}", responses=errors(404, 413, 415))
def replace_task(
    user_id: UserIdPath,
    task_id: TaskIdPath,
    body: TaskReplace,
    service: TaskServiceDep,
) -> TaskPublic:
    """Replace a task's content; omitted optional fields return to their defaults."""
    task = service.replace(user_id=user_id, task_id=task_id, data=body)
    return TaskPublic.model_validate(task)


@router.patch("/{task_id}", responses=errors(404, 413, 415))
def patch_task(
    user_id: UserIdPath,
    task_id: TaskIdPath,
    body: TaskPatch,
    service: TaskServiceDep,
) -> TaskPublic:
    """Change the given fields only; `null` clears a field."""
    task = service.patch(user_id=user_id, task_id=task_id, data=body)
    return TaskPublic.model_validate(task)


@router.patch("/{task_id}/complete", responses=errors(404, 413, 415))
def toggle_task(
    user_id: UserIdPath,
    task_id: TaskIdPath,
    service: TaskServiceDep,
    body: ToggleBody | None = None,  # noqa: ARG001 - validated, carries nothing
) -> TaskPublic:
    """Toggle `completed`, setting or clearing `completed_at`."""
    return TaskPublic.model_validate(service.toggle(user_id=user_id, task_id=task_id))


@router.delete(
    "/{task_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404)
)
def delete_task(
    user_id: UserIdPath, task_id: TaskIdPath, service: TaskServiceDep
) -> Response:
    """Delete a task."""
    service.delete(user_id=user_id, task_id=task_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
