"""The queue and the work on a task: reading it, claims, assignments and handovers, attempts,
and the notices a team member must see in their queue."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncSession

from services.outreach import casefile
from services.outreach.access import (
    Access,
    apply_rule,
    case_state,
    require_match,
    rowcount,
    task_state,
)
from services.outreach.models import ATTEMPT, CONTACT, EPISODE, NOTICE, REPORT_LINK, TASK
from services.outreach.rules import (
    check_assign,
    check_attempt,
    check_case_workable,
    check_may_work,
    check_occurred_at,
    check_task_workable,
)
from services.outreach.schemas import (
    AttemptBody,
    AttemptView,
    NoticeView,
    QueuePage,
    QueueQuery,
    TaskView,
)
from services.outreach.service import hot_spots
from services.outreach.views import NOTE, attempt_view, task_views
from shared.edge import Cursor, Instant, keyset_page
from shared.events import AttemptLogged, ContactMade, TaskAssigned
from shared.events.outreach import AttemptOutcome, Channel
from shared.http import ApiError
from shared.ids import new_uuid
from shared.uow import UnitOfWork

__all__ = [
    "assign",
    "dismiss_notice",
    "list_queue",
    "log_attempt",
    "overdose_at",
    "read_task",
    "record_attempt",
    "workable_task",
]

_Priority = Annotated[int, Field(ge=-(2**31), lt=2**31)]
QUEUE_CURSOR: Cursor[tuple[datetime, int, uuid.UUID]] = Cursor(tuple[Instant, _Priority, uuid.UUID])
"""The queue's sort key of a page's last task: due_at, minus priority (highest first), id."""

_NOTICE_MESSAGES = {
    "person_deceased": "A task you held was cancelled: a report says the person has died. "
    "No one will be asked to reach them. Open the case for what the team does next.",
}


async def list_queue(*, uow: UnitOfWork, access: Access, query: QueueQuery) -> QueuePage:
    """The program's tasks, soonest due and most urgent first, and the caller's notices."""
    q = sa.select(TASK).where(TASK.c.program_id == access.program, TASK.c.status == query.status)
    if query.kind:
        q = q.where(TASK.c.kind == query.kind)
    if query.stage:
        q = q.where(TASK.c.stage == query.stage)
    if query.assignee == "me":
        q = q.where(TASK.c.assignee_id == access.actor)
    elif query.assignee == "unassigned":
        q = q.where(TASK.c.assignee_id.is_(None))
    elif query.assignee:
        q = q.where(TASK.c.assignee_id == query.assignee)
    if query.due_before:
        q = q.where(TASK.c.due_at < query.due_before)
    if query.report_id:
        q = q.where(
            TASK.c.episode_id.in_(
                sa.select(REPORT_LINK.c.episode_id).where(
                    REPORT_LINK.c.report_id == query.report_id,
                    REPORT_LINK.c.program_id == access.program,
                )
            )
        )
    page, cursor = await keyset_page(
        uow.session,
        q,
        keys=[TASK.c.due_at, -TASK.c.priority, TASK.c.id],
        key_of=lambda t: (t.due_at, -t.priority, t.id),
        cursor=QUEUE_CURSOR,
        page=query,
    )
    items = await task_views(access, uow.session, page)
    notices = await _notices(access, uow.session)
    spots = []
    if query.status == "open" and query.cursor is None:  # the first page of the open queue
        spots = await hot_spots.list_open(access, uow.session)
    await access.audit(uow.session, "read", "task", [(t.id, t.case_id) for t in page])
    await uow.commit()
    return QueuePage(items=items, next_cursor=cursor, notices=notices, hot_spots=spots)


async def _notices(access: Access, session: AsyncSession) -> list[NoticeView]:
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


async def dismiss_notice(*, uow: UnitOfWork, access: Access, notice_id: uuid.UUID) -> None:
    """One of the caller's own notices, dismissed."""
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


async def read_task(*, uow: UnitOfWork, access: Access, task: Any) -> TaskView:
    """The task as the queue shows it; the read is audited."""
    (view,) = await task_views(access, uow.session, [task])
    await access.audit(uow.session, "read", "task", [(task.id, task.case_id)])
    await uow.commit()
    return view


async def assign(
    *,
    uow: UnitOfWork,
    access: Access,
    task: Any,
    assignee: str,
    claim: bool,
    if_match: str | None,
) -> TaskView:
    """A claim (the caller takes it), an assignment or a handover: one rule, one event."""
    s = uow.session
    require_match(if_match, task.version)
    apply_rule(
        check_assign,
        task_state(task),
        actor=access.actor,
        actor_is_lead=access.is_lead,
        claim=claim,
    )
    if not claim:
        await access.member(s, assignee)
    now = access.runtime.clock.now()
    updated = await s.execute(
        TASK.update()
        .where(TASK.c.id == task.id, TASK.c.version == task.version)
        .values(assignee_id=assignee, assigned_at=now, version=task.version + 1, updated_at=now)
    )
    if rowcount(updated) != 1:
        raise ApiError(409, "version_mismatch", "The task changed meanwhile; read it again.")
    uow.publish(
        TaskAssigned(
            case_id=task.case_id,
            program_id=access.program,
            occurred_at=now,
            task_id=task.id,
            assignee_id=assignee,
        ),
        subject=str(task.case_id),
    )
    await access.audit(s, "update", "task", [(task.id, task.case_id)])
    fresh = (await s.execute(sa.select(TASK).where(TASK.c.id == task.id))).one()
    (view,) = await task_views(access, s, [fresh])
    await uow.commit()
    return view


async def workable_task(access: Access, session: AsyncSession, task: Any) -> Any:
    """The case of a task someone is about to work on, once the rules allow it: the task
    open, the case open and not declined or do-not-contact, and the task the caller's to
    work (peers: unassigned or their own)."""
    case = await access.case(session, task.case_id)
    apply_rule(check_task_workable, task_state(task))
    apply_rule(check_case_workable, case_state(case))
    apply_rule(check_may_work, task_state(task), actor=access.actor, actor_is_lead=access.is_lead)
    return case


async def overdose_at(
    session: AsyncSession,
    *,
    episode_id: uuid.UUID | None = None,
    case_id: uuid.UUID | None = None,
) -> datetime | None:
    """When the overdose happened that the work follows up: the episode's, or the case's
    first."""
    q = sa.select(sa.func.min(EPISODE.c.incident_at))
    q = q.where(EPISODE.c.id == episode_id) if episode_id else q.where(EPISODE.c.case_id == case_id)
    found: datetime | None = (await session.execute(q)).scalar_one_or_none()
    return found


async def log_attempt(
    *, uow: UnitOfWork, access: Access, task: Any, body: AttemptBody
) -> AttemptView:
    """An attempt on a task, after the rules allowed it."""
    apply_rule(check_attempt, body.channel, body.outcome)
    now = access.runtime.clock.now()
    occurred_at = body.occurred_at or now
    await workable_task(access, uow.session, task)
    apply_rule(
        check_occurred_at,
        occurred_at,
        now=now,
        overdose_at=await overdose_at(uow.session, episode_id=task.episode_id),
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
    channel: Channel,
    outcome: AttemptOutcome,
    occurred_at: datetime,
    notes: str | None,
) -> Any:
    """The attempt row, its events (a reached person is also a contact; a decline is the
    case's) and its audit, in the caller's unit of work (not committed here)."""
    s = uow.session
    now = access.runtime.clock.now()
    attempt_id = new_uuid()
    await s.execute(
        ATTEMPT.insert().values(
            id=attempt_id,
            program_id=access.program,
            case_id=task.case_id,
            task_id=task.id,
            channel=channel,
            outcome=outcome,
            notes_sealed=access.seal(notes, NOTE),
            occurred_at=occurred_at,
            created_by=access.actor,
            created_at=now,
        )
    )
    common = {"case_id": task.case_id, "program_id": access.program, "occurred_at": occurred_at}
    uow.publish(
        AttemptLogged(
            **common, attempt_id=attempt_id, task_id=task.id, channel=channel, outcome=outcome
        ),
        subject=str(task.case_id),
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
        uow.publish(
            ContactMade(**common, task_id=task.id, channel=channel), subject=str(task.case_id)
        )
    elif outcome == "declined":
        await casefile.mark_declined(s, task.case_id)
    await access.audit(s, "create", "attempt", [(attempt_id, task.case_id)])
    return (await s.execute(sa.select(ATTEMPT).where(ATTEMPT.c.id == attempt_id))).one()
