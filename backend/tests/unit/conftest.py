"""Unit tests run as if on a developer's machine that followed the README: a `.env`
in the working directory with an auth secret and more, and nothing of it may leak
into a test. Settings under test are built from what each test passes or sets."""

from pathlib import Path

import pytest

from app.config import Settings

DEVELOPERS_DOTENV = """\
BETTER_AUTH_SECRET=dev-secret-from-the-readme-0123456789abcdef
DATABASE_URL=postgresql://dev@127.0.0.1:5432/dev
CURSOR_SECRET=dev-cursor-secret-0123456789abcdefghij
ENVIRONMENT=development
RATE_LIMIT=100/minute
AUTH_FAILURE_LIMIT=off
"""


@pytest.fixture(autouse=True)
def developers_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text(DEVELOPERS_DOTENV)
    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def anyio_backend() -> str:
    """The async unit tests (`pytest.mark.anyio`) run on asyncio, as the app does."""
    return "asyncio"
