"""Blind-index keys have versions: each person_key row names the version of the key that
computed it (every row before this one: b1), so a rotation can reindex and retire (ADR 0026).

Revision ID: scheduler_0015
Revises: scheduler_0014
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "scheduler_0015"
down_revision: str | None = "scheduler_0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("person_key") as batch:
        batch.add_column(sa.Column("version", sa.String(32), nullable=False, server_default="b1"))
    op.create_index("ix_person_key_version_person", "person_key", ["version", "person_id"])


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
