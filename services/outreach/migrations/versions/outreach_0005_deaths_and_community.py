"""Deaths (a deceased case, fatal episodes, notices for the team) and community referrals;
report sources wide enough for law enforcement and the community.

Revision ID: outreach_0005
Revises: outreach_0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision: str = "outreach_0005"
down_revision: str | None = "outreach_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("case_file") as batch:
        batch.add_column(sa.Column("deceased_at", UTCDateTime(), nullable=True))
    with op.batch_alter_table("episode") as batch:
        batch.add_column(
            sa.Column("fatal", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("source_kind", sa.String(16), nullable=True))
    with op.batch_alter_table("report") as batch:
        batch.alter_column("source_kind", type_=sa.String(16), existing_type=sa.String(8))
    op.create_table(
        "notice",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("dismissed_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_notice_member", "notice", ["program_id", "member_id", "dismissed_at"])
    op.create_table(
        "community_referral",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("referrer", sa.String(32), nullable=False),
        sa.Column("consent", sa.String(16), nullable=False),
        sa.Column("overdose", sa.Boolean(), nullable=False),
        sa.Column("notes_sealed", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
