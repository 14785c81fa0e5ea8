"""`python -m app` checks that no other server listens on HOST:PORT before it
starts the embedded database and the migrations, as uvicorn will bind it."""

import socket

import pytest

from app.__main__ import _port_free
from app.config import ConfigError, Settings


def _settings(host: str, port: int, workers: int) -> Settings:
    return Settings(
        _env_file=None,
        HOST=host,
        PORT=port,
        WEB_CONCURRENCY=workers,
        DATABASE_URL="postgresql://h/db",
    )


def test_an_ipv4_server_on_the_port_is_in_the_way_of_several_workers_on_ipv6() -> None:
    """Several workers listen on uvicorn's socket, which takes IPv4 too; one
    worker listens as asyncio does, on IPv6 alone (a re-trial: an IPv4 server
    passed the check, and uvicorn failed after the migrations)."""
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        _port_free(_settings("::", port, 1))
        with pytest.raises(ConfigError, match="PORT"):
            _port_free(_settings("::", port, 2))
        with pytest.raises(ConfigError, match="PORT"):
            _port_free(_settings("0.0.0.0", port, 1))


def test_a_free_port_is_never_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    for host in ("127.0.0.1", "::1", "::", "0.0.0.0", "localhost"):
        for workers in (1, 2):
            _port_free(_settings(host, port, workers))
