"""Merged people (a case folded into another keeps a pointer to it, so late events of the
folded case land on the one that stays), the quiet hours a task was planned under, and texts
sent in quiet hours on an explicit override.

Revision ID: outreach_0008
Revises: outreach_0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "outreach_0008"
down_revision: str | None = "outreach_0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("case_file") as batch:
        batch.add_column(sa.Column("merged_into", sa.Uuid(), nullable=True))
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("quiet_hours", sa.Text(), nullable=True))
    with op.batch_alter_table("sms_message") as batch:
        batch.add_column(
            sa.Column(
                "quiet_hours_override", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
