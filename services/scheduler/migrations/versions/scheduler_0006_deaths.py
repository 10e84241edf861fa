"""Deaths: when a person was recorded dead, fatal episodes, and referrals without an overdose.

Revision ID: scheduler_0006
Revises: scheduler_0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision: str = "scheduler_0006"
down_revision: str | None = "scheduler_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("person") as batch:
        batch.add_column(sa.Column("deceased_at", UTCDateTime(), nullable=True))
    with op.batch_alter_table("episode") as batch:
        batch.add_column(
            sa.Column("fatal", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("overdose", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
