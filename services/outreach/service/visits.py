"""In-person visits, and the deputy's part in them.

A peer leads every visit. Where the program's policy sends a deputy (always, or on the
peer's request), the deputy stays in the vehicle and sees only the visit's time window, the
meeting place and the peer's work contact (schemas.DeputyVisit, built from the visit row and
the team roster only).

Windows are bounded: positive, at most 8 hours, from a day ago to 60 days ahead, and a
scheduled visit never overlaps another scheduled visit of the same person, the same peer or
the same deputy (409 `visit_overlaps`, naming the other visit).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.outreach.access import (
    Access,
    apply_rule,
    case_state,
    require_match,
    rowcount,
    task_state,
)
from services.outreach.models import TASK, VISIT, VISIT_EVENT
from services.outreach.rules import (
    PlannedVisit,
    check_case_workable,
    check_task_workable,
    check_visit_timing,
    check_visit_window,
    deputy_for_visit,
    overlapping_visit,
)
from services.outreach.schemas import (
    DeputyStatusBody,
    DeputyVisit,
    Page,
    PageQuery,
    VisitBody,
    VisitOutcomeBody,
    VisitQuery,
    VisitUpdate,
    VisitView,
)
from services.outreach.service.tasks import record_attempt
from services.outreach.views import NOTE, PLACE, deputy_visits, visit_view
from shared.edge import Cursor, Instant, keyset_page
from shared.events import VisitCompleted, VisitScheduled
from shared.http import ApiError
from shared.ids import new_uuid
from shared.uow import UnitOfWork

__all__ = [
    "cancel",
    "cancel_scheduled_visits",
    "deputy_list",
    "deputy_mark",
    "deputy_read",
    "list_visits",
    "read_visit",
    "record_outcome",
    "schedule",
    "update",
]

VISIT_CURSOR: Cursor[tuple[datetime, uuid.UUID]] = Cursor(tuple[Instant, uuid.UUID])
"""The visit lists' sort key of a page's last visit: window_start, id."""


def _planned(row: Any, **changes: Any) -> PlannedVisit:
    values = {
        "id": row.id,
        "case_id": row.case_id,
        "peer_id": row.peer_id,
        "deputy_id": row.deputy_id,
        "start": row.window_start,
        "end": row.window_end,
    }
    return PlannedVisit(**(values | changes))


async def _check_free(access: Access, session: AsyncSession, visit: PlannedVisit) -> None:
    """Nobody is in two places at once: no overlap with a scheduled visit of the same person,
    peer or deputy."""
    people = [p for p in (visit.peer_id, visit.deputy_id) if p is not None]
    rows = await session.execute(
        sa.select(VISIT).where(
            VISIT.c.program_id == access.program,
            VISIT.c.status == "scheduled",
            VISIT.c.window_start < visit.end,
            VISIT.c.window_end > visit.start,
            sa.or_(
                VISIT.c.case_id == visit.case_id,
                VISIT.c.peer_id.in_(people),
                VISIT.c.deputy_id.in_(people),
            ),
        )
    )
    other = overlapping_visit(visit, [_planned(r) for r in rows])
    if other is not None:
        raise ApiError(
            409,
            "visit_overlaps",
            "The window overlaps another scheduled visit of the same person, peer or deputy.",
            details=[{"visit_id": str(other)}],
        )


def _check_window(access: Access, start: datetime, end: datetime) -> None:
    apply_rule(check_visit_window, start, end)
    apply_rule(check_visit_timing, start, end, now=access.runtime.clock.now())


def _scheduled_event(access: Access, visit: Any) -> VisitScheduled:
    return VisitScheduled(
        case_id=visit.case_id,
        program_id=access.program,
        occurred_at=access.runtime.clock.now(),
        visit_id=visit.id,
        task_id=visit.task_id,
        window_start=visit.window_start,
        window_end=visit.window_end,
        with_deputy=visit.with_deputy,
    )


async def _reread(session: AsyncSession, visit_id: uuid.UUID) -> Any:
    return (await session.execute(sa.select(VISIT).where(VISIT.c.id == visit_id))).one()


async def schedule(*, uow: UnitOfWork, access: Access, body: VisitBody) -> VisitView:
    """A visit for an open in-person task; the deputy as the program's policy says."""
    _check_window(access, body.window_start, body.window_end)
    s = uow.session
    peer_id = body.peer_id or access.actor
    task = await access.task(s, body.task_id)
    if task.kind != "in_person_visit":
        raise ApiError(422, "not_a_visit_task", "Visits are scheduled for in-person tasks.")
    apply_rule(check_task_workable, task_state(task))
    case = await access.case(s, task.case_id)
    apply_rule(check_case_workable, case_state(case))
    with_deputy = apply_rule(deputy_for_visit, task.deputy, body.deputy)
    if body.deputy_id and not with_deputy:
        raise ApiError(422, "deputy_not_requested", "Ask for a deputy (deputy: true) first.")
    await access.member(s, peer_id)
    if body.deputy_id:
        await access.member(s, body.deputy_id)
    visit_id = new_uuid()
    await _check_free(
        access,
        s,
        PlannedVisit(
            id=visit_id,
            case_id=task.case_id,
            peer_id=peer_id,
            deputy_id=body.deputy_id,
            start=body.window_start,
            end=body.window_end,
        ),
    )
    now = access.runtime.clock.now()
    await s.execute(
        VISIT.insert().values(
            id=visit_id,
            program_id=access.program,
            case_id=task.case_id,
            task_id=task.id,
            window_start=body.window_start,
            window_end=body.window_end,
            meeting_place_sealed=access.seal(body.meeting_place, PLACE),
            peer_id=peer_id,
            deputy_id=body.deputy_id,
            with_deputy=with_deputy,
            status="scheduled",
            safety_concern=False,
            version=1,
            created_by=access.actor,
            created_at=now,
            updated_at=now,
        )
    )
    visit = await _reread(s, visit_id)
    uow.publish(_scheduled_event(access, visit), subject=str(visit.case_id))
    await access.audit(s, "create", "visit", [(visit_id, task.case_id)])
    await uow.commit()
    return visit_view(access, visit)


async def list_visits(*, uow: UnitOfWork, access: Access, query: VisitQuery) -> Page[VisitView]:
    """The program's visits, soonest first; reading them is audited."""
    q = sa.select(VISIT).where(VISIT.c.program_id == access.program, VISIT.c.status == query.status)
    if query.mine:
        q = q.where(VISIT.c.peer_id == access.actor)
    rows, cursor = await _page(uow.session, q, query)
    await access.audit(uow.session, "read", "visit", [(v.id, v.case_id) for v in rows])
    await uow.commit()
    return Page[VisitView](items=[visit_view(access, v) for v in rows], next_cursor=cursor)


async def _page(
    session: AsyncSession, query: sa.Select[Any], page: PageQuery
) -> tuple[list[Any], str | None]:
    """One page of visits by window_start, then id."""
    return await keyset_page(
        session,
        query,
        keys=[VISIT.c.window_start, VISIT.c.id],
        key_of=lambda v: (v.window_start, v.id),
        cursor=VISIT_CURSOR,
        page=page,
    )


async def read_visit(*, uow: UnitOfWork, access: Access, visit: Any) -> VisitView:
    await access.audit(uow.session, "read", "visit", [(visit.id, visit.case_id)])
    await uow.commit()
    return visit_view(access, visit)


def _still_scheduled(visit: Any, if_match: str | None) -> None:
    """A visit someone is about to change: If-Match current, and still scheduled."""
    require_match(if_match, visit.version)
    if visit.status != "scheduled":
        raise ApiError(409, "visit_closed", f"The visit is {visit.status}.")


async def _save(uow: UnitOfWork, access: Access, visit: Any, values: dict[str, Any]) -> Any:
    """The visit's change, version-checked and audited; its fresh row."""
    updated = await uow.session.execute(
        VISIT.update()
        .where(VISIT.c.id == visit.id, VISIT.c.version == visit.version)
        .values(**values, version=visit.version + 1, updated_at=access.runtime.clock.now())
    )
    if rowcount(updated) != 1:
        raise ApiError(409, "version_mismatch", "The visit changed meanwhile.")
    await access.audit(uow.session, "update", "visit", [(visit.id, visit.case_id)])
    return await _reread(uow.session, visit.id)


async def update(
    *, uow: UnitOfWork, access: Access, visit: Any, body: VisitUpdate, if_match: str | None
) -> VisitView:
    """Move a visit, change its place, its peer or its deputy."""
    s = uow.session
    _still_scheduled(visit, if_match)
    start = body.window_start or visit.window_start
    end = body.window_end or visit.window_end
    _check_window(access, start, end)
    values: dict[str, Any] = {"window_start": start, "window_end": end}
    if body.meeting_place is not None:
        values["meeting_place_sealed"] = access.seal(body.meeting_place, PLACE)
    if body.peer_id is not None:
        await access.member(s, body.peer_id)
        values["peer_id"] = body.peer_id
    if body.deputy_id is not None:
        if not visit.with_deputy:
            raise ApiError(422, "deputy_not_requested", "This visit goes without a deputy.")
        await access.member(s, body.deputy_id)
        values["deputy_id"] = body.deputy_id
    changes = {
        "start": start,
        "end": end,
        "peer_id": values.get("peer_id", visit.peer_id),
        "deputy_id": values.get("deputy_id", visit.deputy_id),
    }
    await _check_free(access, s, _planned(visit, **changes))
    fresh = await _save(uow, access, visit, values)
    if body.window_start or body.window_end:
        uow.publish(_scheduled_event(access, fresh), subject=str(fresh.case_id))
    await uow.commit()
    return visit_view(access, fresh)


async def record_outcome(
    *,
    uow: UnitOfWork,
    access: Access,
    visit: Any,
    body: VisitOutcomeBody,
    if_match: str | None,
) -> VisitView:
    """How the visit went; on its open task it is an in-person attempt."""
    _still_scheduled(visit, if_match)
    now = access.runtime.clock.now()
    fresh = await _save(
        uow,
        access,
        visit,
        {
            "status": "completed",
            "outcome": body.outcome,
            "notes_sealed": access.seal(body.notes, NOTE),
        },
    )
    task = (await uow.session.execute(sa.select(TASK).where(TASK.c.id == visit.task_id))).one()
    if task.status == "open":
        await record_attempt(access, uow, task, "in_person", body.outcome, now, None)
    uow.publish(
        VisitCompleted(
            case_id=visit.case_id,
            program_id=access.program,
            occurred_at=now,
            visit_id=visit.id,
            reached=body.outcome == "reached",
        ),
        subject=str(visit.case_id),
    )
    await uow.commit()
    return visit_view(access, fresh)


async def cancel(*, uow: UnitOfWork, access: Access, visit: Any, if_match: str | None) -> VisitView:
    _still_scheduled(visit, if_match)
    fresh = await _save(uow, access, visit, {"status": "cancelled"})
    await uow.commit()
    return visit_view(access, fresh)


async def cancel_scheduled_visits(session: AsyncSession, case_id: Any, now: datetime) -> None:
    """A case that closes, or a person who declines or asks not to be contacted, keeps no
    visit on the calendar."""
    await session.execute(
        VISIT.update()
        .where(VISIT.c.case_id == case_id, VISIT.c.status == "scheduled")
        .values(status="cancelled", updated_at=now, version=VISIT.c.version + 1)
    )


# -- the deputy's part ---------------------------------------------------------------------


async def _deputy_visit(access: Access, session: AsyncSession, visit_id: uuid.UUID) -> Any:
    row = (
        await session.execute(
            sa.select(VISIT).where(
                VISIT.c.id == visit_id,
                VISIT.c.program_id == access.program,
                VISIT.c.deputy_id == access.actor,
            )
        )
    ).first()
    if row is None:
        raise ApiError(404, "not_found", "No such visit assigned to you.")
    return row


async def deputy_list(*, uow: UnitOfWork, access: Access, query: PageQuery) -> Page[DeputyVisit]:
    """The deputy's upcoming visits: when, where, whom to call."""
    q = sa.select(VISIT).where(
        VISIT.c.program_id == access.program,
        VISIT.c.deputy_id == access.actor,
        VISIT.c.status == "scheduled",
    )
    rows, cursor = await _page(uow.session, q, query)
    items = await deputy_visits(access, uow.session, rows)
    await access.audit(uow.session, "read", "deputy_visit", [(v.id, v.case_id) for v in rows])
    await uow.commit()
    return Page[DeputyVisit](items=items, next_cursor=cursor)


async def deputy_read(*, uow: UnitOfWork, access: Access, visit_id: uuid.UUID) -> DeputyVisit:
    row = await _deputy_visit(access, uow.session, visit_id)
    (item,) = await deputy_visits(access, uow.session, [row])
    await access.audit(uow.session, "read", "deputy_visit", [(row.id, row.case_id)])
    await uow.commit()
    return item


async def deputy_mark(
    *, uow: UnitOfWork, access: Access, visit_id: uuid.UUID, body: DeputyStatusBody
) -> DeputyVisit:
    """Arrived, departed, or a safety concern (with what happened, sealed)."""
    s = uow.session
    row = await _deputy_visit(access, s, visit_id)
    if row.status != "scheduled":
        raise ApiError(409, "visit_closed", f"The visit is {row.status}.")
    now = access.runtime.clock.now()
    values: dict[str, Any] = {"updated_at": now, "version": VISIT.c.version + 1}
    if body.status == "safety_concern":
        values["safety_concern"] = True
    else:
        values["deputy_status"] = body.status
    await s.execute(VISIT.update().where(VISIT.c.id == visit_id).values(**values))
    await s.execute(
        VISIT_EVENT.insert().values(
            visit_id=visit_id,
            kind=body.status,
            note_sealed=access.seal(body.note, NOTE),
            actor_id=access.actor,
            at=now,
        )
    )
    await access.audit(s, "update", "deputy_visit", [(visit_id, row.case_id)])
    (item,) = await deputy_visits(access, s, [await _reread(s, visit_id)])
    await uow.commit()
    return item
