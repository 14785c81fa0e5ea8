"""changes marked by the database

Delta sync reports a task written by a transaction that a client's snapshot did not
see, and a task deleted through its tombstone. Both were written by the service's
own statements only, so a change made with SQL (an operator's fix in psql, a row
restored from a backup with its old `change_xid`, a delete by hand) was never sent.
Now the database marks them itself: every inserted or updated row gets the writing
transaction's id (a row moved to another user leaves a tombstone for the one who had
it), and every delete leaves its tombstones (one statement-level trigger per DELETE,
reading the deleted rows from its transition table; one before TRUNCATE). Not
covered: writes with triggers disabled (`session_replication_role = replica`,
`pg_restore --disable-triggers`): specs/008-offline-sync.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _bury(rows: str, schema: str) -> str:
    """Tombstones for `rows` (user_id, id), written by this transaction. A task id
    deleted before (its row restored since) has its tombstone marked anew, so
    syncs report this deletion too. Tables are named with their schema: a session
    may run with another search_path (pg_dump's scripts set it to '')."""
    return (
        f"INSERT INTO {schema}.task_tombstone (user_id, id) {rows} "
        "ON CONFLICT (user_id, id) DO UPDATE "
        "SET change_xid = pg_current_xact_id()::text::bigint, deleted_at = now();"
    )


def upgrade() -> None:
    schema = op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())"))
    schema = schema.scalar_one()
    moved = _bury("VALUES (OLD.user_id, OLD.id)", schema)
    op.execute(
        f"""
        CREATE FUNCTION task_mark_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.change_xid := pg_current_xact_id()::text::bigint;
            -- Moved to another user (by hand): gone for the one who had it.
            IF TG_OP = 'UPDATE' AND NEW.user_id <> OLD.user_id THEN
                {moved}
            END IF;
            RETURN NEW;
        END
        $$
        """
    )
    # Only when the row does not carry it yet: an insert takes it as the column's
    # default, so the service's own creates call no function. An update that
    # moves the row to another user always: it may carry it already (written
    # earlier in the same transaction), but the tombstone is still to write.
    unmarked = "NEW.change_xid IS DISTINCT FROM pg_current_xact_id()::text::bigint"
    op.execute(
        "CREATE TRIGGER task_mark_insert BEFORE INSERT ON task FOR EACH ROW "
        f"WHEN ({unmarked}) EXECUTE FUNCTION task_mark_change()"
    )
    op.execute(
        "CREATE TRIGGER task_mark_update BEFORE UPDATE ON task FOR EACH ROW "
        f"WHEN ({unmarked} OR NEW.user_id IS DISTINCT FROM OLD.user_id) "
        "EXECUTE FUNCTION task_mark_change()"
    )
    gone = _bury("SELECT user_id, id FROM gone ORDER BY user_id, id", schema)
    op.execute(
        f"""
        CREATE FUNCTION task_bury() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            {gone}
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER task_bury AFTER DELETE ON task REFERENCING OLD TABLE AS gone "
        "FOR EACH STATEMENT EXECUTE FUNCTION task_bury()"
    )
    # TRUNCATE deletes without row triggers: every task gets its tombstone first.
    every = _bury(f"SELECT user_id, id FROM {schema}.task ORDER BY user_id, id", schema)
    op.execute(
        f"""
        CREATE FUNCTION task_bury_all() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            {every}
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER task_bury_all BEFORE TRUNCATE ON task "
        "FOR EACH STATEMENT EXECUTE FUNCTION task_bury_all()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER task_bury_all ON task")
    op.execute("DROP FUNCTION task_bury_all()")
    op.execute("DROP TRIGGER task_bury ON task")
    op.execute("DROP FUNCTION task_bury()")
    op.execute("DROP TRIGGER task_mark_update ON task")
    op.execute("DROP TRIGGER task_mark_insert ON task")
    op.execute("DROP FUNCTION task_mark_change()")
