"""Report sources wide enough for law enforcement and the community.

Revision ID: scheduler_0007
Revises: scheduler_0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "scheduler_0007"
down_revision: str | None = "scheduler_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("report_link") as batch:
        batch.alter_column("source_kind", type_=sa.String(16), existing_type=sa.String(8))
    with op.batch_alter_table("episode") as batch:
        batch.alter_column("sources", type_=sa.String(64), existing_type=sa.String(32))


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
