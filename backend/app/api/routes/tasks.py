"""Thin handlers: declare inputs, call one service method, return its representation."""

from datetime import datetime

from fastapi import Request, Response, status

from app.api.deps import (
    IDEMPOTENCY_KEY,
    IF_MATCH,
    IF_NONE_MATCH,
    IF_NONE_MATCH_WRITE,
    TaskIdPath,
    UserIdPath,
    header,
    idempotency_key,
    query,
    task_service,
)
from app.api.http import (
    JSON,
    REPLAYED,
    REPLAYED_HEADER,
    dump,
    etag,
    etag_listed,
    if_match_versions,
    task_response,
)
from app.api.openapi import errors, query_parameters
from app.api.routes import api_router
from app.errors import PreconditionFailed
from app.schemas import (
    TaskCreate,
    TaskListQuery,
    TaskPatch,
    TaskPublic,
    TaskRecord,
    TaskReplace,
    ToggleBody,
)

# E6's body is optional; a default instance rather than None keeps the document's
# schema a plain object (generated clients then send `{}` or nothing, never `null`).
NO_FIELDS = ToggleBody()

router = api_router("tasks")

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
        **REPLAYED_HEADER,
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
    responses={201: _CREATED, **errors(409, 422)},
    openapi_extra={"parameters": [IDEMPOTENCY_KEY]},
)
async def create_task(
    request: Request, user_id: UserIdPath, body: TaskCreate
) -> Response:
    """Create a task (repeat-safe with an Idempotency-Key)."""
    task, replayed = await task_service(request).create(
        user_id=user_id, data=body, idempotency_key=idempotency_key(request)
    )
    headers = {"Location": f"/api/{user_id}/tasks/{task['id']}"}
    if replayed:
        headers |= REPLAYED
    return task_response(task, status.HTTP_201_CREATED, headers)


@router.get(
    "",
    response_model=list[TaskPublic],
    responses={200: _PAGED, **errors()},
    openapi_extra={"parameters": query_parameters(TaskListQuery)},
)
async def list_tasks(request: Request, user_id: UserIdPath) -> Response:
    """List the user's tasks: filters, sort and keyset pages (newest first)."""
    options = query(request, TaskListQuery)
    page = await task_service(request).list(user_id=user_id, query=options)
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
        304: {"description": "Not modified", "headers": _ETAG},
        **errors(404, 412),
    },
    openapi_extra={"parameters": [IF_MATCH, IF_NONE_MATCH]},
)
async def get_task(
    request: Request, user_id: UserIdPath, task_id: TaskIdPath
) -> Response:
    """Get one task (304 when If-None-Match has its current ETag; 412 when
    If-Match has not)."""
    task = await task_service(request).get(user_id=user_id, task_id=task_id)
    _check_if_match(if_match_versions(header(request, "if-match"), task_id), task)
    if etag_listed(header(request, "if-none-match"), task):
        return Response(status_code=304, headers={"ETag": etag(task)})
    return task_response(task)


@router.put(
    "/{id}",
    response_model=TaskPublic,
    responses={200: {"headers": _ETAG}, **errors(404, 412)},
    openapi_extra={"parameters": [IF_MATCH, IF_NONE_MATCH_WRITE]},
)
async def replace_task(
    request: Request,
    user_id: UserIdPath,
    task_id: TaskIdPath,
    body: TaskReplace,
) -> Response:
    """Replace a task's content; omitted optional fields return to their defaults."""
    versions = await _preconditions(request, user_id, task_id)
    task = await task_service(request).replace(
        user_id=user_id, task_id=task_id, data=body, if_match=versions
    )
    return task_response(task)


@router.patch(
    "/{id}",
    response_model=TaskPublic,
    responses={200: {"headers": _ETAG}, **errors(404, 412)},
    openapi_extra={"parameters": [IF_MATCH, IF_NONE_MATCH_WRITE]},
)
async def patch_task(
    request: Request,
    user_id: UserIdPath,
    task_id: TaskIdPath,
    body: TaskPatch,
) -> Response:
    """Change the given fields only; `null` clears a field."""
    versions = await _preconditions(request, user_id, task_id)
    task = await task_service(request).patch(
        user_id=user_id, task_id=task_id, data=body, if_match=versions
    )
    return task_response(task)


@router.patch(
    "/{id}/complete",
    response_model=TaskPublic,
    responses={200: {"headers": _ETAG}, **errors(404, 412)},
    openapi_extra={"parameters": [IF_MATCH, IF_NONE_MATCH_WRITE]},
)
async def toggle_task(
    request: Request,
    user_id: UserIdPath,
    task_id: TaskIdPath,
    body: ToggleBody = NO_FIELDS,  # noqa: ARG001 - validated, carries nothing
) -> Response:
    """Toggle `completed`, setting or clearing `completed_at`."""
    versions = await _preconditions(request, user_id, task_id)
    task = await task_service(request).toggle(
        user_id=user_id, task_id=task_id, if_match=versions
    )
    return task_response(task)


@router.delete(
    "/{id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(404, 412),
    openapi_extra={"parameters": [IF_MATCH, IF_NONE_MATCH_WRITE]},
)
async def delete_task(
    request: Request, user_id: UserIdPath, task_id: TaskIdPath
) -> Response:
    """Delete a task."""
    versions = await _preconditions(request, user_id, task_id)
    await task_service(request).delete(
        user_id=user_id, task_id=task_id, if_match=versions
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _preconditions(
    request: Request, user_id: str, task_id: int
) -> list[datetime] | None:
    """The versions a write may act on: If-Match's (None: any). With
    If-None-Match too (RFC 9110 13.1.2, evaluated after If-Match), the task is
    read first: 412 when a tag matches it (weakly; `*`: it exists), else the
    write acts only on the version read, so a change in between is a 412 too."""
    versions = if_match_versions(header(request, "if-match"), task_id)
    if_none_match = header(request, "if-none-match")
    if if_none_match is None:
        return versions
    task = await task_service(request).get(user_id=user_id, task_id=task_id)
    _check_if_match(versions, task)
    if etag_listed(if_none_match, task):
        raise PreconditionFailed(
            "If-None-Match names the task's current ETag",
            detail="The request excluded the task's current version: nothing changed",
        )
    return [task["updated_at"]]


def _check_if_match(versions: list[datetime] | None, task: TaskRecord) -> None:
    """412 unless If-Match accepts the task's current version (None: any)."""
    if versions is not None and task["updated_at"] not in versions:
        raise PreconditionFailed.against(versions)
