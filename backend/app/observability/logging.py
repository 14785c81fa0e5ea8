"""Structured logs: one JSON object per line on stderr."""

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of msg
}


def failure(exc: BaseException) -> str:
    """An exception as a log line says why something failed: its type and the
    first line of its message (a driver's may run to several), at most 300
    characters of it."""
    reason = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


class Throttled:
    """A warning that would repeat with every request while a dependency is down
    (the database, the rate limiter's store): logged at once, then the same text
    again only after `seconds`, saying how many times it recurred since its line
    before (`repeated`, over `repeated_over_s`). Another text is logged at once.
    `ended` says once that the dependency answers again, and forgets the outage."""

    _KEPT = 64  # texts remembered at most (a reason may carry changing details)

    def __init__(self, logger: logging.Logger, seconds: float = 10) -> None:
        self._logger = logger
        self.seconds = seconds
        self._seen: dict[str, tuple[float, int]] = {}  # text: (logged at, held)
        self._began: float | None = None  # the first warning since `ended`
        self._failures = 0

    def warning(self, text: str) -> None:
        now = time.monotonic()
        if self._began is None:
            self._began = now
        self._failures += 1
        logged_at, held = self._seen.get(text, (float("-inf"), 0))
        if now - logged_at < self.seconds:
            self._seen[text] = (logged_at, held + 1)
            return
        if len(self._seen) >= self._KEPT:
            self._seen.clear()
        self._seen[text] = (now, 0)
        if held:
            over = round(now - logged_at, 1)
            extra = {"repeated": held, "repeated_over_s": over}
            self._logger.warning(text, extra=extra)
        else:
            self._logger.warning(text)

    def ended(self, text: str, begun: float | None = None) -> None:
        """The dependency answered an operation `begun` then (`time.monotonic`):
        `text`, with how many warnings there were and for how long, if any since
        the last `ended`, and unless the operation was already under way when
        the first of them came (it says nothing of the dependency now). A warning
        too, so that a log filtered to warnings shows where each outage ends."""
        if self._began is None or (begun is not None and begun < self._began):
            return
        failing_for = round(time.monotonic() - self._began, 1)
        extra = {"failures": self._failures, "failing_for_s": failing_for}
        self._logger.warning(text, extra=extra)
        self._seen.clear()
        self._began = None
        self._failures = 0


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class _StderrHandler(logging.StreamHandler[Any]):
    """Writes to whatever sys.stderr is now (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def adopt_uvicorn_loggers() -> None:
    """uvicorn's lines go through ours (JSON), but for its access lines: ours
    (`app.request`) replace them. Again as the app starts: a start command may
    configure uvicorn's loggers after it built the app (`fastapi run` does)."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True


def configure_logging(level: str) -> None:
    # Per record, skip what no line of ours carries (the logging documentation's
    # "Optimization" section): the caller's file and line (a stack walk), thread,
    # process and multiprocessing names. A third of the cost of an access line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    adopt_uvicorn_loggers()
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # Alembic announces each of its plugins at info on every run.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # Python warnings (a library's, e.g. PyJWT's on a short key) as log records
    # too, not plain-text lines among the JSON ones.
    logging.captureWarnings(True)
