"""Schema changes go through Alembic, run once before the workers start (`python -m
app`), on psycopg2. A worker only checks the schema's revision over its own pool, and
imports Alembic just when that check finds the database behind (a server started
some other way, e.g. `uvicorn app.main:app` on a fresh database)."""

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import anyio
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from app.config import load_settings
from app.db.gateway import Database, compile_query
from app.db.url import parse_database_url
from app.errors import DatabaseRefused, DatabaseUnavailable
from app.observability.logging import configure_logging, failure

if TYPE_CHECKING:
    from collections.abc import Callable

    from alembic.config import Config
    from sqlalchemy import Connection

logger = logging.getLogger("app.db")
BACKEND_DIR = Path(__file__).resolve().parents[2]
# The newest migration's revision: what this code expects the database to be at.
# A test keeps it equal to Alembic's head.
SCHEMA_REVISION = "0005"
# Any constant works; it keeps concurrent starts (several workers) from racing.
_MIGRATION_LOCK_KEY = 7_240_001
# A migration that must lock a table (a trigger, an index) waits for it at most
# this long, then rolls back, pauses and tries again, up to MIGRATION_ATTEMPTS
# times: PostgreSQL queues every later write to the table behind a waiting lock
# request, so one long transaction would otherwise stop the service's writes
# for as long as it stays open (a trial: 25 s, and 503s). Writes now wait at
# most this long per attempt.
MIGRATION_LOCK_TIMEOUT_MS = 1_000
MIGRATION_PAUSE_SECONDS = 2.0
MIGRATION_ATTEMPTS = 40
_LOCK_NOT_AVAILABLE = "55P03"


# Created by migration 0002 only where the server has pg_trgm and btree_gin; not part
# of the models, so autogenerate must neither expect nor drop them.
OPTIONAL_INDEXES = frozenset({"ix_task_title_trgm", "ix_task_description_trgm"})


def include_object(
    _object: object, name: str | None, type_: str, _reflected: bool, _compare_to: object
) -> bool:
    """Alembic autogenerate filter: skip the optional trigram indexes."""
    return not (type_ == "index" and name in OPTIONAL_INDEXES)


def alembic_config(connection: "Connection | None" = None) -> "Config":
    from alembic.config import Config

    config = Config(str(BACKEND_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(BACKEND_DIR / "alembic"))
    config.attributes["connection"] = connection
    return config


def sync_engine(url: str) -> Engine:
    """A psycopg2 engine for migrations and tooling (never the request path)."""
    return create_engine(
        parse_database_url(url).sync_url,
        poolclass=NullPool,
        connect_args={"connect_timeout": 5, "application_name": "task-api-migrate"},
    )


class ForeignSchema(Exception):
    """The database has an Alembic revision but not our tables: it is another
    application's database."""


class IncompleteSchema(ForeignSchema):
    """Ours, at our revision, but without keys or triggers: a backup restored
    without its post-data section. Refused like another application's."""


# What head has that such a restore leaves out: the primary keys (a keyed
# create's `ON CONFLICT` needs its own) and the triggers that mark changes for
# delta sync (without them edits and deletes never reach syncing clients).
_HEAD_KEEPS = (
    "pk_idempotency_key",
    "pk_task",
    "pk_task_tombstone",
    "task_bury",
    "task_bury_all",
    "task_mark_insert",
    "task_mark_update",
)
_LACKING = text(
    "SELECT name FROM unnest(CAST(:kept AS text[])) AS name WHERE name NOT IN ("
    " SELECT conname FROM pg_constraint"
    " WHERE connamespace = CAST(current_schema() AS regnamespace)"
    " UNION ALL SELECT tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
    " WHERE c.relnamespace = CAST(current_schema() AS regnamespace)) ORDER BY name"
)


def _refuse_an_incomplete_schema(connection: "Connection") -> None:
    lacking = connection.execute(_LACKING, {"kept": list(_HEAD_KEEPS)}).scalars()
    if names := list(lacking):
        raise IncompleteSchema(
            f"its schema lacks {', '.join(names)}: a restore without its keys and "
            "triggers (restore the backup whole, its post-data section included)"
        )


class TablesLocked(Exception):
    """Every attempt of a migration found a table it changes locked."""


def give_way(run: "Callable[[], None]") -> None:
    """`run`, a migration that limits its lock waits (`limit_lock_waits`) and
    undoes itself when one times out (a transaction, or a savepoint in one):
    again MIGRATION_PAUSE_SECONDS later, up to MIGRATION_ATTEMPTS times, then
    TablesLocked."""
    for attempt in range(1, MIGRATION_ATTEMPTS + 1):
        try:
            run()
            return
        except OperationalError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(
                exc.orig, "pgcode", None
            )
            if sqlstate != _LOCK_NOT_AVAILABLE:
                raise
        if attempt < MIGRATION_ATTEMPTS:
            logger.warning(
                "migration: a table or rows it changes are locked by another "
                "transaction; gave way to the writes queued behind it, again in %s s "
                "(attempt %d of %d)",
                MIGRATION_PAUSE_SECONDS,
                attempt,
                MIGRATION_ATTEMPTS,
            )
            time.sleep(MIGRATION_PAUSE_SECONDS)
    raise TablesLocked(
        f"a table it changes stayed locked by other transactions through "
        f"{MIGRATION_ATTEMPTS} attempts: end them (pg_stat_activity shows them) "
        "and run it again"
    )


def limit_lock_waits(connection: "Connection") -> None:
    """For the rest of the connection's transaction: MIGRATION_LOCK_TIMEOUT_MS."""
    connection.execute(
        text("SELECT set_config('lock_timeout', :timeout, true)"),
        {"timeout": f"{MIGRATION_LOCK_TIMEOUT_MS}ms"},
    )


_REACHED = text(
    "SELECT current_database(), coalesce(host(inet_server_addr()) || ' port ' || "
    "inet_server_port(), 'a local socket'), current_user"
)


# Tables, views and the like in the schema the migrations would create theirs in,
# but an extension's (pg_stat_statements' views, PostGIS's spatial_ref_sys: a new
# database of a managed server has them, a review) and an empty alembic_version
# (what a downgrade to the base leaves).
_TABLES = text("""
    SELECT relname FROM pg_class c
    WHERE relnamespace = current_schema()::regnamespace
      AND relkind IN ('r', 'p', 'v', 'm', 'f') AND relname <> 'alembic_version'
      AND NOT EXISTS (SELECT FROM pg_depend WHERE classid = 'pg_class'::regclass
                      AND objid = c.oid AND deptype = 'e')
    ORDER BY relname LIMIT 4
""")


def _refuse_tables_of_another(connection: "Connection") -> None:
    """A database with no alembic_version must have no tables either: ours would
    be migrated in beside another application's (as Flyway refuses a non-empty
    schema without its history table)."""
    tables = connection.execute(_TABLES).scalars().all()
    if tables:
        named = ", ".join(tables[:3]) + (", …" if len(tables) > 3 else "")
        raise ForeignSchema(
            f"it has tables ({named}) and no Alembic revision: it is another "
            "application's database (give this service an empty database of its own)"
        )


def migrate(engine: Engine) -> None:
    """Upgrade to head in one transaction, holding a transaction-level
    advisory lock (which also works through PgBouncer's transaction pooling).
    A database at a revision this release does not know was migrated by a newer
    one (a rolling deploy ships additive migrations first): it is left as it is,
    so an instance of the older release can still start. A table lock not had
    within MIGRATION_LOCK_TIMEOUT_MS: the upgrade (a savepoint) again, later,
    still holding the advisory lock, so other instances' migrations wait on it
    rather than take turns asking for the table."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    with engine.begin() as connection:
        # Where DATABASE_URL led, defaults filled in (an operator trial: nothing
        # said which server, database and role the service had reached).
        database, where, role = connection.execute(_REACHED).one()
        logger.info("database %s on %s, as %s", database, where, role)
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
        )
        # Only now: another instance migrating holds the advisory lock for long.
        limit_lock_waits(connection)
        config = alembic_config(connection)
        current = MigrationContext.configure(connection).get_current_revision()
        if current is None:
            _refuse_tables_of_another(connection)
        # Every revision of ours has the task table (the first creates it).
        elif not inspect(connection).has_table("task"):
            raise ForeignSchema(
                f"its alembic_version is at {current} and it has no task table: "
                "it is another application's database (give this service a "
                "database of its own)"
            )
        scripts = ScriptDirectory.from_config(config)
        if current is not None and current not in {
            script.revision for script in scripts.walk_revisions()
        }:
            logger.warning(
                "the database's schema is at revision %s, newer than this "
                "release's %s: not migrated",
                current,
                SCHEMA_REVISION,
            )
            return

        def upgrade() -> None:
            with connection.begin_nested():
                command.upgrade(config, "head")

        give_way(upgrade)
        _refuse_an_incomplete_schema(connection)


def migrate_url(url: str) -> None:
    engine = sync_engine(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()


class _Present(TypedDict):
    present: bool


class _Revision(TypedDict):
    revision: str


_HAS_VERSION_TABLE = compile_query(
    text("SELECT to_regclass('alembic_version') IS NOT NULL AS present"), _Present
)
_REVISION = compile_query(
    text("SELECT version_num AS revision FROM alembic_version"), _Revision
)


# How often a worker that could not check the schema at start-up tries again.
SCHEMA_RETRY_SECONDS = 1.0


async def ensure_schema(database: Database, url: str) -> bool:
    """The database is at SCHEMA_REVISION, or is migrated now (on a thread): True.
    False when it cannot be reached (`python -m app` has migrated it before
    starting workers; a worker started otherwise checks again later)."""
    try:
        table = await database.fetch_one(_HAS_VERSION_TABLE)
        present = table is not None and table["present"]
        row = await database.fetch_one(_REVISION) if present else None
    except DatabaseRefused:
        raise  # the role may not read it: no later round will do better
    except DatabaseUnavailable:
        return False
    if row is None or row["revision"] != SCHEMA_REVISION:
        await anyio.to_thread.run_sync(migrate_url, url)
    return True


async def ensure_schema_once_reachable(database: Database, url: str) -> bool:
    """`ensure_schema`, again every SCHEMA_RETRY_SECONDS until the database
    answers (True), for a worker started while it was down (`uvicorn
    app.main:app`): it serves 503s meanwhile, its requests reach the database
    only once the schema is known to be this release's. False, and an error
    logged, for another application's database."""
    logger.warning("database unavailable at start-up: schema not checked yet")
    while True:
        await anyio.sleep(SCHEMA_RETRY_SECONDS)
        try:
            if await ensure_schema(database, url):
                logger.info("database reachable: schema checked")
                return True
        except ForeignSchema as exc:
            logger.error("cannot prepare the database: %s", exc)
            return False
        except Exception as exc:  # gone again while migrating, say: next round
            cause = getattr(exc, "orig", exc)  # SQLAlchemy's wrapping of psycopg2's
            logger.warning("schema not checked: %s", failure(cause))


def main() -> None:
    """`python -m app.db.migrations`: upgrade DATABASE_URL's database (from the
    environment or `.env`) to head, or exit with one line saying why not."""
    from sqlalchemy.exc import SQLAlchemyError

    # Read as the server reads them (or one line per problem), but it only needs
    # the database: production's other requirements (CURSOR_SECRET, an auth key)
    # are the server's, and a migrate-only job need not carry them.
    settings = load_settings(ENVIRONMENT="development")
    configure_logging(settings.LOG_LEVEL)
    if settings.DATABASE_URL is None:
        sys.exit(
            "configuration error: DATABASE_URL: the database to migrate is not set"
        )
    try:
        migrate_url(settings.DATABASE_URL.get_secret_value())
    except (ForeignSchema, TablesLocked) as exc:
        sys.exit(f"cannot prepare the database: {exc}")
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        sys.exit(f"cannot prepare the database: {reason}")


if __name__ == "__main__":
    main()
