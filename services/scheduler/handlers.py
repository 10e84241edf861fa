"""The scheduler's handlers: reports become people, cases, episodes and tasks; outreach
activity and timers move tasks along the ladder.

Each handler runs inside one unit of work (the inbox's, or the timer runner's): its rows, its
timers and its outbox events commit together. Decisions come from the pure modules
(`policy`, `linking`); this module only reads and writes what they need. Reports are applied
a batch at a time against a working set read once, and new rows are written once per table
(`batch`); a single report is a batch of one.

Revisions of a report (intake's A08 updates, resubmitted PCRs) update the report's link; they
do not plan again, unless one says the person died. A death, whenever it is reported (a fatal
first report, a fatal report of the same overdose, an A03 "expired" revising an ED report),
cancels every open task of the case (``person_deceased``), marks the person deceased so
nothing is planned to reach them again, publishes ``DeathRecorded`` and, where the program
offers it, opens a family support task. Times come from events and the unit of work's clock,
never from the system.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from services.scheduler import timers
from services.scheduler.batch import ReportBatch, Writes, blind_pairs, versioned_pairs
from services.scheduler.hot_spots import HotSpots
from services.scheduler.linking import (
    CaseFacts,
    LinkDecision,
    PersonFacts,
    ReportIdentity,
    episode_for,
    link,
    merge_people,
)
from services.scheduler.locks import lock_linking
from services.scheduler.matching import blocking
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
    effective_incident,
    escalation_due,
    family_support,
    follow_ups,
    is_late,
    plan_episode,
)
from services.scheduler.reports import Report, report_of
from shared.envelope import Envelope, Event
from shared.events import (
    FAILED_OUTCOMES,
    AttemptLogged,
    CaseClosed,
    CaseOpened,
    CommunityReferralReceived,
    ContactMade,
    DeathRecorded,
    DoNotContactRequested,
    EpisodeOpened,
    HotSpotConcluded,
    OutreachConcluded,
    OutreachDeclined,
    PersonsMerged,
    ReportLinked,
    TaskCancelled,
    TaskCompleted,
    TaskDue,
    TaskExpired,
    TaskOverdue,
    TaskScheduled,
    VisitCompleted,
)
from shared.events.scheduler import QuietHours, TaskKind
from shared.ids import new_uuid
from shared.sealing import BlindIndexer, Sealer
from shared.uow import UnitOfWork

__all__ = [
    "MatchDecidedError",
    "MatchDecision",
    "MatchNotFoundError",
    "PolicyBook",
    "Scheduler",
]

log = logging.getLogger(__name__)

ActivityHandler = Callable[[UnitOfWork, Writes, Any], Awaitable[None]]


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


class MatchNotFoundError(LookupError):
    """No such possible match in the program."""


class MatchDecidedError(Exception):
    """The possible match was decided already."""

    def __init__(self, status: str) -> None:
        super().__init__(f"the match was already {status}")
        self.status = status


@dataclass(frozen=True, slots=True)
class MatchDecision:
    """A possible match as a lead decided it."""

    id: uuid.UUID
    report_id: uuid.UUID
    person_id: uuid.UUID
    candidate_id: uuid.UUID
    reasons: list[str]
    status: str
    created_at: datetime
    level: str = "review"
    weight: float | None = None
    explanation: dict[str, Any] | None = None


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
    late: bool


class Scheduler:
    """Turns overdose reports and outreach activity into cases, episodes, tasks and timers."""

    def __init__(
        self,
        *,
        sealer: Sealer,
        policies: PolicyBook,
        new_id: Callable[[], uuid.UUID] = new_uuid,
        episode_window: timedelta = timedelta(hours=12),
        indexer: BlindIndexer | None = None,
    ) -> None:
        """``indexer`` derives the blocking keys intake does not publish (matching.blocking:
        the name key, the DOB keys of common typing errors); without it, only intake's keys
        and the overdose itself find candidates."""
        self._sealer = sealer
        self._indexer = indexer
        self._policies = policies
        self._new_id = new_id
        self._window = episode_window
        self.hot_spots = HotSpots(policies.for_program, new_id)
        """Spike alerts that open hot-spot tasks (hot_spots.py)."""
        self._activity: dict[type[Event], ActivityHandler] = {
            AttemptLogged: self._attempt_logged,
            ContactMade: self._contact_made,
            VisitCompleted: self._visit_completed,
            OutreachDeclined: self._declined,
            DoNotContactRequested: self._do_not_contact,
            OutreachConcluded: self._concluded,
            CommunityReferralReceived: self._community_referral,
            HotSpotConcluded: self._hot_spot_concluded,
        }
        """What the scheduler does with each kind of outreach activity: one line a type."""

    # --- reports -------------------------------------------------------------------------

    async def on_overdose(self, uow: UnitOfWork, envelope: Envelope) -> None:
        await self.on_overdoses(uow, [envelope])

    async def on_overdoses(self, uow: UnitOfWork, envelopes: Sequence[Envelope]) -> None:
        """Apply reports in their order, reading and writing the batch's rows once (batch.py)."""
        pairs = [(env.id, report_of(env.event())) for env in envelopes]
        reports = [(event_id, r) for event_id, r in pairs if r is not None]
        await self.apply_reports(
            uow, [r for _, r in reports], causes=[event_id for event_id, _ in reports]
        )

    async def apply_reports(
        self, uow: UnitOfWork, reports: Sequence[Report], *, causes: Sequence[str] = ()
    ) -> None:
        """Reports from any source (scheduler.reports), in order, as one batch. `causes`, when
        given, are the reports' event ids: what each publishes continues that event's trace."""
        if not reports:
            return
        identities = {
            r.report_id: self._report_identity(r)
            for r in reports
            if r.identity and not r.deidentified
        }
        lookups = {
            report_id: self._lookup_keys(identity) for report_id, identity in identities.items()
        }
        # other replicas' batches of these people wait, and these wait for theirs (locks.py)
        await lock_linking(uow.session, reports, lookups)
        batch = await ReportBatch.load(uow.session, reports, self._open_identity, lookups)
        for n, report in enumerate(reports):
            with uow.caused_by(causes[n] if causes else None):
                await self._apply_report(
                    uow,
                    batch,
                    report,
                    identities.get(report.report_id),
                    lookups.get(report.report_id),
                )
        await batch.writes.flush(uow.session)

    def _open_identity(self, sealed: str) -> dict[str, Any]:
        identity: dict[str, Any] = self._sealer.open_json(sealed, context="identity")
        return identity

    def _report_identity(self, event: Report) -> ReportIdentity:
        """Who the report is about and the overdose it reports, opened in memory."""
        identity = self._open_identity(event.identity) if event.identity else {}
        address = identity.get("address")
        derived: list[tuple[str, str, str]] = []
        for indexer in self._indexer.held if self._indexer is not None else ():
            derived += [
                (indexer.version, kind, value)
                for kind, value in blocking.stored_keys(
                    indexer, family=identity.get("family"), given=identity.get("given")
                )
            ]
        active = self._indexer.version if self._indexer is not None else None
        return ReportIdentity(
            family=identity.get("family"),
            given=identity.get("given"),
            middle=identity.get("middle"),
            dob=date.fromisoformat(identity["dob"]) if identity.get("dob") else None,
            sex=identity.get("sex"),
            postal_code=address.get("postal_code") if isinstance(address, dict) else None,
            phones=tuple(identity.get("phones") or ()),
            mrn=identity.get("mrn"),
            blind=event.blind_keys,
            derived_keys=tuple((k, v) for version, k, v in derived if version == active),
            versioned_keys=(*versioned_pairs(event), *derived),
            source_kind=event.source_kind,
            incident_at=effective_incident(event.incident_at, event.received_at)[0],
            county=event.county,
            hospital=event.hospital,
            transported=event.transported,
        )

    def _lookup_keys(self, report: ReportIdentity) -> list[tuple[str, str]]:
        """Every key to find the report's candidates by: intake's and the derived ones."""
        keys = blind_pairs(report.blind) + list(report.derived_keys)
        keys += [(kind, value) for _, kind, value in report.versioned_keys]
        for indexer in self._indexer.held if self._indexer is not None else ():
            keys += blocking.dob_variant_keys(indexer, report.dob)
        return list(dict.fromkeys(keys))

    def _recorded(self, report: ReportIdentity) -> list[tuple[str, str, str]]:
        """The report's keys under the versions this scheduler holds: a report published
        before a version retired still finds people by it, but brings no key of it back."""
        held = self._indexer.versions if self._indexer is not None else None
        return [key for key in report.versioned_keys if held is None or key[0] in held]

    async def _apply_report(
        self,
        uow: UnitOfWork,
        batch: ReportBatch,
        event: Report,
        report: ReportIdentity | None = None,
        lookup: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        s = uow.session
        now = uow.clock.now()
        known = batch.revision(event.report_id)
        if known is not None:
            if event.revision > known:
                await batch.revise(s, event.report_id, event.revision)
                if event.fatal:  # e.g. an A03 "expired" for the visit
                    await self._death_of_linked(uow, batch, event, now)
            return
        if event.deidentified:
            self._count_deidentified(batch, event, now)
            return

        if report is None:
            report = self._report_identity(event)
        if lookup is None:
            lookup = self._lookup_keys(report)
        policy = self._policies.for_program(event.program_id)
        candidates = batch.candidates(
            event.program_id,
            lookup,
            incident_at=report.incident_at,
            source_kind=event.source_kind,
        )
        decision = link(report, candidates, policy.linking.thresholds, policy.linking.model)
        if decision.kind == "deidentified":  # nothing left to reach the person by
            self._count_deidentified(batch, event, now)
            return
        if decision.kind == "exact" and decision.person_id is not None:
            person = batch.person(decision.person_id)
            match = "exact"
        else:
            match = "possible" if decision.kind == "possible" else "new_person"
            person = batch.add_person(
                {
                    "id": self._new_id(),
                    "program_id": event.program_id,
                    "identity_sealed": event.identity,
                    "do_not_contact": False,
                    "created_at": now,
                }
            )
            for possible in decision.possible:
                batch.writes.insert(
                    POSSIBLE_MATCH,
                    {
                        "id": self._new_id(),
                        "program_id": event.program_id,
                        "report_id": event.report_id,
                        "person_id": person.id,
                        "candidate_id": possible.person_id,
                        "reasons": json.dumps(list(possible.reasons)),
                        "status": "open",
                        "level": possible.level,
                        "weight": possible.weight,
                        "explanation": json.dumps(
                            possible.explanation.as_dict(policy.linking.thresholds)
                        ),
                        "created_at": now,
                    },
                )
        batch.remember_keys(person, self._recorded(report))
        if event.identity and person.identity_sealed != event.identity:
            await batch.reseal(s, person, event.identity)

        case = batch.open_case(person.id)
        case_is_new = case is None
        if case is None:
            case = batch.open(
                {
                    "id": self._new_id(),
                    "program_id": event.program_id,
                    "person_id": person.id,
                    "status": "open",
                    "priority": policy.priorities.default,
                    "opened_at": now,
                    "declined": False,
                }
            )
            uow.publish(
                CaseOpened(
                    case_id=case.id, program_id=event.program_id, person_id=person.id, opened_at=now
                ),
                subject=str(case.id),
            )

        incident_at, _ = effective_incident(event.incident_at, event.received_at)
        same = episode_for(incident_at, event.source_kind, case.episodes, window=self._window)
        if same is not None:
            await batch.merge_source(
                s, case, same, event.source_kind, event.hospital, transported=event.transported
            )
            self._link(uow, batch, event, same.episode_id, case.id, match, now, policy, decision)
            if event.fatal and not same.fatal:
                await batch.mark_fatal(s, case, same.episode_id)
                await self._record_death(uow, batch, event, case.id, person.id, same.episode_id)
            return

        episode_id = self._new_id()
        repeat = not case_is_new and bool(case.episodes)
        plan = plan_episode(
            policy,
            incident_at=event.incident_at,
            received_at=event.received_at,
            now=now,
            consent=event.consent.value,
            do_not_contact=person.do_not_contact,
            deidentified=False,
            repeat=repeat,
            current_priority=case.priority,
            fatal=event.fatal,
            deceased=person.deceased,
        )
        batch.add_episode(
            case,
            {
                "id": episode_id,
                "program_id": event.program_id,
                "case_id": case.id,
                "person_id": person.id,
                "incident_at": plan.incident_at,
                "received_at": plan.received_at,
                "windows_from": plan.windows_from,
                "late": plan.late,
                "fatal": event.fatal,
                "overdose": event.overdose,
                "sources": event.source_kind,
                "county": event.county,
                "hospital": event.hospital,
                "transported": event.transported,
                "consent": event.consent.value,
                "deidentified": False,
                "repeat": repeat,
                "plan_reasons": json.dumps([str(r) for r in plan.reason]),
                "created_at": now,
            },
        )
        uow.publish(
            EpisodeOpened(
                case_id=case.id,
                program_id=event.program_id,
                episode_id=episode_id,
                person_id=person.id,
                incident_at=plan.incident_at,
                repeat=repeat,
                received_at=plan.received_at,
                windows_from=plan.windows_from,
                late=plan.late,
                reasons=[str(r) for r in plan.reason],
                source_kind=event.source_kind,
                fatal=event.fatal,
                overdose=event.overdose,
                source_org=event.source_org,
                county=event.county,
                state=event.state,
            ),
            subject=str(case.id),
        )
        self._link(uow, batch, event, episode_id, case.id, match, now, policy, decision)
        if event.fatal:
            await self._record_death(uow, batch, event, case.id, person.id, episode_id)
            return
        if repeat:  # a repeat overdose reopens outreach the person had declined
            await batch.writes.update(s, CASE, case.id, declined=False)
        if plan.priority is not None and plan.priority != case.priority:
            await batch.reprioritize(s, case, plan.priority)
        if repeat and plan.tasks:
            remote = (TaskKind.REMOTE_CONTACT,)
            older = [] if batch.is_new_case(case) else await self._open_tasks(uow, case.id, remote)
            newer = [_task(t) for t in batch.new_tasks(case.id, remote)]
            for task in [*older, *newer]:
                await self._close(
                    uow,
                    batch.writes,
                    task,
                    status="cancelled",
                    reason="superseded_by_repeat_overdose",
                )
        for planned in plan.tasks:
            self._schedule_task(
                uow,
                batch.writes,
                planned,
                event.program_id,
                case.id,
                episode_id,
                plan.windows_from,
                now,
            )

    def _count_deidentified(self, batch: ReportBatch, event: Report, now: datetime) -> None:
        """Counted, never assignable: an episode with no person and no case."""
        episode_id = self._new_id()
        incident_at, _ = effective_incident(event.incident_at, event.received_at)
        late = is_late(
            self._policies.for_program(event.program_id),
            incident_at=event.incident_at,
            received_at=event.received_at,
        )
        batch.add_episode(
            None,
            {
                "id": episode_id,
                "program_id": event.program_id,
                "case_id": None,
                "person_id": None,
                "incident_at": incident_at,
                "received_at": event.received_at,
                "windows_from": None,
                "late": late,
                "fatal": event.fatal,
                "overdose": event.overdose,
                "sources": event.source_kind,
                "county": event.county,
                "hospital": event.hospital,
                "transported": event.transported,
                "consent": event.consent.value,
                "deidentified": True,
                "repeat": False,
                "plan_reasons": json.dumps(["deidentified_cannot_assign"]),
                "created_at": now,
            },
        )
        batch.link(
            {
                "report_id": event.report_id,
                "episode_id": episode_id,
                "source_kind": event.source_kind,
                "revision": event.revision,
                "match": "deidentified",
                "weight": None,
                "explanation": None,
                "linked_at": now,
            }
        )

    def _link(
        self,
        uow: UnitOfWork,
        batch: ReportBatch,
        event: Report,
        episode_id: uuid.UUID,
        case_id: uuid.UUID,
        match: str,
        now: datetime,
        policy: Policy,
        decision: LinkDecision,
    ) -> None:
        explanation = decision.explanation
        batch.link(
            {
                "report_id": event.report_id,
                "episode_id": episode_id,
                "source_kind": event.source_kind,
                "revision": event.revision,
                "match": match,
                "weight": explanation.weight if explanation else None,
                "explanation": (
                    json.dumps(explanation.as_dict(policy.linking.thresholds))
                    if explanation
                    else None
                ),
                "linked_at": now,
            }
        )
        uow.publish(
            ReportLinked(
                case_id=case_id,
                program_id=event.program_id,
                report_id=event.report_id,
                episode_id=episode_id,
                match=match,
                source_kind=event.source_kind,
                source_org=event.source_org,
                incident_at=event.incident_at,
                received_at=event.received_at,
                late=is_late(policy, incident_at=event.incident_at, received_at=event.received_at),
            ),
            subject=str(case_id),
        )

    # --- deaths ----------------------------------------------------------------------------

    async def _death_of_linked(
        self, uow: UnitOfWork, batch: ReportBatch, event: Report, now: datetime
    ) -> None:
        """A revision says the person of an already linked report died."""
        s = uow.session
        found = (
            await s.execute(
                sa.select(EPISODE.c.id, EPISODE.c.case_id, EPISODE.c.person_id, EPISODE.c.fatal)
                .join(REPORT_LINK, REPORT_LINK.c.episode_id == EPISODE.c.id)
                .where(REPORT_LINK.c.report_id == event.report_id)
            )
        ).first()
        row: tuple[Any, ...] | None = tuple(found) if found is not None else None
        if row is None and batch.writes.is_new(REPORT_LINK, event.report_id):
            # linked earlier in this very batch: its rows are not in the database yet
            link = next(
                r for r in batch.writes.new(REPORT_LINK) if r["report_id"] == event.report_id
            )
            episode = next(e for e in batch.writes.new(EPISODE) if e["id"] == link["episode_id"])
            row = (episode["id"], episode["case_id"], episode["person_id"], episode["fatal"])
        if row is None:
            return
        episode_id, case_id, person_id, fatal = row
        if fatal:
            return
        known = batch.open_case(person_id) if person_id is not None else None
        if known is not None and known.id == case_id:
            await batch.mark_fatal(s, known, episode_id)
        else:
            await batch.writes.update(s, EPISODE, episode_id, fatal=True)
        if case_id is not None and person_id is not None:
            await self._record_death(uow, batch, event, case_id, person_id, episode_id)

    async def _record_death(
        self,
        uow: UnitOfWork,
        batch: ReportBatch,
        event: Report,
        case_id: uuid.UUID,
        person_id: uuid.UUID,
        episode_id: uuid.UUID,
    ) -> None:
        """The person died: every open task of the case is cancelled, nothing is planned to
        reach them again, and the family is offered support where the program chooses it."""
        s = uow.session
        now = uow.clock.now()
        person = batch.known_person(person_id)
        if person is not None:
            await batch.mark_deceased(s, person, now)
        else:
            await batch.writes.update(s, PERSON, person_id, deceased_at=now)
        older = [] if batch.writes.is_new(CASE, case_id) else await self._open_tasks(uow, case_id)
        tasks = [*older, *(_task(t) for t in batch.new_tasks(case_id))]
        supported = False
        for task in tasks:
            if task.kind == TaskKind.FAMILY_SUPPORT.value:
                supported = True
                continue
            await self._close(uow, batch.writes, task, status="cancelled", reason="person_deceased")
        uow.publish(
            DeathRecorded(
                case_id=case_id,
                program_id=event.program_id,
                person_id=person_id,
                episode_id=episode_id,
                died_at=event.died_at,
                recorded_at=now,
                source_kind=event.source_kind,
            ),
            subject=str(case_id),
        )
        planned = family_support(self._policies.for_program(event.program_id), recorded_at=now)
        if planned is not None and not supported:
            self._schedule_task(
                uow, batch.writes, planned, event.program_id, case_id, episode_id, now, now
            )

    # --- tasks and timers ---------------------------------------------------------------

    def _schedule_task(
        self,
        uow: UnitOfWork,
        writes: Writes,
        planned: PlannedTask,
        program_id: str,
        case_id: uuid.UUID,
        episode_id: uuid.UUID,
        windows_from: datetime,
        now: datetime,
    ) -> uuid.UUID:
        """The task, its timers and its TaskScheduled; windows_from is the episode's (the
        time its windows count from)."""
        task_id = self._new_id()
        writes.insert(
            TASK,
            {
                "id": task_id,
                "program_id": program_id,
                "case_id": case_id,
                "episode_id": episode_id,
                "kind": planned.kind.value,
                "status": "open",
                "priority": planned.priority,
                "window_opens_at": planned.window_opens_at,
                "due_at": planned.due_at,
                "expires_at": planned.expires_at,
                "policy_version": planned.policy_version,
                "with_deputy": planned.with_deputy,
                "late": planned.late,
                "failed_attempts": 0,
                "created_at": now,
                "closed_at": None,
                "outcome": None,
            },
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
                late=planned.late,
                quiet_hours=_quiet_hours(self._policies.for_program(program_id)),
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
                windows_from=windows_from,
                task_opened_at=planned.window_opens_at,
                failed_attempts=0,
                contact_made=False,
                now=planned.window_opens_at,
                priority=planned.priority,
                late=planned.late,
            )
            if escalation is not None:
                due["escalate"] = escalation.escalate_at
        for kind, at in due.items():
            writes.insert(
                timers.TIMER,
                {
                    "key": f"{task_id}:{kind}",
                    "kind": kind,
                    "due_at": at,
                    "task_id": task_id,
                    "case_id": case_id,
                    "created_at": now,
                    "cancelled_at": None,
                },
            )
        return task_id

    async def _windows_from(self, uow: UnitOfWork, episode_id: uuid.UUID) -> datetime:
        """The time an episode's windows count from (episodes from before late reports were
        handled count from their incident)."""
        start: datetime = (
            await uow.session.execute(
                sa.select(sa.func.coalesce(EPISODE.c.windows_from, EPISODE.c.incident_at)).where(
                    EPISODE.c.id == episode_id
                )
            )
        ).scalar_one()
        return start

    async def _open_tasks(
        self, uow: UnitOfWork, case_id: uuid.UUID, kinds: Sequence[TaskKind] | None = None
    ) -> list[_Task]:
        query = sa.select(TASK).where(TASK.c.case_id == case_id, TASK.c.status == "open")
        if kinds:
            query = query.where(TASK.c.kind.in_([k.value for k in kinds]))
        rows = await uow.session.execute(query.order_by(TASK.c.created_at))
        return [_task(r._mapping) for r in rows]

    async def _close(
        self, uow: UnitOfWork, writes: Writes, task: _Task, *, status: str, reason: str
    ) -> None:
        now = uow.clock.now()
        await writes.update(
            uow.session, TASK, task.id, status=status, closed_at=now, outcome=reason
        )
        await writes.cancel_timers(uow.session, task_id=task.id, now=now)
        common = {"case_id": task.case_id, "program_id": task.program_id, "task_id": task.id}
        if status == "completed":
            uow.publish(
                TaskCompleted(**common, outcome=reason, completed_at=now), subject=str(task.case_id)
            )
        elif status == "cancelled":
            uow.publish(
                TaskCancelled(**common, reason=reason, cancelled_at=now), subject=str(task.case_id)
            )

    async def _escalate(self, uow: UnitOfWork, writes: Writes, task: _Task) -> bool:
        """Schedule the in-person visit when the ladder says so; True when it did."""
        policy = self._policies.for_program(task.program_id)
        now = uow.clock.now()
        windows_from = await self._windows_from(uow, task.episode_id)
        escalation = escalation_due(
            policy,
            windows_from=windows_from,
            task_opened_at=task.window_opens_at,
            failed_attempts=task.failed_attempts,
            contact_made=False,
            now=now,
            priority=task.priority,
            late=task.late,
        )
        if escalation is None or not escalation.is_due(now):
            return False
        await self._close(uow, writes, task, status="completed", reason="escalated_to_in_person")
        self._schedule_task(
            uow,
            writes,
            escalation.task,
            task.program_id,
            task.case_id,
            task.episode_id,
            windows_from,
            now,
        )
        return True

    async def on_timer(self, uow: UnitOfWork, timer: timers.Timer, late: bool) -> None:
        """A durable timer fired (exactly once): announce it and move the task along."""
        writes = Writes()
        await self._on_timer(uow, writes, timer, late)
        await writes.flush(uow.session)

    async def _on_timer(
        self, uow: UnitOfWork, writes: Writes, timer: timers.Timer, late: bool
    ) -> None:
        if timer.task_id is None:
            return
        row = (await uow.session.execute(sa.select(TASK).where(TASK.c.id == timer.task_id))).first()
        if row is None or row.status != "open":
            return
        task = _task(row._mapping)
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
            await self._escalate(uow, writes, task)

    # --- outreach activity ----------------------------------------------------------------

    async def on_activity(self, uow: UnitOfWork, envelope: Envelope) -> None:
        """What the team did, by event type (ACTIVITY); other types are not the scheduler's."""
        event = envelope.event()
        handler = self._activity.get(type(event))
        if handler is None:
            return
        writes = Writes()
        await handler(uow, writes, event)
        await writes.flush(uow.session)

    async def _community_referral(
        self, uow: UnitOfWork, _writes: Writes, event: CommunityReferralReceived
    ) -> None:
        """A referral the team entered is a report like any other."""
        report = report_of(event)
        if report is not None:
            await self.apply_reports(uow, [report])

    async def _hot_spot_concluded(
        self, uow: UnitOfWork, _writes: Writes, event: HotSpotConcluded
    ) -> None:
        await self.hot_spots.concluded(uow, event)

    async def _attempt_logged(self, uow: UnitOfWork, writes: Writes, event: AttemptLogged) -> None:
        s = uow.session
        row = (await s.execute(sa.select(TASK).where(TASK.c.id == event.task_id))).first()
        if row is None or row.status != "open":
            return
        task = _task(row._mapping)
        if event.outcome == "declined":
            await self._declined(uow, writes, event)
        elif event.outcome == "reached":
            if task.kind == TaskKind.FOLLOW_UP.value:  # the follow-up itself is done
                await self._close(uow, writes, task, status="completed", reason="contact_made")
            await self._contact(uow, writes, event.case_id, event.occurred_at)
        elif event.outcome in FAILED_OUTCOMES:
            task = dataclasses.replace(task, failed_attempts=task.failed_attempts + 1)
            await s.execute(
                TASK.update()
                .where(TASK.c.id == task.id)
                .values(failed_attempts=task.failed_attempts)
            )
            if task.kind == TaskKind.REMOTE_CONTACT.value:
                await self._escalate(uow, writes, task)

    async def _contact_made(self, uow: UnitOfWork, writes: Writes, event: ContactMade) -> None:
        await self._contact(uow, writes, event.case_id, event.occurred_at)

    async def _visit_completed(
        self, uow: UnitOfWork, writes: Writes, event: VisitCompleted
    ) -> None:
        if event.reached:
            await self._contact(uow, writes, event.case_id, event.occurred_at)

    async def _declined(
        self, uow: UnitOfWork, writes: Writes, event: OutreachDeclined | AttemptLogged
    ) -> None:
        """Declined is honoured: the case remembers it (until a repeat overdose) and stops."""
        await uow.session.execute(
            CASE.update().where(CASE.c.id == event.case_id).values(declined=True)
        )
        await self._stop_case(uow, writes, event.case_id, reason="declined")

    async def _do_not_contact(
        self, uow: UnitOfWork, writes: Writes, event: DoNotContactRequested
    ) -> None:
        """Final: the person, not only the case, is never to be contacted again."""
        s = uow.session
        case = (await s.execute(sa.select(CASE).where(CASE.c.id == event.case_id))).first()
        if case is not None:
            await s.execute(
                PERSON.update().where(PERSON.c.id == case.person_id).values(do_not_contact=True)
            )
        await self._stop_case(uow, writes, event.case_id, reason="do_not_contact")

    async def _concluded(self, uow: UnitOfWork, writes: Writes, event: OutreachConcluded) -> None:
        s = uow.session
        await self._stop_case(uow, writes, event.case_id, reason="outreach_concluded")
        case = (await s.execute(sa.select(CASE).where(CASE.c.id == event.case_id))).first()
        if case is None or case.status != "open":
            return
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

    # --- people merged ----------------------------------------------------------------------

    async def decide_match(
        self, uow: UnitOfWork, *, match_id: uuid.UUID, program_id: str, confirm: bool
    ) -> MatchDecision:
        """A team lead's decision on a possible match: confirmed, the two people are one
        (merged, and PersonsMerged published); split, they stay two. Not committed here."""
        s = uow.session
        row = (
            await s.execute(sa.select(POSSIBLE_MATCH).where(POSSIBLE_MATCH.c.id == match_id))
        ).first()
        if row is None or row.program_id != program_id:
            raise MatchNotFoundError(match_id)
        if row.status != "open":
            raise MatchDecidedError(row.status)
        now = uow.clock.now()
        status = "confirmed" if confirm else "split"
        await s.execute(
            POSSIBLE_MATCH.update()
            .where(POSSIBLE_MATCH.c.id == match_id)
            .values(status=status, resolved_at=now)
        )
        if confirm and row.person_id != row.candidate_id:
            await self._merge(uow, row, now)
        return MatchDecision(
            id=row.id,
            report_id=row.report_id,
            person_id=row.person_id,
            candidate_id=row.candidate_id,
            reasons=json.loads(row.reasons),
            status=status,
            created_at=row.created_at,
            level=row.level,
            weight=row.weight,
            explanation=json.loads(row.explanation) if row.explanation else None,
        )

    async def _person_facts(self, uow: UnitOfWork, person_id: uuid.UUID) -> PersonFacts:
        s = uow.session
        person = (await s.execute(sa.select(PERSON).where(PERSON.c.id == person_id))).first()
        cases = await s.execute(sa.select(CASE).where(CASE.c.person_id == person_id))
        return PersonFacts(
            person_id=person_id,
            do_not_contact=bool(person and person.do_not_contact),
            deceased_at=person.deceased_at if person else None,
            cases=tuple(
                CaseFacts(
                    case_id=c.id,
                    open=c.status == "open",
                    declined=c.declined,
                    priority=c.priority,
                    opened_at=c.opened_at,
                )
                for c in cases
            ),
        )

    async def _merge(self, uow: UnitOfWork, match: Any, now: datetime) -> None:
        """The report's person is the candidate: linking.merge_people decides, this applies."""
        s = uow.session
        kept_id, merged_id = match.candidate_id, match.person_id
        merge = merge_people(
            await self._person_facts(uow, kept_id), await self._person_facts(uow, merged_id)
        )
        have = {
            (k.kind, k.value)
            for k in await s.execute(sa.select(PERSON_KEY).where(PERSON_KEY.c.person_id == kept_id))
        }
        for k in list(
            await s.execute(sa.select(PERSON_KEY).where(PERSON_KEY.c.person_id == merged_id))
        ):
            if (k.kind, k.value) not in have:
                await s.execute(
                    PERSON_KEY.insert().values(
                        person_id=kept_id, kind=k.kind, value=k.value, version=k.version
                    )
                )
        await s.execute(PERSON_KEY.delete().where(PERSON_KEY.c.person_id == merged_id))
        await s.execute(
            PERSON.update()
            .where(PERSON.c.id == kept_id)
            .values(do_not_contact=merge.do_not_contact, deceased_at=merge.deceased_at)
        )
        for table in (CASE, EPISODE):
            await s.execute(
                table.update().where(table.c.person_id == merged_id).values(person_id=kept_id)
            )
        folded = list(merge.folded_case_ids)
        if folded and merge.case_id is not None:
            for table in (EPISODE, TASK, timers.TIMER):
                await s.execute(
                    table.update().where(table.c.case_id.in_(folded)).values(case_id=merge.case_id)
                )
            await s.execute(
                CASE.update()
                .where(CASE.c.id.in_(folded))
                .values(status="closed", closed_at=now, close_reason="duplicate")
            )
        if merge.case_id is not None:
            await s.execute(
                CASE.update()
                .where(CASE.c.id == merge.case_id)
                .values(declined=merge.declined, priority=merge.priority)
            )
        await self._repoint_matches(uow, kept_id=kept_id, merged_id=merged_id, now=now)
        uow.publish(
            PersonsMerged(
                program_id=match.program_id,
                match_id=match.id,
                person_id=kept_id,
                merged_person_id=merged_id,
                case_id=merge.case_id,
                folded_case_ids=folded,
                moved_case_ids=list(merge.moved_case_ids),
                do_not_contact=merge.do_not_contact,
                declined=merge.declined,
                deceased_at=merge.deceased_at,
                merged_at=now,
            ),
            subject=str(merge.case_id or kept_id),
        )
        if merge.case_id is not None and merge.stop is not None:
            writes = Writes()
            for task in await self._open_tasks(uow, merge.case_id):
                if merge.stop == "person_deceased" and task.kind == TaskKind.FAMILY_SUPPORT.value:
                    continue
                await self._close(uow, writes, task, status="cancelled", reason=merge.stop)
            await writes.flush(s)

    async def _repoint_matches(
        self, uow: UnitOfWork, *, kept_id: uuid.UUID, merged_id: uuid.UUID, now: datetime
    ) -> None:
        """Open possible matches of the merged person are the kept person's now; one that
        would match the person with themself is settled."""
        s = uow.session
        still_open = POSSIBLE_MATCH.c.status == "open"
        for column in (POSSIBLE_MATCH.c.person_id, POSSIBLE_MATCH.c.candidate_id):
            await s.execute(
                POSSIBLE_MATCH.update()
                .where(still_open, column == merged_id)
                .values({column.name: kept_id})
            )
        await s.execute(
            POSSIBLE_MATCH.update()
            .where(still_open, POSSIBLE_MATCH.c.person_id == POSSIBLE_MATCH.c.candidate_id)
            .values(status="confirmed", resolved_at=now)
        )

    async def _contact(
        self, uow: UnitOfWork, writes: Writes, case_id: uuid.UUID, contact_at: datetime
    ) -> None:
        """Contact made: the remote or visit task is done; follow-ups are planned."""
        done = False
        for task in await self._open_tasks(
            uow, case_id, kinds=(TaskKind.REMOTE_CONTACT, TaskKind.IN_PERSON_VISIT)
        ):
            await self._close(uow, writes, task, status="completed", reason="contact_made")
            done = True
            episode_id, program_id, priority = task.episode_id, task.program_id, task.priority
        if not done:
            return
        case = (await uow.session.execute(sa.select(CASE).where(CASE.c.id == case_id))).one()
        person = (
            await uow.session.execute(sa.select(PERSON).where(PERSON.c.id == case.person_id))
        ).one()
        plans = follow_ups(
            self._policies.for_program(program_id),
            contact_at=contact_at,
            declined=case.declined,
            do_not_contact=person.do_not_contact,
            priority=priority,
        )
        if not plans:
            return
        windows_from = await self._windows_from(uow, episode_id)
        for planned in plans:
            self._schedule_task(
                uow, writes, planned, program_id, case_id, episode_id, windows_from, uow.clock.now()
            )

    async def _stop_case(
        self, uow: UnitOfWork, writes: Writes, case_id: uuid.UUID, *, reason: str
    ) -> None:
        for task in await self._open_tasks(uow, case_id):
            await self._close(uow, writes, task, status="cancelled", reason=reason)


def _quiet_hours(policy: Policy) -> QuietHours | None:
    """The program's quiet hours as tasks carry them (for texts sent by hand)."""
    quiet = policy.quiet_hours
    if not quiet.applies_to or quiet.start == quiet.end:
        return None
    return QuietHours(
        start=quiet.start.strftime("%H:%M"),
        end=quiet.end.strftime("%H:%M"),
        timezone=policy.timezone,
        channels=list(quiet.applies_to),
    )


def _task(row: Mapping[Any, Any]) -> _Task:
    return _Task(**{f.name: row[f.name] for f in dataclasses.fields(_Task)})
