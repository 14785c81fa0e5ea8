"""Structured logs: one JSON object per line on stderr."""

import logging
import os
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
    """A line that would repeat with every request while a dependency is down or
    refuses us (the database, the rate limiter's store): logged at once, then the
    same text again only after `seconds`, saying how many times it recurred since
    its line before (`repeated`, over `repeated_over_s`). Another text is logged
    at once. `ended` says once that the dependency answers again, and forgets the
    outage. Warnings, unless `level` says otherwise."""

    _KEPT = 64  # texts remembered at most (a reason may carry changing details)

    def __init__(
        self,
        logger: logging.Logger,
        seconds: float = 10,
        quiet: float = 10,
        level: int = logging.WARNING,
    ) -> None:
        self._logger = logger
        self._level = level
        self.seconds = seconds
        self.quiet = quiet
        self._seen: dict[str, tuple[float, int]] = {}  # text: (logged at, held)
        self._began: float | None = None  # the first failure since `ended`
        self._failed_at = 0.0  # the last failure
        self._failures = 0

    def log(self, text: str) -> None:
        now = time.monotonic()
        if self._began is None:
            self._began = now
        self._failed_at = now
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
            self._logger.log(self._level, text, extra=extra)
        else:
            self._logger.log(self._level, text)

    def ended(self, text: str) -> None:
        """The dependency answered. If it had failed, but for `quiet` seconds no
        longer: `text`, with how many failures there were and over how long, and
        the outage is forgotten. Not sooner: a request under way when the first
        failure came may still succeed, and in a partial outage (no new
        connection, while pooled ones work) successes and failures alternate.
        At the same level, so that a log filtered to it shows each end."""
        if self._began is None or time.monotonic() - self._failed_at < self.quiet:
            return
        failing_for = round(self._failed_at - self._began, 1)
        extra = {"failures": self._failures, "failing_for_s": failing_for}
        self._logger.log(self._level, text, extra=extra)
        self._seen.clear()
        self._began = None
        self._failures = 0


class JsonFormatter(logging.Formatter):
    """`pid` tells apart the lines of several workers, which share one stderr and
    each count their own repeats (`Throttled`)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": os.getpid(),
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
