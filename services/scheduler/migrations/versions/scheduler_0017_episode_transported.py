"""Episodes keep whether EMS transported the person: linking evidence when it named no hospital.

Revision ID: scheduler_0017
Revises: scheduler_0016
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "scheduler_0017"
down_revision: str | None = "scheduler_0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("episode") as batch:
        batch.add_column(
            sa.Column("transported", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
