"""MLLP authentication: each hospital's source networks and client certificates, and what it
must show (certificate, network or both).

Revision ID: intake_0004
Revises: intake_0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision: str = "intake_0004"
down_revision: str | None = "intake_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("partner") as batch:
        batch.add_column(sa.Column("mllp_auth", sa.String(16), nullable=True))
    op.create_table(
        "partner_network",
        sa.Column("partner_id", sa.String(64), primary_key=True),
        sa.Column("network", sa.String(64), primary_key=True),
    )
    op.create_table(
        "partner_certificate",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("not_after", UTCDateTime(), nullable=True),
        sa.Column("added_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_partner_certificate_partner_id", "partner_certificate", ["partner_id"])


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
