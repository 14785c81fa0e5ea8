"""Thin handlers: declare inputs, call one service method, return its representation."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from app.api.deps import (
    IdempotencyKeyHeader,
    IfMatch,
    IfNoneMatch,
    TaskIdPath,
    TaskServiceDep,
    UserIdPath,
    authorize,
    rate_limit,
)
from app.api.http import (
    JSON,
    dump,
    etag,
    if_match_versions,
    not_modified,
    task_response,
)
from app.api.openapi import errors
from app.schemas import (
    TaskCreate,
    TaskListQuery,
    TaskPatch,
    TaskPublic,
    TaskReplace,
    ToggleBody,
)

# E6's body is optional; a default instance rather than None keeps the document's
# schema a plain object (generated clients then send `{}` or nothing, never `null`).
NO_FIELDS = ToggleBody()

router = APIRouter(
    prefix="/api/{user_id}/tasks",
    tags=["tasks"],
    dependencies=[Depends(authorize), Depends(rate_limit)],
)

_ETAG = {
    "ETag": {"description": "The task's current version", "schema": {"type": "string"}}
}
_CREATED = {
    "headers": {
        "Location": {
            "description": "URL of the new task",
            "schema": {"type": "string"},
        },
        **_ETAG,
    }
}
_PAGED = {
    "headers": {
        "Link": {
            "description": '`<next page URL>; rel="next"`',
            "schema": {"type": "string"},
        },
        "X-Next-Cursor": {
            "description": "cursor of the next page",
            "schema": {"type": "string"},
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskPublic,
    responses={201: _CREATED, **errors(409, 413, 415, 422)},
)
async def create_task(
    user_id: UserIdPath,
    body: TaskCreate,
    service: TaskServiceDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Create a task (repeat-safe with an Idempotency-Key)."""
    task = await service.create(
        user_id=user_id, data=body, idempotency_key=idempotency_key
    )
    location = {"Location": f"/api/{user_id}/tasks/{task['id']}"}
    return task_response(task, status.HTTP_201_CREATED, location)


@router.get("", response_model=list[TaskPublic], responses={200: _PAGED, **errors()})
async def list_tasks(
    request: Request,
    user_id: UserIdPath,
    query: Annotated[TaskListQuery, Query()],
    service: TaskServiceDep,
) -> Response:
    """List the user's tasks: filters, sort and keyset pages (newest first)."""
    page = await service.list(user_id=user_id, query=query)
    headers = {}
    if page.next_cursor is not None:
        next_url = request.url.include_query_params(cursor=page.next_cursor)
        headers["Link"] = f'<{next_url.path}?{next_url.query}>; rel="next"'
        headers["X-Next-Cursor"] = page.next_cursor
    return Response(dump(page.tasks), media_type=JSON, headers=headers)


@router.get(
    "/{id}",
    response_model=TaskPublic,
    responses={
        200: {"headers": _ETAG},
        304: {"description": "Not modified"},
        **errors(404),
    },
)
async def get_task(
    user_id: UserIdPath,
    task_id: TaskIdPath,
    service: TaskServiceDep,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Get one task (304 when If-None-Match has its current ETag)."""
    task = await service.get(user_id=user_id, task_id=task_id)
    if not_modified(if_none_match, task):
        return Response(status_code=304, headers={"ETag": etag(task)})
    return task_response(task)


@router.put(
    "/{id}",
    response_model=TaskPublic,
    responses={200: {"headers": _ETAG}, **errors(404, 412, 413, 415)},
)
async def replace_task(
    user_id: UserIdPath,
    task_id: TaskIdPath,
    body: TaskReplace,
    service: TaskServiceDep,
    if_match: IfMatch = None,
) -> Response:
    """Replace a task's content; omitted optional fields return to their defaults."""
    versions = if_match_versions(if_match, task_id)
    task = await service.replace(
        user_id=user_id, task_id=task_id, data=body, if_match=versions
    )
    return task_response(task)


@router.patch(
    "/{id}",
    response_model=TaskPublic,
    responses={200: {"headers": _ETAG}, **errors(404, 412, 413, 415)},
)
async def patch_task(
    user_id: UserIdPath,
    task_id: TaskIdPath,
    body: TaskPatch,
    service: TaskServiceDep,
    if_match: IfMatch = None,
) -> Response:
    """Change the given fields only; `null` clears a field."""
    versions = if_match_versions(if_match, task_id)
    task = await service.patch(
        user_id=user_id, task_id=task_id, data=body, if_match=versions
    )
    return task_response(task)


@router.patch(
    "/{id}/complete",
    response_model=TaskPublic,
    responses={200: {"headers": _ETAG}, **errors(404, 412, 413, 415)},
)
async def toggle_task(
    user_id: UserIdPath,
    task_id: TaskIdPath,
    service: TaskServiceDep,
    body: ToggleBody = NO_FIELDS,  # noqa: ARG001 - validated, carries nothing
    if_match: IfMatch = None,
) -> Response:
    """Toggle `completed`, setting or clearing `completed_at`."""
    versions = if_match_versions(if_match, task_id)
    return task_response(
        await service.toggle(user_id=user_id, task_id=task_id, if_match=versions)
    )


@router.delete(
    "/{id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404, 412)
)
async def delete_task(
    user_id: UserIdPath,
    task_id: TaskIdPath,
    service: TaskServiceDep,
    if_match: IfMatch = None,
) -> Response:
    """Delete a task."""
    versions = if_match_versions(if_match, task_id)
    await service.delete(user_id=user_id, task_id=task_id, if_match=versions)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
