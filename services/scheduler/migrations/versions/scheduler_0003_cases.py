"""People, their blind keys, possible matches, cases, episodes, report links, tasks.

Revision ID: scheduler_0003
Revises: scheduler_0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision: str = "scheduler_0003"
down_revision: str | None = "scheduler_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "person",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("identity_sealed", sa.Text(), nullable=True),
        sa.Column("do_not_contact", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "person_key",
        sa.Column("person_id", sa.Uuid(), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("value", sa.String(64), primary_key=True),
    )
    op.create_index("ix_person_key_lookup", "person_key", ["kind", "value"])
    op.create_table(
        "possible_match",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("report_id", sa.Uuid(), nullable=False),
        sa.Column("person_id", sa.Uuid(), nullable=False),
        sa.Column("candidate_id", sa.Uuid(), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("resolved_at", UTCDateTime(), nullable=True),
    )
    op.create_table(
        "outreach_case",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("person_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("opened_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
        sa.Column("close_reason", sa.String(32), nullable=True),
    )
    op.create_index("ix_case_person", "outreach_case", ["person_id", "status"])
    op.create_table(
        "episode",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=True),
        sa.Column("person_id", sa.Uuid(), nullable=True),
        sa.Column("incident_at", UTCDateTime(), nullable=False),
        sa.Column("sources", sa.String(32), nullable=False),
        sa.Column("consent", sa.String(16), nullable=False),
        sa.Column("deidentified", sa.Boolean(), nullable=False),
        sa.Column("repeat", sa.Boolean(), nullable=False),
        sa.Column("plan_reasons", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_episode_case", "episode", ["case_id", "incident_at"])
    op.create_table(
        "report_link",
        sa.Column("report_id", sa.Uuid(), primary_key=True),
        sa.Column("episode_id", sa.Uuid(), nullable=False),
        sa.Column("source_kind", sa.String(8), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("match", sa.String(16), nullable=False),
        sa.Column("linked_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "task",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("episode_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("window_opens_at", UTCDateTime(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("with_deputy", sa.Boolean(), nullable=False),
        sa.Column("failed_attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=True),
    )
    op.create_index("ix_task_case", "task", ["case_id", "status"])


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
