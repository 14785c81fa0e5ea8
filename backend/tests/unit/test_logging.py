"""Structured logs: one JSON object per line, whatever writes to them."""

import json
import logging
import warnings

import pytest

from app.observability.logging import configure_logging


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
