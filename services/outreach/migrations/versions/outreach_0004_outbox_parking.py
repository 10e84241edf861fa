"""Outbox parking: rows the relay can never publish are parked, not retried for ever.

Revision ID: outreach_0004
Revises: outreach_0003
"""

from collections.abc import Sequence

from shared.migrations import add_outbox_parking_v2

revision: str = "outreach_0004"
down_revision: str | None = "outreach_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    add_outbox_parking_v2()


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
