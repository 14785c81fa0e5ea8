"""The routers. The /api ones (`api_router`) join the app's own route list rather
than being included (`app.main`), so each carries what an include would add: the
app's `strict_content_type` and operationIds are set here too, and
`app.dependency_overrides` does not reach these routes (no test uses it: tests run
the real dependencies)."""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import Scope

from app.api.deps import admit, no_body
from app.api.openapi import operation_id
from app.edge.middleware import CLIENT_CLOSED_REQUEST, carries_a_body
from app.edge.shares import UserShares

# The last segments of routes/sync.py's paths under /tasks (checked by
# tests/unit/test_routes.py).
NAMED_PATHS = frozenset({"batch", "changes"})


class AdmittedRoute(APIRoute):
    """A route that runs `admit` (authentication, the schema's check, then the
    rate limit) first, before FastAPI reads the body or resolves a parameter:
    where a route dependency would run it, without the dependency resolution,
    which cost more per request than the check itself (specs/005-performance).
    A route that takes no body then checks one that was sent (`no_body`). The
    handler runs in one of the user's turns (`edge.shares`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        takes_no_body = self.body_field is None

        async def admitted(request: Request) -> Response:
            await admit(request)
            if takes_no_body and carries_a_body(request.scope):
                await no_body(request)
            shares: UserShares = request.app.state.shares
            user = request.path_params["user_id"]
            waited = await shares.take(user)
            try:
                if waited and await _hung_up(request):
                    return Response(status_code=CLIENT_CLOSED_REQUEST)
                return await handle(request)
            finally:
                shares.give(user)

        return admitted

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        """`/tasks/batch` and `/tasks/changes` (routes/sync.py) are never a task's
        `{id}`: a method they lack is their 405, not a task route's 400 for the id."""
        match, child = super().matches(scope)
        if match is not Match.NONE and child["path_params"].get("id") in NAMED_PATHS:
            return Match.NONE, {}
        return match, child


async def _hung_up(request: Request) -> bool:
    """Whether the client hung up while its request waited for its user's turn:
    such a request is not run (its turn goes on to the next). Its body is read
    first (kept for the handler), so the check can only find a hang-up; a hang-up
    seen already ends the read (Starlette's ClientDisconnect: it was a 500, a
    re-trial)."""
    try:
        await request.body()
    except ClientDisconnect:
        return True
    return await request.is_disconnected()


def api_router(tag: str) -> APIRouter:
    """/api/{user_id}/tasks…: authenticated and rate limited (`admit`), a body
    without Content-Type read as JSON (specs/001), operationIds from handler names."""
    return APIRouter(
        prefix="/api/{user_id}/tasks",
        tags=[tag],
        route_class=AdmittedRoute,
        generate_unique_id_function=operation_id,
        strict_content_type=False,
    )
