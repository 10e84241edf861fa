"""Episodes keep their hospital (EMS's destination or the reporting ED): linking evidence.

Revision ID: scheduler_0016
Revises: scheduler_0015
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "scheduler_0016"
down_revision: str | None = "scheduler_0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("episode") as batch:
        batch.add_column(sa.Column("hospital", sa.String(128), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
