"""listing indexes and idempotency keys

An index per sort key of CONTRACT C4, each led by user_id; trigram indexes for `q`
where the server has pg_trgm and btree_gin (Neon and Debian's PostgreSQL do; the
embedded development server does not, and then `q` scans the user's own rows); and
the table behind Idempotency-Key (C5).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGRAM_INDEXES = {
    "ix_task_title_trgm": "title",
    "ix_task_description_trgm": "description",
}


def _has_trigram_support() -> bool:
    available = op.get_bind().execute(
        sa.text(
            "SELECT count(*) FROM pg_available_extensions "
            "WHERE name IN ('pg_trgm', 'btree_gin')"
        )
    )
    return available.scalar_one() == 2


def upgrade() -> None:
    op.create_table(
        "idempotency_key",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("user_id", "key", name=op.f("pk_idempotency_key")),
    )
    op.create_index("ix_idempotency_key_created_at", "idempotency_key", ["created_at"])
    for name, expression in {
        "ix_task_user_id_updated_at_id": "updated_at",
        "ix_task_user_id_priority_id": "priority",
        "ix_task_user_id_lower_title_id": "lower(title)",
        "ix_task_user_id_due_at_asc_id": "coalesce(due_at, 'infinity'::timestamptz)",
        "ix_task_user_id_due_at_desc_id": "coalesce(due_at, '-infinity'::timestamptz)",
    }.items():
        op.execute(f"CREATE INDEX {name} ON task (user_id, {expression}, id)")
    if _has_trigram_support():
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
        for name, column in TRIGRAM_INDEXES.items():
            op.execute(
                f"CREATE INDEX {name} ON task USING gin (user_id, {column} gin_trgm_ops)"
            )


def downgrade() -> None:
    for name in TRIGRAM_INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    for name in (
        "ix_task_user_id_updated_at_id",
        "ix_task_user_id_priority_id",
        "ix_task_user_id_lower_title_id",
        "ix_task_user_id_due_at_asc_id",
        "ix_task_user_id_due_at_desc_id",
    ):
        op.drop_index(name, table_name="task")
    op.drop_index("ix_idempotency_key_created_at", table_name="idempotency_key")
    op.drop_table("idempotency_key")
