"""The team roster's say in who may use the team APIs.

Outreach owns the roster: a member marked inactive there is refused by every service that
takes team tokens, at once (see shared.team_access). This module reads the inactive members
for outreach's own processes, and stages the events that tell the other services.
"""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from services.outreach.models import TEAM_MEMBER
from shared.auth import TeamIdentity
from shared.events.team import TeamMemberDeactivated, TeamMemberReactivated, member_key
from shared.uow import UnitOfWork

__all__ = ["access_changed", "deactivated_members", "enforce_now"]


async def deactivated_members(session: AsyncSession) -> set[tuple[str, str]]:
    """Every (program, member) the roster marks inactive."""
    rows = await session.execute(
        sa.select(TEAM_MEMBER.c.program_id, TEAM_MEMBER.c.id).where(TEAM_MEMBER.c.active.is_(False))
    )
    return {(program, member) for program, member in rows}


def access_changed(
    uow: UnitOfWork, *, program: str, member_id: str, was_active: bool | None, active: bool
) -> bool:
    """Stage the event for a change of a member's access, if it changed (a member added
    inactive counts: their tokens may exist already). Returns whether it changed."""
    if (was_active is None and active) or was_active == active:
        return False
    event = (TeamMemberReactivated if active else TeamMemberDeactivated)(
        program_id=program, member_id=member_id, occurred_at=uow.clock.now()
    )
    uow.publish(event, subject=member_key(program, member_id))
    return True


def enforce_now(request: Request, *, program: str, member_id: str, active: bool) -> None:
    """A committed change, in force in this process before it answers (the others reread the
    roster within `team_access_refresh_seconds`)."""
    identity: TeamIdentity = request.app.state.team_identity
    identity.access.apply(program, member_id, active=active)
