"""Structured logs: one JSON object per line, whatever writes to them."""

import json
import logging
import os
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
    assert entry["pid"] == os.getpid()  # whose line, among several workers'
    assert "second line" in entry["msg"]


def test_a_repeated_warning_is_one_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While the database is down every request fails with the same reason: one
    line for the first, then one per interval saying how many it stood for, and
    over how long (a line per request was a thousand a second under load);
    another reason at once."""
    logger = logging.getLogger("test.throttled")
    throttled = Throttled(logger, seconds=3600)
    for _ in range(3):
        throttled.log("database unavailable: refused")
    throttled.log("database unavailable: timed out")
    assert caplog.messages == [
        "database unavailable: refused",
        "database unavailable: timed out",
    ]
    throttled.seconds = 0  # the interval has passed
    throttled.log("database unavailable: refused")
    assert caplog.messages[-1] == "database unavailable: refused"
    line = caplog.records[-1].__dict__
    assert line["repeated"] == 2
    assert line["repeated_over_s"] >= 0  # since the line before, not since ever
    throttled.log("database unavailable: refused")
    assert "repeated" not in caplog.records[-1].__dict__  # none held back since


def test_the_end_of_an_outage_is_one_line_and_forgets_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once the database answers again: one line saying so, with how many
    failures and over how long; a later outage starts afresh (its first line
    carried the count held back from the one before, 30 s earlier: a trial)."""
    logger = logging.getLogger("test.throttled")
    throttled = Throttled(logger, seconds=3600, quiet=0)
    throttled.ended("database reachable again")  # nothing failed: nothing said
    assert caplog.messages == []
    for _ in range(5):
        throttled.log("database unavailable: refused")
    throttled.ended("database reachable again")
    throttled.ended("database reachable again")
    assert caplog.messages == [
        "database unavailable: refused",
        "database reachable again",
    ]
    assert caplog.records[-1].__dict__["failures"] == 5
    assert caplog.records[-1].__dict__["failing_for_s"] >= 0
    throttled.log("database unavailable: refused")
    assert caplog.messages[-1] == "database unavailable: refused"
    assert "repeated" not in caplog.records[-1].__dict__


def test_a_success_soon_after_a_failure_does_not_end_the_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A request under way when the first failure came, or a pooled connection
    still working while new ones are refused: successes among failures. Only
    `quiet` seconds without a failure end an outage (each outage had an early
    "reachable again" line, and a partial one a pair of lines per failure: a
    re-trial and a review)."""
    logger = logging.getLogger("test.throttled")
    throttled = Throttled(logger, seconds=3600, quiet=3600)
    for _ in range(3):
        throttled.log("database unavailable: too many connections")
        throttled.ended("database reachable again")
    assert caplog.messages == ["database unavailable: too many connections"]
    throttled.quiet = 0  # then long enough without one
    throttled.ended("database reachable again")
    assert caplog.messages[-1] == "database reachable again"
    assert caplog.records[-1].__dict__["failures"] == 3
