"""Durable timers, and the firing table whose primary key lets each timer's effect happen once.

Revision ID: scheduler_0002
Revises: scheduler_0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision: str = "scheduler_0002"
down_revision: str | None = "scheduler_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "timer",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=True),
        sa.Column("case_id", sa.Uuid(), nullable=True),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("fired_at", UTCDateTime(), nullable=True),
        sa.Column("late", sa.Boolean(), nullable=True),
        sa.Column("cancelled_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("key", name="uq_timer_key"),
    )
    op.create_index(
        "ix_timer_due",
        "timer",
        ["due_at"],
        postgresql_where=sa.text("fired_at IS NULL AND cancelled_at IS NULL"),
        sqlite_where=sa.text("fired_at IS NULL AND cancelled_at IS NULL"),
    )
    op.create_index("ix_timer_task_id", "timer", ["task_id"])
    op.create_table(
        "timer_firing",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("fired_at", UTCDateTime(), nullable=False),
        sa.Column("replica", sa.String(100), nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
