"""A worker started while the database was down checks the schema later
(`ensure_schema_once_reachable`): whatever fails in a round, it tries again."""

from typing import Any

import pytest

from app.db import migrations


@pytest.mark.anyio
async def test_a_round_that_fails_is_logged_and_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Any failure, not only the two it expected (a driver's permission error
    escaped: the check stopped for good, unlogged, and the worker stayed a 503)."""
    rounds: list[str] = []

    async def check(*_: Any) -> bool:
        rounds.append("checked")
        if len(rounds) == 1:
            raise PermissionError("permission denied for table alembic_version")
        return len(rounds) == 3  # unreachable once more, then checked

    monkeypatch.setattr(migrations, "ensure_schema", check)
    monkeypatch.setattr(migrations, "SCHEMA_RETRY_SECONDS", 0)
    with caplog.at_level("WARNING", logger="app.db"):
        assert await migrations.ensure_schema_once_reachable(None, "url")  # type: ignore[arg-type]
    assert len(rounds) == 3
    assert "PermissionError: permission denied" in caplog.text
