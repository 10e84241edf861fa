"""Match weights: each possible match and link keeps its explained weight; episodes keep their
county; episodes are found by program and incident time (the overdose as linking evidence).

Revision ID: scheduler_0010
Revises: scheduler_0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "scheduler_0010"
down_revision: str | None = "scheduler_0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("possible_match") as batch:
        batch.add_column(sa.Column("level", sa.String(8), nullable=False, server_default="review"))
        batch.add_column(sa.Column("weight", sa.Float(), nullable=True))
        batch.add_column(sa.Column("explanation", sa.Text(), nullable=True))
    with op.batch_alter_table("report_link") as batch:
        batch.add_column(sa.Column("weight", sa.Float(), nullable=True))
        batch.add_column(sa.Column("explanation", sa.Text(), nullable=True))
    with op.batch_alter_table("episode") as batch:
        batch.add_column(sa.Column("county", sa.String(64), nullable=True))
    op.create_index("ix_episode_program_incident", "episode", ["program_id", "incident_at"])


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
