"""What outreach keeps of other services' events: the scheduler's cases, episodes, report
links and tasks, and intake's sealed identity and place of each report.

Handlers run inside the inbox's unit of work (one event, one transaction, exactly once). Every
change to a task or case bumps its version, so a client holding an older ETag is told to
re-read before it edits.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from services.outreach.models import CASE, EPISODE, NOTICE, REPORT, REPORT_LINK, TASK, VISIT
from shared.envelope import Envelope
from shared.events import (
    CaseClosed,
    CaseOpened,
    DeathRecorded,
    EpisodeOpened,
    OverdoseReported,
    ReportLinked,
    TaskCancelled,
    TaskCompleted,
    TaskDue,
    TaskExpired,
    TaskOverdue,
    TaskScheduled,
)
from shared.uow import UnitOfWork

__all__ = ["cancel_scheduled_visits", "on_case_event", "on_overdose"]


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
    event = envelope.event()
    s = uow.session
    now = uow.clock.now()
    if isinstance(event, CaseOpened):
        if await _exists(uow, CASE, event.case_id):
            return
        await s.execute(
            CASE.insert().values(
                id=event.case_id,
                program_id=event.program_id,
                person_id=event.person_id,
                status="open",
                opened_at=event.opened_at,
                do_not_contact=False,
                declined=False,
                version=1,
            )
        )
    elif isinstance(event, EpisodeOpened):
        if not await _exists(uow, EPISODE, event.episode_id):
            await s.execute(
                EPISODE.insert().values(
                    id=event.episode_id,
                    case_id=event.case_id,
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
            await s.execute(
                CASE.update()
                .where(CASE.c.id == event.case_id, CASE.c.do_not_contact.is_(False))
                .values(declined=False, version=CASE.c.version + 1)
            )
    elif isinstance(event, ReportLinked):
        link = {
            "program_id": event.program_id,
            "case_id": event.case_id,
            "episode_id": event.episode_id,
        }
        updated = await s.execute(
            REPORT_LINK.update().where(REPORT_LINK.c.report_id == event.report_id).values(**link)
        )
        if updated.rowcount == 0:  # type: ignore[attr-defined]
            await s.execute(REPORT_LINK.insert().values(report_id=event.report_id, **link))
    elif isinstance(event, TaskScheduled):
        if await _exists(uow, TASK, event.task_id):
            return
        await s.execute(
            TASK.insert().values(
                id=event.task_id,
                program_id=event.program_id,
                case_id=event.case_id,
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
                version=1,
                updated_at=now,
            )
        )
    elif isinstance(event, TaskDue | TaskOverdue):
        stage = "due" if isinstance(event, TaskDue) else "overdue"
        await _update_task(uow, event.task_id, stage=stage)
    elif isinstance(event, TaskExpired):
        await _update_task(uow, event.task_id, status="expired", closed_at=event.fired_at)
    elif isinstance(event, TaskCompleted):
        await _update_task(
            uow,
            event.task_id,
            status="completed",
            outcome=event.outcome,
            closed_at=event.completed_at,
        )
    elif isinstance(event, TaskCancelled):
        if event.reason == "person_deceased":
            await _tell_holder(uow, event)
        await _update_task(
            uow,
            event.task_id,
            status="cancelled",
            outcome=event.reason,
            closed_at=event.cancelled_at,
        )
    elif isinstance(event, DeathRecorded):
        await _record_death(uow, event)
    elif isinstance(event, CaseClosed):
        await s.execute(
            CASE.update()
            .where(CASE.c.id == event.case_id)
            .values(
                status="closed",
                closed_at=event.closed_at,
                close_reason=sa.func.coalesce(CASE.c.close_reason, event.reason),
                version=CASE.c.version + 1,
            )
        )
        await cancel_scheduled_visits(s, event.case_id, now)


async def _record_death(uow: UnitOfWork, event: DeathRecorded) -> None:
    """The person died: the case shows it and no visit stays on the calendar. (The scheduler
    cancels the tasks in events of their own; their holders are told then.)"""
    s = uow.session
    await s.execute(
        CASE.update()
        .where(CASE.c.id == event.case_id, CASE.c.deceased_at.is_(None))
        .values(deceased_at=event.recorded_at, version=CASE.c.version + 1)
    )
    await s.execute(EPISODE.update().where(EPISODE.c.id == event.episode_id).values(fatal=True))
    await cancel_scheduled_visits(s, event.case_id, uow.clock.now())


async def _tell_holder(uow: UnitOfWork, event: TaskCancelled) -> None:
    """Whoever held a task whose person died is told in their queue, not at a door."""
    holder = (
        await uow.session.execute(
            sa.select(TASK.c.assignee_id).where(TASK.c.id == event.task_id, TASK.c.status == "open")
        )
    ).scalar_one_or_none()
    if holder is None:
        return
    await uow.session.execute(
        NOTICE.insert().values(
            id=uuid.uuid4(),
            program_id=event.program_id,
            member_id=holder,
            case_id=event.case_id,
            task_id=event.task_id,
            kind=event.reason,
            created_at=uow.clock.now(),
            dismissed_at=None,
        )
    )


async def cancel_scheduled_visits(session: Any, case_id: Any, now: Any) -> None:
    """A case that closes, or a person who declines or asks not to be contacted, keeps no
    visit on the calendar."""
    await session.execute(
        VISIT.update()
        .where(VISIT.c.case_id == case_id, VISIT.c.status == "scheduled")
        .values(status="cancelled", updated_at=now, version=VISIT.c.version + 1)
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
