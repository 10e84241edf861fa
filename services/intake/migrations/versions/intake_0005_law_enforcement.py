"""Law-enforcement partners: report sources wide enough for `law_enforcement`.

Revision ID: intake_0005
Revises: intake_0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "intake_0005"
down_revision: str | None = "intake_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("report") as batch:
        batch.alter_column("source_kind", type_=sa.String(16), existing_type=sa.String(8))


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
