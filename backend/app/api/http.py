"""HTTP representation of tasks: JSON bytes, ETags and conditional requests (C5)."""

import re
from datetime import UTC, datetime, timedelta

import orjson
from fastapi import Response

from app.schemas import TaskRecord

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# One of our ETags, as `etag` writes it: `"<id>.<microseconds>"`, ASCII digits
# without leading zeros (RFC 9110 compares entity-tags character by character).
_OURS = re.compile(r'"([1-9][0-9]*)\.(0|[1-9][0-9]{0,19})"')
JSON = "application/json"


def etag(task: TaskRecord) -> str:
    """A task's version is its updated_at, which strictly increases on every change."""
    return f'"{task["id"]}.{(task["updated_at"] - _EPOCH) // _MICROSECOND}"'


# RFC 9110's optional whitespace: space and tab, nothing else.
_OWS = " \t"


def _tags(header: str) -> list[str]:
    return [tag.strip(_OWS) for tag in header.split(",") if tag.strip(_OWS)]


def _any_version(header: str) -> bool:
    """`*` is a wildcard as the whole header only; in a list it is no tag."""
    return header.strip(_OWS) == "*"


def if_match_versions(header: str | None, task_id: int) -> list[datetime] | None:
    """The versions an If-Match header accepts; None when any version will do
    (no header, or `*`). Tags that are weak, malformed or not this task's can
    never match: an empty list, whatever else the header holds."""
    if header is None or _any_version(header):
        return None
    versions = []
    for tag in _tags(header):
        ours = _OURS.fullmatch(tag)
        if ours is None or ours[1] != str(task_id):
            continue
        try:  # 20 digits fit, but not every such count is a date Python holds
            versions.append(_EPOCH + int(ours[2]) * _MICROSECOND)
        except OverflowError:
            continue
    return versions


def etag_listed(header: str | None, task: TaskRecord) -> bool:
    """If-None-Match names the task's current ETag (or `*`), with the weak
    comparison RFC 9110 asks for: a GET is a 304, a write a 412."""
    if header is None:
        return False
    current = etag(task)
    return _any_version(header) or any(
        tag.removeprefix("W/") == current for tag in _tags(header)
    )


def dump(tasks: TaskRecord | list[TaskRecord]) -> bytes:
    """JSON bytes; UTC datetimes end in Z."""
    return orjson.dumps(tasks, option=orjson.OPT_UTC_Z)


# On the answer to a keyed request (E1, E11) that repeats an earlier one: the first
# request's answer, as stored (Stripe's name). The tasks in it may be older than
# the client's copies by now, so an offline client does not apply them blindly.
REPLAYED = {"Idempotent-Replayed": "true"}
REPLAYED_HEADER = {
    "Idempotent-Replayed": {
        "description": "`true` on the stored answer to a repeat of an earlier "
        "request's Idempotency-Key (its tasks are as they were then)",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def task_response(
    task: TaskRecord, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        dump(task),
        status_code=status_code,
        media_type=JSON,
        headers={"ETag": etag(task), **(headers or {})},
    )
