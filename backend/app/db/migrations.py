"""Schema changes go through Alembic; start-up applies pending ones under a lock."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, text

from app.db.engine import transactional

BACKEND_DIR = Path(__file__).resolve().parents[2]
# Any constant works; it keeps concurrent starts (several workers) from racing.
_MIGRATION_LOCK_KEY = 7_240_001


# Created by migration 0002 only where the server has pg_trgm and btree_gin; not part
# of the models, so autogenerate must neither expect nor drop them.
OPTIONAL_INDEXES = frozenset({"ix_task_title_trgm", "ix_task_description_trgm"})


def include_object(
    _object: object, name: str | None, type_: str, _reflected: bool, _compare_to: object
) -> bool:
    """Alembic autogenerate filter: skip the optional trigram indexes."""
    return not (type_ == "index" and name in OPTIONAL_INDEXES)


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config(str(BACKEND_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(BACKEND_DIR / "alembic"))
    config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> None:
    """Upgrade to head in one transaction, holding a transaction-level
    advisory lock (which also works through PgBouncer's transaction pooling)."""
    with transactional(engine).begin() as connection:
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
        )
        command.upgrade(alembic_config(connection), "head")
