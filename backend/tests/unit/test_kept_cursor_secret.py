"""Without CURSOR_SECRET (outside production, no auth secret): the key kept in
.data/ so that cursors and sync tokens outlive a restart."""

import logging
from pathlib import Path

import pytest

import app.__main__ as entry
from app import config
from app.config import Settings, kept_cursor_key


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(config, "PROJECT_ROOT", tmp_path)
    return tmp_path


def test_the_key_is_made_once_readable_by_its_owner_only(root: Path) -> None:
    key = kept_cursor_key()
    assert len(key) >= 32
    assert kept_cursor_key() == key
    kept = root / ".data" / "cursor-secret"
    assert kept.read_bytes() == key
    assert kept.stat().st_mode & 0o077 == 0
    assert [path.name for path in kept.parent.iterdir()] == ["cursor-secret"]


@pytest.mark.parametrize("content", [None, "short"], ids=["no folder", "no key"])
def test_where_no_key_can_be_kept_one_per_process_and_a_warning(
    root: Path, content: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    if content is None:
        (root / ".data").write_text("")  # a file where the folder would be
    else:
        (root / ".data").mkdir()
        (root / ".data" / "cursor-secret").write_text(content)
    with caplog.at_level(logging.WARNING, logger="app"):
        first, second = kept_cursor_key(), kept_cursor_key()
    assert len(first) >= 32
    assert first != second
    assert "no key can be kept" in caplog.text


def test_where_no_key_can_be_kept_the_workers_get_one_all_the_same(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m app` hands its key to its workers: each made its own where
    none could be kept, and refused the others' tokens (a review)."""
    (root / ".data").write_text("")  # nothing can be kept
    for name in ("CURSOR_SECRET", "BETTER_AUTH_SECRET", "JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", "")  # restored after the test
    entry._for_the_workers(Settings(_env_file=None), "postgresql://db/app")
    workers = Settings(_env_file=None)
    assert workers.cursor_key is not None
    assert len(workers.cursor_key) >= 32
    assert workers.DATABASE_URL is not None
