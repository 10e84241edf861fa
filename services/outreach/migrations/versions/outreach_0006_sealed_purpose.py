"""The purpose a caller states for reading or changing a record (X-Purpose) is free text, so
it may name the person: it is stored sealed, beside the operation's own purpose.

Revision ID: outreach_0006
Revises: outreach_0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "outreach_0006"
down_revision: str | None = "outreach_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable and without a default: no rewrite of the append-only table, no UPDATE.
    op.add_column("audit_log", sa.Column("purpose_sealed", sa.Text(), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
