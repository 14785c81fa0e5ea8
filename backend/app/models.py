"""Table models (table=True only). Never used as request bodies or responses."""

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Enum,
    Identity,
    Index,
    String,
    Text,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlmodel import Field, SQLModel

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Priority(enum.StrEnum):
    """Declared in rank order: the PostgreSQL enum sorts by it."""

    none = "none"
    low = "low"
    medium = "medium"
    high = "high"


def _timestamptz(*, nullable: bool, server_default: bool = False) -> Column[datetime]:
    return Column(
        DateTime(timezone=True),
        nullable=nullable,
        server_default=func.now() if server_default else None,
    )


# The transaction that wrote a row (its 64-bit xid as bigint): delta sync (E10)
# compares it with the snapshots its tokens carry (specs/008-offline-sync).
CURRENT_XID = text("(pg_current_xact_id())::text::bigint")


def _change_xid() -> Column[int]:
    return Column(BigInteger, nullable=False, server_default=CURRENT_XID)


DUE_AT_ASC = text("coalesce(due_at, 'infinity'::timestamp with time zone)")
DUE_AT_DESC = text("coalesce(due_at, '-infinity'::timestamp with time zone)")


class Task(SQLModel, table=True):
    __tablename__ = "task"
    # One index per sort key, each led by the owner: a listing only ever reads the
    # user's own index range (plans in specs/003-listing/explain.md; checked by
    # tests/integration/test_listing_plans.py). `due_at` sorts nulls last in both
    # directions, so each direction has its own expression index.
    __table_args__ = (
        Index("ix_task_user_id_created_at_id", "user_id", "created_at", "id"),
        Index("ix_task_user_id_updated_at_id", "user_id", "updated_at", "id"),
        Index("ix_task_user_id_priority_id", "user_id", "priority", "id"),
        Index("ix_task_user_id_lower_title_id", "user_id", text("lower(title)"), "id"),
        Index("ix_task_user_id_due_at_asc_id", "user_id", DUE_AT_ASC, "id"),
        Index("ix_task_user_id_due_at_desc_id", "user_id", DUE_AT_DESC, "id"),
        Index("ix_task_user_id_change_xid_id", "user_id", "change_xid", "id"),
    )

    # The key leads with the owner: every lookup is by (user_id, id), and the
    # table can be distributed by user_id (Citus) with no unique key crossing users.
    user_id: str = Field(sa_column=Column(String(128), primary_key=True))
    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, Identity(), primary_key=True)
    )
    title: str = Field(sa_column=Column(String(200), nullable=False))
    description: str | None = Field(
        default=None, sa_column=Column(String(1000), nullable=True)
    )
    completed: bool = Field(
        default=False,
        sa_column=Column(Boolean, nullable=False, server_default=false()),
    )
    completed_at: datetime | None = Field(
        default=None, sa_column=_timestamptz(nullable=True)
    )
    priority: Priority = Field(
        default=Priority.none,
        sa_column=Column(
            Enum(
                Priority,
                name="task_priority",
                values_callable=lambda e: [m.value for m in e],
            ),
            nullable=False,
            server_default=Priority.none.value,
        ),
    )
    tags: list[str] = Field(
        default_factory=list,
        sa_column=Column(
            ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")
        ),
    )
    due_at: datetime | None = Field(default=None, sa_column=_timestamptz(nullable=True))
    created_at: datetime | None = Field(
        default=None, sa_column=_timestamptz(nullable=False, server_default=True)
    )
    updated_at: datetime | None = Field(
        default=None, sa_column=_timestamptz(nullable=False, server_default=True)
    )
    # Set on insert (default) and by the database on every update, whatever
    # statement writes (a trigger, migration 0004): never part of a response.
    change_xid: int | None = Field(default=None, sa_column=_change_xid())


class TaskTombstone(SQLModel, table=True):
    """A deleted task, kept SYNC_RETENTION_DAYS so delta sync can report it.
    Written by the database for every task a DELETE removes (a trigger,
    migration 0004)."""

    __tablename__ = "task_tombstone"
    __table_args__ = (
        Index("ix_task_tombstone_user_id_change_xid_id", "user_id", "change_xid", "id"),
        Index("ix_task_tombstone_deleted_at", "deleted_at"),
    )

    user_id: str = Field(sa_column=Column(String(128), primary_key=True))
    id: int = Field(sa_column=Column(BigInteger, primary_key=True))
    change_xid: int | None = Field(default=None, sa_column=_change_xid())
    deleted_at: datetime | None = Field(
        default=None, sa_column=_timestamptz(nullable=False, server_default=True)
    )


class IdempotencyKey(SQLModel, table=True):
    """A create's Idempotency-Key and its first response, for 24 hours (CONTRACT C5)."""

    __tablename__ = "idempotency_key"
    __table_args__ = (Index("ix_idempotency_key_created_at", "created_at"),)

    user_id: str = Field(sa_column=Column(String(128), primary_key=True))
    key: str = Field(sa_column=Column(String(255), primary_key=True))
    request_hash: str = Field(sa_column=Column(String(64), nullable=False))
    response: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSONB, nullable=True)
    )
    created_at: datetime | None = Field(
        default=None,
        sa_column=_timestamptz(nullable=False, server_default=True),
    )
