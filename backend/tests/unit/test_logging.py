"""Structured logs: one JSON object per line, whatever writes to them."""

import json
import logging
import warnings

import pytest

from app.observability.logging import Throttled, configure_logging


def test_a_python_warning_is_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A library's warning (PyJWT's InsecureKeyLengthWarning for a short HS512
    key) was printed as several plain-text lines among the JSON ones."""
    # pytest restores `warnings.showwarning` after each test, so undo an earlier
    # test's capture first: captureWarnings(True) is a no-op while it stands.
    logging.captureWarnings(False)
    configure_logging("info")
    warnings.warn("first line\nsecond line", UserWarning, stacklevel=1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["logger"] == "py.warnings"
    assert entry["level"] == "warning"
    assert "second line" in entry["msg"]


def test_a_repeated_warning_is_one_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While the database is down every request fails with the same reason: one
    line for the first, then one per interval saying how many it stood for (a
    line per request was a thousand a second under load); another reason at once."""
    logger = logging.getLogger("test.throttled")
    throttled = Throttled(logger, seconds=3600)
    for _ in range(3):
        throttled.warning("database unavailable: refused")
    throttled.warning("database unavailable: timed out")
    assert caplog.messages == [
        "database unavailable: refused",
        "database unavailable: timed out",
    ]
    throttled.seconds = 0  # the interval has passed
    throttled.warning("database unavailable: refused")
    assert caplog.messages[-1] == "database unavailable: refused"
    assert caplog.records[-1].__dict__["repeated"] == 2
    throttled.warning("database unavailable: refused")
    assert not hasattr(caplog.records[-1], "repeated")  # none held back since
