"""Outbox, inbox and dead-letter tables.

Revision ID: scheduler_0001
Revises:
"""

from collections.abc import Sequence

from shared.migrations import create_plumbing_tables_v1

revision: str = "scheduler_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_plumbing_tables_v1()


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
