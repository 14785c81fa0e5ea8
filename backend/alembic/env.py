"""Alembic environment: the app's metadata, and its database (or a given connection)."""

from alembic import context
from sqlalchemy import Connection

from app.config import get_settings
from app.db.embedded import embedded_database_url
from app.db.migrations import give_way, include_object, limit_lock_waits, sync_engine
from app.models import SQLModel

target_metadata = SQLModel.metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        include_object=include_object,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:  # `app.db.migrations.migrate`, which gives way itself
    run_migrations(given)
else:  # Alembic's own command (`alembic downgrade 0003`)
    url = get_settings().DATABASE_URL
    engine = sync_engine(url.get_secret_value() if url else embedded_database_url())

    def run_alone() -> None:
        with engine.connect() as connection:
            limit_lock_waits(connection)
            run_migrations(connection)
            connection.commit()

    try:
        give_way(run_alone)
    finally:
        engine.dispose()
