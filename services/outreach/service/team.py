"""The team roster and the audit log.

Deactivating a member (`active: false`) refuses their tokens at once, in every service
(services.outreach.roster); reactivating lets them back in.

The audit log is append-only: nothing here edits or deletes it, and the database refuses
UPDATE, DELETE and TRUNCATE on it (triggers installed by migration outreach_0002).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import Field

from services.outreach.access import PURPOSE, Access, etag, not_found, require_match
from services.outreach.models import AUDIT, TEAM_MEMBER
from services.outreach.roster import access_changed
from services.outreach.schemas import (
    AuditEntry,
    AuditQuery,
    Page,
    PageQuery,
    TeamMemberBody,
    TeamMemberView,
)
from shared.edge import Cursor, keyset_page
from shared.http import ApiError
from shared.uow import UnitOfWork

__all__ = ["list_members", "put_member", "read_audit"]

MEMBER_CURSOR: Cursor[tuple[str, str]] = Cursor(
    tuple[Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=128)]]
)
"""The roster's sort key of a page's last member: display name, id."""
AUDIT_CURSOR: Cursor[tuple[int]] = Cursor(tuple[Annotated[int, Field(gt=-(2**63), le=-1)]])
"""The audit log's position of a page's last entry, negated (newest first)."""


def _member_view(row: object) -> TeamMemberView:
    return TeamMemberView.model_validate(row, from_attributes=True)


async def list_members(
    *, uow: UnitOfWork, access: Access, query: PageQuery
) -> Page[TeamMemberView]:
    """The program's team, by display name."""
    rows, cursor = await keyset_page(
        uow.session,
        sa.select(TEAM_MEMBER).where(TEAM_MEMBER.c.program_id == access.program),
        keys=[TEAM_MEMBER.c.display_name, TEAM_MEMBER.c.id],
        key_of=lambda m: (m.display_name, m.id),
        cursor=MEMBER_CURSOR,
        page=query,
    )
    return Page[TeamMemberView](items=[_member_view(r) for r in rows], next_cursor=cursor)


async def put_member(
    *,
    uow: UnitOfWork,
    access: Access,
    member_id: str,
    body: TeamMemberBody,
    if_match: str | None,
    enforce: Callable[[bool], None],
) -> TeamMemberView:
    """Add a member (no If-Match), or change one (If-Match with its ETag).

    A change of the member's access publishes it with the change (one commit), and once
    committed is put in force in this process by `enforce(active)`."""
    s = uow.session
    mine = (TEAM_MEMBER.c.id == member_id, TEAM_MEMBER.c.program_id == access.program)
    row = (await s.execute(sa.select(TEAM_MEMBER).where(*mine))).first()
    now = access.runtime.clock.now()
    values = body.model_dump()
    if row is None and if_match is not None:
        raise not_found("team member")  # If-Match edits an existing member only
    if row is None:
        await s.execute(
            TEAM_MEMBER.insert().values(
                id=member_id, program_id=access.program, version=1, updated_at=now, **values
            )
        )
    else:
        if if_match is None:
            raise ApiError(
                412,
                "already_exists",
                "This member exists; send If-Match with its ETag to change it.",
                headers={"ETag": etag(row.version)},
            )
        require_match(if_match, row.version)
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
        enforce(fresh.active)
    return _member_view(fresh)


def _audit_entry(access: Access, row: Any) -> AuditEntry:
    """An entry's purpose is what the caller stated, else the operation's own."""
    entry = AuditEntry.model_validate(row, from_attributes=True)
    stated = access.open(row.purpose_sealed, PURPOSE)
    return entry if stated is None else entry.model_copy(update={"purpose": stated})


async def read_audit(*, uow: UnitOfWork, access: Access, query: AuditQuery) -> Page[AuditEntry]:
    """Who read or changed whose record, newest first."""
    q = sa.select(AUDIT).where(AUDIT.c.program_id == access.program)
    if query.actor_id:
        q = q.where(AUDIT.c.actor_id == query.actor_id)
    if query.case_id:
        q = q.where(AUDIT.c.case_id == query.case_id)
    if query.resource:
        q = q.where(AUDIT.c.resource == query.resource)
    if query.since:
        q = q.where(AUDIT.c.at >= query.since)
    if query.until:
        q = q.where(AUDIT.c.at < query.until)
    rows, cursor = await keyset_page(
        uow.session,
        q,
        keys=[-AUDIT.c.id],
        key_of=lambda entry: (-entry.id,),
        cursor=AUDIT_CURSOR,
        page=query,
    )
    return Page[AuditEntry](items=[_audit_entry(access, r) for r in rows], next_cursor=cursor)
