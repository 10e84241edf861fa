"""In-person visits, and the deputy's restricted view of them (service.visits says who sees
what)."""

from __future__ import annotations

import uuid

from fastapi import Response

from services.outreach.access import tagged
from services.outreach.deps import (
    DEPUTIES,
    WORKERS,
    CurrentAccess,
    CurrentVisit,
    Edit,
    Operations,
    Uow,
)
from services.outreach.schemas import (
    DeputyStatusBody,
    DeputyVisit,
    Page,
    Paging,
    VisitBody,
    VisitFilter,
    VisitOutcomeBody,
    VisitUpdate,
    VisitView,
)
from services.outreach.service import visits

__all__ = ["api", "deputy_api"]

api = Operations("/v1/visits", "visits")
deputy_api = Operations("/v1/deputy", "deputy")

_EDITS = (404, 409, 412, 422, 428)


@api.post("", WORKERS, "schedule a visit", 404, 409, created=True)
async def schedule_visit(
    body: VisitBody, access: CurrentAccess, uow: Uow, response: Response
) -> VisitView:
    """Schedule an in-person visit for an open in-person task

    The peer leads (default: you). A deputy goes only where the program's policy says so:
    always, or on request (deputy: true); where the policy never sends one, asking for one is
    refused. The window is at most 8 hours, from a day ago to 60 days ahead, and may not
    overlap another scheduled visit of the person, the peer or the deputy (409
    `visit_overlaps`). The meeting place is stored sealed.
    """
    return tagged(response, await visits.schedule(uow=uow, access=access, body=body))


@api.get("", WORKERS, "plan visits")
async def list_visits(query: VisitFilter, access: CurrentAccess, uow: Uow) -> Page[VisitView]:
    """Visits in my program, soonest first

    Scheduled ones by default (`status`), or only those I lead (`mine`); a page at a time by
    window start. Reading them is audited per visit shown.
    """
    return await visits.list_visits(uow=uow, access=access, query=query)


@api.get("/{visit_id}", WORKERS, "plan a visit", 404)
async def get_visit(
    visit: CurrentVisit, access: CurrentAccess, uow: Uow, response: Response
) -> VisitView:
    """One visit, with its ETag"""
    return tagged(response, await visits.read_visit(uow=uow, access=access, visit=visit))


@api.patch("/{visit_id}", WORKERS, "plan a visit", *_EDITS)
async def update_visit(
    body: VisitUpdate, visit: CurrentVisit, access: CurrentAccess, uow: Uow, edit: Edit
) -> VisitView:
    """Move a visit, change its place, its peer or its deputy (send If-Match)"""
    condition = edit.if_match
    return edit.tag(
        await visits.update(uow=uow, access=access, visit=visit, body=body, if_match=condition)
    )


@api.post("/{visit_id}/outcome", WORKERS, "record a visit", *_EDITS)
async def record_visit_outcome(
    body: VisitOutcomeBody, visit: CurrentVisit, access: CurrentAccess, uow: Uow, edit: Edit
) -> VisitView:
    """Record how the visit went (send If-Match)

    'reached' is a contact (the task completes, follow-ups are planned); 'not_found' is a
    failed in-person attempt; 'unsafe' is recorded (a lead decides what next); 'declined'
    ends outreach.
    """
    outcome = await visits.record_outcome(
        uow=uow, access=access, visit=visit, body=body, if_match=edit.if_match
    )
    return edit.tag(outcome)


@api.post("/{visit_id}/cancel", WORKERS, "plan a visit", *_EDITS)
async def cancel_visit(
    visit: CurrentVisit, access: CurrentAccess, uow: Uow, edit: Edit
) -> VisitView:
    """Cancel a scheduled visit (send If-Match)"""
    return edit.tag(
        await visits.cancel(uow=uow, access=access, visit=visit, if_match=edit.if_match)
    )


@deputy_api.get("/visits", DEPUTIES, "accompany a visit")
async def deputy_list(query: Paging, access: CurrentAccess, uow: Uow) -> Page[DeputyVisit]:
    """My upcoming visits: time window, meeting place and the peer's contact only

    Only the still scheduled visits you accompany, soonest first, a page at a time. Nothing
    about the person: no name, history, notes or anything clinical.
    """
    return await visits.deputy_list(uow=uow, access=access, query=query)


@deputy_api.get("/visits/{visit_id}", DEPUTIES, "accompany a visit", 404)
async def deputy_get(visit_id: uuid.UUID, access: CurrentAccess, uow: Uow) -> DeputyVisit:
    """One of my visits"""
    return await visits.deputy_read(uow=uow, access=access, visit_id=visit_id)


@deputy_api.post("/visits/{visit_id}/status", DEPUTIES, "accompany a visit", 404, 409)
async def deputy_status(
    visit_id: uuid.UUID, body: DeputyStatusBody, access: CurrentAccess, uow: Uow
) -> DeputyVisit:
    """Mark arrived, departed, or a safety concern"""
    return await visits.deputy_mark(uow=uow, access=access, visit_id=visit_id, body=body)
