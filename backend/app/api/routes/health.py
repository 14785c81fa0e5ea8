"""Liveness with a real database round trip, answered within 2 s either way."""

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Engine, text

from app.errors import DatabaseUnavailable
from app.observability import metrics
from app.schemas import Health

router = APIRouter(tags=["health"])

HEALTH_TIMEOUT_SECONDS = 1.5
# Checks run on their own few threads, so a hung database cannot make health
# checks pile up in (or wait behind) the request thread pool.
_limiter = anyio.CapacityLimiter(2)


def _ping(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "Database unreachable"}},
)
async def health(request: Request) -> JSONResponse:
    """Report whether the service can reach its database."""
    engine: Engine = request.app.state.engine
    error = "database did not answer in time"
    with anyio.move_on_after(HEALTH_TIMEOUT_SECONDS):
        try:
            await anyio.to_thread.run_sync(
                _ping, engine, limiter=_limiter, abandon_on_cancel=True
            )
            return JSONResponse({"status": "healthy", "database": "connected"})
        except Exception as exc:
            error = f"database unreachable ({type(exc).__name__})"
    body = Health(
        status="unhealthy",
        database="disconnected",
        error=error,
        code="database_unavailable",
    )
    return JSONResponse(
        body.model_dump(),
        status_code=503,
        headers={"Retry-After": str(DatabaseUnavailable.retry_after)},
    )


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus exposition: requests, latency, pool and database errors."""
    body, content_type = metrics.render(request.app.state.engine)
    return Response(body, media_type=content_type)
