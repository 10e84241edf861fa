"""The outbox row keeps the trace context of the span that published it (shared.tracing).

Revision ID: outreach_0011
Revises: outreach_0006
"""

from collections.abc import Sequence

from shared.migrations import add_outbox_traceparent_v1

revision: str = "outreach_0011"
down_revision: str | None = "outreach_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    add_outbox_traceparent_v1()


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
