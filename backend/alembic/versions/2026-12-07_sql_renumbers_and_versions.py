"""a task renumbered or edited with SQL: its tombstone, and a new version

Migration 0004 left two writes made with SQL out of what clients are told:
- a task renumbered (`UPDATE task SET id = …`) reached syncs as a new task, and its
  old id was never reported deleted, so every replica kept it for ever (a trial);
- an edit that does not set `updated_at` (an operator's fix in psql) kept the
  task's version, its ETag: `If-None-Match` with the old one got a 304 (the stale
  copy kept), and `If-Match` with it let a client overwrite the fix.
Now a renumbered row leaves a tombstone for its old id, as a row moved to another
user does, and an update that changes a task's content but leaves `updated_at` as
it was moves it on, as the service's own writes do (at least a microsecond past the
old value); one that writes only `change_xid` (the restore procedure) keeps it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in 0004: only when the row does not carry the writing transaction's id yet,
# or when the update takes the row from under its (user_id, id).
_UNMARKED = "NEW.change_xid IS DISTINCT FROM pg_current_xact_id()::text::bigint"
_MOVED = "NEW.user_id IS DISTINCT FROM OLD.user_id"
_RENUMBERED = "NEW.id IS DISTINCT FROM OLD.id"


def _mark_change(moved: str, *, versioned: bool) -> str:
    """0004's function, with a tombstone when `moved`, and a new version when
    `versioned`. Tables named with their schema, as in 0004."""
    quoted = op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())"))
    schema = quoted.scalar_one()
    bury = (
        f"INSERT INTO {schema}.task_tombstone (user_id, id) VALUES (OLD.user_id, OLD.id) "
        "ON CONFLICT (user_id, id) DO UPDATE "
        "SET change_xid = pg_current_xact_id()::text::bigint, deleted_at = now();"
    )
    version = (
        """
            -- Its content written without a new version (SQL by hand): it gets
            -- one. Not for a write of the sync columns alone (the restore
            -- procedure's `SET change_xid = 0`: every version would change).
            IF TG_OP = 'UPDATE'
                AND NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
                IF to_jsonb(NEW) - 'change_xid' IS DISTINCT FROM
                    to_jsonb(OLD) - 'change_xid' THEN
                    NEW.updated_at := greatest(
                        clock_timestamp(), OLD.updated_at + interval '1 microsecond'
                    );
                END IF;
            END IF;"""
        if versioned
        else ""
    )
    return f"""
        CREATE OR REPLACE FUNCTION task_mark_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            NEW.change_xid := pg_current_xact_id()::text::bigint;
            -- Moved to another user or renumbered (by hand): gone for the one
            -- who had it, under its old id.
            IF TG_OP = 'UPDATE' AND ({moved}) THEN
                {bury}
            END IF;{version}
            RETURN NEW;
        END
        $$
        """


def _update_trigger(when: str) -> None:
    op.execute("DROP TRIGGER task_mark_update ON task")
    op.execute(
        "CREATE TRIGGER task_mark_update BEFORE UPDATE ON task FOR EACH ROW "
        f"WHEN ({when}) EXECUTE FUNCTION task_mark_change()"
    )


def upgrade() -> None:
    moved = "NEW.user_id <> OLD.user_id OR NEW.id <> OLD.id"
    op.execute(_mark_change(moved, versioned=True))
    _update_trigger(f"{_UNMARKED} OR {_MOVED} OR {_RENUMBERED}")


def downgrade() -> None:
    moved = "NEW.user_id <> OLD.user_id"
    op.execute(_mark_change(moved, versioned=False))
    _update_trigger(f"{_UNMARKED} OR {_MOVED}")
