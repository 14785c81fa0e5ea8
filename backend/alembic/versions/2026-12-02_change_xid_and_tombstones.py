"""change xid and tombstones

Delta sync (CONTRACT C9, E10): every task row records the transaction that last
wrote it (`change_xid`), and a deleted task leaves a tombstone with the deleting
transaction's id. `pg_current_xact_id()` is stable, so adding the column with it as
default is a catalog change (existing rows read the migration's own xid), not a
rewrite. Both tables get an index led by user_id for the sync scan.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_XID = sa.text("(pg_current_xact_id())::text::bigint")


def upgrade() -> None:
    op.add_column(
        "task",
        sa.Column(
            "change_xid", sa.BigInteger(), server_default=CURRENT_XID, nullable=False
        ),
    )
    op.create_index(
        "ix_task_user_id_change_xid_id", "task", ["user_id", "change_xid", "id"]
    )
    op.create_table(
        "task_tombstone",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column(
            "change_xid", sa.BigInteger(), server_default=CURRENT_XID, nullable=False
        ),
        sa.Column(
            "deleted_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("user_id", "id", name=op.f("pk_task_tombstone")),
    )
    op.create_index(
        "ix_task_tombstone_user_id_change_xid_id",
        "task_tombstone",
        ["user_id", "change_xid", "id"],
    )
    op.create_index(
        "ix_task_tombstone_deleted_at", "task_tombstone", ["deleted_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_task_tombstone_deleted_at", table_name="task_tombstone")
    op.drop_index(
        "ix_task_tombstone_user_id_change_xid_id", table_name="task_tombstone"
    )
    op.drop_table("task_tombstone")
    op.drop_index("ix_task_user_id_change_xid_id", table_name="task")
    op.drop_column("task", "change_xid")
