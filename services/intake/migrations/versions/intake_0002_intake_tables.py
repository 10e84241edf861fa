"""Programs, partners, API keys, inbound messages, reports, idempotency records.

Revision ID: intake_0002
Revises: intake_0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision: str = "intake_0002"
down_revision: str | None = "intake_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "program",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("definition", sa.String(16), nullable=False),
    )
    op.create_table(
        "partner",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("program_id", sa.String(64), sa.ForeignKey("program.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("disabled_at", UTCDateTime(), nullable=True),
    )
    op.create_table(
        "partner_facility",
        sa.Column("facility", sa.String(200), primary_key=True),
        sa.Column("partner_id", sa.String(64), sa.ForeignKey("partner.id"), nullable=False),
    )
    op.create_table(
        "api_key",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("partner_id", sa.String(64), sa.ForeignKey("partner.id"), nullable=False),
        sa.Column("secret_hash", sa.String(128), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
    )
    op.create_table(
        "inbound_message",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("partner_id", sa.String(64), nullable=True),
        sa.Column("dedupe_key", sa.String(64), nullable=True, unique=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason_code", sa.String(64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("ack", sa.Text(), nullable=True),
        sa.Column("report_id", sa.Uuid(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=True),
        sa.Column("raw_sealed", sa.Text(), nullable=True),
        sa.Column("replayed_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_inbound_status", "inbound_message", ["status", "received_at"])
    op.create_table(
        "report",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("source_key", sa.String(64), nullable=False, unique=True),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("source_kind", sa.String(8), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("opioid", sa.Boolean(), nullable=False),
        sa.Column("any_drug", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "idempotency_record",
        sa.Column("partner_id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
