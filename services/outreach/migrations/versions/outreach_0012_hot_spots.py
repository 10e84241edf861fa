"""Hot-spot tasks (the scheduler's HotSpotTaskScheduled) and a lead's conclusion of them.

Revision ID: outreach_0012
Revises: outreach_0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision: str = "outreach_0012"
down_revision: str | None = "outreach_0008"
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
        sa.Column("naloxone_kits", sa.Integer(), nullable=True),
        sa.Column("test_strips", sa.Integer(), nullable=True),
        sa.Column("warnings_given", sa.Integer(), nullable=True),
        sa.Column("contacts_checked", sa.Integer(), nullable=True),
        sa.Column("note_sealed", sa.Text(), nullable=True),
        sa.Column("concluded_by", sa.String(128), nullable=True),
        sa.Column("concluded_at", UTCDateTime(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_hot_spot_task_queue", "hot_spot_task", ["program_id", "status", "due_at"])


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
