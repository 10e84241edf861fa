"""In-person visits, and the deputy's restricted view of them.

A peer leads every visit. Where the program's policy sends a deputy (always, or on the
peer's request), the deputy stays in the vehicle and sees only the visit's time window, the
meeting place and the peer's work contact; the deputy routes answer with their own models
(schemas.DeputyVisit), built from the visit row and the team roster only.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request, Response

from services.outreach.access import (
    Access,
    apply_rule,
    case_state,
    require_match,
    rowcount,
    set_etag,
    task_state,
)
from services.outreach.api import ERRORS, Worker, record_attempt
from services.outreach.models import TASK, VISIT, VISIT_EVENT
from services.outreach.rules import (
    check_case_workable,
    check_task_workable,
    check_visit_window,
    deputy_for_visit,
)
from services.outreach.schemas import (
    DeputyStatusBody,
    DeputyVisit,
    Page,
    VisitBody,
    VisitOutcomeBody,
    VisitUpdate,
    VisitView,
)
from services.outreach.views import NOTE, PLACE, deputy_visits, visit_view
from shared.auth import Principal, require
from shared.events import VisitCompleted, VisitScheduled
from shared.http import ApiError
from shared.ids import new_uuid
from shared.uow import UnitOfWork

__all__ = ["deputy_router", "router"]

router = APIRouter(prefix="/v1/visits", tags=["visits"])
deputy_router = APIRouter(prefix="/v1/deputy", tags=["deputy"])

Deputy = Annotated[Principal, Depends(require("deputy"))]


async def _scheduled_visit(
    access: Access, session: Any, request: Request, visit_id: uuid.UUID
) -> Any:
    """A visit someone is about to change: it must still be scheduled, and If-Match current."""
    visit = await access.visit(session, visit_id)
    require_match(request, visit.version)
    if visit.status != "scheduled":
        raise ApiError(409, "visit_closed", f"The visit is {visit.status}.")
    return visit


def _scheduled(uow: UnitOfWork, access: Access, visit: Any) -> None:
    uow.publish(
        VisitScheduled(
            case_id=visit.case_id,
            program_id=access.program,
            occurred_at=access.runtime.clock.now(),
            visit_id=visit.id,
            task_id=visit.task_id,
            window_start=visit.window_start,
            window_end=visit.window_end,
            with_deputy=visit.with_deputy,
        ),
        subject=str(visit.case_id),
    )


@router.post(
    "",
    status_code=201,
    summary="Schedule an in-person visit for an open in-person task",
    description="The peer leads (default: you). A deputy goes only where the program's policy "
    "says so: always, or on request (deputy: true); where the policy never sends one, asking "
    "for one is refused. The meeting place is stored sealed.",
    responses=ERRORS,
)
async def schedule_visit(
    body: VisitBody, principal: Worker, request: Request, response: Response
) -> VisitView:
    access = Access.of(request, principal, "schedule a visit")
    apply_rule(check_visit_window, body.window_start, body.window_end)
    peer_id = body.peer_id or access.actor
    async with access.runtime.uow() as uow:
        s = uow.session
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
        now = access.runtime.clock.now()
        visit_id = new_uuid()
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
        visit = (await s.execute(sa.select(VISIT).where(VISIT.c.id == visit_id))).one()
        _scheduled(uow, access, visit)
        await access.audit(s, "create", "visit", [(visit_id, task.case_id)])
        await uow.commit()
    set_etag(response, visit.version)
    return visit_view(access, visit)


@router.get("", summary="Visits in my program, soonest first", responses=ERRORS)
async def list_visits(
    principal: Worker,
    request: Request,
    status: Literal["scheduled", "completed", "cancelled"] = "scheduled",
    mine: Annotated[bool, Query(description="Only visits I lead.")] = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Page[VisitView]:
    access = Access.of(request, principal, "plan visits")
    if cursor is not None and not cursor.isdigit():
        raise ApiError(400, "invalid_cursor", "The cursor is not one this API gave out.")
    offset = int(cursor or 0)
    query = sa.select(VISIT).where(VISIT.c.program_id == access.program, VISIT.c.status == status)
    if mine:
        query = query.where(VISIT.c.peer_id == access.actor)
    query = query.order_by(VISIT.c.window_start, VISIT.c.id).offset(offset).limit(limit + 1)
    async with access.runtime.uow() as uow:
        rows = list(await uow.session.execute(query))
        page = rows[:limit]
        await access.audit(uow.session, "read", "visit", [(v.id, v.case_id) for v in page])
        await uow.commit()
    more = len(rows) > limit
    return Page[VisitView](
        items=[visit_view(access, v) for v in page],
        next_cursor=str(offset + limit) if more else None,
    )


@router.get("/{visit_id}", summary="One visit, with its ETag", responses=ERRORS)
async def get_visit(
    visit_id: uuid.UUID, principal: Worker, request: Request, response: Response
) -> VisitView:
    access = Access.of(request, principal, "plan a visit")
    async with access.runtime.uow() as uow:
        visit = await access.visit(uow.session, visit_id)
        await access.audit(uow.session, "read", "visit", [(visit.id, visit.case_id)])
        await uow.commit()
    set_etag(response, visit.version)
    return visit_view(access, visit)


@router.patch(
    "/{visit_id}",
    summary="Move a visit, change its place, its peer or its deputy (send If-Match)",
    responses=ERRORS,
)
async def update_visit(
    visit_id: uuid.UUID,
    body: VisitUpdate,
    principal: Worker,
    request: Request,
    response: Response,
) -> VisitView:
    access = Access.of(request, principal, "plan a visit")
    async with access.runtime.uow() as uow:
        s = uow.session
        visit = await _scheduled_visit(access, s, request, visit_id)
        start = body.window_start or visit.window_start
        end = body.window_end or visit.window_end
        apply_rule(check_visit_window, start, end)
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
        updated = await s.execute(
            VISIT.update()
            .where(VISIT.c.id == visit_id, VISIT.c.version == visit.version)
            .values(**values, version=visit.version + 1, updated_at=access.runtime.clock.now())
        )
        if rowcount(updated) != 1:
            raise ApiError(409, "version_mismatch", "The visit changed meanwhile.")
        fresh = (await s.execute(sa.select(VISIT).where(VISIT.c.id == visit_id))).one()
        if body.window_start or body.window_end:
            _scheduled(uow, access, fresh)
        await access.audit(s, "update", "visit", [(visit_id, visit.case_id)])
        await uow.commit()
    set_etag(response, fresh.version)
    return visit_view(access, fresh)


@router.post(
    "/{visit_id}/outcome",
    summary="Record how the visit went (send If-Match)",
    description="'reached' is a contact (the task completes, follow-ups are planned); "
    "'not_found' and 'unsafe' are failed in-person attempts; 'declined' ends outreach.",
    responses=ERRORS,
)
async def record_visit_outcome(
    visit_id: uuid.UUID,
    body: VisitOutcomeBody,
    principal: Worker,
    request: Request,
    response: Response,
) -> VisitView:
    access = Access.of(request, principal, "record a visit")
    async with access.runtime.uow() as uow:
        s = uow.session
        visit = await _scheduled_visit(access, s, request, visit_id)
        now = access.runtime.clock.now()
        await s.execute(
            VISIT.update()
            .where(VISIT.c.id == visit_id)
            .values(
                status="completed",
                outcome=body.outcome,
                notes_sealed=access.seal(body.notes, NOTE),
                version=visit.version + 1,
                updated_at=now,
            )
        )
        task = (await s.execute(sa.select(TASK).where(TASK.c.id == visit.task_id))).one()
        if task.status == "open":
            await record_attempt(access, uow, task, "in_person", body.outcome, now, None)
        uow.publish(
            VisitCompleted(
                case_id=visit.case_id,
                program_id=access.program,
                occurred_at=now,
                visit_id=visit_id,
                reached=body.outcome == "reached",
            ),
            subject=str(visit.case_id),
        )
        await access.audit(s, "update", "visit", [(visit_id, visit.case_id)])
        fresh = (await s.execute(sa.select(VISIT).where(VISIT.c.id == visit_id))).one()
        await uow.commit()
    set_etag(response, fresh.version)
    return visit_view(access, fresh)


@router.post(
    "/{visit_id}/cancel",
    summary="Cancel a scheduled visit (send If-Match)",
    responses=ERRORS,
)
async def cancel_visit(
    visit_id: uuid.UUID, principal: Worker, request: Request, response: Response
) -> VisitView:
    access = Access.of(request, principal, "plan a visit")
    async with access.runtime.uow() as uow:
        s = uow.session
        visit = await _scheduled_visit(access, s, request, visit_id)
        await s.execute(
            VISIT.update()
            .where(VISIT.c.id == visit_id)
            .values(
                status="cancelled",
                version=visit.version + 1,
                updated_at=access.runtime.clock.now(),
            )
        )
        await access.audit(s, "update", "visit", [(visit_id, visit.case_id)])
        fresh = (await s.execute(sa.select(VISIT).where(VISIT.c.id == visit_id))).one()
        await uow.commit()
    set_etag(response, fresh.version)
    return visit_view(access, fresh)


# -- the deputy's view ----------------------------------------------------------------------


async def _deputy_visit(access: Access, session: Any, visit_id: uuid.UUID) -> Any:
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


@deputy_router.get(
    "/visits",
    summary="My upcoming visits: time window, meeting place and the peer's contact only",
    responses=ERRORS,
)
async def deputy_list(principal: Deputy, request: Request) -> Page[DeputyVisit]:
    access = Access.of(request, principal, "accompany a visit")
    async with access.runtime.uow() as uow:
        rows = list(
            await uow.session.execute(
                sa.select(VISIT)
                .where(
                    VISIT.c.program_id == access.program,
                    VISIT.c.deputy_id == access.actor,
                    VISIT.c.status == "scheduled",
                )
                .order_by(VISIT.c.window_start, VISIT.c.id)
                .limit(200)
            )
        )
        items = await deputy_visits(access, uow.session, rows)
        await access.audit(uow.session, "read", "deputy_visit", [(v.id, v.case_id) for v in rows])
        await uow.commit()
    return Page[DeputyVisit](items=items, next_cursor=None)


@deputy_router.get("/visits/{visit_id}", summary="One of my visits", responses=ERRORS)
async def deputy_get(visit_id: uuid.UUID, principal: Deputy, request: Request) -> DeputyVisit:
    access = Access.of(request, principal, "accompany a visit")
    async with access.runtime.uow() as uow:
        row = await _deputy_visit(access, uow.session, visit_id)
        (item,) = await deputy_visits(access, uow.session, [row])
        await access.audit(uow.session, "read", "deputy_visit", [(row.id, row.case_id)])
        await uow.commit()
    return item


@deputy_router.post(
    "/visits/{visit_id}/status",
    summary="Mark arrived, departed, or a safety concern",
    responses=ERRORS,
)
async def deputy_status(
    visit_id: uuid.UUID, body: DeputyStatusBody, principal: Deputy, request: Request
) -> DeputyVisit:
    access = Access.of(request, principal, "accompany a visit")
    async with access.runtime.uow() as uow:
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
        fresh = (await s.execute(sa.select(VISIT).where(VISIT.c.id == visit_id))).one()
        (item,) = await deputy_visits(access, s, [fresh])
        await uow.commit()
    return item
