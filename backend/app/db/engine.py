"""The one pooled engine and session factory, and the embedded development database."""

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Session

from app.config import ConfigError, Settings

PROJECT_ROOT = Path(__file__).resolve().parents[3]
EMBEDDED_DATA_DIR = PROJECT_ROOT / ".data" / "postgres"

SessionFactory = sessionmaker[Session]


def embedded_database_url(data_dir: Path = EMBEDDED_DATA_DIR) -> str:
    """Start (or join) the embedded PostgreSQL under `.data/` and return its URL."""
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import get_server  # development only
    except ImportError:
        raise ConfigError(
            "configuration error: DATABASE_URL: not set, and the embedded PostgreSQL "
            "(pgserver) is not installed"
        ) from None
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = get_server(data_dir, cleanup_mode="stop")
    return "postgresql+psycopg2://" + server.get_uri().removeprefix("postgresql://")


def database_url(settings: Settings) -> str:
    if settings.DATABASE_URL is not None:
        return settings.DATABASE_URL.get_secret_value()
    return embedded_database_url()


# A pooled connection idle for longer than this is pinged before use (and replaced
# if dead): Neon drops connections when a compute scales to zero, but a connection
# in steady use needs no extra round trip per request, as `pool_pre_ping` would cost.
IDLE_PING_SECONDS = 5.0


def create_db_engine(settings: Settings, url: str | None = None) -> Engine:
    connect_args: dict[str, Any] = {
        "connect_timeout": 5,
        "application_name": "task-api",
    }
    if settings.DB_STATEMENT_TIMEOUT_MS:
        timeout = settings.DB_STATEMENT_TIMEOUT_MS
        connect_args["options"] = f"-c statement_timeout={timeout}"
    engine = create_engine(
        url or database_url(settings),
        pool_size=settings.DB_POOL_SIZE,
        max_overflow=settings.DB_MAX_OVERFLOW,
        pool_timeout=settings.DB_POOL_TIMEOUT,
        pool_recycle=settings.DB_POOL_RECYCLE,
        # Most work is one statement, atomic by itself: no BEGIN/COMMIT round trips.
        isolation_level="AUTOCOMMIT",
        # connect_timeout: fail fast rather than hang when the server is unreachable.
        connect_args=connect_args,
    )
    event.listen(engine, "checkin", _mark_idle)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


def _mark_idle(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(
    dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any
) -> None:
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
        return
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        dbapi_connection.rollback()
    except Exception as exc:
        raise DisconnectionError() from exc  # the pool retries with a new connection


@dataclass(frozen=True)
class Sessions:
    """The two ways the service talks to PostgreSQL, over one pool.

    `autocommit`: for single statements, atomic by themselves (`UPDATE … RETURNING`):
    one round trip, with no BEGIN/COMMIT around it. `transaction`: for several
    statements that must commit together (an idempotent create)."""

    autocommit: SessionFactory
    transaction: SessionFactory


def transactional(engine: Engine) -> Engine:
    """The same pool, with real transactions (the engine itself autocommits)."""
    return engine.execution_options(isolation_level="READ COMMITTED")


def create_sessions(engine: Engine) -> Sessions:
    return Sessions(
        autocommit=sessionmaker(engine, class_=Session, expire_on_commit=False),
        transaction=sessionmaker(
            transactional(engine), class_=Session, expire_on_commit=False
        ),
    )
