"""C8: the migrations build exactly the models' schema, and run both ways."""

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.dialects.postgresql.base import PGInspector
from sqlmodel import SQLModel

from app.db.migrations import SCHEMA_REVISION, alembic_config, include_object, migrate
from tests.conftest import fresh_database


def test_migrations_and_models_agree(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_object": include_object,
            },
        )
        assert compare_metadata(context, SQLModel.metadata) == []


def test_upgrade_downgrade_upgrade() -> None:
    with fresh_database() as url:
        engine = create_engine(url)
        try:
            migrate(engine)
            assert "task" in inspect(engine).get_table_names()
            with engine.begin() as connection:
                command.downgrade(alembic_config(connection), "base")
            inspector = inspect(engine)
            assert isinstance(inspector, PGInspector)
            assert inspector.get_table_names() == ["alembic_version"]
            assert inspector.get_enums() == []
            migrate(engine)
            assert "task" in inspect(engine).get_table_names()
        finally:
            engine.dispose()


def test_a_schema_migrated_by_a_newer_release_is_left_as_it_is() -> None:
    """A rolling deploy: the new release migrated the database (additively), and
    an instance of the older one (re)starts: it neither fails nor downgrades."""
    with fresh_database() as url:
        engine = create_engine(url)
        try:
            migrate(engine)
            with engine.begin() as connection:
                connection.execute(
                    text("UPDATE alembic_version SET version_num = 'b2'")
                )
            migrate(engine)
            with engine.connect() as connection:
                version = connection.execute(text("SELECT * FROM alembic_version"))
                assert version.scalar_one() == "b2"
            assert "task" in inspect(engine).get_table_names()
        finally:
            engine.dispose()


def test_workers_expect_the_newest_migration() -> None:
    """A worker checks the schema against SCHEMA_REVISION without loading Alembic;
    a new migration must move it too."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head == SCHEMA_REVISION
