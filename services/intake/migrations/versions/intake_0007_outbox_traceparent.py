"""The outbox row keeps the trace context of the span that published it (shared.tracing).

Revision ID: intake_0007
Revises: intake_0005
"""

from collections.abc import Sequence

from shared.migrations import add_outbox_traceparent_v1

revision: str = "intake_0007"
down_revision: str | None = "intake_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    add_outbox_traceparent_v1()


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")
