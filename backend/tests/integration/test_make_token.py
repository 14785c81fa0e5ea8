"""`make token` mints a development token for the user named on the command line,
and refuses without one (the environment's USER is the login name, not a user id)."""

import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from app.config import PROJECT_ROOT
from tests.jwt_helpers import SECRET


def _make_token(*args: str, **more: str) -> subprocess.CompletedProcess[str]:
    # `-o install-run`: the suite already runs in an installed environment.
    env = {**os.environ, "BETTER_AUTH_SECRET": SECRET, "USER": "root", **more}
    return subprocess.run(
        ["make", "-s", "-o", "install-run", "token", f"PY={sys.executable}", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_make_token_signs_for_the_user_given() -> None:
    result = _make_token("USER=alice")
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 60 * 60


def test_make_token_lasts_the_minutes_given() -> None:
    result = _make_token("USER=alice", "MINUTES=5")
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 5 * 60


def test_make_token_without_user_is_refused_not_signed_for_the_login() -> None:
    result = _make_token()
    assert result.returncode != 0
    assert result.stdout == ""
    assert "usage: make token USER=" in result.stderr


def test_make_token_refuses_what_is_not_a_user_id() -> None:
    """The API would refuse the token (no `sub`) or the path: say so now."""
    for user in ("USER=", "USER=bad user", "USER=-alice"):
        result = _make_token(user)
        assert result.returncode != 0
        assert result.stdout == ""


@pytest.mark.parametrize(
    "production",
    [
        {"ENVIRONMENT": "production", "DATABASE_URL": ""},
        # In any case, as the settings read it, and with what production needs.
        {
            "environment": " Production",
            "DATABASE_URL": "postgresql://h/db",
            "CURSOR_SECRET": "c" * 32,
        },
    ],
)
def test_make_token_in_production_says_why_it_refuses(
    production: dict[str, str],
) -> None:
    """Not production's missing settings first, as if setting them would help (a
    newcomer's trial)."""
    result = _make_token("USER=alice", **production)
    assert result.returncode != 0
    assert result.stdout == ""
    said = result.stderr.splitlines()[0]
    assert said == "refusing to mint tokens with ENVIRONMENT=production"


def test_a_dot_env_that_is_not_utf_8_is_one_line_not_a_traceback(
    tmp_path: Path,
) -> None:
    (tmp_path / ".env").write_bytes(b"ENVIRONMENT=production\n# caf\xe9\n")
    result = subprocess.run(
        [sys.executable, "-m", "app.devtoken", "alice"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "backend")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert "not UTF-8" in result.stderr
