"""DATABASE_URL as users paste it (libpq's form, Neon's included), translated for the
two drivers: asyncpg on the request path, psycopg2 for Alembic and tooling.

asyncpg reads most of libpq's query parameters itself (sslmode, sslrootcert, …) but
sends any other one to the server as a setting, where a libpq-only parameter such
as `channel_binding` fails the connection. So every parameter is either passed on,
translated here, or refused with one line naming it."""

import re
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import (
    SplitResult,
    parse_qsl,
    unquote,
    urlencode,
    urlsplit,
    urlunsplit,
)

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
# The values libpq and asyncpg both take: another is refused here, with one line,
# rather than when the first connection is made.
_CHOICES = {
    "sslmode": (*_WEAK_SSLMODES, "verify-ca", "verify-full"),
    "target_session_attrs": (
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ),
}


@dataclass(frozen=True)
class DatabaseURL:
    """`dsn` and `connect_args` for asyncpg.connect; `sync_url` for SQLAlchemy +
    psycopg2 (libpq takes the URL as the user wrote it)."""

    dsn: str
    sync_url: str
    connect_args: dict[str, Any] = field(default_factory=dict)
    host: str = ""
    # `?application_name=`: the service's connections' name, else `task-api`.
    application_name: str | None = None


# Said when the URL's structure is off, which is most often a password with a
# character that ends its part of the URL. The message never repeats the URL.
_ENCODE = "percent-encode any of : / @ # ? [ ] in the user name or password"


def _hosts(netloc: str) -> list[tuple[str, str]]:
    """The authority's hosts and ports: one, or libpq's list (`h1:5432,h2:5433`)."""
    hosts = netloc.rpartition("@")[2]
    if not hosts:
        return []
    return [
        # [::1]:5432 has a port, [::1] has none
        (name, port) if ":" in host.rpartition("]")[2] else (host, "")
        for host in hosts.split(",")
        for name, _, port in [host.rpartition(":")]
    ]


def _is_port(text: str) -> bool:
    return (
        text.isascii() and text.isdigit() and len(text) <= 5 and 0 < int(text) < 65536
    )


def _check_structure(parts: SplitResult, query: dict[str, str]) -> None:
    """What the drivers would read differently, or fail on with a traceback or a
    message quoting part of the URL (a password with an unencoded `@` or `#`)."""
    if parts.fragment or parts.netloc.count("@") > 1:
        raise ValueError(f"the URL does not parse: {_ENCODE}")
    hosts = _hosts(parts.netloc)
    if any("," in unquote(name) for name, _ in hosts):  # it would be two hosts
        raise ValueError("a host name has no comma (%2C): hosts are listed with one")
    if not all(_is_port(port) for _, port in hosts if port):
        raise ValueError(f"the port is not a number from 1 to 65535 ({_ENCODE})")
    if "port" in query and not all(map(_is_port, query["port"].split(","))):
        raise ValueError("?port= takes numbers from 1 to 65535")
    # With a host or port in the URL, libpq takes ?host= and ?port= over it and
    # asyncpg does not: migrations and requests would reach different servers.
    if ("host" in query or "port" in query) and any(h or p for h, p in hosts):
        raise ValueError(
            "give the host and port in the URL or as ?host= and ?port=, not both"
        )


def _sync_url(parts: SplitResult) -> str:
    """For SQLAlchemy + psycopg2, which reads one host and port from the URL: a
    host list, or a host written percent-encoded, goes to `?host=` (and ports to
    `?port=`), libpq's other spelling of it. Written out here: `urlunsplit` drops
    the `//` of a URL without an authority (`postgresql:///db?host=/socket`),
    which SQLAlchemy cannot parse."""
    netloc, query = parts.netloc, parts.query
    written = _hosts(netloc)
    hosts = [(unquote(name), port) for name, port in written]
    # A host written percent-encoded (libpq's socket directory,
    # `postgresql://%2Fvar%2Frun%2Fpostgresql/db`, or an IPv6 zone, `%25eth0`):
    # asyncpg decodes it, SQLAlchemy hands it on encoded
    if len(hosts) > 1 or hosts != written:
        userinfo = netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        listed = [("host", ",".join(name.strip("[]") for name, _ in hosts))]
        if any(port for _, port in hosts):
            listed.append(("port", ",".join(port or "5432" for _, port in hosts)))
        query = urlencode([*parse_qsl(query, keep_blank_values=True), *listed])
    return f"postgresql+psycopg2://{netloc}{parts.path}" + (
        f"?{query}" if query else ""
    )


def parse_database_url(raw: str) -> DatabaseURL:
    """Translate, or ValueError with one line saying what cannot be honoured."""
    try:
        parts = urlsplit(raw.strip())
    except ValueError:  # its message quotes the part in brackets: a password, say
        raise ValueError(f"the URL does not parse: {_ENCODE}") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(f"must start with {', '.join(s + '://' for s in SCHEMES)}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    _check_structure(parts, query)
    if not parts.path.strip("/") and not query.get("dbname"):
        # libpq and asyncpg would take the user's name, or the OS user's: a
        # database nobody chose, perhaps another application's.
        raise ValueError("names no database: postgresql://user:password@host/dbname")
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
    gss = query.pop("gssencmode", "prefer")
    if gss not in ("disable", "prefer", "require"):
        raise ValueError("gssencmode must be disable, prefer or require")
    if gss == "require":  # asyncpg has no GSSAPI encryption: disable is what it does
        raise ValueError("gssencmode=require is not supported: use sslmode for TLS")
    unknown = sorted(set(query) - _ASYNCPG_PARAMETERS - _SERVER_PARAMETERS)
    if unknown:
        raise ValueError(f"parameter {unknown[0]!r} is not supported")
    for name, choices in _CHOICES.items():
        if name in query and query[name] not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}")
    encoding = re.sub(r"[^a-z0-9]", "", query.get("client_encoding", "utf8").lower())
    if encoding not in ("utf8", "unicode"):  # as PostgreSQL reads the names
        # Titles are Unicode: in another encoding, one with a character it lacks
        # failed its request (a 500, a trial).
        raise ValueError("client_encoding must be UTF8")
    options = query.get("options", "").lower().replace("-", "_")
    if "statement_timeout" in options:  # PostgreSQL reads - as _, in any case
        # The service sends its own (DB_STATEMENT_TIMEOUT_MS), which the server
        # takes over this one, and bounds its own wait by it.
        raise ValueError(
            "statement_timeout is set with DB_STATEMENT_TIMEOUT_MS, not in ?options="
        )
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))
    host = parts.hostname or query.get("host", "")
    application_name = query.get("application_name")
    return DatabaseURL(dsn, _sync_url(parts), connect_args, host, application_name)
