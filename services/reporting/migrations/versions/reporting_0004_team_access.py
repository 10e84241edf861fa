"""The team members outreach deactivated (port.outreach.team.v1), refused at once by
reporting's API too (shared.team_access).

Revision ID: reporting_0004
Revises: reporting_0003
"""

from collections.abc import Sequence

from alembic import op

from shared.migrations import create_team_access_v1

revision: str = "reporting_0004"
down_revision: str | None = "reporting_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_team_access_v1()


def downgrade() -> None:
    op.drop_table("team_access")
