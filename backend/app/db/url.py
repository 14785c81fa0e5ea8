"""DATABASE_URL as users paste it (libpq's form, Neon's included), translated for the
two drivers: asyncpg on the request path, psycopg2 for Alembic and tooling.

asyncpg reads most of libpq's query parameters itself (sslmode, sslrootcert, …) but
sends any other one to the server as a setting, where a libpq-only parameter such
as `channel_binding` fails the connection. So every parameter is either passed on,
translated here, or refused with one line naming it."""

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+asyncpg")

# Read by asyncpg itself, with libpq's meaning.
_ASYNCPG_PARAMETERS = frozenset(
    {
        "host",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "sslnegotiation",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
    }
)
# Startup parameters the server itself understands: sent as they are.
_SERVER_PARAMETERS = frozenset({"application_name", "options", "client_encoding"})
_WEAK_SSLMODES = frozenset({"disable", "allow", "prefer", "require"})


@dataclass(frozen=True)
class DatabaseURL:
    """`dsn` and `connect_args` for asyncpg.connect; `sync_url` for SQLAlchemy +
    psycopg2 (libpq takes the URL as the user wrote it)."""

    dsn: str
    sync_url: str
    connect_args: dict[str, Any] = field(default_factory=dict)
    host: str = ""


def _check_ports(netloc: str, port_parameter: str | None) -> None:
    """Every port, in the host list (libpq's `h1:5432,h2:5433`) and in `?port=`, is
    1-65535: caught here in one line, not by a driver's traceback at connect time."""
    hosts = netloc.rpartition("@")[2]
    ports = [
        host.rpartition(":")[2]
        for host in hosts.split(",")
        if ":" in host.rpartition("]")[2]  # [::1]:5432 has a port, [::1] has none
    ]
    if port_parameter:
        ports += port_parameter.split(",")
    for port in ports:
        digits = port.isascii() and port.isdigit() and len(port) <= 5
        if port and not (digits and 1 <= int(port) <= 65535):
            raise ValueError("the port is not a number from 1 to 65535")


def parse_database_url(raw: str) -> DatabaseURL:
    """Translate, or ValueError with one line saying what cannot be honoured."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in SCHEMES:
        raise ValueError("must start with postgresql:// or postgres://")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    _check_ports(parts.netloc, query.get("port"))
    connect_args: dict[str, Any] = {}
    if "connect_timeout" in query:
        timeout = query.pop("connect_timeout")
        if not timeout.isdigit():
            raise ValueError("connect_timeout must be a whole number of seconds")
        connect_args["timeout"] = max(int(timeout), 1)
    binding = query.pop("channel_binding", "prefer")
    if binding not in ("disable", "prefer", "require"):
        raise ValueError("channel_binding must be disable, prefer or require")
    if binding == "require":
        # asyncpg has no SCRAM channel binding. What channel_binding=require protects
        # against (a server that is not the one we meant) is protected against here by
        # verifying the server's certificate and host name instead.
        sslmode = query.get("sslmode", "prefer")
        if sslmode == "disable":
            raise ValueError("channel_binding=require needs TLS, not sslmode=disable")
        if sslmode in _WEAK_SSLMODES:
            query.pop("sslmode", None)
            connect_args["ssl"] = ssl.create_default_context(
                cafile=query.pop("sslrootcert", None)
            )
    unknown = sorted(set(query) - _ASYNCPG_PARAMETERS - _SERVER_PARAMETERS)
    if unknown:
        raise ValueError(f"parameter {unknown[0]!r} is not supported")
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))
    sync = urlunsplit(("postgresql+psycopg2", *parts[1:]))
    return DatabaseURL(dsn, sync, connect_args, parts.hostname or query.get("host", ""))
