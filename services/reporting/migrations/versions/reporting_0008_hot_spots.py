"""Concluded hot-spot tasks: what the team distributed where a county's overdoses spiked
(outreach's HotSpotConcluded), counted in the services metrics.

Revision ID: reporting_0008
Revises: reporting_0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision: str = "reporting_0008"
down_revision: str | None = "reporting_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _key(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "rpt_hot_spot",
        sa.Column("task_id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", _key(64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("week", sa.Date(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("quarter", sa.Date(), nullable=False),
        sa.Column("county", _key(64), nullable=False),
        sa.Column("naloxone_kits", sa.Integer(), nullable=False),
        sa.Column("test_strips", sa.Integer(), nullable=False),
        sa.Column("people_warned", sa.Integer(), nullable=False),
        sa.Column("contacts_checked", sa.Integer(), nullable=False),
        sa.Column("concluded_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_rpt_hot_spot_program_day", "rpt_hot_spot", ["program_id", "day"])


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
