"""Spike alerts (one per program, county, detector and window) and the leads' decisions on
them, and feed alerts (a partner's feed quiet or rejected far beyond its usual).

Revision ID: reporting_0007
Revises: reporting_0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision: str = "reporting_0007"
down_revision: str | None = "reporting_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rpt_alert",
        sa.Column("alert_id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("county", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=True),
        sa.Column("detector", sa.String(16), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("window_start", UTCDateTime(), nullable=False),
        sa.Column("window_end", UTCDateTime(), nullable=False),
        sa.Column("observed", sa.Float(), nullable=False),
        sa.Column("expected", sa.Float(), nullable=True),
        sa.Column("p_value", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Integer(), nullable=True),
        sa.Column("detected_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint(
            "program_id", "county", "detector", "window_start", name="uq_rpt_alert"
        ),
    )
    op.create_index("ix_rpt_alert_program", "rpt_alert", ["program_id", "detected_at"])
    op.create_table(
        "rpt_alert_decision",
        sa.Column("alert_id", sa.Uuid(), primary_key=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(128), nullable=False),
        sa.Column("decided_at", UTCDateTime(), nullable=False),
        sa.Column("note_sealed", sa.Text(), nullable=True),
    )
    op.create_table(
        "rpt_feed_alert",
        sa.Column("alert_id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("source_org", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("raised_at", UTCDateTime(), nullable=False),
        sa.Column("cleared_at", UTCDateTime(), nullable=True),
    )
    op.create_index(
        "ix_rpt_feed_alert_partner",
        "rpt_feed_alert",
        ["program_id", "source_org", "kind", "raised_at"],
    )


def downgrade() -> None:
    op.drop_table("rpt_feed_alert")
    op.drop_table("rpt_alert_decision")
    op.drop_table("rpt_alert")
