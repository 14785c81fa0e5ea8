"""Settings of the HTTP edge: CORS credentials and headers, trusted proxies."""

from pathlib import Path

import pytest

from app.config import DEFAULT_CORS_ALLOW_HEADERS, ConfigError, Settings, load_settings


def make(**env: str) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[arg-type]


def load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> Settings:
    """As start-up reads it, away from any developer's `.env`."""
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_default_cors_headers_cover_what_browsers_and_clients_send() -> None:
    allowed = {name.lower() for name in make().cors_allow_headers}
    assert allowed >= {
        "authorization",
        "content-type",
        "if-match",
        "if-none-match",
        "idempotency-key",
        "cache-control",
        "x-requested-with",
        "x-request-id",
    }
    assert make().cors_allow_headers == DEFAULT_CORS_ALLOW_HEADERS


def test_cors_headers_are_comma_separated() -> None:
    settings = make(CORS_ALLOW_HEADERS="Authorization, X-Custom")
    assert settings.cors_allow_headers == ["Authorization", "X-Custom"]
    assert make(CORS_ALLOW_HEADERS="").cors_allow_headers == DEFAULT_CORS_ALLOW_HEADERS


def test_a_bad_cors_header_name_fails_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="CORS_ALLOW_HEADERS") as excinfo:
        load(monkeypatch, tmp_path, CORS_ALLOW_HEADERS="Authorization, bad header")
    assert "\n" not in str(excinfo.value)


def test_credentials_are_off_by_default() -> None:
    assert make().CORS_ALLOW_CREDENTIALS is False


def test_credentials_with_explicit_origins_are_accepted() -> None:
    settings = make(CORS_ORIGINS="https://app.example", CORS_ALLOW_CREDENTIALS="true")
    assert settings.CORS_ALLOW_CREDENTIALS is True
    assert settings.cors_origins == ["https://app.example"]


def test_credentials_with_any_origin_refuse_to_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load(monkeypatch, tmp_path, CORS_ORIGINS="*", CORS_ALLOW_CREDENTIALS="true")
    message = str(excinfo.value)
    assert "CORS_ALLOW_CREDENTIALS" in message
    assert "CORS_ORIGINS" in message
    assert "\n" not in message


def test_forwarded_allow_ips_defaults_to_loopback_like_uvicorn() -> None:
    assert make().FORWARDED_ALLOW_IPS == "127.0.0.1,::1"
    assert make(FORWARDED_ALLOW_IPS="").FORWARDED_ALLOW_IPS == "127.0.0.1,::1"


@pytest.mark.parametrize(
    "value", ["*", "10.0.0.5", "10.0.0.0/8, 192.168.1.1", "fd00::/8"]
)
def test_forwarded_allow_ips_accepts_addresses_networks_and_star(value: str) -> None:
    settings = make(FORWARDED_ALLOW_IPS=value)
    assert value.replace(" ", "") == settings.FORWARDED_ALLOW_IPS


def test_a_bad_forwarded_allow_ips_fails_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="FORWARDED_ALLOW_IPS") as excinfo:
        load(monkeypatch, tmp_path, FORWARDED_ALLOW_IPS="proxy.internal")
    assert "\n" not in str(excinfo.value)
