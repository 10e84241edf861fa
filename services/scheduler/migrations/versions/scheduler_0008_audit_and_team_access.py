"""The scheduler's own append-only audit log (reads of a person's data, match decisions), and
the team members outreach deactivated (port.outreach.team.v1), refused at once here too.

Revision ID: scheduler_0008
Revises: scheduler_0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime
from shared.migrations import create_team_access_v1, protect_append_only_v1

revision: str = "scheduler_0008"
down_revision: str | None = "scheduler_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor_id", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("resource", sa.String(32), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=True),
        sa.Column("case_id", sa.Uuid(), nullable=True),
        sa.Column("purpose", sa.String(200), nullable=False),
        sa.Column("purpose_sealed", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
    )
    op.create_index("ix_audit_log_case_id", "audit_log", ["case_id"])
    op.create_index("ix_audit_log_program_id_id", "audit_log", ["program_id", "id"])
    protect_append_only_v1("audit_log")
    create_team_access_v1()


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
