"""Outbox parking: rows the relay can never publish are parked, not retried for ever.

Revision ID: scheduler_0005
Revises: scheduler_0004
"""

from collections.abc import Sequence

from shared.migrations import add_outbox_parking_v2

revision: str = "scheduler_0005"
down_revision: str | None = "scheduler_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    add_outbox_parking_v2()


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
