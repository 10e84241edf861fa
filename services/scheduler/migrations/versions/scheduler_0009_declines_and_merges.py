"""A case remembers that the person declined outreach (until a repeat overdose), so that a
decline survives when a team lead merges two people.

Revision ID: scheduler_0009
Revises: scheduler_0013
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "scheduler_0009"
down_revision: str | None = "scheduler_0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outreach_case") as batch:
        batch.add_column(
            sa.Column("declined", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
