"""HTTP representation of tasks: JSON bytes, ETags and conditional requests (C5)."""

import re
from datetime import UTC, datetime, timedelta

import orjson
from fastapi import Response

from app.schemas import TaskRecord

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MICROS = re.compile(r"[0-9]{1,20}")
JSON = "application/json"


def etag(task: TaskRecord) -> str:
    """A task's version is its updated_at, which strictly increases on every change."""
    return f'"{task["id"]}.{(task["updated_at"] - _EPOCH) // _MICROSECOND}"'


def _tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def if_match_versions(header: str | None, task_id: int) -> list[datetime] | None:
    """The versions an If-Match header accepts; None when any version will do
    (no header, or `*`). Tags that are weak or not ours can never match."""
    if header is None or "*" in _tags(header):
        return None
    versions = []
    for tag in _tags(header):
        tag_id, _, micros = tag.removeprefix('"').removesuffix('"').partition(".")
        # Ours are ASCII digits that fit a datetime: anything else (a superscript
        # digit, 5,000 digits past int()'s limit) is another tag, which never matches.
        if tag.startswith('"') and tag_id == str(task_id) and _MICROS.fullmatch(micros):
            try:
                versions.append(_EPOCH + int(micros) * _MICROSECOND)
            except OverflowError:
                continue
    return versions


def etag_listed(header: str | None, task: TaskRecord) -> bool:
    """If-None-Match names the task's current ETag (or `*`), with the weak
    comparison RFC 9110 asks for: a GET is a 304, a write a 412."""
    if header is None:
        return False
    current = etag(task)
    return any(tag == "*" or tag.removeprefix("W/") == current for tag in _tags(header))


def dump(tasks: TaskRecord | list[TaskRecord]) -> bytes:
    """JSON bytes; UTC datetimes end in Z."""
    return orjson.dumps(tasks, option=orjson.OPT_UTC_Z)


def task_response(
    task: TaskRecord, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        dump(task),
        status_code=status_code,
        media_type=JSON,
        headers={"ETag": etag(task), **(headers or {})},
    )
