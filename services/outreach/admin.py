"""The team roster and the audit log.

Deactivating a member (`active: false`) refuses their tokens at once, in every service
(services.outreach.roster); reactivating lets them back in.

The audit log is append-only: no route edits or deletes it, and the database refuses UPDATE,
DELETE and TRUNCATE on it (triggers installed by migration outreach_0002).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import AwareDatetime

from services.outreach.access import (
    PURPOSE,
    Access,
    etag,
    not_found,
    require_match,
    set_etag,
)
from services.outreach.api import ERRORS
from services.outreach.models import AUDIT, TEAM_MEMBER
from services.outreach.roster import access_changed, enforce_now
from services.outreach.schemas import AuditEntry, Page, TeamMemberBody, TeamMemberView
from shared.auth import Principal, require
from shared.http import ApiError

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["team and audit"])

Staff = Annotated[Principal, Depends(require("peer", "team_lead", "admin"))]
Manager = Annotated[Principal, Depends(require("team_lead", "admin"))]
Admin = Annotated[Principal, Depends(require("admin"))]


def _member_view(row: object) -> TeamMemberView:
    return TeamMemberView.model_validate(row, from_attributes=True)


@router.get("/team/members", summary="My program's team", responses=ERRORS)
async def list_members(principal: Staff, request: Request) -> list[TeamMemberView]:
    access = Access.of(request, principal, "see the team")
    async with access.runtime.sessions() as s:
        rows = await s.execute(
            sa.select(TEAM_MEMBER)
            .where(TEAM_MEMBER.c.program_id == access.program)
            .order_by(TEAM_MEMBER.c.display_name)
        )
        return [_member_view(r) for r in rows]


@router.put(
    "/team/members/{member_id}",
    summary="Add a team member or change one (id = the member's token subject)",
    description="Send If-Match with the ETag to change an existing member; without it the "
    "request only creates (412 if the member exists). `active: false` deactivates the "
    "member: every PORTline service refuses their tokens from then on (403 "
    "`member_deactivated`), in this process at once and everywhere within seconds; "
    "`active: true` lets them back in.",
    responses=ERRORS,
)
async def put_member(
    member_id: Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[\w.@|:+-]+$")],
    body: TeamMemberBody,
    principal: Manager,
    request: Request,
    response: Response,
) -> TeamMemberView:
    access = Access.of(request, principal, "manage the team")
    async with access.runtime.uow() as uow:
        s = uow.session
        mine = (TEAM_MEMBER.c.id == member_id, TEAM_MEMBER.c.program_id == access.program)
        row = (await s.execute(sa.select(TEAM_MEMBER).where(*mine))).first()
        now = access.runtime.clock.now()
        values = body.model_dump()
        if row is None and request.headers.get("if-match") is not None:
            raise not_found("team member")  # If-Match edits an existing member only
        if row is None:
            await s.execute(
                TEAM_MEMBER.insert().values(
                    id=member_id, program_id=access.program, version=1, updated_at=now, **values
                )
            )
        else:
            if request.headers.get("if-match") is None:
                raise ApiError(
                    412,
                    "already_exists",
                    "This member exists; send If-Match with its ETag to change it.",
                    headers={"ETag": etag(row.version)},
                )
            require_match(request, row.version)
            await s.execute(
                TEAM_MEMBER.update()
                .where(*mine)
                .values(**values, version=row.version + 1, updated_at=now)
            )
        fresh = (await s.execute(sa.select(TEAM_MEMBER).where(*mine))).one()
        changed = access_changed(
            uow,
            program=access.program,
            member_id=member_id,
            was_active=None if row is None else row.active,
            active=fresh.active,
        )
        await uow.commit()
    if changed:
        enforce_now(request, program=access.program, member_id=member_id, active=fresh.active)
    set_etag(response, fresh.version)
    return _member_view(fresh)


def _audit_entry(access: Access, row: Any) -> AuditEntry:
    """An entry's purpose is what the caller stated, else the operation's own."""
    entry = AuditEntry.model_validate(row, from_attributes=True)
    stated = access.open(row.purpose_sealed, PURPOSE)
    return entry if stated is None else entry.model_copy(update={"purpose": stated})


@router.get(
    "/audit",
    summary="Who read or changed whose record, when and why (admins; newest first)",
    description="Append-only: nobody can edit or delete an entry.",
    responses=ERRORS,
)
async def read_audit(
    principal: Admin,
    request: Request,
    actor_id: str | None = None,
    case_id: uuid.UUID | None = None,
    resource: str | None = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Page[AuditEntry]:
    access = Access.of(request, principal, "review the audit log")
    query = sa.select(AUDIT).where(AUDIT.c.program_id == access.program)
    if actor_id:
        query = query.where(AUDIT.c.actor_id == actor_id)
    if case_id:
        query = query.where(AUDIT.c.case_id == case_id)
    if resource:
        query = query.where(AUDIT.c.resource == resource)
    if since:
        query = query.where(AUDIT.c.at >= since)
    if until:
        query = query.where(AUDIT.c.at < until)
    if cursor:
        if not cursor.isdigit():
            raise ApiError(400, "invalid_cursor", "The cursor is not one this API gave out.")
        query = query.where(AUDIT.c.id < int(cursor))
    query = query.order_by(AUDIT.c.id.desc()).limit(limit + 1)
    async with access.runtime.sessions() as s:
        rows = list(await s.execute(query))
    page = rows[:limit]
    return Page[AuditEntry](
        items=[_audit_entry(access, r) for r in page],
        next_cursor=str(page[-1].id) if len(rows) > limit else None,
    )
