"""create_app(): routers, middleware, exception handlers, lifespan."""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta

import anyio
from fastapi import FastAPI

from app.api.openapi import openapi_schema, operation_id
from app.api.routes import docs, health, sync, tasks
from app.config import Settings, get_settings, kept_cursor_key
from app.db.gateway import Database
from app.db.migrations import ensure_schema, ensure_schema_once_reachable
from app.db.url import parse_database_url
from app.edge.auth import TokenVerifier
from app.edge.forwarded import ForwardedMiddleware
from app.edge.middleware import (
    EXPOSED_HEADERS,
    METHODS,
    BodyGuardMiddleware,
    CanonicalRequestMiddleware,
    JsonCORSMiddleware,
    LoadShedMiddleware,
    RequestContextMiddleware,
)
from app.edge.protocol import worker_admission
from app.edge.ratelimit import MemoryStore, RateLimiter, RedisStore
from app.edge.shares import UserShares
from app.errors import register_exception_handlers
from app.observability.logging import adopt_uvicorn_loggers, configure_logging
from app.services.cursor import CursorCodec
from app.services.task_service import TaskService
from app.workers import die_with_supervisor

logger = logging.getLogger("app")

DESCRIPTION = """A user-scoped todo API. Every error has the body
`{"error", "code", "detail", "fields"?, "request_id"?}`."""


def _limiters(settings: Settings) -> tuple[RateLimiter | None, RateLimiter | None]:
    """The request limiter and the failed-authentication limiter, on one store."""
    authenticates = settings.auth_enabled or settings.METRICS_TOKEN is not None
    limits = (
        settings.rate_limit,
        settings.auth_failure_limit if authenticates else None,
    )
    if limits == (None, None):
        return None, None
    redis = settings.REDIS_URL
    store = RedisStore(redis.get_secret_value()) if redis else MemoryStore()
    requests, failures = (
        RateLimiter(*limit, store, reason) if limit is not None else None
        for limit, reason in zip(limits, ("rate_limit", "auth_failures"), strict=True)
    )
    return requests, failures


# Young objects collected every 50,000 net allocations instead of 700: most of a
# request's garbage is freed by reference counting anyway, and 16 syncs of 1,000
# changes in flight hold ~50,000 objects (specs/005-performance).
YOUNG_COLLECTION_THRESHOLD = 50_000
_PYTHON_THRESHOLDS = gc.get_threshold()


@contextmanager
def _startup_heap_frozen() -> Iterator[None]:
    """What is loaded by the time the app serves (modules, routes, schemas, the
    pool: ~120,000 objects) lives as long as the worker: hidden from the cycle
    collector while serving, so a full collection walks the few thousand objects
    made since instead of pausing every request in flight for 30-40 ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *_PYTHON_THRESHOLDS[1:])
    try:
        yield
    finally:  # collectable again (a process that builds several apps, as tests do)
        gc.set_threshold(*_PYTHON_THRESHOLDS)
        gc.unfreeze()


async def _schema_checked_later(app: FastAPI, url: str) -> None:
    if await ensure_schema_once_reachable(app.state.database, url):
        app.state.schema_checked = True


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    die_with_supervisor()
    configure_logging(settings.LOG_LEVEL)
    leave_embedded: Callable[[], None] | None = None
    if settings.DATABASE_URL is not None:
        url = settings.DATABASE_URL.get_secret_value()
    else:
        from app.db.embedded import embedded_database  # development only

        url, leave_embedded = embedded_database()
    database = Database(settings, parse_database_url(url))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        adopt_uvicorn_loggers()
        await database.open()
        checking: asyncio.Task[None] | None = None
        try:
            if not await ensure_schema(database, url):
                app.state.schema_checked = False
                checking = asyncio.create_task(_schema_checked_later(app, url))
            with _startup_heap_frozen():
                yield
        finally:
            if checking is not None:
                checking.cancel()
            await database.close()
            limiter = app.state.rate_limiter or app.state.auth_failures
            if limiter is not None:  # both share one store
                await limiter.store.close()
            if leave_embedded is not None:  # stops it unless others still use it
                await anyio.to_thread.run_sync(leave_embedded)

    app = FastAPI(
        title="Task API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # Metrics are Prometheus (/metrics); FastAPI's native OpenTelemetry would
        # only check, on every request, for providers nobody configured.
        telemetry={
            "tracing": False,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
        },
        # `/…/` is served as `/…` (CanonicalRequestMiddleware), no redirect.
        redirect_slashes=False,
        # A body without Content-Type is read as JSON (specs/001).
        strict_content_type=False,
        generate_unique_id_function=operation_id,
    )
    app.state.database = database
    # False from a start-up that could not reach the database until it has
    # (`ensure_schema_once_reachable`): /api requests and /health are 503s.
    app.state.schema_checked = True
    cursor_key = settings.cursor_key or kept_cursor_key()
    cursors = CursorCodec(cursor_key, settings.cursor_fallback_keys)
    retention = timedelta(days=settings.SYNC_RETENTION_DAYS)
    app.state.tasks = TaskService(database, cursors, retention, settings.SYNC_RESET_AT)
    app.state.verifier = TokenVerifier(settings) if settings.auth_enabled else None
    if app.state.verifier is None:
        logger.warning("authentication is OFF: every /api request is accepted")
    app.state.rate_limiter, app.state.auth_failures = _limiters(settings)
    app.state.shares = UserShares(
        settings.user_max_active, settings.DB_POOL_TIMEOUT, worker_admission()
    )
    token = settings.METRICS_TOKEN
    app.state.metrics_token = token.get_secret_value() if token else None
    app.state.metrics_public = settings.ENVIRONMENT != "production"
    if token is None and not app.state.metrics_public:
        logger.warning("/metrics is off: set METRICS_TOKEN to scrape it")
    # The API's routes join the app's own list. Each already carries its prefix,
    # tags and `admit` (`AdmittedRoute`, which also keeps /tasks/changes and
    # /tasks/batch from being read as a task id); included as routers, FastAPI
    # would match them twice per request (~10% of a GET, specs/005).
    for router in (tasks.router, sync.router):  # the single-task routes first
        app.router.routes.extend(router.routes)
    app.include_router(health.router)
    app.include_router(docs.router)
    app.mount(docs.ASSETS_PATH, docs.assets, name="docs-assets")
    register_exception_handlers(app)
    # Added innermost first: CORS wraps everything, so even a 500 carries its headers.
    app.add_middleware(CanonicalRequestMiddleware)
    app.add_middleware(BodyGuardMiddleware)
    app.add_middleware(RequestContextMiddleware)
    app.add_middleware(LoadShedMiddleware, limit=settings.HTTP_MAX_IN_FLIGHT)
    app.add_middleware(
        JsonCORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=METHODS,
        allow_headers=settings.cors_allow_headers,
        allow_credentials=settings.CORS_ALLOW_CREDENTIALS,
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )
    app.add_middleware(ForwardedMiddleware, trusted=settings.FORWARDED_ALLOW_IPS)
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]
    return app


def __getattr__(name: str) -> FastAPI:
    """`uvicorn app.main:app`, `fastapi run`: the app is built on first access, not
    on import (tests and `python -m app` import this module to build their own)."""
    if name == "app":
        app = create_app()
        globals()["app"] = app  # one app however often it is looked up
        return app
    raise AttributeError(name)


def __dir__() -> list[str]:
    """fastapi-cli finds the app by listing the module's names."""
    return sorted({*globals(), "app"})
