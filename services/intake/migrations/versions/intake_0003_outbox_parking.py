"""Outbox parking: rows the relay can never publish are parked, not retried for ever.

Revision ID: intake_0003
Revises: intake_0002
"""

from collections.abc import Sequence

from shared.migrations import add_outbox_parking_v2

revision: str = "intake_0003"
down_revision: str | None = "intake_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    add_outbox_parking_v2()


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
