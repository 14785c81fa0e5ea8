"""The route list's own rules."""

from fastapi.routing import APIRoute

from app.api.routes import NAMED_PATHS, sync


def test_every_named_path_under_tasks_is_kept_from_the_task_routes() -> None:
    """`AdmittedRoute.matches` keeps these from being read as a task's `{id}`: a
    path added to routes/sync.py and not to NAMED_PATHS would be a task id (a
    400 for its method's 405)."""
    prefix = "/api/{user_id}/tasks/"
    named = {
        route.path.removeprefix(prefix)
        for route in sync.router.routes
        if isinstance(route, APIRoute) and route.path.startswith(prefix)
    }
    assert named == NAMED_PATHS
