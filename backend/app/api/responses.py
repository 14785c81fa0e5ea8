"""The error responses each /api operation documents in OpenAPI."""

from typing import Any

from app.schemas import ErrorBody

_DESCRIPTIONS = {
    400: "Validation error or malformed JSON",
    401: "Missing or invalid bearer token (with WWW-Authenticate)",
    403: "The token's user is not the path's user_id",
    404: "No such task for this user",
    409: "A request with this Idempotency-Key is still in flight (with Retry-After)",
    412: "If-Match does not match the task's current ETag",
    413: "Body over 64 KiB",
    415: "Body is not application/json",
    422: "This Idempotency-Key was used with a different body",
    429: "Over the rate limit (with Retry-After)",
    500: "Unexpected error",
    503: "Database unavailable (with Retry-After)",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]}
        for status in (*statuses, 400, 401, 403, 429, 500, 503)
    }
