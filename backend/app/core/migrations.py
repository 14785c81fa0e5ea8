"""Schema changes go through Alembic; start-up applies pending ones under a lock."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, text

BACKEND_DIR = Path(__file__).resolve().parents[2]
# Any constant works; it keeps concurrent starts (several workers) from racing.
_MIGRATION_LOCK_KEY = 7_240_001


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config(str(BACKEND_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(BACKEND_DIR / "alembic"))
    config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> None:
    """Upgrade to head in one transaction, holding a transaction-level
    advisory lock (which also works through PgBouncer's transaction pooling)."""
    with engine.begin() as connection:
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
        )
        command.upgrade(alembic_config(connection), "head")
