"""SMS opt-outs survive a blind-index key rotation (ADR 0026): each sms_opt_out row names the
version of the key that computed its index (every row before this one: b1), the rows of one
number's opt-out share a group (`number_key`: before this one, each row is its own), and the
number is kept sealed beside its index (`phone_sealed`, context ``outreach.sms_phone``) so that
`portline keys reindex` can compute it under a new version.

Revision ID: outreach_0013
Revises: outreach_0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "outreach_0013"
down_revision: str | None = "outreach_0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sms_opt_out") as batch:
        batch.add_column(sa.Column("version", sa.String(32), nullable=False, server_default="b1"))
        batch.add_column(sa.Column("number_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("phone_sealed", sa.Text(), nullable=True))
    op.execute("UPDATE sms_opt_out SET number_key = phone_key")
    with op.batch_alter_table("sms_opt_out") as batch:
        batch.alter_column("number_key", existing_type=sa.String(64), nullable=False)
    op.create_index("ix_sms_opt_out_number_key", "sms_opt_out", ["number_key"])
    op.create_index("ix_sms_opt_out_version", "sms_opt_out", ["version", "number_key"])


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
