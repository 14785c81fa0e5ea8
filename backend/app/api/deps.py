"""What routes take from a request: the parameter aliases, read as types, the task
service, headers, query models, and the authentication dependencies."""

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import cache
from typing import Annotated, TypeVar, get_origin
from urllib.parse import unquote_plus, unquote_to_bytes

from fastapi import Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, StringConstraints, TypeAdapter, ValidationError
from starlette.datastructures import QueryParams

from app.api.openapi import optional_header
from app.edge.auth import TokenVerifier
from app.edge.ratelimit import RateLimiter
from app.errors import (
    SCHEMA_NOT_CHECKED,
    SENT_ONCE,
    DatabaseUnavailable,
    ForbiddenError,
    NotFoundError,
    UnauthorizedError,
    sent_twice,
    undecodable_body,
)
from app.schemas import IDEMPOTENCY_KEY_PATTERN, USER_ID_PATTERN, TaskId, ToggleBody
from app.services.task_service import TaskService


def task_service(request: Request) -> TaskService:
    """The app's task service. Read by the routes, not declared as a dependency:
    FastAPI resolves each dependency on every request (specs/005-performance)."""
    service: TaskService = request.app.state.tasks
    return service


def header(request: Request, name: str) -> str | None:
    """A header's values as one comma-separated list (how HTTP combines a header
    sent several times); None when it was not sent."""
    values = request.headers.getlist(name)
    return ", ".join(values) if values else None


M = TypeVar("M", bound=BaseModel)


@cache
def _list_parameters(model: type[BaseModel]) -> frozenset[str]:
    """The model's fields that take every value of a repeated parameter."""
    return frozenset(
        name
        for name, field in model.model_fields.items()
        if get_origin(field.annotation) is list
    )


def query(request: Request, model: type[M]) -> M:
    """The query string as `model`, validated as FastAPI validates a declared
    `Annotated[model, Query()]` (the same 400 when it does not fit): read here
    because FastAPI re-inspects the model's annotations on every request
    (specs/005-performance). Document it with `openapi.query_parameters`."""
    params = request.query_params
    lists = _list_parameters(model)
    if len(params.multi_items()) > len(params):  # a parameter sent more than once
        _refuse_repeated(params, frozenset(model.model_fields) - lists)
    if any("\ufffd" in value for _, value in params.multi_items()):
        _refuse_undecodable(request.scope["query_string"], model.model_fields.keys())
    values = {
        name: params.getlist(name) if name in lists else params[name] for name in params
    }
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise _invalid(exc, "query") from None


def _refuse_repeated(params: QueryParams, single_valued: frozenset[str]) -> None:
    """A parameter that takes one value, sent twice: which was meant? A 400 (the
    last one used to win). Unknown parameters are ignored, repeated or not."""
    repeated = [name for name in sorted(single_valued) if len(params.getlist(name)) > 1]
    if repeated:
        raise refused_parameters(repeated, SENT_ONCE)


def _refuse_undecodable(query_string: bytes, names: Iterable[str]) -> None:
    """Starlette reads bytes that are not UTF-8 (`q=%FF`) as U+FFFD: the search
    would be for a character the client never wrote. A 400 instead; a U+FFFD
    the client did write (`%EF%BF%BD`) is kept."""
    refused = set()
    for pair in query_string.split(b"&"):
        name, _, value = pair.partition(b"=")
        try:
            unquote_to_bytes(value.replace(b"+", b" ")).decode()
        except UnicodeDecodeError:
            refused.add(unquote_plus(name.decode("latin-1")))
    refused &= set(names)
    if refused:
        raise refused_parameters(sorted(refused), "must be UTF-8 text")


async def no_body(request: Request) -> None:
    """A body sent to a route that takes none (a GET, a DELETE) is read as E6's
    "none" is, by FastAPI's `json.loads` and `ToggleBody`: a JSON object with no
    field but read-only ones (ignored, as everywhere), else the same 400. A
    DELETE sent malformed JSON, or `{"if_match": …}` meant as a condition,
    deleted all the same (a trial). Its size and media type the edge checked
    (`BodyGuardMiddleware`)."""
    body = await request.body()
    if not body:
        return
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        at = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": exc.msg}
        raise RequestValidationError([at]) from None
    except (ValueError, RecursionError) as exc:  # bad UTF-8, too deep, too long
        raise undecodable_body(exc) from None
    try:
        ToggleBody.model_validate(value)
    except ValidationError as exc:
        raise _invalid(exc, "body") from None


def refused_parameters(names: list[str], message: str) -> RequestValidationError:
    """The 400 naming query parameters refused for one reason."""
    return RequestValidationError(
        [
            {"type": "value_error", "loc": ("query", name), "msg": message}
            for name in names
        ]
    )


def _invalid(exc: ValidationError, *where: str) -> RequestValidationError:
    """pydantic's errors placed as FastAPI places a parameter's (`query`, or
    `header` and its name): the 400 they render is the same."""
    errors = exc.errors(include_url=False)
    return RequestValidationError(
        [{**error, "loc": (*where, *error["loc"])} for error in errors]
    )


UserIdPath = Annotated[
    str,
    Path(
        pattern=USER_ID_PATTERN,
        description="The owner's id: 1-128 of `A-Z a-z 0-9 _ - . @ :`",
        examples=["user_2f9a"],
        # The parameter's own example, which Swagger UI fills in (it reads none
        # from the schema: a newcomer typed every id by hand).
        openapi_examples={"a user": {"value": "user_2f9a"}},
    ),
]
# `{id}` in the URL and the document, as the contract names it; `task_id` in Python.
TaskIdPath = Annotated[
    TaskId,
    Path(
        alias="id",
        description="The task's id",
        examples=[1],
        openapi_examples={"the first task": {"value": 1}},
    ),
]
IF_MATCH = optional_header("If-Match", "Only act if the task's ETag is one of these")
IF_NONE_MATCH = optional_header(
    "If-None-Match", "304 if the task's ETag is one of these"
)
IF_NONE_MATCH_WRITE = optional_header(
    "If-None-Match", "412 if the task's ETag is one of these (`*`: any)"
)
IDEMPOTENCY_KEY = optional_header(
    "Idempotency-Key",
    "Repeat-safe create: 1-255 printable ASCII characters, 24 h",
    pattern=IDEMPOTENCY_KEY_PATTERN,
)
_IdempotencyKey = TypeAdapter(
    Annotated[str, StringConstraints(pattern=IDEMPOTENCY_KEY_PATTERN)]
)


def idempotency_key(request: Request) -> str | None:
    """The `Idempotency-Key` header (its first value), validated as FastAPI
    validates a declared `Header()` (the same 400): read here because a declared
    parameter costs every request of the route (specs/005-performance). Document
    it with `IDEMPOTENCY_KEY`."""
    values = request.headers.getlist("idempotency-key")
    if not values:
        return None
    if len(values) > 1:  # a proxy and the app could each read another one
        raise sent_twice("Idempotency-Key")
    value = values[0]
    try:
        return _IdempotencyKey.validate_python(value)
    except ValidationError as exc:
        raise _invalid(exc, "header", "Idempotency-Key") from None


# Better Auth's JWTs are under 1 KiB; a token is refused unparsed beyond this.
MAX_TOKEN_LENGTH = 8 * 1024
logger = logging.getLogger("app.auth")


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _bearer_token(request: Request) -> str:
    """The one bearer token: 400 for two Authorization headers (a proxy and the
    app could each read a different one); 401 for none, another scheme, or a token
    longer than any JWT we issue (MAX_TOKEN_LENGTH) before it is parsed."""
    values = request.headers.getlist("authorization")
    if len(values) > 1:
        raise sent_twice("Authorization")
    if not values:
        raise UnauthorizedError()
    scheme, token = get_authorization_scheme_param(values[0])
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError(
            "missing", "Authorization must be 'Bearer <JWT>' (no other scheme)"
        )
    if len(token) > MAX_TOKEN_LENGTH:
        raise UnauthorizedError(
            "malformed", f"The token is longer than {MAX_TOKEN_LENGTH} characters"
        )
    return token


async def _authenticated(request: Request, verify: Callable[[], Awaitable[str]]) -> str:
    """Runs `verify`; counts a failure against the client's address and logs why
    it failed: past that address's budget, a failure is a 429 instead of a 401,
    and is not logged again (its access line is). A token that verifies is
    served whatever the budget (users signing in, or refreshing their token,
    behind an address that someone else spent it from)."""
    try:
        return await verify()
    except UnauthorizedError as failure:
        guard: RateLimiter | None = request.app.state.auth_failures
        if guard is not None and failure.counts_as_failure:
            await guard.check(
                f"authfail:{client_address(request)}",
                "Too many failed authentications from this address",
            )
        logger.info(
            "authentication failed",
            extra={
                "reason": failure.reason,
                "detail": failure.detail,
                "client": client_address(request),
                "request_id": getattr(request.state, "request_id", None),
                **failure.context,
            },
        )
        raise


async def authorize(request: Request) -> None:
    """Every /api request: a valid token whose user is the path's {user_id}.
    Runs before the path is validated and before any database work."""
    verifier: TokenVerifier | None = request.app.state.verifier
    if verifier is None:  # auth is off (development, or AUTH_DISABLED=true)
        return
    token = _bearer_token(request)
    user_id = verifier.known(token) or await _authenticated(
        request, lambda: verifier.user_id(token)
    )
    if user_id != request.path_params.get("user_id"):
        raise ForbiddenError()
    request.state.user_id = user_id


async def authorize_metrics(request: Request) -> None:
    """/metrics: with METRICS_TOKEN set, only for that bearer token; unset, open
    outside production and absent (404) in production."""
    expected: str | None = request.app.state.metrics_token
    if expected is None:
        if request.app.state.metrics_public:
            return
        raise NotFoundError()
    token = _bearer_token(request)

    async def verify() -> str:
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise UnauthorizedError("signature", "This is not the metrics token")
        return "metrics"

    await _authenticated(request, verify)


async def rate_limit(request: Request) -> None:
    """Per authenticated user (set by `authorize`), else per client address."""
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is None:
        return
    user_id = getattr(request.state, "user_id", None)
    await limiter.check(
        f"user:{user_id}" if user_id else f"addr:{client_address(request)}"
    )


async def admit(request: Request) -> None:
    """What every /api route runs first (`routes.AdmittedRoute`): authentication,
    the schema's check (`app.main`), then the rate limit. Not FastAPI
    dependencies: FastAPI's resolution of each costs more per request than the
    check it runs (specs/005-performance)."""
    await authorize(request)
    if not request.app.state.schema_checked:
        raise DatabaseUnavailable(detail=SCHEMA_NOT_CHECKED)
    await rate_limit(request)
