"""The scheduler's handlers: reports become people, cases, episodes and tasks; outreach
activity and timers move tasks along the ladder.

Each handler runs inside one unit of work (the inbox's, or the timer runner's): its rows, its
timers and its outbox events commit together. Decisions come from the pure modules
(`policy`, `linking`); this module only reads and writes what they need.

Revisions of a report (intake's A08 updates, resubmitted PCRs) update the report's link; they
do not plan again. Times come from events and the unit of work's clock, never from the system.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from services.scheduler import timers
from services.scheduler.linking import (
    EpisodeRef,
    PersonCandidate,
    ReportIdentity,
    episode_for,
    link,
)
from services.scheduler.models import (
    CASE,
    EPISODE,
    PERSON,
    PERSON_KEY,
    POSSIBLE_MATCH,
    REPORT_LINK,
    TASK,
)
from services.scheduler.policy import (
    PlannedTask,
    Policy,
    default_policy,
    escalation_due,
    follow_ups,
    plan_episode,
)
from shared.envelope import Envelope
from shared.events import (
    AttemptLogged,
    BlindKeys,
    CaseClosed,
    CaseOpened,
    ContactMade,
    DoNotContactRequested,
    EpisodeOpened,
    OutreachConcluded,
    OutreachDeclined,
    OverdoseReported,
    ReportLinked,
    TaskCancelled,
    TaskCompleted,
    TaskDue,
    TaskExpired,
    TaskOverdue,
    TaskScheduled,
    VisitCompleted,
)
from shared.events.scheduler import TaskKind
from shared.ids import new_uuid
from shared.sealing import Sealer
from shared.uow import UnitOfWork

__all__ = ["FAILED_OUTCOMES", "PolicyBook", "Scheduler"]

log = logging.getLogger(__name__)

FAILED_OUTCOMES = frozenset({"no_answer", "left_message", "wrong_number", "not_found"})
"""Attempt outcomes that count towards escalation to an in-person visit."""

_KEY_KINDS = ("name_dob", "phone", "mrn", "dob")


class PolicyBook:
    """The policy in force per program: a program's own file, or the defaults."""

    def __init__(
        self, policies: dict[str, Policy] | None = None, timezone: str = "America/New_York"
    ):
        self._policies = dict(policies or {})
        self._timezone = timezone

    def for_program(self, program_id: str) -> Policy:
        if program_id not in self._policies:
            self._policies[program_id] = default_policy(program_id, self._timezone)
        return self._policies[program_id]


@dataclass(frozen=True, slots=True)
class _Task:
    id: uuid.UUID
    program_id: str
    case_id: uuid.UUID
    episode_id: uuid.UUID
    kind: str
    status: str
    priority: int
    window_opens_at: datetime
    due_at: datetime
    expires_at: datetime
    failed_attempts: int


class Scheduler:
    """Turns overdose reports and outreach activity into cases, episodes, tasks and timers."""

    def __init__(
        self,
        *,
        sealer: Sealer,
        policies: PolicyBook,
        new_id: Callable[[], uuid.UUID] = new_uuid,
        episode_window: timedelta = timedelta(hours=12),
    ) -> None:
        self._sealer = sealer
        self._policies = policies
        self._new_id = new_id
        self._window = episode_window

    # --- reports -------------------------------------------------------------------------

    async def on_overdose(self, uow: UnitOfWork, envelope: Envelope) -> None:
        event = envelope.event()
        if not isinstance(event, OverdoseReported):
            return
        s = uow.session
        now = uow.clock.now()
        known = (
            await s.execute(
                sa.select(REPORT_LINK).where(REPORT_LINK.c.report_id == event.report_id)
            )
        ).first()
        if known is not None:
            if event.revision > known.revision:
                await s.execute(
                    REPORT_LINK.update()
                    .where(REPORT_LINK.c.report_id == event.report_id)
                    .values(revision=event.revision)
                )
            return
        if event.deidentified:
            await self._count_deidentified(uow, event, now)
            return

        identity = (
            self._sealer.open_json(event.identity, context="identity") if event.identity else {}
        )
        report = ReportIdentity(
            family=identity.get("family"),
            given=identity.get("given"),
            dob=date.fromisoformat(identity["dob"]) if identity.get("dob") else None,
            phones=tuple(identity.get("phones") or ()),
            mrn=identity.get("mrn"),
            blind=event.blind_keys,
        )
        decision = link(report, await self._candidates(uow, event.program_id, event.blind_keys))
        if decision.kind == "deidentified":  # nothing left to reach the person by
            await self._count_deidentified(uow, event, now)
            return
        if decision.kind == "exact" and decision.person_id is not None:
            person_id = decision.person_id
            match = "exact"
        else:
            person_id = self._new_id()
            match = "possible" if decision.kind == "possible" else "new_person"
            await s.execute(
                PERSON.insert().values(
                    id=person_id,
                    program_id=event.program_id,
                    identity_sealed=event.identity,
                    do_not_contact=False,
                    created_at=now,
                )
            )
            for possible in decision.possible:
                await s.execute(
                    POSSIBLE_MATCH.insert().values(
                        id=self._new_id(),
                        program_id=event.program_id,
                        report_id=event.report_id,
                        person_id=person_id,
                        candidate_id=possible.person_id,
                        reasons=json.dumps(list(possible.reasons)),
                        status="open",
                        created_at=now,
                    )
                )
        await self._remember_keys(uow, person_id, event.blind_keys)
        person = (await s.execute(sa.select(PERSON).where(PERSON.c.id == person_id))).one()
        if event.identity and person.identity_sealed != event.identity:
            await s.execute(
                PERSON.update()
                .where(PERSON.c.id == person_id)
                .values(identity_sealed=event.identity)
            )

        case = (
            await s.execute(
                sa.select(CASE).where(CASE.c.person_id == person_id, CASE.c.status == "open")
            )
        ).first()
        policy = self._policies.for_program(event.program_id)
        if case is None:
            case_id, priority, case_is_new = self._new_id(), policy.priorities.default, True
            await s.execute(
                CASE.insert().values(
                    id=case_id,
                    program_id=event.program_id,
                    person_id=person_id,
                    status="open",
                    priority=priority,
                    opened_at=now,
                )
            )
            uow.publish(
                CaseOpened(
                    case_id=case_id, program_id=event.program_id, person_id=person_id, opened_at=now
                ),
                subject=str(case_id),
            )
        else:
            case_id, priority, case_is_new = case.id, case.priority, False

        episodes = [
            EpisodeRef(
                episode_id=row.id,
                incident_at=row.incident_at,
                sources=frozenset(row.sources.split(",")),
            )
            for row in await s.execute(sa.select(EPISODE).where(EPISODE.c.case_id == case_id))
        ]
        same = episode_for(event.incident_at, event.source_kind, episodes, window=self._window)
        if same is not None:
            await s.execute(
                EPISODE.update()
                .where(EPISODE.c.id == same.episode_id)
                .values(sources=",".join(sorted(same.sources | {event.source_kind})))
            )
            await self._link(uow, event, same.episode_id, case_id, match, now)
            return

        episode_id = self._new_id()
        repeat = not case_is_new and bool(episodes)
        plan = plan_episode(
            policy,
            incident_at=event.incident_at,
            consent=event.consent.value,
            do_not_contact=person.do_not_contact,
            deidentified=False,
            repeat=repeat,
            current_priority=priority,
        )
        await s.execute(
            EPISODE.insert().values(
                id=episode_id,
                program_id=event.program_id,
                case_id=case_id,
                person_id=person_id,
                incident_at=event.incident_at,
                sources=event.source_kind,
                consent=event.consent.value,
                deidentified=False,
                repeat=repeat,
                plan_reasons=json.dumps([str(r) for r in plan.reason]),
                created_at=now,
            )
        )
        uow.publish(
            EpisodeOpened(
                case_id=case_id,
                program_id=event.program_id,
                episode_id=episode_id,
                person_id=person_id,
                incident_at=event.incident_at,
                repeat=repeat,
            ),
            subject=str(case_id),
        )
        await self._link(uow, event, episode_id, case_id, match, now)
        if plan.priority is not None and plan.priority != priority:
            await s.execute(
                CASE.update().where(CASE.c.id == case_id).values(priority=plan.priority)
            )
        if repeat and plan.tasks:
            for task in await self._open_tasks(uow, case_id, kinds=(TaskKind.REMOTE_CONTACT,)):
                await self._close(
                    uow, task, status="cancelled", reason="superseded_by_repeat_overdose"
                )
        for planned in plan.tasks:
            await self._schedule_task(uow, planned, event.program_id, case_id, episode_id, now)

    async def _count_deidentified(
        self, uow: UnitOfWork, event: OverdoseReported, now: datetime
    ) -> None:
        """Counted, never assignable: an episode with no person and no case."""
        episode_id = self._new_id()
        await uow.session.execute(
            EPISODE.insert().values(
                id=episode_id,
                program_id=event.program_id,
                incident_at=event.incident_at,
                sources=event.source_kind,
                consent=event.consent.value,
                deidentified=True,
                repeat=False,
                plan_reasons=json.dumps(["deidentified_cannot_assign"]),
                created_at=now,
            )
        )
        await uow.session.execute(
            REPORT_LINK.insert().values(
                report_id=event.report_id,
                episode_id=episode_id,
                source_kind=event.source_kind,
                revision=event.revision,
                match="deidentified",
                linked_at=now,
            )
        )

    async def _candidates(
        self, uow: UnitOfWork, program_id: str, blind: BlindKeys
    ) -> list[PersonCandidate]:
        wanted = [(k, getattr(blind, k)) for k in _KEY_KINDS if getattr(blind, k)]
        if not wanted:
            return []
        s = uow.session
        ids = set(
            (
                await s.execute(
                    sa.select(PERSON_KEY.c.person_id)
                    .join(PERSON, PERSON.c.id == PERSON_KEY.c.person_id)
                    .where(
                        PERSON.c.program_id == program_id,
                        sa.or_(
                            *[
                                sa.and_(PERSON_KEY.c.kind == k, PERSON_KEY.c.value == v)
                                for k, v in wanted
                            ]
                        ),
                    )
                )
            ).scalars()
        )
        if not ids:
            return []
        keys: dict[uuid.UUID, dict[str, set[str]]] = {
            i: {k: set() for k in _KEY_KINDS} for i in ids
        }
        for row in await s.execute(sa.select(PERSON_KEY).where(PERSON_KEY.c.person_id.in_(ids))):
            keys[row.person_id][row.kind].add(row.value)
        candidates = []
        for row in await s.execute(sa.select(PERSON).where(PERSON.c.id.in_(ids))):
            identity: dict[str, Any] = (
                self._sealer.open_json(row.identity_sealed, context="identity")
                if row.identity_sealed
                else {}
            )
            candidates.append(
                PersonCandidate(
                    person_id=row.id,
                    family=identity.get("family"),
                    given=identity.get("given"),
                    dob=date.fromisoformat(identity["dob"]) if identity.get("dob") else None,
                    name_dob_keys=frozenset(keys[row.id]["name_dob"]),
                    phone_keys=frozenset(keys[row.id]["phone"]),
                    mrn_keys=frozenset(keys[row.id]["mrn"]),
                )
            )
        return candidates

    async def _remember_keys(self, uow: UnitOfWork, person_id: uuid.UUID, blind: BlindKeys) -> None:
        s = uow.session
        have = {
            (r.kind, r.value)
            for r in await s.execute(
                sa.select(PERSON_KEY).where(PERSON_KEY.c.person_id == person_id)
            )
        }
        for kind in _KEY_KINDS:
            value = getattr(blind, kind)
            if value and (kind, value) not in have:
                await s.execute(
                    PERSON_KEY.insert().values(person_id=person_id, kind=kind, value=value)
                )

    async def _link(
        self,
        uow: UnitOfWork,
        event: OverdoseReported,
        episode_id: uuid.UUID,
        case_id: uuid.UUID,
        match: str,
        now: datetime,
    ) -> None:
        await uow.session.execute(
            REPORT_LINK.insert().values(
                report_id=event.report_id,
                episode_id=episode_id,
                source_kind=event.source_kind,
                revision=event.revision,
                match=match,
                linked_at=now,
            )
        )
        uow.publish(
            ReportLinked(
                case_id=case_id,
                program_id=event.program_id,
                report_id=event.report_id,
                episode_id=episode_id,
                match=match,
            ),
            subject=str(case_id),
        )

    # --- tasks and timers ---------------------------------------------------------------

    async def _schedule_task(
        self,
        uow: UnitOfWork,
        planned: PlannedTask,
        program_id: str,
        case_id: uuid.UUID,
        episode_id: uuid.UUID,
        now: datetime,
    ) -> uuid.UUID:
        task_id = self._new_id()
        await uow.session.execute(
            TASK.insert().values(
                id=task_id,
                program_id=program_id,
                case_id=case_id,
                episode_id=episode_id,
                kind=planned.kind.value,
                status="open",
                priority=planned.priority,
                window_opens_at=planned.window_opens_at,
                due_at=planned.due_at,
                expires_at=planned.expires_at,
                policy_version=planned.policy_version,
                with_deputy=planned.with_deputy,
                failed_attempts=0,
                created_at=now,
            )
        )
        uow.publish(
            TaskScheduled(
                case_id=case_id,
                program_id=program_id,
                task_id=task_id,
                episode_id=episode_id,
                kind=planned.kind,
                priority=planned.priority,
                window_opens_at=planned.window_opens_at,
                due_at=planned.due_at,
                expires_at=planned.expires_at,
                policy_version=planned.policy_version,
                deputy=planned.deputy,
            ),
            subject=str(case_id),
        )
        due = {
            "opens": planned.window_opens_at,
            "due": planned.due_at,
            "expires": planned.expires_at,
        }
        if planned.kind is TaskKind.REMOTE_CONTACT:
            policy = self._policies.for_program(program_id)
            escalation = escalation_due(
                policy,
                incident_at=await self._incident_at(uow, episode_id),
                task_opened_at=planned.window_opens_at,
                failed_attempts=0,
                contact_made=False,
                now=planned.window_opens_at,
                priority=planned.priority,
            )
            if escalation is not None:
                due["escalate"] = escalation.escalate_at
        for kind, at in due.items():
            await timers.schedule(
                uow.session,
                key=f"{task_id}:{kind}",
                kind=kind,
                due_at=at,
                task_id=task_id,
                case_id=case_id,
                now=now,
            )
        return task_id

    async def _incident_at(self, uow: UnitOfWork, episode_id: uuid.UUID) -> datetime:
        incident: datetime = (
            await uow.session.execute(
                sa.select(EPISODE.c.incident_at).where(EPISODE.c.id == episode_id)
            )
        ).scalar_one()
        return incident

    async def _open_tasks(
        self, uow: UnitOfWork, case_id: uuid.UUID, kinds: Sequence[TaskKind] | None = None
    ) -> list[_Task]:
        query = sa.select(TASK).where(TASK.c.case_id == case_id, TASK.c.status == "open")
        if kinds:
            query = query.where(TASK.c.kind.in_([k.value for k in kinds]))
        return [_task(r) for r in await uow.session.execute(query.order_by(TASK.c.created_at))]

    async def _close(self, uow: UnitOfWork, task: _Task, *, status: str, reason: str) -> None:
        now = uow.clock.now()
        await uow.session.execute(
            TASK.update()
            .where(TASK.c.id == task.id)
            .values(status=status, closed_at=now, outcome=reason)
        )
        await timers.cancel_for_task(uow.session, task_id=task.id, now=now)
        common = {"case_id": task.case_id, "program_id": task.program_id, "task_id": task.id}
        if status == "completed":
            uow.publish(
                TaskCompleted(**common, outcome=reason, completed_at=now), subject=str(task.case_id)
            )
        elif status == "cancelled":
            uow.publish(
                TaskCancelled(**common, reason=reason, cancelled_at=now), subject=str(task.case_id)
            )

    async def _escalate(self, uow: UnitOfWork, task: _Task) -> bool:
        """Schedule the in-person visit when the ladder says so; True when it did."""
        policy = self._policies.for_program(task.program_id)
        now = uow.clock.now()
        escalation = escalation_due(
            policy,
            incident_at=await self._incident_at(uow, task.episode_id),
            task_opened_at=task.window_opens_at,
            failed_attempts=task.failed_attempts,
            contact_made=False,
            now=now,
            priority=task.priority,
        )
        if escalation is None or not escalation.is_due(now):
            return False
        await self._close(uow, task, status="completed", reason="escalated_to_in_person")
        await self._schedule_task(
            uow, escalation.task, task.program_id, task.case_id, task.episode_id, now
        )
        return True

    async def on_timer(self, uow: UnitOfWork, timer: timers.Timer, late: bool) -> None:
        """A durable timer fired (exactly once): announce it and move the task along."""
        if timer.task_id is None:
            return
        row = (await uow.session.execute(sa.select(TASK).where(TASK.c.id == timer.task_id))).first()
        if row is None or row.status != "open":
            return
        task = _task(row)
        now = uow.clock.now()
        common = {
            "case_id": task.case_id,
            "program_id": task.program_id,
            "task_id": task.id,
            "fired_at": now,
            "late": late,
        }
        subject = str(task.case_id)
        if timer.kind == "opens":
            uow.publish(TaskDue(**common), subject=subject)
        elif timer.kind == "due":
            uow.publish(TaskOverdue(**common), subject=subject)
        elif timer.kind == "expires":
            await uow.session.execute(
                TASK.update()
                .where(TASK.c.id == task.id)
                .values(status="expired", closed_at=now, outcome="window_closed")
            )
            await timers.cancel_for_task(uow.session, task_id=task.id, now=now)
            uow.publish(TaskExpired(**common), subject=subject)
        elif timer.kind == "escalate":
            await self._escalate(uow, task)

    # --- outreach activity ----------------------------------------------------------------

    async def on_activity(self, uow: UnitOfWork, envelope: Envelope) -> None:
        event = envelope.event()
        s = uow.session
        if isinstance(event, AttemptLogged):
            row = (await s.execute(sa.select(TASK).where(TASK.c.id == event.task_id))).first()
            if row is None or row.status != "open":
                return
            task = _task(row)
            if event.outcome == "declined":
                await self._stop_case(uow, event.case_id, reason="declined")
            elif event.outcome == "reached":
                if task.kind == TaskKind.FOLLOW_UP.value:  # the follow-up itself is done
                    await self._close(uow, task, status="completed", reason="contact_made")
                await self._contact(uow, event.case_id, event.occurred_at)
            elif event.outcome in FAILED_OUTCOMES:
                task = dataclasses.replace(task, failed_attempts=task.failed_attempts + 1)
                await s.execute(
                    TASK.update()
                    .where(TASK.c.id == task.id)
                    .values(failed_attempts=task.failed_attempts)
                )
                if task.kind == TaskKind.REMOTE_CONTACT.value:
                    await self._escalate(uow, task)
        elif isinstance(event, ContactMade):
            await self._contact(uow, event.case_id, event.occurred_at)
        elif isinstance(event, VisitCompleted):
            if event.reached:
                await self._contact(uow, event.case_id, event.occurred_at)
        elif isinstance(event, OutreachDeclined):
            await self._stop_case(uow, event.case_id, reason="declined")
        elif isinstance(event, DoNotContactRequested):
            case = (await s.execute(sa.select(CASE).where(CASE.c.id == event.case_id))).first()
            if case is not None:
                await s.execute(
                    PERSON.update().where(PERSON.c.id == case.person_id).values(do_not_contact=True)
                )
            await self._stop_case(uow, event.case_id, reason="do_not_contact")
        elif isinstance(event, OutreachConcluded):
            await self._stop_case(uow, event.case_id, reason="outreach_concluded")
            case = (await s.execute(sa.select(CASE).where(CASE.c.id == event.case_id))).first()
            if case is not None and case.status == "open":
                now = uow.clock.now()
                await s.execute(
                    CASE.update()
                    .where(CASE.c.id == event.case_id)
                    .values(status="closed", closed_at=now, close_reason=event.reason)
                )
                uow.publish(
                    CaseClosed(
                        case_id=event.case_id,
                        program_id=event.program_id,
                        reason=event.reason,
                        closed_at=now,
                    ),
                    subject=str(event.case_id),
                )

    async def _contact(self, uow: UnitOfWork, case_id: uuid.UUID, contact_at: datetime) -> None:
        """Contact made: the remote or visit task is done; follow-ups are planned."""
        done = False
        for task in await self._open_tasks(
            uow, case_id, kinds=(TaskKind.REMOTE_CONTACT, TaskKind.IN_PERSON_VISIT)
        ):
            await self._close(uow, task, status="completed", reason="contact_made")
            done = True
            episode_id, program_id, priority = task.episode_id, task.program_id, task.priority
        if not done:
            return
        case = (await uow.session.execute(sa.select(CASE).where(CASE.c.id == case_id))).one()
        person = (
            await uow.session.execute(sa.select(PERSON).where(PERSON.c.id == case.person_id))
        ).one()
        for planned in follow_ups(
            self._policies.for_program(program_id),
            contact_at=contact_at,
            declined=False,
            do_not_contact=person.do_not_contact,
            priority=priority,
        ):
            await self._schedule_task(
                uow, planned, program_id, case_id, episode_id, uow.clock.now()
            )

    async def _stop_case(self, uow: UnitOfWork, case_id: uuid.UUID, *, reason: str) -> None:
        for task in await self._open_tasks(uow, case_id):
            await self._close(uow, task, status="cancelled", reason=reason)


def _task(row: Any) -> _Task:
    return _Task(
        id=row.id,
        program_id=row.program_id,
        case_id=row.case_id,
        episode_id=row.episode_id,
        kind=row.kind,
        status=row.status,
        priority=row.priority,
        window_opens_at=row.window_opens_at,
        due_at=row.due_at,
        expires_at=row.expires_at,
        failed_attempts=row.failed_attempts,
    )
