"""The operators' routes. /health, readiness: a real database round trip (and the
schema checked), answered within 2 s either way; not for liveness: the database
down makes every instance unready. /metrics: Prometheus's scrape."""

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from app.api.deps import authorize_metrics
from app.api.openapi import RETRY_AFTER
from app.db.gateway import Database, unanswered
from app.errors import SCHEMA_NOT_CHECKED, DatabaseUnavailable
from app.observability import metrics
from app.schemas import Health

router = APIRouter(tags=["health"])

HEALTH_TIMEOUT_SECONDS = 1.5


@router.get(
    "/health",
    response_model=Health,
    responses={
        503: {
            "model": Health,
            "description": "Database unreachable, or its schema not checked yet",
            "headers": RETRY_AFTER,
        }
    },
)
async def health(request: Request) -> JSONResponse:
    """Report whether the service can reach its database."""
    database: Database = request.app.state.database
    connected = False
    error = "database did not answer in time"
    detail = f"Its round trip did not complete within {HEALTH_TIMEOUT_SECONDS} s"
    with anyio.move_on_after(HEALTH_TIMEOUT_SECONDS) as waited:
        try:
            await database.ping()
            if request.app.state.schema_checked:
                return JSONResponse({"status": "healthy", "database": "connected"})
            connected = True
            error, detail = "database schema not checked yet", SCHEMA_NOT_CHECKED
        except Exception:  # whatever failed, health answers (503), never a 500
            error = "database unreachable"
            detail = "No connection to the database, or its schema is missing"
    if waited.cancelled_caught:
        unanswered(f"the health check within {HEALTH_TIMEOUT_SECONDS} s")
    body = Health(
        status="unhealthy",
        database="connected" if connected else "disconnected",
        error=error,
        code="database_unavailable",
        detail=detail,
    )
    return JSONResponse(
        body.model_dump(),
        status_code=503,
        headers={"Retry-After": str(DatabaseUnavailable.retry_after)},
    )


@router.get(
    "/metrics", include_in_schema=False, dependencies=[Depends(authorize_metrics)]
)
async def prometheus_metrics() -> Response:
    """Prometheus exposition: requests, latency, pool and database errors."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
