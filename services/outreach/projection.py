"""What outreach keeps of other services' events: the scheduler's cases, episodes, report
links and tasks, and intake's sealed identity and place of each report.

Handlers run inside the inbox's unit of work (one event, one transaction, exactly once), and
are dispatched by event type from one table (HANDLERS): a new event is one handler and one
line. Every change to a task or case bumps its version, so a client holding an older ETag is
told to re-read before it edits. Cases change only through `casefile`.

Two people merged (PersonsMerged) fold one case into another: rows of the folded case move to
the case that stays, and the folded case remembers where it went, so that an event of it
still on its way (another partition, published before the merge) lands on the case that
stays.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa

from services.outreach import casefile
from services.outreach.models import (
    ATTEMPT,
    CASE,
    CASE_NOTE,
    CONTACT,
    EPISODE,
    HOT_SPOT,
    NOTICE,
    REFERRAL,
    REPORT,
    REPORT_LINK,
    SERVICE,
    SMS_MESSAGE,
    TASK,
    VISIT,
)
from services.outreach.service.visits import cancel_scheduled_visits
from shared.envelope import Envelope, Event
from shared.events import (
    CaseClosed,
    CaseOpened,
    DeathRecorded,
    EpisodeOpened,
    HotSpotTaskScheduled,
    OverdoseReported,
    PersonsMerged,
    ReportLinked,
    TaskCancelled,
    TaskCompleted,
    TaskDue,
    TaskExpired,
    TaskOverdue,
    TaskScheduled,
)
from shared.uow import UnitOfWork

__all__ = ["HANDLERS", "on_case_event", "on_overdose"]

Handler = Callable[[UnitOfWork, Any], Awaitable[None]]


async def on_overdose(uow: UnitOfWork, envelope: Envelope) -> None:
    """Keep the latest revision of each report's sealed identity and place."""
    event = envelope.event()
    if not isinstance(event, OverdoseReported):
        return
    s = uow.session
    current = (
        await s.execute(sa.select(REPORT.c.revision).where(REPORT.c.id == event.report_id))
    ).scalar_one_or_none()
    values: dict[str, Any] = {
        "program_id": event.program_id,
        "revision": event.revision,
        "source_kind": event.source_kind,
        "incident_at": event.incident_at,
        "received_at": event.received_at,
        "identity_sealed": event.identity,
        "address_sealed": event.location.address,
        "county": event.location.county,
        "state": event.location.state,
        "consent": event.consent.value,
    }
    if current is None:
        await s.execute(REPORT.insert().values(id=event.report_id, **values))
    elif event.revision >= current:
        await s.execute(REPORT.update().where(REPORT.c.id == event.report_id).values(**values))


async def on_case_event(uow: UnitOfWork, envelope: Envelope) -> None:
    """Mirror the scheduler's cases and tasks (one topic, keyed by case, so in order)."""
    event: Event = envelope.event()
    handler = HANDLERS.get(type(event))
    if handler is not None:
        await handler(uow, event)


async def _case_opened(uow: UnitOfWork, event: CaseOpened) -> None:
    await casefile.open_case(
        uow.session,
        case_id=event.case_id,
        program_id=event.program_id,
        person_id=event.person_id,
        opened_at=event.opened_at,
    )


async def _case_of(uow: UnitOfWork, case_id: uuid.UUID) -> uuid.UUID:
    """The case a row of `case_id` belongs on: the case it was folded into, if it was."""
    into = (
        await uow.session.execute(sa.select(CASE.c.merged_into).where(CASE.c.id == case_id))
    ).scalar_one_or_none()
    return into or case_id


async def _episode_opened(uow: UnitOfWork, event: EpisodeOpened) -> None:
    case_id = await _case_of(uow, event.case_id)
    if not await _exists(uow, EPISODE, event.episode_id):
        await uow.session.execute(
            EPISODE.insert().values(
                id=event.episode_id,
                case_id=case_id,
                program_id=event.program_id,
                incident_at=event.incident_at,
                repeat=event.repeat,
                received_at=event.received_at,
                late=event.late,
                fatal=event.fatal,
                source_kind=event.source_kind,
            )
        )
    if event.repeat:  # a repeat overdose reopens a case the person had declined
        await casefile.repeat_overdose(uow.session, case_id)


async def _report_linked(uow: UnitOfWork, event: ReportLinked) -> None:
    link = {
        "program_id": event.program_id,
        "case_id": await _case_of(uow, event.case_id),
        "episode_id": event.episode_id,
    }
    s = uow.session
    updated = await s.execute(
        REPORT_LINK.update().where(REPORT_LINK.c.report_id == event.report_id).values(**link)
    )
    if updated.rowcount == 0:  # type: ignore[attr-defined]
        await s.execute(REPORT_LINK.insert().values(report_id=event.report_id, **link))


async def _task_scheduled(uow: UnitOfWork, event: TaskScheduled) -> None:
    if await _exists(uow, TASK, event.task_id):
        return
    quiet = event.quiet_hours.model_dump_json() if event.quiet_hours is not None else None
    await uow.session.execute(
        TASK.insert().values(
            id=event.task_id,
            program_id=event.program_id,
            case_id=await _case_of(uow, event.case_id),
            episode_id=event.episode_id,
            kind=event.kind.value,
            status="open",
            stage="scheduled",
            priority=event.priority,
            window_opens_at=event.window_opens_at,
            due_at=event.due_at,
            expires_at=event.expires_at,
            policy_version=event.policy_version,
            deputy=event.deputy,
            late=event.late,
            quiet_hours=quiet,
            version=1,
            updated_at=uow.clock.now(),
        )
    )


async def _task_due(uow: UnitOfWork, event: TaskDue) -> None:
    await _update_task(uow, event.task_id, stage="due")


async def _task_overdue(uow: UnitOfWork, event: TaskOverdue) -> None:
    await _update_task(uow, event.task_id, stage="overdue")


async def _task_expired(uow: UnitOfWork, event: TaskExpired) -> None:
    await _update_task(uow, event.task_id, status="expired", closed_at=event.fired_at)


async def _task_completed(uow: UnitOfWork, event: TaskCompleted) -> None:
    await _update_task(
        uow, event.task_id, status="completed", outcome=event.outcome, closed_at=event.completed_at
    )


async def _task_cancelled(uow: UnitOfWork, event: TaskCancelled) -> None:
    if event.reason == "person_deceased":
        await _tell_holder(uow, event)
    await _update_task(
        uow, event.task_id, status="cancelled", outcome=event.reason, closed_at=event.cancelled_at
    )


async def _death_recorded(uow: UnitOfWork, event: DeathRecorded) -> None:
    """The person died: the case shows it and no visit stays on the calendar. (The scheduler
    cancels the tasks in events of their own; their holders are told then.)"""
    s = uow.session
    await casefile.mark_deceased(s, event.case_id, event.recorded_at)
    await s.execute(EPISODE.update().where(EPISODE.c.id == event.episode_id).values(fatal=True))
    await cancel_scheduled_visits(s, event.case_id, uow.clock.now())


async def _case_closed(uow: UnitOfWork, event: CaseClosed) -> None:
    await casefile.close(uow.session, event.case_id, reason=event.reason, closed_at=event.closed_at)
    await cancel_scheduled_visits(uow.session, event.case_id, uow.clock.now())


async def _hot_spot_scheduled(uow: UnitOfWork, event: HotSpotTaskScheduled) -> None:
    """A hot-spot task opened, or a later alert for its county was attached to it (the same
    task id): the queue shows the latest alert and due time. A concluded one stays so."""
    latest = {
        "alert_ids": json.dumps([str(a) for a in event.alert_ids]),
        "detector": event.detector,
        "level": event.level,
        "observed": event.observed,
        "expected": event.expected,
        "window_start": event.window_start,
        "window_end": event.window_end,
        "due_at": event.due_at,
        "state": event.state,
        "updated_at": uow.clock.now(),
    }
    s = uow.session
    if not await _exists(uow, HOT_SPOT, event.task_id):
        await s.execute(
            HOT_SPOT.insert().values(
                id=event.task_id,
                program_id=event.program_id,
                county=event.county,
                status="open",
                priority=event.priority,
                policy_version=event.policy_version,
                opened_at=event.opened_at,
                version=1,
                **latest,
            )
        )
        return
    await s.execute(
        HOT_SPOT.update()
        .where(HOT_SPOT.c.id == event.task_id, HOT_SPOT.c.status == "open")
        .values(**latest, version=HOT_SPOT.c.version + 1)
    )


_MOVED_WITH_A_CASE = (
    EPISODE,
    REPORT_LINK,
    ATTEMPT,
    CONTACT,
    SERVICE,
    CASE_NOTE,
    SMS_MESSAGE,
    NOTICE,
)
_VERSIONED = (TASK, VISIT, REFERRAL)


async def _persons_merged(uow: UnitOfWork, event: PersonsMerged) -> None:
    """Two people were one: the folded cases' rows move to the case that stays, which keeps
    what either person asked for (a do-not-contact request, a decline, a death)."""
    s = uow.session
    into = event.case_id
    folded = [c for c in event.folded_case_ids if c != into] if into is not None else []
    if folded:
        for table in _MOVED_WITH_A_CASE:
            await s.execute(table.update().where(table.c.case_id.in_(folded)).values(case_id=into))
        for table in _VERSIONED:
            await s.execute(
                table.update()
                .where(table.c.case_id.in_(folded))
                .values(case_id=into, version=table.c.version + 1)
            )
    await casefile.fold(
        s,
        into=into,
        folded=folded,
        moved=event.moved_case_ids,
        person_id=event.person_id,
        do_not_contact=event.do_not_contact,
        declined=event.declined,
        deceased_at=event.deceased_at,
        at=event.merged_at,
    )
    if into is not None and (event.do_not_contact or event.declined or event.deceased_at):
        await cancel_scheduled_visits(s, into, uow.clock.now())


HANDLERS: dict[type[Event], Handler] = {
    CaseOpened: _case_opened,
    EpisodeOpened: _episode_opened,
    ReportLinked: _report_linked,
    TaskScheduled: _task_scheduled,
    TaskDue: _task_due,
    TaskOverdue: _task_overdue,
    TaskExpired: _task_expired,
    TaskCompleted: _task_completed,
    TaskCancelled: _task_cancelled,
    DeathRecorded: _death_recorded,
    CaseClosed: _case_closed,
    PersonsMerged: _persons_merged,
    HotSpotTaskScheduled: _hot_spot_scheduled,
}
"""What outreach does with each event of the scheduler's topic; others are not its business."""


async def _tell_holder(uow: UnitOfWork, event: TaskCancelled) -> None:
    """Whoever held a task whose person died is told in their queue, not at a door."""
    holder = (
        await uow.session.execute(
            sa.select(TASK.c.assignee_id).where(TASK.c.id == event.task_id, TASK.c.status == "open")
        )
    ).scalar_one_or_none()
    if holder is None:
        return
    case_id = (
        await uow.session.execute(sa.select(TASK.c.case_id).where(TASK.c.id == event.task_id))
    ).scalar_one()
    await uow.session.execute(
        NOTICE.insert().values(
            id=uuid.uuid4(),
            program_id=event.program_id,
            member_id=holder,
            case_id=case_id,
            task_id=event.task_id,
            kind=event.reason,
            created_at=uow.clock.now(),
            dismissed_at=None,
        )
    )


async def _exists(uow: UnitOfWork, table: sa.Table, key: Any) -> bool:
    row = await uow.session.execute(sa.select(table.c.id).where(table.c.id == key))
    return row.first() is not None


async def _update_task(uow: UnitOfWork, task_id: Any, **values: Any) -> None:
    query = TASK.update().where(TASK.c.id == task_id)
    if "status" in values:  # a closed task stays closed; its first closing wins
        query = query.where(TASK.c.status == "open")
    await uow.session.execute(
        query.values(**values, version=TASK.c.version + 1, updated_at=uow.clock.now())
    )
