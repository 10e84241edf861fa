"""The team API: the queue, claims and handovers, attempts, contacts, services, referrals,
declines, do-not-contact and conclusion.

Every route declares its roles; every record is scoped to the caller's program; every read or
write of a person's record is audited in the same transaction; every edit of a shared record
needs If-Match. Changes reach the scheduler as events on port.outreach.activity.v1 through
the outbox.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import AwareDatetime

from services.outreach.access import (
    Access,
    apply_rule,
    case_state,
    require_match,
    rowcount,
    set_etag,
    task_state,
)
from services.outreach.models import (
    ATTEMPT,
    CASE,
    CASE_NOTE,
    CONTACT,
    NOTICE,
    REFERRAL,
    SERVICE,
    TASK,
)
from services.outreach.projection import cancel_scheduled_visits
from services.outreach.rules import (
    check_assign,
    check_attempt,
    check_case_workable,
    check_may_work,
    check_referral_transition,
    check_task_workable,
)
from services.outreach.schemas import (
    AssignBody,
    AttemptBody,
    AttemptView,
    CaseView,
    ConclusionBody,
    ContactBody,
    ContactView,
    NoteBody,
    NoticeView,
    QueuePage,
    ReferralBody,
    ReferralUpdate,
    ReferralView,
    ServicesBody,
    ServicesView,
    TaskKind,
    TaskView,
)
from services.outreach.views import (
    NOTE,
    PROVIDER,
    attempt_view,
    case_view,
    referral_view,
    task_views,
)
from shared.auth import Principal, require
from shared.events import (
    AttemptLogged,
    ContactMade,
    DoNotContactRequested,
    OutreachConcluded,
    OutreachDeclined,
    ReferralMade,
    ReferralStatusChanged,
    ServicesProvided,
    TaskAssigned,
)
from shared.http import ApiError, ErrorResponse
from shared.ids import new_uuid
from shared.uow import UnitOfWork

__all__ = ["ERRORS", "Worker", "record_attempt", "router"]

router = APIRouter(prefix="/v1", tags=["outreach"])

Worker = Annotated[Principal, Depends(require("peer", "team_lead"))]
Lead = Annotated[Principal, Depends(require("team_lead"))]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 412, 422, 428, 503)
}
_FUTURE_SLACK = timedelta(minutes=5)


def _when(access: Access, at: datetime | None) -> datetime:
    now = access.runtime.clock.now()
    if at is None:
        return now
    if at > now + _FUTURE_SLACK:
        raise ApiError(422, "time_in_future", "occurred_at is in the future.")
    return at


def _publish(uow: UnitOfWork, event: Any) -> None:
    uow.publish(event, subject=str(event.case_id))


# -- the queue -------------------------------------------------------------------------------


def _encode_cursor(row: Any) -> str:
    raw = json.dumps([row.due_at.isoformat(), row.priority, str(row.id)])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        due, priority, task_id = json.loads(raw)
        return datetime.fromisoformat(due), int(priority), uuid.UUID(task_id)
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise ApiError(400, "invalid_cursor", "The cursor is not one this API gave out.") from None


@router.get(
    "/tasks",
    summary="The queue: my program's tasks, soonest due and most urgent first",
    description="Open tasks by default, sorted by due_at, then priority (highest first). Each "
    "carries what a peer needs to act: the person's name, phone, address and language, the "
    "overdose's time and place, prior attempts and notes, and nothing more. Reading the "
    "queue is audited per case shown.",
    responses=ERRORS,
)
async def list_tasks(
    principal: Worker,
    request: Request,
    status: Literal["open", "completed", "cancelled", "expired"] = "open",
    kind: TaskKind | None = None,
    stage: Literal["scheduled", "due", "overdue"] | None = None,
    assignee: Annotated[
        str | None, Query(description="'me', 'unassigned', or a team member id.")
    ] = None,
    due_before: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> QueuePage:
    access = Access.of(request, principal, "work the queue")
    query = sa.select(TASK).where(TASK.c.program_id == access.program, TASK.c.status == status)
    if kind:
        query = query.where(TASK.c.kind == kind)
    if stage:
        query = query.where(TASK.c.stage == stage)
    if assignee == "me":
        query = query.where(TASK.c.assignee_id == access.actor)
    elif assignee == "unassigned":
        query = query.where(TASK.c.assignee_id.is_(None))
    elif assignee:
        query = query.where(TASK.c.assignee_id == assignee)
    if due_before:
        query = query.where(TASK.c.due_at < due_before)
    if cursor:
        due, priority, last = _decode_cursor(cursor)
        query = query.where(
            sa.or_(
                TASK.c.due_at > due,
                sa.and_(TASK.c.due_at == due, TASK.c.priority < priority),
                sa.and_(TASK.c.due_at == due, TASK.c.priority == priority, TASK.c.id > last),
            )
        )
    query = query.order_by(TASK.c.due_at, TASK.c.priority.desc(), TASK.c.id).limit(limit + 1)
    async with access.runtime.uow() as uow:
        rows = list(await uow.session.execute(query))
        page, more = rows[:limit], len(rows) > limit
        items = await task_views(access, uow.session, page)
        notices = await _notices(access, uow.session)
        await access.audit(uow.session, "read", "task", [(t.id, t.case_id) for t in page])
        await uow.commit()
    return QueuePage(
        items=items, next_cursor=_encode_cursor(page[-1]) if more else None, notices=notices
    )


_NOTICE_MESSAGES = {
    "person_deceased": "A task you held was cancelled: a report says the person has died. "
    "No one will be asked to reach them. Open the case for what the team does next.",
}


async def _notices(access: Access, session: Any) -> list[NoticeView]:
    rows = await session.execute(
        sa.select(NOTICE)
        .where(
            NOTICE.c.program_id == access.program,
            NOTICE.c.member_id == access.actor,
            NOTICE.c.dismissed_at.is_(None),
        )
        .order_by(NOTICE.c.created_at.desc())
        .limit(50)
    )
    return [
        NoticeView(
            id=n.id,
            kind=n.kind,
            case_id=n.case_id,
            task_id=n.task_id,
            created_at=n.created_at,
            message=_NOTICE_MESSAGES[n.kind],
        )
        for n in rows
    ]


@router.post(
    "/notices/{notice_id}/dismiss",
    summary="Dismiss one of your queue's notices",
    status_code=204,
    responses=ERRORS,
)
async def dismiss_notice(notice_id: uuid.UUID, principal: Worker, request: Request) -> Response:
    access = Access.of(request, principal, "read a notice")
    async with access.runtime.uow() as uow:
        updated = await uow.session.execute(
            NOTICE.update()
            .where(
                NOTICE.c.id == notice_id,
                NOTICE.c.program_id == access.program,
                NOTICE.c.member_id == access.actor,
                NOTICE.c.dismissed_at.is_(None),
            )
            .values(dismissed_at=access.runtime.clock.now())
        )
        if rowcount(updated) != 1:
            raise ApiError(404, "not_found", "No such notice of yours.")
        await uow.commit()
    return Response(status_code=204)


@router.get("/tasks/{task_id}", summary="One task, with its ETag", responses=ERRORS)
async def get_task(
    task_id: uuid.UUID, principal: Worker, request: Request, response: Response
) -> TaskView:
    access = Access.of(request, principal, "work a task")
    async with access.runtime.uow() as uow:
        row = await access.task(uow.session, task_id)
        (view,) = await task_views(access, uow.session, [row])
        await access.audit(uow.session, "read", "task", [(row.id, row.case_id)])
        await uow.commit()
    set_etag(response, row.version)
    return view


async def _assign(
    access: Access,
    request: Request,
    response: Response,
    task_id: uuid.UUID,
    assignee: str,
    *,
    claim: bool,
) -> TaskView:
    async with access.runtime.uow() as uow:
        s = uow.session
        row = await access.task(s, task_id)
        require_match(request, row.version)
        apply_rule(
            check_assign,
            task_state(row),
            actor=access.actor,
            actor_is_lead=access.is_lead,
            claim=claim,
        )
        if not claim:
            await access.member(s, assignee)
        now = access.runtime.clock.now()
        updated = await s.execute(
            TASK.update()
            .where(TASK.c.id == task_id, TASK.c.version == row.version)
            .values(assignee_id=assignee, assigned_at=now, version=row.version + 1, updated_at=now)
        )
        if rowcount(updated) != 1:
            raise ApiError(409, "version_mismatch", "The task changed meanwhile; read it again.")
        _publish(
            uow,
            TaskAssigned(
                case_id=row.case_id,
                program_id=access.program,
                occurred_at=now,
                task_id=row.id,
                assignee_id=assignee,
            ),
        )
        await access.audit(s, "update", "task", [(row.id, row.case_id)])
        fresh = (await s.execute(sa.select(TASK).where(TASK.c.id == task_id))).one()
        (view,) = await task_views(access, s, [fresh])
        await uow.commit()
    set_etag(response, fresh.version)
    return view


@router.post(
    "/tasks/{task_id}/claim",
    summary="Take an unassigned task (send If-Match)",
    responses=ERRORS,
)
async def claim_task(
    task_id: uuid.UUID, principal: Worker, request: Request, response: Response
) -> TaskView:
    access = Access.of(request, principal, "claim a task")
    return await _assign(access, request, response, task_id, access.actor, claim=True)


@router.post(
    "/tasks/{task_id}/assign",
    summary="Assign a task to a team member (team leads; send If-Match)",
    responses=ERRORS,
)
async def assign_task(
    task_id: uuid.UUID, body: AssignBody, principal: Lead, request: Request, response: Response
) -> TaskView:
    access = Access.of(request, principal, "assign a task")
    return await _assign(access, request, response, task_id, body.assignee_id, claim=False)


@router.post(
    "/tasks/{task_id}/handover",
    summary="Hand your task over to another team member (send If-Match)",
    description="The task's assignee hands it over; a team lead may hand over any task.",
    responses=ERRORS,
)
async def hand_over_task(
    task_id: uuid.UUID, body: AssignBody, principal: Worker, request: Request, response: Response
) -> TaskView:
    access = Access.of(request, principal, "hand over a task")
    return await _assign(access, request, response, task_id, body.assignee_id, claim=False)


@router.post(
    "/tasks/{task_id}/attempts",
    status_code=201,
    summary="Log an outreach attempt",
    description="A failed attempt counts towards the escalation ladder (after the policy's "
    "number of failed remote attempts an in-person visit is scheduled); 'reached' completes "
    "the task and plans follow-ups; 'declined' ends outreach for this case. Peers log on "
    "unassigned tasks and their own; leads on any.",
    responses=ERRORS,
)
async def log_attempt(
    task_id: uuid.UUID, body: AttemptBody, principal: Worker, request: Request
) -> AttemptView:
    access = Access.of(request, principal, "log an attempt")
    apply_rule(check_attempt, body.channel, body.outcome)
    occurred_at = _when(access, body.occurred_at)
    async with access.runtime.uow() as uow:
        s = uow.session
        task = await access.task(s, task_id)
        case = await access.case(s, task.case_id)
        apply_rule(check_task_workable, task_state(task))
        apply_rule(check_case_workable, case_state(case))
        apply_rule(
            check_may_work, task_state(task), actor=access.actor, actor_is_lead=access.is_lead
        )
        attempt = await record_attempt(
            access, uow, task, body.channel, body.outcome, occurred_at, body.notes
        )
        await uow.commit()
    return attempt_view(access, attempt)


async def record_attempt(
    access: Access,
    uow: UnitOfWork,
    task: Any,
    channel: Any,
    outcome: Any,
    occurred_at: datetime,
    notes: str | None,
) -> Any:
    """The attempt row, its events (a reached person is also a contact) and its audit."""
    s = uow.session
    now = access.runtime.clock.now()
    attempt_id = new_uuid()
    values = {
        "id": attempt_id,
        "program_id": access.program,
        "case_id": task.case_id,
        "task_id": task.id,
        "channel": channel,
        "outcome": outcome,
        "notes_sealed": access.seal(notes, NOTE),
        "occurred_at": occurred_at,
        "created_by": access.actor,
        "created_at": now,
    }
    await s.execute(ATTEMPT.insert().values(**values))
    common = {"case_id": task.case_id, "program_id": access.program, "occurred_at": occurred_at}
    _publish(
        uow,
        AttemptLogged(
            **common, attempt_id=attempt_id, task_id=task.id, channel=channel, outcome=outcome
        ),
    )
    if outcome == "reached":
        await s.execute(
            CONTACT.insert().values(
                id=new_uuid(),
                program_id=access.program,
                case_id=task.case_id,
                task_id=task.id,
                channel=channel,
                notes_sealed=None,
                occurred_at=occurred_at,
                created_by=access.actor,
                created_at=now,
            )
        )
        _publish(uow, ContactMade(**common, task_id=task.id, channel=channel))
    elif outcome == "declined":
        await s.execute(
            CASE.update()
            .where(CASE.c.id == task.case_id)
            .values(declined=True, version=CASE.c.version + 1)
        )
    await access.audit(s, "create", "attempt", [(attempt_id, task.case_id)])
    return (await s.execute(sa.select(ATTEMPT).where(ATTEMPT.c.id == attempt_id))).one()


async def _add_note(
    access: Access, session: Any, case_id: uuid.UUID, text: str, now: datetime
) -> None:
    await session.execute(
        CASE_NOTE.insert().values(
            id=new_uuid(),
            program_id=access.program,
            case_id=case_id,
            text_sealed=access.seal(text, NOTE),
            created_by=access.actor,
            created_at=now,
        )
    )


# -- the case --------------------------------------------------------------------------------


@router.get(
    "/cases/{case_id}",
    summary="A person's case: contact details, episodes, tasks, contacts, services, "
    "referrals and visits",
    responses=ERRORS,
)
async def get_case(
    case_id: uuid.UUID, principal: Worker, request: Request, response: Response
) -> CaseView:
    access = Access.of(request, principal, "review a case")
    async with access.runtime.uow() as uow:
        case = await access.case(uow.session, case_id)
        view = await case_view(access, uow.session, case)
        await access.audit(uow.session, "read", "case", [(case.id, case.id)])
        await uow.commit()
    set_etag(response, case.version)
    return view


@router.post(
    "/cases/{case_id}/contacts",
    status_code=201,
    summary="Record a contact made outside a logged attempt (e.g. the person called in)",
    responses=ERRORS,
)
async def record_contact(
    case_id: uuid.UUID, body: ContactBody, principal: Worker, request: Request
) -> ContactView:
    access = Access.of(request, principal, "record a contact")
    occurred_at = _when(access, body.occurred_at)
    async with access.runtime.uow() as uow:
        s = uow.session
        case = await access.case(s, case_id)
        apply_rule(check_case_workable, case_state(case))
        if body.task_id is not None:
            task = await access.task(s, body.task_id)
            if task.case_id != case_id:
                raise ApiError(422, "task_not_in_case", "The task belongs to another case.")
        contact_id = new_uuid()
        await s.execute(
            CONTACT.insert().values(
                id=contact_id,
                program_id=access.program,
                case_id=case_id,
                task_id=body.task_id,
                channel=body.channel,
                notes_sealed=access.seal(body.notes, NOTE),
                occurred_at=occurred_at,
                created_by=access.actor,
                created_at=access.runtime.clock.now(),
            )
        )
        _publish(
            uow,
            ContactMade(
                case_id=case_id,
                program_id=access.program,
                occurred_at=occurred_at,
                task_id=body.task_id,
                channel=body.channel,
            ),
        )
        await access.audit(s, "create", "contact", [(contact_id, case_id)])
        await uow.commit()
    return ContactView(
        id=contact_id,
        channel=body.channel,
        task_id=body.task_id,
        occurred_at=occurred_at,
        by=access.actor,
        notes=body.notes,
    )


@router.post(
    "/cases/{case_id}/services",
    status_code=201,
    summary="Record services given: naloxone kits, fentanyl test strips, syringe services, "
    "education",
    responses=ERRORS,
)
async def record_services(
    case_id: uuid.UUID, body: ServicesBody, principal: Worker, request: Request
) -> ServicesView:
    access = Access.of(request, principal, "record services")
    occurred_at = _when(access, body.occurred_at)
    async with access.runtime.uow() as uow:
        s = uow.session
        case = await access.case(s, case_id)
        apply_rule(check_case_workable, case_state(case), contacting=False)
        now = access.runtime.clock.now()
        rows = [
            {
                "id": new_uuid(),
                "program_id": access.program,
                "case_id": case_id,
                "kind": item.kind,
                "count": item.count,
                "occurred_at": occurred_at,
                "created_by": access.actor,
                "created_at": now,
            }
            for item in body.items
        ]
        await s.execute(SERVICE.insert(), rows)
        _publish(
            uow,
            ServicesProvided(
                case_id=case_id,
                program_id=access.program,
                occurred_at=occurred_at,
                items=body.items,
            ),
        )
        await access.audit(s, "create", "service", [(r["id"], case_id) for r in rows])
        await uow.commit()
    return ServicesView(items=body.items, occurred_at=occurred_at, by=access.actor)


@router.post(
    "/cases/{case_id}/referrals",
    status_code=201,
    summary="Refer the person: MOUD, detox, treatment, mental health, housing, food, ...",
    responses=ERRORS,
)
async def make_referral(
    case_id: uuid.UUID,
    body: ReferralBody,
    principal: Worker,
    request: Request,
    response: Response,
) -> ReferralView:
    access = Access.of(request, principal, "make a referral")
    async with access.runtime.uow() as uow:
        s = uow.session
        case = await access.case(s, case_id)
        apply_rule(check_case_workable, case_state(case), contacting=False)
        now = access.runtime.clock.now()
        referral_id = new_uuid()
        await s.execute(
            REFERRAL.insert().values(
                id=referral_id,
                program_id=access.program,
                case_id=case_id,
                kind=body.kind,
                status=body.status,
                warm_handoff=body.warm_handoff,
                provider_sealed=access.seal(body.provider, PROVIDER),
                notes_sealed=access.seal(body.notes, NOTE),
                version=1,
                created_by=access.actor,
                created_at=now,
                updated_at=now,
            )
        )
        _publish(
            uow,
            ReferralMade(
                case_id=case_id,
                program_id=access.program,
                occurred_at=now,
                referral_id=referral_id,
                kind=body.kind,
                status=body.status,
                warm_handoff=body.warm_handoff,
            ),
        )
        await access.audit(s, "create", "referral", [(referral_id, case_id)])
        row = (await s.execute(sa.select(REFERRAL).where(REFERRAL.c.id == referral_id))).one()
        await uow.commit()
    set_etag(response, row.version)
    return referral_view(access, row)


@router.patch(
    "/referrals/{referral_id}",
    summary="Move a referral along: offered → accepted → appointment → care started, or "
    "declined / lost (send If-Match)",
    responses=ERRORS,
)
async def update_referral(
    referral_id: uuid.UUID,
    body: ReferralUpdate,
    principal: Worker,
    request: Request,
    response: Response,
) -> ReferralView:
    access = Access.of(request, principal, "update a referral")
    if body.status == "appointment" and body.appointment_at is None:
        raise ApiError(422, "appointment_time_required", "An appointment needs appointment_at.")
    async with access.runtime.uow() as uow:
        s = uow.session
        row = (
            await s.execute(
                sa.select(REFERRAL).where(
                    REFERRAL.c.id == referral_id, REFERRAL.c.program_id == access.program
                )
            )
        ).first()
        if row is None:
            raise ApiError(404, "not_found", "No such referral in your program.")
        require_match(request, row.version)
        apply_rule(check_referral_transition, row.status, body.status)
        now = access.runtime.clock.now()
        values: dict[str, Any] = {"status": body.status, "updated_at": now}
        if body.appointment_at is not None:
            values["appointment_at"] = body.appointment_at
        if body.notes is not None:
            values["notes_sealed"] = access.seal(body.notes, NOTE)
        updated = await s.execute(
            REFERRAL.update()
            .where(REFERRAL.c.id == referral_id, REFERRAL.c.version == row.version)
            .values(**values, version=row.version + 1)
        )
        if rowcount(updated) != 1:
            raise ApiError(409, "version_mismatch", "The referral changed meanwhile.")
        _publish(
            uow,
            ReferralStatusChanged(
                case_id=row.case_id,
                program_id=access.program,
                occurred_at=now,
                referral_id=referral_id,
                status=body.status,
            ),
        )
        await access.audit(s, "update", "referral", [(referral_id, row.case_id)])
        fresh = (await s.execute(sa.select(REFERRAL).where(REFERRAL.c.id == referral_id))).one()
        await uow.commit()
    set_etag(response, fresh.version)
    return referral_view(access, fresh)


async def _case_decision(
    access: Access,
    request: Request,
    case_id: uuid.UUID,
    event_type: type[OutreachDeclined] | type[DoNotContactRequested],
    values: dict[str, Any],
    notes: str | None,
) -> CaseView:
    async with access.runtime.uow() as uow:
        s = uow.session
        case = await access.case(s, case_id)
        apply_rule(check_case_workable, case_state(case), contacting=False)
        now = access.runtime.clock.now()
        await s.execute(
            CASE.update().where(CASE.c.id == case_id).values(**values, version=case.version + 1)
        )
        if notes:
            await _add_note(access, s, case_id, notes, now)
        await cancel_scheduled_visits(s, case_id, now)
        _publish(uow, event_type(case_id=case_id, program_id=access.program, occurred_at=now))
        await access.audit(s, "update", "case", [(case_id, case_id)])
        fresh = (await s.execute(sa.select(CASE).where(CASE.c.id == case_id))).one()
        view = await case_view(access, s, fresh)
        await uow.commit()
    return view


@router.post(
    "/cases/{case_id}/decline",
    summary="The person declines outreach: open tasks are cancelled, nothing new is planned",
    description="Declined is honoured. A later overdose may open new outreach, as the policy "
    "says; a do-not-contact request is final.",
    responses=ERRORS,
)
async def decline(
    case_id: uuid.UUID, body: NoteBody, principal: Worker, request: Request
) -> CaseView:
    access = Access.of(request, principal, "record a decline")
    return await _case_decision(
        access, request, case_id, OutreachDeclined, {"declined": True}, body.notes
    )


@router.post(
    "/cases/{case_id}/do-not-contact",
    summary="The person asks never to be contacted again (final)",
    description="Cancels open tasks and scheduled visits; no attempt, contact, visit or text "
    "is accepted for this person afterwards. This cannot be undone through the API.",
    responses=ERRORS,
)
async def do_not_contact(
    case_id: uuid.UUID, body: NoteBody, principal: Worker, request: Request
) -> CaseView:
    access = Access.of(request, principal, "record a do-not-contact request")
    return await _case_decision(
        access, request, case_id, DoNotContactRequested, {"do_not_contact": True}, body.notes
    )


@router.post(
    "/cases/{case_id}/conclusion",
    summary="Conclude outreach with a reason (team leads; send If-Match with the case ETag)",
    description="The scheduler closes the case and cancels what is still open.",
    responses=ERRORS,
)
async def conclude(
    case_id: uuid.UUID,
    body: ConclusionBody,
    principal: Lead,
    request: Request,
    response: Response,
) -> CaseView:
    access = Access.of(request, principal, "conclude outreach")
    async with access.runtime.uow() as uow:
        s = uow.session
        case = await access.case(s, case_id)
        require_match(request, case.version)
        if case.status == "closed":
            raise ApiError(409, "case_closed", "The case is already closed.")
        now = access.runtime.clock.now()
        await s.execute(
            CASE.update()
            .where(CASE.c.id == case_id)
            .values(
                status="closed", closed_at=now, close_reason=body.reason, version=case.version + 1
            )
        )
        if body.notes:
            await _add_note(access, s, case_id, body.notes, now)
        _publish(
            uow,
            OutreachConcluded(
                case_id=case_id, program_id=access.program, occurred_at=now, reason=body.reason
            ),
        )
        await access.audit(s, "update", "case", [(case_id, case_id)])
        fresh = (await s.execute(sa.select(CASE).where(CASE.c.id == case_id))).one()
        view = await case_view(access, s, fresh)
        await uow.commit()
    set_etag(response, fresh.version)
    return view
