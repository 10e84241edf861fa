"""Hot-spot tasks: outreach where a county's overdoses spiked, opened from reporting's
SpikeDetected; no person, no case; at most one open per program and county.

Revision ID: scheduler_0014
Revises: scheduler_0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision: str = "scheduler_0014"
down_revision: str | None = "scheduler_0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hot_spot_task",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("county", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("alert_ids", sa.Text(), nullable=False),
        sa.Column("detector", sa.String(16), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("observed", sa.Float(), nullable=False),
        sa.Column("expected", sa.Float(), nullable=True),
        sa.Column("window_start", UTCDateTime(), nullable=False),
        sa.Column("window_end", UTCDateTime(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("opened_at", UTCDateTime(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
    )
    op.create_index(
        "uq_hot_spot_task_open",
        "hot_spot_task",
        ["program_id", "county"],
        unique=True,
        postgresql_where=sa.text("status = 'open'"),
        sqlite_where=sa.text("status = 'open'"),
    )


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
