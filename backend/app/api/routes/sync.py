"""Offline-first clients (CONTRACT C9): delta sync, batches, clear completed.

`/tasks/changes` and `/tasks/batch` are never read as a task id, whatever the
order of the routes (`AdmittedRoute.matches`)."""

from typing import Annotated

import orjson
from fastapi import Body, Request, Response
from fastapi.openapi.models import Example

from app.api.deps import (
    IDEMPOTENCY_KEY,
    UserIdPath,
    idempotency_key,
    query,
    refused_parameters,
    task_service,
)
from app.api.http import JSON, REPLAYED, REPLAYED_HEADER, etag, if_match_versions
from app.api.openapi import errors, query_parameters
from app.api.routes import api_router
from app.schemas import (
    BatchRequest,
    BatchResults,
    ChangesPublic,
    ChangesQuery,
    Cleared,
    ClearQuery,
    TaskListQuery,
)
from app.services.batch import BatchStep

router = api_router("sync")


@router.get(
    "/changes",
    response_model=ChangesPublic,
    responses=errors(410),
    openapi_extra={"parameters": query_parameters(ChangesQuery)},
)
async def list_changes(request: Request, user_id: UserIdPath) -> Response:
    """Tasks changed and ids deleted since a sync token (`since`); all without one."""
    options = query(request, ChangesQuery)
    changes = await task_service(request).changes(
        user_id=user_id, since=options.since, limit=options.limit
    )
    body = {
        "tasks": changes.tasks,
        "deleted": changes.deleted,
        "next": changes.next,
        "has_more": changes.has_more,
    }
    return Response(orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type=JSON)


_BATCH_EXAMPLES: dict[str, Example] = {
    "offline": {
        "summary": "A create, then a patch and a toggle of the task it made",
        "value": {
            "atomic": True,
            "operations": [
                {"op": "create", "ref": "new-1", "body": {"title": "Buy milk"}},
                {"op": "patch", "target": "new-1", "body": {"priority": "high"}},
                {"op": "toggle", "target": "new-1"},
            ],
        },
    }
}


@router.post(
    "/batch",
    response_model=BatchResults,
    responses={200: {"headers": REPLAYED_HEADER}, **errors(409, 422)},
    openapi_extra={"parameters": [IDEMPOTENCY_KEY]},
)
async def batch_tasks(
    request: Request,
    user_id: UserIdPath,
    body: Annotated[BatchRequest, Body(openapi_examples=_BATCH_EXAMPLES)],
) -> Response:
    """Up to 100 operations in order, each as its single request; `atomic`: all
    or none (then 200 with the failing operation's error, the others 424)."""
    steps = [
        BatchStep(
            op.op,
            op.ref,
            op.id,
            op.target,
            None if op.id is None else if_match_versions(op.if_match, op.id),
            op.body,
        )
        for op in body.operations
    ]
    outcomes, replayed = await task_service(request).batch(
        user_id=user_id,
        steps=steps,
        atomic=body.atomic,
        idempotency_key=idempotency_key(request),
    )
    results = [
        {**outcome, "etag": etag(outcome["task"])} if "task" in outcome else outcome
        for outcome in outcomes
    ]
    body_bytes = orjson.dumps({"results": results}, option=orjson.OPT_UTC_Z)
    return Response(body_bytes, media_type=JSON, headers=REPLAYED if replayed else None)


@router.delete(
    "",
    response_model=Cleared,
    responses=errors(),
    openapi_extra={"parameters": query_parameters(ClearQuery)},
)
async def clear_completed(request: Request, user_id: UserIdPath) -> Cleared:
    """Delete the user's completed tasks; later syncs report them as deleted.
    Takes none of the listing's filters: it always clears every completed task."""
    query(request, ClearQuery)  # a guard: validated, carries nothing
    _refuse_narrowing(request)
    deleted = await task_service(request).clear_completed(user_id=user_id)
    return Cleared(deleted=deleted)


# E2's options other than `completed`: each would narrow a listing, not this delete.
_LISTING_OPTIONS = frozenset(TaskListQuery.model_fields) - {"completed"}


def _refuse_narrowing(request: Request) -> None:
    """A client sending `?completed=true&tag=work` means the completed work tasks;
    ignoring the tag would delete more than it asked for: a listing option is a
    400 and nothing is deleted (specs/008)."""
    refused = [name for name in request.query_params if name in _LISTING_OPTIONS]
    if refused:
        raise refused_parameters(
            refused, "not taken here: this clears every completed task"
        )
