"""Settings: one class, read from the environment (and `.env`) once."""

import contextlib
import hashlib
import hmac
import io
import ipaddress
import logging
import os
import re
import secrets
import socket
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from dotenv.parser import parse_stream
from pydantic import (
    AwareDatetime,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticUseDefault
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.db.url import parse_database_url

PROJECT_ROOT = Path(__file__).resolve().parents[2]

logger = logging.getLogger("app")

DEV_CORS_ORIGINS = [
    "http://localhost:3000",
    "http://127.0.0.1:3000",
    "http://localhost:5173",
    "http://127.0.0.1:5173",
]
# Request headers a cross-origin browser call may carry (CORS_ALLOW_HEADERS unset):
# ours, and those fetch wrappers, HTTP clients and tracing SDKs add on their own.
DEFAULT_CORS_ALLOW_HEADERS = [
    "Authorization",
    "Content-Type",
    "If-Match",
    "If-None-Match",
    "Idempotency-Key",
    "X-Request-ID",
    "Cache-Control",
    "Pragma",
    "X-Requested-With",
    "traceparent",  # W3C Trace Context (OpenTelemetry's browser SDK)
    "tracestate",
    "baggage",
    "sentry-trace",  # Sentry's browser and Next.js SDKs, on by default for localhost
]
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def url_forms(value: str) -> tuple[str, ...]:
    """A URL issuer or audience matches with or without its trailing slash: Better
    Auth's `iss` and `aud` are its base URL, which it writes without one and an
    operator may write either way."""
    if "://" not in value:
        return (value,)
    bare = value.rstrip("/")
    return bare, bare + "/"


def _origin(text: str) -> str:
    """`text` written as a browser writes an Origin: lower-case scheme and host
    (IDNA), no default port, no trailing slash; anything an Origin never has
    (`localhost:3000` without a scheme, a path, a query, credentials, a
    wildcard, a bad port) is refused: it would match nothing."""
    refused = ValueError(f"{text!r} is not an origin (scheme://host[:port])")
    parts = urlsplit(text.rstrip("/"))
    try:
        port = parts.port
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        raise refused from None
    extra = parts.path or parts.query or parts.fragment or parts.username
    if not parts.scheme or not host or extra or "*" in host or "@" in parts.netloc:
        raise refused
    scheme = parts.scheme.lower()
    host = f"[{host}]" if ":" in host else host
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


RATE_WINDOWS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
RATE_PATTERN = re.compile(
    r"(?P<count>[1-9][0-9]{0,8})\s*/\s*(?P<unit>second|minute|hour|day)s?"
)


class Settings(BaseSettings):
    # `NAME=` (blank, as .env.example writes them) is unset, for every setting.
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
    )

    DATABASE_URL: SecretStr | None = None
    ENVIRONMENT: Literal["development", "test", "production"] = "development"
    LOG_LEVEL: Literal["debug", "info", "warning", "error", "critical"] = "info"
    CORS_ORIGINS: Annotated[list[str] | None, NoDecode] = None
    # Cookies and other credentials on cross-origin calls; only with explicit origins.
    CORS_ALLOW_CREDENTIALS: bool = False
    CORS_ALLOW_HEADERS: Annotated[list[str] | None, NoDecode] = None
    # Peers whose X-Forwarded-For/-Proto are believed (edge/forwarded.py).
    FORWARDED_ALLOW_IPS: str = "127.0.0.1,::1"

    # Sized for Neon's pooled endpoint: a small pool per process, connections
    # recycled before Neon's idle timeouts close them (a read whose connection
    # turns out dropped is run once more on another; a write is not).
    DB_POOL_SIZE: int = Field(default=10, ge=1, le=500)
    DB_MAX_OVERFLOW: int = Field(default=0, ge=0, le=500)
    DB_POOL_TIMEOUT: float = Field(default=10.0, gt=0, le=600)
    DB_POOL_RECYCLE: int = Field(default=300, ge=-1)
    # Requests of one user running at once per worker (each holds at most one
    # pooled connection, so the others' requests find one free); the user's next
    # ones wait their turn (holding no running place), within DB_POOL_TIMEOUT (then
    # 429). Unset: a quarter of the pool (DB_POOL_SIZE + DB_MAX_OVERFLOW), at least 2.
    USER_MAX_ACTIVE: int | None = Field(default=None, ge=1, le=1_000_000)
    # Bounds every statement (0 = off). Sent as a connection option, which PgBouncer
    # refuses unless told to ignore it: unset, 0 for a host with `-pooler` in its
    # name (Neon's PgBouncer), else 15,000. Behind any other PgBouncer set 0 and the
    # timeout on the role (ALTER ROLE … SET statement_timeout). At most PostgreSQL's.
    DB_STATEMENT_TIMEOUT_MS: int | None = Field(default=None, ge=0, le=2_147_483_647)
    # Prepared statements kept per connection (asyncpg). Unset: 0 for a host with
    # `-pooler` in its name (Neon's PgBouncer), else 100. 0 behind any pooler in
    # transaction mode that cannot keep them (PgBouncer before 1.21).
    DB_STATEMENT_CACHE_SIZE: int | None = Field(default=None, ge=0, le=10_000)

    # Authentication (CONTRACT C6). Off when no key is set (never in production
    # unless AUTH_DISABLED=true says so explicitly).
    BETTER_AUTH_SECRET: SecretStr | None = None
    JWT_SECRET: SecretStr | None = None
    JWT_JWKS_URL: str | None = None
    JWT_ISSUER: str | None = None
    JWT_AUDIENCE: Annotated[list[str] | None, NoDecode] = None
    # Stripped: "sub " named a claim no token has (every token a 401).
    JWT_USER_CLAIM: Annotated[str, StringConstraints(strip_whitespace=True)] = Field(
        default="sub", min_length=1
    )
    JWT_LEEWAY_SECONDS: int = Field(default=30, ge=0, le=3600)
    AUTH_DISABLED: bool = False

    # Signs list cursors; shared by all instances so cursors work across them.
    CURSOR_SECRET: SecretStr | None = None
    # Earlier keys, comma-separated: what they signed is still accepted, and
    # nothing new is signed with them (a rotation keeps clients' cursors).
    CURSOR_SECRET_FALLBACKS: Annotated[list[SecretStr] | None, NoDecode] = None

    # Deleted tasks are reported to delta syncs (E10) for this long; an older
    # sync token gets 410 and the client syncs from scratch.
    SYNC_RETENTION_DAYS: int = Field(default=30, ge=1, le=3650)
    # Sync tokens issued before this time (ISO 8601 with an offset, or Unix
    # seconds) get 410 too: set after restoring the database from a logical
    # backup, so every client starts over (specs/008-offline-sync).
    SYNC_RESET_AT: AwareDatetime | None = None

    # e.g. "100/minute": per authenticated user, else per client address.
    RATE_LIMIT: str | None = None
    # Failed authentications (forged, foreign or malformed tokens) per client address
    # before its unverified tokens get 429 for the rest of the window; "off" disables.
    AUTH_FAILURE_LIMIT: str | None = "30/minute"
    # Shared rate-limit counters for several processes; in memory when unset.
    REDIS_URL: SecretStr | None = None  # may carry a password

    # Bearer token that /metrics requires (32+ bytes). Unset: /metrics is open in
    # development and test, and absent (404) in production.
    METRICS_TOKEN: SecretStr | None = None

    HOST: str = "127.0.0.1"
    PORT: int = Field(default=8000, ge=1, le=65535)
    WEB_CONCURRENCY: int = Field(default=1, ge=1, le=64)
    # The HTTP edge, per worker (specs/006-operations). Idle connections (kept alive
    # between requests, or new and not sending yet) are kept longer than a load
    # balancer's idle timeout (60 s on most), so the balancer, not the service,
    # closes them.
    HTTP_KEEPALIVE_TIMEOUT: int = Field(default=75, ge=1, le=3600)
    # A request (head and body) must arrive within this many seconds of its
    # first byte.
    HTTP_REQUEST_TIMEOUT: float = Field(default=10.0, gt=0, le=300)
    # Open connections per worker; beyond it a new one is answered 503 and closed.
    HTTP_MAX_CONNECTIONS: int = Field(default=16_384, ge=1, le=1_000_000)
    # MiB of request heads a worker holds while they arrive, over all its
    # connections; beyond it a head that grows is answered 503 and closed.
    HTTP_MAX_HEADS_MB: int = Field(default=32, ge=1, le=4096)
    # Requests in a worker at once, running or waiting to run; beyond it 503 +
    # Retry-After at once, so an overload queues at most this many (the latency it
    # adds is bounded) instead of slowing every request down.
    HTTP_MAX_IN_FLIGHT: int = Field(default=2_048, ge=1, le=1_000_000)
    # Of those, requests running in the app at once; the rest wait, parsed but not
    # started (a few KB each instead of ~24 KB), and start in arrival order. Enough
    # to keep the database pool busy while others parse and render.
    HTTP_MAX_ACTIVE: int = Field(default=64, ge=1, le=1_000_000)
    # The listen backlog: connections the kernel holds before the worker
    # accepts them (capped by net.core.somaxconn).
    HTTP_BACKLOG: int = Field(default=4_096, ge=1, le=65_535)

    @field_validator("ENVIRONMENT", "LOG_LEVEL", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("DATABASE_URL", mode="before")
    @classmethod
    def _database_url(cls, value: object) -> object:
        """Blank is unset; otherwise it must be a URL both drivers can honour."""
        if not isinstance(value, str) or not value.strip():
            return None
        parse_database_url(value)
        return value.strip()

    @field_validator(
        "CORS_ORIGINS", "CORS_ALLOW_HEADERS", "JWT_AUDIENCE", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()] or None
        return value

    @field_validator("CURSOR_SECRET_FALLBACKS", mode="before")
    @classmethod
    def _keys(cls, value: object) -> object:
        """Each key as written and stripped: CURSOR_SECRET is taken as it is, so
        one from a file with its newline signed with the newline, and stripped
        here it verified nothing (a re-trial)."""
        if isinstance(value, str):
            parts = [part for part in value.split(",") if part.strip()]
            return list(dict.fromkeys(k for p in parts for k in (p, p.strip())))
        return value

    @field_validator("JWT_AUDIENCE")
    @classmethod
    def _audiences(cls, value: list[str] | None) -> list[str] | None:
        if not value:
            return value
        return list(dict.fromkeys(form for a in value for form in url_forms(a)))

    @field_validator("SYNC_RESET_AT", mode="before")
    @classmethod
    def _as_psql_prints_it(cls, value: object) -> object:
        """ISO 8601 as Python reads it, which takes psql's `now()` (`… 02:24:18.68+00`:
        the restore procedure notes the time so; pydantic refused the `+00`)."""
        if isinstance(value, str) and not value.strip().isdigit():
            with contextlib.suppress(ValueError):  # else pydantic's own message
                return datetime.fromisoformat(value.strip())
        return value

    @field_validator("SYNC_RESET_AT")
    @classmethod
    def _past(cls, value: datetime | None) -> datetime | None:
        """A reset ahead would expire every token issued until then, again and
        again: no client could sync. Clocks a few minutes apart are allowed."""
        if value is not None and value > datetime.now(UTC) + timedelta(minutes=5):
            raise ValueError("must not be in the future (the time of the restore)")
        return value

    @field_validator("CORS_ORIGINS")
    @classmethod
    def _origins(cls, value: list[str] | None) -> list[str] | None:
        """Origins as browsers send them, which Starlette compares exactly."""
        return [o if o == "*" else _origin(o) for o in value] if value else value

    @field_validator("CORS_ALLOW_HEADERS")
    @classmethod
    def _header_names(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a header name")
        return value

    @field_validator("FORWARDED_ALLOW_IPS")
    @classmethod
    def _trusted_proxies(cls, value: str) -> str:
        """`*`, or comma-separated addresses and networks, as uvicorn reads them."""
        if not value.strip():
            return "127.0.0.1,::1"
        for item in (part.strip() for part in value.split(",")):
            if item != "*":
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(
                        f"{item!r} is not an IP address or network (or *)"
                    ) from None
        return value.replace(" ", "")

    @field_validator(
        "BETTER_AUTH_SECRET",
        "JWT_SECRET",
        "JWT_JWKS_URL",
        "JWT_ISSUER",
        "CURSOR_SECRET",
        "REDIS_URL",
        "DB_STATEMENT_CACHE_SIZE",
        "DB_STATEMENT_TIMEOUT_MS",
        "METRICS_TOKEN",
        "USER_MAX_ACTIVE",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """`NAME=` (as in .env.example) means unset."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("HOST")
    @classmethod
    def _listenable(cls, value: str) -> str:
        """An address, or a name this machine resolves: uvicorn's own failure
        (`[Errno -2] Name or service not known`) named no variable."""
        try:
            socket.getaddrinfo(value, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise ValueError(
                "is not an address or a name this machine resolves"
            ) from None
        return value

    @field_validator("RATE_LIMIT", "AUTH_FAILURE_LIMIT", mode="before")
    @classmethod
    def _off_is_unset(cls, value: object) -> object:
        """`off` turns the limit off; blank (as in .env.example) keeps the default."""
        if isinstance(value, str) and not value.strip():
            raise PydanticUseDefault()
        if isinstance(value, str) and value.strip().lower() == "off":
            return None
        return value

    @field_validator(
        "BETTER_AUTH_SECRET", "JWT_SECRET", "CURSOR_SECRET", "METRICS_TOKEN"
    )
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes (openssl rand -base64 32)")
        return value

    @field_validator("CURSOR_SECRET_FALLBACKS")
    @classmethod
    def _long_secrets(cls, values: list[SecretStr] | None) -> list[SecretStr] | None:
        for value in values or ():
            cls._long_secret(value)
        return values

    @field_validator("RATE_LIMIT", "AUTH_FAILURE_LIMIT")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None and not RATE_PATTERN.fullmatch(value.strip().lower()):
            raise ValueError(
                "must look like 100/minute (1 to 999999999 a second, minute, hour "
                "or day), or off"
            )
        return value

    @property
    def user_max_active(self) -> int:
        """USER_MAX_ACTIVE, or a quarter of the pool (at least 2)."""
        if self.USER_MAX_ACTIVE is not None:
            return self.USER_MAX_ACTIVE
        return max(2, (self.DB_POOL_SIZE + self.DB_MAX_OVERFLOW) // 4)

    @property
    def rate_limit(self) -> tuple[int, int] | None:
        """(requests, window seconds), or None when off."""
        return _parse_rate(self.RATE_LIMIT)

    @property
    def auth_failure_limit(self) -> tuple[int, int] | None:
        """(failed authentications, window seconds) per address, or None when off."""
        return _parse_rate(self.AUTH_FAILURE_LIMIT)

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_url(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is None:
            return None
        value = secret.get_secret_value().strip()
        try:
            url = urlsplit(value)
            url.port  # noqa: B018 - raises on a port that is not a number
            usable = url.scheme in ("redis", "rediss") or (
                url.scheme == "unix" and bool(url.path)
            )
        except ValueError:  # e.g. a port that is not a number
            usable = False
        if not usable:
            raise ValueError(
                "must be a redis://, rediss:// or unix:// URL, e.g. "
                "redis://127.0.0.1:6379/0"
            ) from None
        return SecretStr(value)

    @field_validator("JWT_JWKS_URL")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        if value is not None and "@" in urlsplit(value).netloc:
            # The fetch sends no credentials (a key set is public), and they
            # would be written in its failure's log line.
            raise ValueError("must not carry a user name or password")
        return value

    @model_validator(mode="after")
    def _rules_across_settings(self) -> "Settings":
        """Raised together: the first alone hid the others (one start-up failure
        per fix)."""
        problems = self._production_problems()
        if self.CORS_ALLOW_CREDENTIALS and "*" in self.cors_origins:
            # Browsers refuse `*` with credentials; echoing any origin instead
            # would let every site call the API as the signed-in user.
            problems.append(
                (
                    frozenset({"CORS_ALLOW_CREDENTIALS", "CORS_ORIGINS"}),
                    "CORS_ALLOW_CREDENTIALS=true needs explicit CORS_ORIGINS, not *",
                )
            )
        if self.HTTP_MAX_IN_FLIGHT <= self.HTTP_MAX_ACTIVE:
            # Running requests start whatever it says: with none left to wait,
            # one user's concurrent requests were refused (429) at once.
            problems.append(
                (
                    frozenset({"HTTP_MAX_IN_FLIGHT", "HTTP_MAX_ACTIVE"}),
                    f"HTTP_MAX_IN_FLIGHT ({self.HTTP_MAX_IN_FLIGHT}) must be more "
                    f"than HTTP_MAX_ACTIVE ({self.HTTP_MAX_ACTIVE}): it counts the "
                    "running requests and those waiting to run",
                )
            )
        if problems:
            raise SettingsProblems(problems)
        return self

    def _production_problems(self) -> list[tuple[frozenset[str], str]]:
        """Every setting production needs and lacks: (the variables, the line)."""
        if self.ENVIRONMENT != "production":
            return []
        problems = []
        if self.DATABASE_URL is None:
            problems.append(
                (
                    frozenset({"DATABASE_URL"}),
                    "DATABASE_URL is required when ENVIRONMENT=production",
                )
            )
        if self.CURSOR_SECRET is None:
            problems.append(
                (
                    frozenset({"CURSOR_SECRET"}),
                    "CURSOR_SECRET is required when ENVIRONMENT=production "
                    "(openssl rand -base64 32)",
                )
            )
        if not self.auth_enabled and not self.AUTH_DISABLED:
            problems.append(
                (
                    frozenset({"BETTER_AUTH_SECRET", "JWT_SECRET", "JWT_JWKS_URL"}),
                    "BETTER_AUTH_SECRET, JWT_SECRET or JWT_JWKS_URL is required when "
                    "ENVIRONMENT=production (or set AUTH_DISABLED=true)",
                )
            )
        return problems

    @property
    def jwt_secret(self) -> SecretStr | None:
        return self.BETTER_AUTH_SECRET or self.JWT_SECRET

    @property
    def cursor_key(self) -> bytes | None:
        """The key that signs list cursors and sync tokens: CURSOR_SECRET; without
        it (outside production), one derived from the auth shared secret, so the
        workers of a server, and the server restarted, share it; else None (then
        `kept_cursor_key`)."""
        if self.CURSOR_SECRET is not None:
            return self.CURSOR_SECRET.get_secret_value().encode()
        if self.jwt_secret is not None:
            secret = self.jwt_secret.get_secret_value().encode()
            return hmac.new(secret, b"task-api cursor key", hashlib.sha256).digest()
        return None

    @property
    def cursor_fallback_keys(self) -> list[bytes]:
        """Keys whose cursors and sync tokens are still accepted (a rotation)."""
        fallbacks = self.CURSOR_SECRET_FALLBACKS or []
        return [key.get_secret_value().encode() for key in fallbacks]

    @property
    def auth_enabled(self) -> bool:
        has_key = self.jwt_secret is not None or self.JWT_JWKS_URL is not None
        return has_key and not self.AUTH_DISABLED

    @property
    def cors_origins(self) -> list[str]:
        if self.CORS_ORIGINS is not None:
            return self.CORS_ORIGINS
        return [] if self.ENVIRONMENT == "production" else DEV_CORS_ORIGINS

    @property
    def cors_allow_headers(self) -> list[str]:
        return self.CORS_ALLOW_HEADERS or DEFAULT_CORS_ALLOW_HEADERS


def _parse_rate(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    match = RATE_PATTERN.fullmatch(value.strip().lower())
    assert match is not None  # the validator checked it
    return int(match["count"]), RATE_WINDOWS[match["unit"]]


class SettingsProblems(ValueError):
    """Several model-level problems at once, each naming its variables."""

    def __init__(self, problems: list[tuple[frozenset[str], str]]) -> None:
        super().__init__("; ".join(line for _, line in problems))
        self.problems = problems


# uvicorn's exit status for a worker that failed to start: its supervisor
# (`uvicorn --workers`) then stops, where it restarted a worker that exited with
# another status, which failed again, once a second, forever (a re-trial).
STARTUP_FAILURE = 3


class ConfigError(SystemExit):
    """Start-up stops with one line per problem, each naming its variable, never a
    traceback, and exit status STARTUP_FAILURE. The lines are written as it is
    made: Python prints a SystemExit's message only with status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(STARTUP_FAILURE)
        self.message = message
        sys.stderr.write(message + "\n")

    def __str__(self) -> str:
        return self.message


def _problems(exc: ValidationError) -> list[tuple[frozenset[str], str]]:
    problems = []
    for error in exc.errors():
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, SettingsProblems):
            problems.extend(cause.problems)
            continue
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"]:
            where = ".".join(str(part) for part in error["loc"])
            problems.append((frozenset({str(error["loc"][0])}), f"{where}: {message}"))
        else:
            problems.append((frozenset(), message))
    return problems


_ENV_LINE_NAME = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


def _env_file_problems(env_file: Path | str | None) -> list[str]:
    """What of `env_file` would be lost: a line python-dotenv cannot read (it
    skips it with a warning naming no variable, and the setting would silently be
    unset: the audience check, or authentication, off), and a name close to a
    setting's, a typo the settings ignore (the rate limit off). Named by its
    variable, never with its value (a secret, perhaps)."""
    if env_file is None or not Path(env_file).is_file():
        return []
    try:
        text = Path(env_file).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return [f"{env_file}: not UTF-8 text (byte {exc.start + 1})"]
    except OSError as exc:
        return [f"{env_file}: cannot be read ({exc.strerror})"]
    problems = []
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            named = _ENV_LINE_NAME.match(binding.original.string)
            where = f"{named[1]}: " if named else ""
            problems.append(
                f"{where}{env_file}, line {line}: cannot be read (a quote not "
                "closed, or no NAME=?); fix the line or remove it"
            )
        elif binding.key is not None and (meant := _misspelt(binding.key.upper())):
            problems.append(
                f"{binding.key}: {env_file}, line {line}: not a setting; did you "
                f"mean {meant}?"
            )
    return problems


def _misspelt(name: str) -> str | None:
    """The setting `name` is a typo of: one edit away (a letter added, dropped,
    changed, or two swapped: PROT, RATELIMIT, REDIS_URI), two for names of 8 or
    more letters; other tools' names are further (BETTER_AUTH_URL,
    DATABASE_URL_UNPOOLED, JWT_SECRET_KEY)."""
    if name in Settings.model_fields:
        return None
    for setting in Settings.model_fields:
        if _edits(name, setting) <= (1 if len(setting) < 8 else 2):
            return setting
    return None


def _edits(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions
    and swaps of neighbours."""
    if abs(len(a) - len(b)) > 2:
        return 3
    rows = [list(range(len(b) + 1))]
    for i, x in enumerate(a, 1):
        row = [i]
        for j, y in enumerate(b, 1):
            row.append(min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (x != y)))
            if i > 1 and j > 1 and x == b[j - 2] and a[i - 2] == y:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def kept_cursor_key() -> bytes:
    """The key for cursors and sync tokens when nothing configures one (outside
    production, without an auth secret), kept in .data/ so that the workers of a
    server, and the server restarted (`fastapi dev` at every change saved), share
    it: a new key each start made an offline client's sync token a 400, the
    answer to a tampered one (a trial). Where it cannot be kept, one for this
    process only (`python -m app` hands its workers one), and a warning."""
    path = PROJECT_ROOT / ".data" / "cursor-secret"
    try:
        with contextlib.suppress(FileNotFoundError):
            return _key_in(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, made = tempfile.mkstemp(dir=path.parent)  # readable by us only
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_urlsafe(32))
                file.flush()
                os.fsync(file.fileno())  # never an empty key after a power cut
            with contextlib.suppress(FileExistsError):  # another process's first
                os.link(made, path)
        finally:
            os.unlink(made)
        return _key_in(path)
    except (OSError, ValueError) as exc:
        logger.warning(
            "CURSOR_SECRET is not set and no key can be kept in %s (%s): cursors "
            "and sync tokens are refused after a restart (and by other workers, "
            "unless `python -m app` started them)",
            path,
            exc,
        )
        return secrets.token_urlsafe(32).encode()


def _key_in(path: Path) -> bytes:
    key = path.read_text(encoding="ascii").strip()
    if len(key) < 32:
        raise ValueError("not a key of 32 characters or more")
    return key.encode()


def load_settings(env_file: Path | str | None = ".env", **given: Any) -> Settings:
    """The settings (`given` ones over the environment's), or ConfigError listing
    every problem at once: a malformed value would otherwise hide the rules that
    need every value (what production lacks), so those are checked again with the
    malformed ones at their defaults."""
    if lost := _env_file_problems(env_file):
        raise ConfigError("\n".join(f"configuration error: {p}" for p in lost))
    try:
        return Settings(_env_file=env_file, **given)
    except ValidationError as exc:
        problems = _problems(exc)
    malformed = frozenset().union(*(names for names, _ in problems))
    defaults = {
        name: Settings.model_fields[name].get_default(call_default_factory=True)
        for name in malformed
        if name in Settings.model_fields
    }
    if defaults:
        try:
            Settings(_env_file=env_file, **{**given, **defaults})
        except ValidationError as exc:
            problems += [p for p in _problems(exc) if not p[0] & malformed]
    lines = (f"configuration error: {line}" for _, line in problems)
    raise ConfigError("\n".join(lines))


@lru_cache
def get_settings() -> Settings:
    return load_settings()
