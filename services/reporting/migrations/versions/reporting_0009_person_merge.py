"""People merged by a lead (PersonsMerged): who was merged into whom, opaque ids only.

Revision ID: reporting_0009
Revises: reporting_0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision: str = "reporting_0009"
down_revision: str | None = "reporting_0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rpt_person_merge",
        sa.Column("merged_person_id", sa.Uuid(), primary_key=True),
        sa.Column("person_id", sa.Uuid(), nullable=False),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("merged_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_rpt_person_merge_person", "rpt_person_merge", ["person_id"])


def downgrade() -> None:
    op.drop_table("rpt_person_merge")
