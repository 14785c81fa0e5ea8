"""C7: settings parsing, and one clear line per bad setting, all at once."""

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import ConfigError, Settings, load_settings


def make(**env: str) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[arg-type]


def test_neon_url_keeps_its_tls_parameters() -> None:
    url = "postgresql://u:p@ep-x-pooler.eu-central-1.aws.neon.tech/db?sslmode=require&channel_binding=require"
    settings = make(DATABASE_URL=url)
    assert settings.DATABASE_URL is not None
    assert settings.DATABASE_URL.get_secret_value().endswith(
        "?sslmode=require&channel_binding=require"
    )


def test_database_url_is_never_shown_in_repr() -> None:
    assert "secret" not in repr(make(DATABASE_URL="postgresql://u:secret@h/db"))


def test_cors_origins_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example/")
    assert Settings(_env_file=None).cors_origins == [
        "https://a.example",
        "https://b.example",
    ]


def test_cors_origins_are_written_as_browsers_send_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Starlette compares an Origin exactly: lower-case, no default port, IDNA."""
    origins = "HTTP://LOCALHOST:3000, https://c.example:443, http://bücher.example:80"
    monkeypatch.setenv("CORS_ORIGINS", origins)
    assert Settings(_env_file=None).cors_origins == [
        "http://localhost:3000",
        "https://c.example",
        "http://xn--bcher-kva.example",
    ]


def test_cors_defaults_to_localhost_in_development_and_none_in_production() -> None:
    assert "http://localhost:3000" in make().cors_origins
    production = make(
        ENVIRONMENT="production",
        DATABASE_URL="postgresql://h/db",
        AUTH_DISABLED="true",
        CURSOR_SECRET="c" * 32,
    )
    assert production.cors_origins == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://h/db"),
        ("DB_POOL_SIZE", "lots"),
        ("DB_POOL_TIMEOUT", "-1"),
        ("DB_STATEMENT_TIMEOUT_MS", "99999999999"),  # past PostgreSQL's int
        ("PORT", "70000"),
        ("HOST", "not a host!"),
        ("ENVIRONMENT", "staging"),
        ("LOG_LEVEL", "loud"),
        ("REDIS_URL", "http://cache:6379"),
        ("REDIS_URL", "redis://cache:port"),
        ("CORS_ORIGINS", "localhost:3000"),
        ("CORS_ORIGINS", "https://app.example/login"),
        ("CORS_ORIGINS", "https://*.example.com"),  # never an Origin a browser sends
        ("CORS_ORIGINS", "http://b.example?x=1"),
        ("CORS_ORIGINS", "http://user@a.example"),
        ("CORS_ORIGINS", "http://localhost:99999"),
        # urllib sends no credentials, and the fetch's failure logged them
        ("JWT_JWKS_URL", "http://user:secret@keys.example/jwks"),
        ("RATE_LIMIT", "1000000000/second"),
        ("JWT_USER_CLAIM", "  "),
        ("HTTP_MAX_IN_FLIGHT", "64"),  # HTTP_MAX_ACTIVE's default
        ("CURSOR_SECRET_FALLBACKS", "long-enough-secret-0123456789abcdef,short"),
    ],
)
def test_bad_setting_fails_with_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env_file=None)
    message = str(excinfo.value)
    assert name in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ('JWT_AUDIENCE="https://app.example.com', "JWT_AUDIENCE"),
        ("export BETTER_AUTH_SECRET='s3cret-value", "BETTER_AUTH_SECRET"),
        ("not a setting", "line 2"),
    ],
)
def test_a_line_of_env_that_cannot_be_read_stops_start_up(
    tmp_path: Path, line: str, name: str
) -> None:
    """python-dotenv skips such a line with a warning naming no variable, and the
    service started without the setting: with the audience check off, or auth
    off (a contract trial)."""
    env = tmp_path / ".env"
    env.write_text(f"DATABASE_URL=postgresql://h/db\n{line}\nRATE_LIMIT=5/second\n")
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env_file=env)
    message = str(excinfo.value)
    assert name in message
    assert "line 2" in message
    assert "s3cret" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("line", "meant"),
    [
        ("RATELIMIT=10/minute", "RATE_LIMIT"),
        ("REDIS_URI=redis://127.0.0.1:6379/0", "REDIS_URL"),
        ("db_poolsize=3", "DB_POOL_SIZE"),
        ("export CORS_ORIGIN=https://app.example.com", "CORS_ORIGINS"),
        ("PROT=8001", "PORT"),
        ("DATABSE_URL=postgresql://h/db", "DATABASE_URL"),
    ],
)
def test_a_misspelt_setting_in_env_stops_start_up(
    tmp_path: Path, line: str, meant: str
) -> None:
    """A name in `.env` close to a setting's is a typo: ignored, the setting
    silently kept its default (a trial: the rate limit off in production)."""
    env = tmp_path / ".env"
    env.write_text(f"DATABASE_URL=postgresql://h/db\n{line}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env_file=env)
    message = str(excinfo.value)
    assert f"did you mean {meant}?" in message
    assert "line 2" in message


def test_other_tools_names_in_env_are_left_alone(tmp_path: Path) -> None:
    """A `.env` shared with the frontend, or written by Neon's integration."""
    env = tmp_path / ".env"
    env.write_text(
        "DATABASE_URL=postgresql://h/db\nBETTER_AUTH_URL=http://localhost:3000\n"
        "DATABASE_URL_UNPOOLED=postgresql://h/db\nJWT_SECRET_KEY=x\n"
        "NEXT_PUBLIC_API_URL=http://localhost:8000\nNODE_ENV=development\n"
        "BETTER_AUTH_URL=http://localhost:3000\nPOSTGRES_URL=postgresql://h/db\n"
        "PGHOST=h\nPGPORT=5432\nPGUSER=u\nHOSTNAME=x\nTZ=UTC\nPATH=/bin\n"
    )
    assert load_settings(env_file=env).DATABASE_URL is not None


def test_an_env_file_that_is_not_utf_8_stops_start_up(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_bytes(b"DATABASE_URL=postgresql://h/db\nCORS_ORIGINS=caf\xe9\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_settings(env_file=env)


def test_production_requires_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("ENVIRONMENT", "production")
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        load_settings(env_file=None)


def test_every_rule_across_settings_is_reported_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CORS rule failing hid what production lacks: one fix per start-up."""
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://h/db")
    monkeypatch.setenv("CORS_ORIGINS", "*")
    monkeypatch.setenv("CORS_ALLOW_CREDENTIALS", "true")
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env_file=None)
    lines = str(excinfo.value).splitlines()
    assert len(lines) == 3
    for name in ("CURSOR_SECRET", "JWT_JWKS_URL", "CORS_ALLOW_CREDENTIALS"):
        assert any(name in line for line in lines), name


def test_production_requires_an_auth_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://h/db")
    monkeypatch.setenv("CURSOR_SECRET", "c" * 32)
    with pytest.raises(ConfigError, match="AUTH_DISABLED=true") as excinfo:
        load_settings(env_file=None)
    assert "\n" not in str(excinfo.value)
    monkeypatch.setenv("AUTH_DISABLED", "true")
    assert load_settings(env_file=None).auth_enabled is False


@pytest.mark.parametrize("name", ["BETTER_AUTH_SECRET", "JWT_SECRET"])
def test_either_secret_name_enables_auth(name: str) -> None:
    settings = make(**{name: "s" * 32})
    assert settings.auth_enabled
    assert settings.jwt_secret is not None


def test_short_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BETTER_AUTH_SECRET", "short")
    with pytest.raises(ConfigError, match="BETTER_AUTH_SECRET"):
        load_settings(env_file=None)


def test_secrets_never_appear_in_repr() -> None:
    assert "s" * 32 not in repr(make(JWT_SECRET="s" * 32))


def test_audience_is_comma_separated() -> None:
    settings = make(JWT_AUDIENCE="https://app.example/, api")
    # A URL with or without its trailing slash, whichever a token carries.
    assert settings.JWT_AUDIENCE == [
        "https://app.example",
        "https://app.example/",
        "api",
    ]


def test_production_requires_a_cursor_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://h/db")
    monkeypatch.setenv("AUTH_DISABLED", "true")
    with pytest.raises(ConfigError, match="CURSOR_SECRET"):
        load_settings(env_file=None)


def test_env_example_as_is_is_a_valid_configuration() -> None:
    from app.config import PROJECT_ROOT

    settings = Settings(_env_file=PROJECT_ROOT / ".env.example")
    assert settings.CURSOR_SECRET is None
    assert settings.rate_limit is None
    assert settings.auth_enabled is False


PRODUCTION_NEEDS = ["DATABASE_URL", "CURSOR_SECRET", "BETTER_AUTH_SECRET"]


def test_production_alone_lists_every_missing_setting_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env_file=None)
    lines = str(excinfo.value).splitlines()
    assert len(lines) == len(PRODUCTION_NEEDS)
    for line, name in zip(lines, PRODUCTION_NEEDS, strict=True):
        assert line.startswith(f"configuration error: {name}")


def test_malformed_values_and_missing_ones_are_reported_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("PORT", "99999")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h:99999/db")
    monkeypatch.setenv("DB_POOL_SIZE", "lots")
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env_file=None)
    lines = str(excinfo.value).splitlines()
    assert all(line.startswith("configuration error: ") for line in lines)
    named = [line.removeprefix("configuration error: ") for line in lines]
    assert sorted(n.split(":")[0].split(" ")[0].rstrip(",") for n in named) == [
        "BETTER_AUTH_SECRET",
        "CURSOR_SECRET",
        "DATABASE_URL",  # once: its port, not "required" as well
        "DB_POOL_SIZE",
        "PORT",
    ]


@pytest.mark.parametrize(
    ("env", "lines"),
    [
        ({"ENVIRONMENT": "production"}, 3),
        ({"DATABASE_URL": "postgresql://u@h:99999/db"}, 1),
    ],
)
def test_python_m_app_prints_one_line_per_problem_and_no_traceback(
    tmp_path: Path, env: dict[str, str], lines: int
) -> None:
    backend = Path(__file__).resolve().parents[2]
    clean = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    nowhere = tmp_path / "no-dotenv"
    nowhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=nowhere,
        env={**clean, **env, "PYTHONPATH": str(backend)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3  # STARTUP_FAILURE: `uvicorn --workers` stops
    printed = result.stderr.strip().splitlines()
    assert len(printed) == lines, result.stderr
    assert all(line.startswith("configuration error: ") for line in printed)


def test_auth_failure_limit_defaults_on_and_turns_off() -> None:
    assert make().auth_failure_limit == (30, 60)
    assert make(AUTH_FAILURE_LIMIT="").auth_failure_limit == (30, 60)
    assert make(AUTH_FAILURE_LIMIT="5/second").auth_failure_limit == (5, 1)
    assert make(AUTH_FAILURE_LIMIT="off").auth_failure_limit is None


def test_the_rate_limit_turns_off_as_the_failure_limit_does() -> None:
    assert make(RATE_LIMIT="off").rate_limit is None
    assert make(RATE_LIMIT=" OFF ").rate_limit is None
    assert make(RATE_LIMIT="5/second").rate_limit == (5, 1)


def test_the_user_claim_is_read_without_spaces_around_it() -> None:
    """`JWT_USER_CLAIM="sub "` named a claim no token has: every token a 401."""
    assert make(JWT_USER_CLAIM=" sub ").JWT_USER_CLAIM == "sub"


def test_metrics_token_must_be_long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_TOKEN", "short")
    with pytest.raises(ConfigError, match="METRICS_TOKEN"):
        load_settings(env_file=None)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://u:p@cache:6380/1",
        "unix:///r.sock",
        "redis:///0",  # no host: redis-py's localhost
    ],
)
def test_redis_urls_of_every_scheme_are_accepted(url: str) -> None:
    settings = Settings(REDIS_URL=url, _env_file=None)
    assert settings.REDIS_URL is not None
    assert settings.REDIS_URL.get_secret_value() == url
    assert "u:p" not in repr(settings)  # a password is never printed


_EVERY_SETTING = sorted(Settings.model_fields)


@pytest.mark.parametrize("name", _EVERY_SETTING)
def test_a_blank_setting_means_its_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    """`NAME=`, in the environment or in .env (as .env.example writes them), is
    unset: the default, for every setting (some were configuration errors)."""
    default = Settings(_env_file=None)
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"{name}=\n")
    assert getattr(Settings(_env_file=dotenv), name) == getattr(default, name)
    monkeypatch.setenv(name, "")
    assert getattr(Settings(_env_file=None), name) == getattr(default, name)


def test_a_sync_reset_in_the_future_is_refused() -> None:
    """Every token issued until then would be a 410, again and again: no client
    could sync (a review). Five minutes ahead are taken, for clocks apart."""
    ahead = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(ValidationError, match="SYNC_RESET_AT"):
        Settings(ENVIRONMENT="test", SYNC_RESET_AT=ahead, _env_file=None)
    skewed = datetime.now(UTC) + timedelta(minutes=1)
    assert Settings(ENVIRONMENT="test", SYNC_RESET_AT=skewed, _env_file=None)


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("2026-01-02 02:24:18.681209+00", 1767320658),  # psql's `SELECT now()`
        ("2026-01-02 07:54:18+05:30", 1767320658),
        ("2026-01-02T02:24:18Z", 1767320658),
        ("1767320658", 1767320658),
    ],
)
def test_a_sync_reset_is_taken_as_psql_prints_it(given: str, seconds: int) -> None:
    """The restore procedure notes the time with `SELECT now()`: psql prints its
    offset as `+00`, which was refused, and no instance started (a review)."""
    settings = Settings(ENVIRONMENT="test", SYNC_RESET_AT=given, _env_file=None)
    assert settings.SYNC_RESET_AT is not None
    assert int(settings.SYNC_RESET_AT.timestamp()) == seconds


def test_cursor_fallbacks_are_taken_as_written_and_stripped() -> None:
    """A CURSOR_SECRET read from a file kept its newline, and signed with it."""
    old, older = "a" * 32 + "\n", "b" * 32
    settings = Settings(
        _env_file=None,
        CURSOR_SECRET_FALLBACKS=f"{old}, {older}",
        CURSOR_SECRET="c" * 32,
    )
    keys = settings.cursor_fallback_keys
    assert {old.encode(), old.strip().encode(), older.encode()} <= set(keys)
