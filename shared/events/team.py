"""Events outreach publishes on port.outreach.team.v1 about its team roster, keyed by program
and member: whether a member may use the team APIs. The topic is compacted, so it always
holds each member's latest state.

They name a member by their token subject and nothing else: no name, no phone.
"""

from __future__ import annotations

from pydantic import AwareDatetime, Field

from shared.envelope import Event
from shared.topics import OUTREACH_TEAM

__all__ = ["TeamMemberDeactivated", "TeamMemberReactivated", "member_key"]


def member_key(program_id: str, member_id: str) -> str:
    """The events' subject and Kafka key: one member's events stay in order."""
    return f"{program_id}/{member_id}"


class _TeamEvent(Event):
    topic = OUTREACH_TEAM.name

    program_id: str = Field(max_length=64)
    member_id: str = Field(max_length=128, description="The member's token subject (`sub`).")
    occurred_at: AwareDatetime


class TeamMemberDeactivated(_TeamEvent):
    """A member may no longer use the team APIs: every service refuses their tokens."""

    event_type = "TeamMemberDeactivated"


class TeamMemberReactivated(_TeamEvent):
    """A deactivated member may use the team APIs again."""

    event_type = "TeamMemberReactivated"
