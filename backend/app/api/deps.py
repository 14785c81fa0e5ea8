"""Every dependency alias, read as a type."""

from typing import Annotated

from fastapi import Depends, Header, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.edge.auth import TokenVerifier
from app.edge.ratelimit import RateLimiter
from app.errors import ForbiddenError, UnauthorizedError
from app.schemas import USER_ID_PATTERN, TaskId
from app.services.task_service import TaskService


async def get_task_service(request: Request) -> TaskService:
    service: TaskService = request.app.state.tasks
    return service


TaskServiceDep = Annotated[TaskService, Depends(get_task_service)]
UserIdPath = Annotated[
    str,
    Path(
        pattern=USER_ID_PATTERN,
        description="The owner's id: 1-128 of `A-Z a-z 0-9 _ - . @ :`",
        examples=["user_2f9a"],
    ),
]
# `{id}` in the URL and the document, as the contract names it; `task_id` in Python.
TaskIdPath = Annotated[
    TaskId, Path(alias="id", description="The task's id", examples=[1])
]
IfMatch = Annotated[
    str | None,
    Header(alias="If-Match", description="Only act if the task's ETag is one of these"),
]
IfNoneMatch = Annotated[
    str | None,
    Header(alias="If-None-Match", description="304 if the task's ETag is one of these"),
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[\x20-\x7e]{1,255}$",
        description="Repeat-safe create: 1-255 printable ASCII characters, 24 h",
    ),
]

_bearer = HTTPBearer(
    auto_error=False,
    description="A JWT from Better Auth (or signed with the shared secret).",
)


async def authorize(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Every /api request: a valid token whose user is the path's {user_id}.
    Runs before the path is validated and before any database work."""
    verifier: TokenVerifier | None = request.app.state.verifier
    if verifier is None:  # auth is off (development, or AUTH_DISABLED=true)
        return
    if credentials is None:
        raise UnauthorizedError()
    user_id = await verifier.user_id(credentials.credentials)
    if user_id != request.path_params.get("user_id"):
        raise ForbiddenError()
    request.state.user_id = user_id


async def rate_limit(request: Request) -> None:
    """Per authenticated user (set by `authorize`), else per client address."""
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is None:
        return
    user_id = getattr(request.state, "user_id", None)
    client = request.client.host if request.client else "unknown"
    await limiter.check(f"user:{user_id}" if user_id else f"addr:{client}")
