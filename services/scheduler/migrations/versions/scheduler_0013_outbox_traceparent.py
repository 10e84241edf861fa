"""The outbox row keeps the trace context of the span that published it (shared.tracing).

Revision ID: scheduler_0013
Revises: scheduler_0008
"""

from collections.abc import Sequence

from shared.migrations import add_outbox_traceparent_v1

revision: str = "scheduler_0013"
down_revision: str | None = "scheduler_0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    add_outbox_traceparent_v1()


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
