"""`python -m app` without CURSOR_SECRET (outside production, no auth secret): the
key it keeps in .data/ so that cursors and sync tokens outlive a restart."""

import logging
from pathlib import Path

import pytest

import app.__main__ as entry


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(entry, "PROJECT_ROOT", tmp_path)
    return tmp_path


def test_the_key_is_made_once_readable_by_its_owner_only(root: Path) -> None:
    key = entry._kept_cursor_secret()
    assert len(key) >= 32
    assert entry._kept_cursor_secret() == key
    kept = root / ".data" / "cursor-secret"
    assert kept.read_text() == key
    assert kept.stat().st_mode & 0o077 == 0
    assert [path.name for path in kept.parent.iterdir()] == ["cursor-secret"]


@pytest.mark.parametrize("content", [None, "short"], ids=["no folder", "no key"])
def test_where_no_key_can_be_kept_one_for_this_start_and_a_warning(
    root: Path, content: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    if content is None:
        (root / ".data").write_text("")  # a file where the folder would be
    else:
        (root / ".data").mkdir()
        (root / ".data" / "cursor-secret").write_text(content)
    with caplog.at_level(logging.WARNING, logger="app"):
        first, second = entry._kept_cursor_secret(), entry._kept_cursor_secret()
    assert len(first) >= 32
    assert first != second
    assert "no key can be kept" in caplog.text
