"""Prometheus metrics. Each worker counts its own; workers that share a
PROMETHEUS_MULTIPROC_DIR (`python -m app` with WEB_CONCURRENCY > 1 makes one) write
them there, and a scrape, whichever worker answers it, adds up all of them."""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter(
    "http_requests_total",
    "Requests by route template and status",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "http_request_duration_seconds",
    "Request latency by route template",
    ["method", "route"],
    # Up to the waits an incident brings (a pool or a share waits DB_POOL_TIMEOUT,
    # a silent database the statement timeout and 2 s): with 5 s the last, a
    # quantile read at most 5 s just then (an operations trial).
    buckets=(
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
    ),
)
POOL_IN_USE = Gauge(
    "db_pool_connections_in_use",
    "Connections checked out",
    multiprocess_mode="livesum",  # the live workers' together
)
POOL_TIMEOUTS = Counter(
    "db_pool_timeouts_total", "Requests that waited too long for a connection"
)
USER_SHARE_WAITS = Counter(
    "user_share_waits_total",
    "Requests that waited for a turn of their user's (USER_MAX_ACTIVE were running)",
)
DB_ERRORS = Counter(
    "db_errors_total",
    "Requests answered 503 database_unavailable (unreachable, no answer in time, "
    "no connection free, a lock or conflict given up on, schema not checked)",
)
RATE_LIMITED = Counter(
    "rate_limited_total",
    "Requests answered 429 rate_limited, by reason: rate_limit (RATE_LIMIT), "
    "auth_failures (AUTH_FAILURE_LIMIT), user_share (USER_MAX_ACTIVE's turn)",
    ["reason"],
)
for _reason in ("rate_limit", "auth_failures", "user_share"):  # 0 before the first
    RATE_LIMITED.labels(_reason)
RATE_LIMITER_ERRORS = Counter(
    "rate_limiter_errors_total",
    "Rate-limit checks counted in this process only because the shared store "
    "(Redis) failed",
)
SHED = Counter("shed_total", "Requests refused because the worker was at capacity")
EDGE_REFUSALS = Counter(
    "http_edge_refusals_total",
    "Requests answered by the HTTP protocol before the app (a canned error: not in "
    "http_requests_total; in the access log under path <unmatched>)",
    ["status"],
)


# The labelled children, by (method, route, status): `labels()` takes a lock and
# builds its key on every call, a third of the cost of counting a request.
_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def observe(label: str, route: str, status: int, seconds: float) -> None:
    """Counts a request; `label`: its method, or `other` (`edge.middleware`)."""
    key = (label, route, status)
    children = _children.get(key)
    if children is None:
        children = (
            REQUESTS.labels(label, route, str(status)),
            LATENCY.labels(label, route),
        )
        _children[key] = children
    children[0].inc()
    children[1].observe(seconds)


def render() -> tuple[bytes, str]:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest(), CONTENT_TYPE_LATEST
    every_worker = CollectorRegistry()
    multiprocess.MultiProcessCollector(every_worker)  # type: ignore[no-untyped-call]
    return generate_latest(every_worker), CONTENT_TYPE_LATEST
