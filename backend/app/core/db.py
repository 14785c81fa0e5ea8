"""The one pooled engine and session factory, and the embedded development database."""

from pathlib import Path

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session

from app.core.config import ConfigError, Settings

PROJECT_ROOT = Path(__file__).resolve().parents[3]
EMBEDDED_DATA_DIR = PROJECT_ROOT / ".data" / "postgres"

SessionFactory = sessionmaker[Session]


def embedded_database_url(data_dir: Path = EMBEDDED_DATA_DIR) -> str:
    """Start (or join) the embedded PostgreSQL under `.data/` and return its URL."""
    try:
        from pgserver.postgres_server import get_server  # development only
    except ImportError:
        raise ConfigError(
            "configuration error: DATABASE_URL: not set, and the embedded PostgreSQL "
            "(pgserver) is not installed"
        ) from None
    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="stop")
    return "postgresql+psycopg2://" + server.get_uri().removeprefix("postgresql://")


def database_url(settings: Settings) -> str:
    if settings.DATABASE_URL is not None:
        return settings.DATABASE_URL.get_secret_value()
    return embedded_database_url()


def create_db_engine(settings: Settings, url: str | None = None) -> Engine:
    return create_engine(
        url or database_url(settings),
        pool_size=settings.DB_POOL_SIZE,
        max_overflow=settings.DB_MAX_OVERFLOW,
        pool_timeout=settings.DB_POOL_TIMEOUT,
        pool_recycle=settings.DB_POOL_RECYCLE,
        pool_pre_ping=True,
        # Fail fast rather than hang when the server is unreachable.
        connect_args={"connect_timeout": 5, "application_name": "task-api"},
    )


def create_session_factory(engine: Engine) -> SessionFactory:
    return sessionmaker(engine, class_=Session, expire_on_commit=False)
