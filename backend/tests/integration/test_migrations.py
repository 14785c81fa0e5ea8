"""C8: the migrations build exactly the models' schema, and run both ways."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.dialects.postgresql.base import PGInspector
from sqlmodel import SQLModel

from app.__main__ import MIGRATION_NOTICE_SECONDS
from app.db import migrations
from app.db.migrations import (
    _MIGRATION_LOCK_KEY,
    SCHEMA_REVISION,
    ForeignSchema,
    alembic_config,
    include_object,
    migrate,
)
from tests.conftest import fresh_database
from tests.server import BACKEND
from tests.sessions import wait_for_a_lock_wait


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


_INSERT = text("INSERT INTO task (user_id, title) VALUES ('u', :title)")


def _writes_go_past(engine: Engine, start: Callable[[], Callable[[], None]]) -> None:
    """With a transaction that wrote to `task` left open, `start` a migration
    (it returns how to wait for its end); once the migration waits on the
    table, a write from elsewhere goes through within 2 s, instead of queueing
    behind it until that transaction ends; then it ends, and so does the
    migration."""
    with engine.connect() as open_write, engine.connect() as writer:
        open_write.execute(_INSERT, {"title": "left open"})
        finished = start()
        wait_for_a_lock_wait(engine)
        writer.execute(text("SET lock_timeout = '5s'"))
        for n in range(5):  # for a while: every write, not one between turns
            started = time.monotonic()
            writer.execute(_INSERT, {"title": f"meanwhile {n}"})
            writer.commit()
            assert time.monotonic() - started < 2
        open_write.commit()
        finished()


def _revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_a_migration_waiting_for_a_table_gives_way_to_the_services_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A migration that must lock `task` (0004's triggers) while a transaction
    that wrote to it stays open: PostgreSQL queues every later write behind the
    migration's request, so writes stopped for as long as that transaction
    lasted (a trial: 25 s, and 503s). The migration waits at most
    MIGRATION_LOCK_TIMEOUT_MS at a time, lets the writes through, and tries
    again until the transaction has ended. Two instances migrating at once: the
    second waits on the first's advisory lock, not on the table (when a retry
    let go of it, they took turns asking for the table, and writes queued behind
    each: a review)."""
    monkeypatch.setattr(migrations, "MIGRATION_LOCK_TIMEOUT_MS", 200)
    monkeypatch.setattr(migrations, "MIGRATION_PAUSE_SECONDS", 0.2)
    with fresh_database() as url:
        engine = create_engine(url)
        try:
            migrate(engine)
            with engine.begin() as connection:
                command.downgrade(alembic_config(connection), "0003")

            def start() -> Callable[[], None]:
                migrating = [
                    threading.Thread(target=migrate, args=(engine,)) for _ in "ab"
                ]
                for thread in migrating:
                    thread.start()

                def finished() -> None:
                    for thread in migrating:
                        thread.join(timeout=60)

                return finished

            _writes_go_past(engine, start)
            assert _revision(engine) == SCHEMA_REVISION
        finally:
            engine.dispose()


def test_alembics_own_command_gives_way_to_the_services_writes_too() -> None:
    """`alembic downgrade 0003`, as specs/006 has an operator roll back, runs
    through env.py, not `migrate`: it stalled writes behind a long transaction
    the same way (a re-trial: 12.6 s)."""
    with fresh_database() as url:
        engine = create_engine(url)
        try:
            migrate(engine)

            def start() -> Callable[[], None]:
                downgrading = subprocess.Popen(
                    [sys.executable, "-m", "alembic", "downgrade", "0003"],
                    cwd=BACKEND,
                    env={**os.environ, "PYTHONPATH": str(BACKEND), "DATABASE_URL": url},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )

                def finished() -> None:
                    assert downgrading.wait(timeout=60) == 0

                return finished

            _writes_go_past(engine, start)
            assert _revision(engine) == "0003"
        finally:
            engine.dispose()


def test_workers_expect_the_newest_migration() -> None:
    """A worker checks the schema against SCHEMA_REVISION without loading Alembic;
    a new migration must move it too."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head == SCHEMA_REVISION


def _refusal(url: str) -> str:
    """The last line of `python -m app.db.migrations` failing on `url`."""
    done = _migrate_command(BACKEND, DATABASE_URL=url)
    assert done.returncode != 0
    return done.stderr.strip().splitlines()[-1]


def _migrate_command(cwd: Path, **env: str) -> "subprocess.CompletedProcess[str]":
    """`python -m app.db.migrations` as an operator runs it, from `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "app.db.migrations"],
        cwd=cwd,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(BACKEND), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("revision", ["ae1027a6acf", "0002"])
def test_another_applications_database_is_refused_not_served(revision: str) -> None:
    """An Alembic revision, unknown or one of ours by name (`0002` is common),
    and no task table: another application's database, not a newer release's
    schema (which would have it). Served, every request was a 500; at `0002`,
    our `0003` ran against its schema."""
    with fresh_database() as url:
        engine = create_engine(url)
        try:
            with engine.begin() as connection:
                connection.execute(
                    text("CREATE TABLE alembic_version (version_num varchar(32))")
                )
                connection.execute(
                    text("INSERT INTO alembic_version VALUES (:v)"), {"v": revision}
                )
            with pytest.raises(ForeignSchema):
                migrate(engine)
        finally:
            engine.dispose()
        assert _refusal(url) == (
            f"cannot prepare the database: its alembic_version is at {revision} and "
            "it has no task table: it is another application's database (give this "
            "service a database of its own)"
        )


def test_an_extensions_tables_do_not_make_a_database_anothers() -> None:
    """pg_stat_statements' views in `public`, as a managed server's new database
    has them: still an empty database (a review). Here a table made a member of
    plpgsql, the extension every server has."""
    with fresh_database() as url:
        engine = create_engine(url)
        try:
            with engine.begin() as connection:
                connection.execute(text("CREATE TABLE extension_stats (n int)"))
                connection.execute(
                    text("ALTER EXTENSION plpgsql ADD TABLE extension_stats")
                )
            migrate(engine)
            assert inspect(engine).has_table("task")
        finally:
            engine.dispose()


@pytest.mark.parametrize("table", ["customers", "task"])
@pytest.mark.parametrize("versions", [False, True])
def test_a_database_with_tables_but_no_alembic_version_is_refused(
    table: str, versions: bool
) -> None:
    """Tables and no alembic_version: another application's database (or tables
    made by hand). Its schema was migrated into it, extensions and all, and the
    service started (a scale-out trial); with a `task` table of its own, the
    error said only that the relation existed. Like Flyway on a non-empty
    schema without its history table."""
    with fresh_database() as url:
        engine = create_engine(url)
        try:
            with engine.begin() as connection:
                connection.execute(text(f"CREATE TABLE {table} (id serial, name text)"))
                if versions:  # empty, as a downgrade to the base leaves it
                    connection.execute(
                        text("CREATE TABLE alembic_version (version_num varchar(32))")
                    )
            assert _refusal(url) == (
                f"cannot prepare the database: it has tables ({table}) and no "
                "Alembic revision: it is another application's database (give this "
                "service an empty database of its own)"
            )
            made = [table, "alembic_version"] if versions else [table]
            assert sorted(inspect(engine).get_table_names()) == sorted(made)
        finally:
            engine.dispose()


def test_a_restore_without_its_keys_and_triggers_is_refused() -> None:
    """A backup restored without its post-data section (`pg_restore --section=
    pre-data --section=data`): at our revision, but without the keys and the
    triggers that mark changes. Served, edits and deletes never reached syncing
    clients, and keyed creates were 503s (a restore trial)."""
    with fresh_database() as url:
        engine = create_engine(url)
        try:
            migrate(engine)
            with engine.begin() as connection:
                connection.execute(text("ALTER TABLE task DROP CONSTRAINT pk_task"))
                connection.execute(text("DROP TRIGGER task_mark_update ON task"))
            assert _refusal(url) == (
                "cannot prepare the database: its schema lacks pk_task, "
                "task_mark_update: a restore without its keys and triggers (restore "
                "the backup whole, its post-data section included)"
            )
        finally:
            engine.dispose()


def test_the_migration_command_reads_dot_env(tmp_path: Path) -> None:
    """As the server does: the documented migrate-once step finds the same
    settings (it read only the environment, and gave a KeyError traceback). It
    needs only the database: a migrate-only job carries no CURSOR_SECRET or key."""
    with fresh_database() as url:
        (tmp_path / ".env").write_text(f"DATABASE_URL={url}\nENVIRONMENT=production\n")
        done = _migrate_command(tmp_path)
        assert done.returncode == 0, done.stderr
        engine = create_engine(url)
        try:
            assert "task" in inspect(engine).get_table_names()
        finally:
            engine.dispose()
    for env in ({"DATABASE_URL": "mysql://x/y"}, {}):
        done = _migrate_command(tmp_path / "..", **env)
        assert done.returncode != 0
        assert done.stderr.count("\n") == 1
        assert done.stderr.startswith("configuration error: DATABASE_URL")


def test_sigterm_while_migrations_wait_exits_cleanly_and_stops_them(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    """Another instance holds the migration lock; this one says it waits (it said
    nothing), and is stopped while it waits. It died by the signal (143), and its
    migration process ran on."""
    log = tmp_path / "server.log"
    with engine.connect() as holder, holder.begin(), log.open("wb") as output:
        holder.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=BACKEND,
            env={
                **os.environ,
                "DATABASE_URL": database_url,
                "PYTHONPATH": str(BACKEND),
            },
            stderr=output,
        )
        try:
            wait_for_a_lock_wait(engine)
            [migration] = psutil.Process(server.pid).children()
            # Said again as it goes on (once, then silence, an operator saw).
            deadline = time.monotonic() + 2 * MIGRATION_NOTICE_SECONDS + 10
            again = f"after {2 * MIGRATION_NOTICE_SECONDS} s".encode()
            while again not in log.read_bytes():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=10) == 0
            # Stopped while the lock is still held: not left to run on after it.
            assert not migration.is_running()
        finally:
            server.kill()
