"""The framework ceiling: our app, every middleware and authentication (the task
routes' `AdmittedRoute`), plus one route that returns a pre-built 100-task list
serialised per request, never touching the database
(`uvicorn bench.ceiling:create_app --factory`); and the floor it is held against, a
bare FastAPI app with the same route and nothing else
(`uvicorn bench.ceiling:create_bare_app --factory`)."""

from datetime import UTC, datetime
from typing import cast

from fastapi import FastAPI, Response

from app.api.http import JSON, dump
from app.api.routes import AdmittedRoute
from app.main import create_app as create_service
from app.schemas import TaskPublic, TaskRecord

_NOW = datetime.now(UTC)
_TASKS = [
    TaskPublic(
        id=i,
        user_id="u1",
        title=f"bench task {i}",
        description="from wrk",
        completed=False,
        completed_at=None,
        priority="high",
        tags=["bench"],
        due_at=None,
        created_at=_NOW,
        updated_at=_NOW,
    )
    for i in range(100)
]
_RECORDS = [cast(TaskRecord, task.model_dump()) for task in _TASKS]


def create_app() -> FastAPI:
    app = create_service()

    async def ceiling() -> Response:
        return Response(dump(_RECORDS), media_type=JSON)

    app.router.add_api_route(
        "/ceiling/{user_id}/tasks",
        ceiling,
        methods=["GET"],
        route_class_override=AdmittedRoute,
    )
    # Matched first, as the task routes are: routing tries routes in order.
    app.router.routes.insert(0, app.router.routes.pop())
    return app


def create_bare_app() -> FastAPI:
    app = FastAPI()

    @app.get("/ceiling/{user_id}/tasks")
    async def ceiling() -> Response:
        return Response(dump(_RECORDS), media_type=JSON)

    return app
