"""The team roster: who is on the team, and their work phones."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Request

from services.outreach.deps import MANAGERS, STAFF, CurrentAccess, Edit, Operations, Uow
from services.outreach.roster import enforce_now
from services.outreach.schemas import MemberId, Page, Paging, TeamMemberBody, TeamMemberView
from services.outreach.service import team

__all__ = ["api"]

api = Operations("/v1", "team")


@api.get("/team/members", STAFF, "see the team")
async def list_members(query: Paging, access: CurrentAccess, uow: Uow) -> Page[TeamMemberView]:
    """My program's team, by name

    Every member, active or not, by display name. A page like every list (`{items,
    next_cursor}`); until this release the roster was a bare array.
    """
    return await team.list_members(uow=uow, access=access, query=query)


@api.put("/team/members/{member_id}", MANAGERS, "manage the team", 404, 412, 428)
async def put_member(
    member_id: Annotated[MemberId, Path()],
    body: TeamMemberBody,
    access: CurrentAccess,
    uow: Uow,
    edit: Edit,
    request: Request,
) -> TeamMemberView:
    """Add a team member or change one (id = the member's token subject)

    Send If-Match with the ETag to change an existing member; without it the request only
    creates (412 `already_exists` if the member exists). `active: false` deactivates the
    member: every PORTline service refuses their tokens from then on (403
    `member_deactivated`), in this process at once and everywhere within seconds; `active:
    true` lets them back in.
    """

    def enforce(active: bool) -> None:
        enforce_now(request, program=access.program, member_id=member_id, active=active)

    view = await team.put_member(
        uow=uow,
        access=access,
        member_id=member_id,
        body=body,
        if_match=edit.if_match,
        enforce=enforce,
    )
    return edit.tag(view)
