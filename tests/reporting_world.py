"""A reporting service (SQLite) fed through its real consumer path (inbox and batch handler),
and a history writer that publishes what intake, the scheduler and outreach would, for unit
tests of the read models and the metrics API (no Kafka: the world delivers the events).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from services.reporting.app import create_app
from shared.clock import ManualClock
from shared.db import create_engine
from shared.envelope import Envelope, Event
from shared.events import (
    AttemptLogged,
    BlindKeys,
    CaseOpened,
    CommunityReferralReceived,
    Consent,
    ContactMade,
    DeathRecorded,
    DoNotContactRequested,
    EpisodeOpened,
    HotSpotConcluded,
    InboundRejected,
    Location,
    OutreachConcluded,
    OutreachDeclined,
    OverdoseReported,
    PersonsMerged,
    ReferralMade,
    ReferralStatusChanged,
    ReportLinked,
    ServiceItem,
    ServicesProvided,
    TaskCompleted,
    TaskScheduled,
    VisitCompleted,
    VisitScheduled,
)
from shared.events.scheduler import TaskKind
from shared.inbox import InboxProcessor, IncomingMessage
from shared.migrations import upgrade
from shared.settings import Settings
from tests.tokens import DevTokens

SEALED = "v1.k1.c2VhbGVkLWlkZW50aXR5LW5ldmVyLXN0b3JlZA"
"""A sealed token as intake would put in a report: reporting must never keep it."""
BLIND = "b" * 64
"""A blind key as intake would put in a report: reporting must never keep it."""

LATE_AFTER = timedelta(hours=72)


@dataclass
class Person:
    person_id: uuid.UUID = field(default_factory=uuid.uuid4)
    case_id: uuid.UUID = field(default_factory=uuid.uuid4)
    opened: bool = False


@dataclass
class Episode:
    person: Person | None
    episode_id: uuid.UUID
    report_id: uuid.UUID
    incident_at: datetime
    windows_from: datetime
    remote_task: uuid.UUID | None = None
    visit_task: uuid.UUID | None = None

    @property
    def case_id(self) -> uuid.UUID:
        assert self.person is not None, "a de-identified report has no case"
        return self.person.case_id


class History:
    """Writes the events of a program's history as its services would publish them."""

    def __init__(self, program: str = "demo") -> None:
        self.program = program
        self.envelopes: list[Envelope] = []

    def _emit(self, event: Event, subject: str, at: datetime) -> Envelope:
        envelope = Envelope.wrap(event, source="/test", subject=subject, time=at)
        self.envelopes.append(envelope)
        return envelope

    def _case(self, event: Event, person: Person, at: datetime) -> Envelope:
        return self._emit(event, str(person.case_id), at)

    # -- intake and the scheduler -----------------------------------------------------------

    def report(
        self,
        *,
        at: datetime,
        received_at: datetime | None = None,
        source: str = "ems",
        org: str = "demo-ems",
        county: str | None = "Guilford",
        consent: Consent = Consent.ACCEPTED,
        fatal: bool = False,
        deidentified: bool = False,
        report_id: uuid.UUID | None = None,
        revision: int = 1,
    ) -> OverdoseReported:
        received = received_at or at + timedelta(minutes=30)
        event = OverdoseReported(
            report_id=report_id or uuid.uuid4(),
            revision=revision,
            program_id=self.program,
            source_kind=source,
            source_org=org,
            source_ref=f"ref-{uuid.uuid4().hex[:8]}",
            incident_at=at,
            received_at=received,
            identity=None if deidentified else SEALED,
            blind_keys=BlindKeys() if deidentified else BlindKeys(name_dob=BLIND, phone=BLIND),
            deidentified=deidentified,
            location=Location(county=county, state="NC", address=None if deidentified else SEALED),
            opioid=True,
            any_drug=True,
            reasons=[],
            consent=consent,
            fatal=fatal,
        )
        self._emit(event, "person-key", received)
        return event

    def overdose(
        self,
        person: Person | None = None,
        *,
        at: datetime,
        received_at: datetime | None = None,
        source: str = "ems",
        org: str = "demo-ems",
        county: str | None = "Guilford",
        consent: Consent = Consent.ACCEPTED,
        fatal: bool = False,
    ) -> Episode:
        """An identified overdose report, as intake publishes it and the scheduler links it:
        a case (if the person has none open), an episode, and a remote-contact task unless
        the person declined or died."""
        person = person or Person()
        report = self.report(
            at=at,
            received_at=received_at,
            source=source,
            org=org,
            county=county,
            consent=consent,
            fatal=fatal,
        )
        received = report.received_at
        late = received - at >= LATE_AFTER
        windows_from = received if late else at
        now = received + timedelta(seconds=5)
        repeat = person.opened
        if not person.opened:
            self._case(
                CaseOpened(
                    case_id=person.case_id,
                    program_id=self.program,
                    person_id=person.person_id,
                    opened_at=now,
                ),
                person,
                now,
            )
            person.opened = True
        episode = Episode(person, uuid.uuid4(), report.report_id, at, windows_from)
        reasons = []
        if consent == Consent.DECLINED:
            reasons.append("consent_declined_no_tasks")
        if fatal:
            reasons.append("fatal_overdose_no_outreach")
        self._case(
            EpisodeOpened(
                case_id=person.case_id,
                program_id=self.program,
                episode_id=episode.episode_id,
                person_id=person.person_id,
                incident_at=at,
                repeat=repeat,
                received_at=received,
                windows_from=windows_from,
                late=late,
                reasons=reasons or ["remote_contact_scheduled"],
                source_kind=source,
                fatal=fatal,
                source_org=org,
                county=county,
                state="NC",
            ),
            person,
            now,
        )
        self._linked(episode, report, now)
        if fatal:
            self.death(episode, at=now)
        elif consent != Consent.DECLINED:
            episode.remote_task = self.task(episode, TaskKind.REMOTE_CONTACT, at=now)
        return episode

    def _linked(self, episode: Episode, report: OverdoseReported, now: datetime) -> None:
        assert episode.person is not None
        self._case(
            ReportLinked(
                case_id=episode.case_id,
                program_id=self.program,
                report_id=report.report_id,
                episode_id=episode.episode_id,
                match="exact" if episode.person.opened else "new_person",
                source_kind=report.source_kind,
                source_org=report.source_org,
                incident_at=report.incident_at,
                received_at=report.received_at,
                late=report.received_at - report.incident_at >= LATE_AFTER,
            ),
            episode.person,
            now,
        )

    def also_reported(
        self,
        episode: Episode,
        *,
        source: str = "ed",
        org: str = "demo-hospital",
        received_at: datetime | None = None,
        fatal: bool = False,
    ) -> OverdoseReported:
        """A second report of the same overdose (an ED visit after the EMS run): one
        episode, two reports."""
        report = self.report(
            at=episode.incident_at,
            received_at=received_at or episode.incident_at + timedelta(hours=2),
            source=source,
            org=org,
            fatal=fatal,
        )
        self._linked(episode, report, report.received_at + timedelta(seconds=5))
        if fatal:
            self.death(episode, at=report.received_at)
        return report

    def revise(self, report: OverdoseReported, *, revision: int, **changes: Any) -> None:
        """A revision of a report (an A08 after the ED visit): the same report, again."""
        values = report.model_dump() | changes | {"revision": revision}
        revised = OverdoseReported.model_validate(values)
        self._emit(revised, "person-key", revised.received_at)

    def merge(self, kept: Person, merged: Person, *, at: datetime) -> Envelope:
        """A lead confirmed that two people are one: `merged` is `kept` from now on (their
        cases stay as they are here; later events of `merged` name `kept`'s person)."""
        event = PersonsMerged(
            program_id=self.program,
            match_id=uuid.uuid4(),
            person_id=kept.person_id,
            merged_person_id=merged.person_id,
            case_id=kept.case_id if kept.opened else None,
            moved_case_ids=[merged.case_id] if merged.opened else [],
            do_not_contact=False,
            declined=False,
            merged_at=at,
        )
        return self._emit(event, str(kept.case_id), at)

    def task(self, episode: Episode, kind: TaskKind, *, at: datetime) -> uuid.UUID:
        task_id = uuid.uuid4()
        start = max(episode.windows_from, at) if kind != TaskKind.REMOTE_CONTACT else at
        self._case(
            TaskScheduled(
                case_id=episode.case_id,
                program_id=self.program,
                task_id=task_id,
                episode_id=episode.episode_id,
                kind=kind,
                priority=2,
                window_opens_at=start,
                due_at=episode.windows_from + timedelta(hours=24),
                expires_at=episode.windows_from + timedelta(hours=72),
                policy_version="test",
            ),
            episode.person,  # type: ignore[arg-type]
            at,
        )
        return task_id

    def death(self, episode: Episode, *, at: datetime) -> None:
        self._case(
            DeathRecorded(
                case_id=episode.case_id,
                program_id=self.program,
                person_id=episode.person.person_id,  # type: ignore[union-attr]
                episode_id=episode.episode_id,
                recorded_at=at,
                source_kind="ed",
            ),
            episode.person,  # type: ignore[arg-type]
            at,
        )

    def community(
        self,
        *,
        at: datetime,
        referrer: str = "family_friend",
        overdose: bool = True,
        deidentified: bool = True,
        county: str | None = "Guilford",
    ) -> CommunityReferralReceived:
        event = CommunityReferralReceived(
            referral_id=uuid.uuid4(),
            program_id=self.program,
            referrer=referrer,
            identity=None if deidentified else SEALED,
            blind_keys=BlindKeys() if deidentified else BlindKeys(phone=BLIND),
            deidentified=deidentified,
            location=Location(county=county, state="NC"),
            consent=Consent.ACCEPTED,
            overdose=overdose,
            incident_at=at if overdose else None,
            received_at=at + timedelta(hours=1),
            entered_by="peer-1",
        )
        self._emit(event, "person-key", event.received_at)
        return event

    def rejected(self, *, at: datetime, org: str = "demo-hospital") -> None:
        self._emit(
            InboundRejected(
                inbound_id=uuid.uuid4(),
                source_kind="ed",
                source_org=org,
                reason_code="not_hl7",
                reason="The message is not HL7 v2.",
                received_at=at,
            ),
            org,
            at,
        )

    # -- outreach ----------------------------------------------------------------------------

    def _activity(self, episode: Episode, event: Event) -> None:
        self._case(event, episode.person, event.occurred_at)  # type: ignore[arg-type,attr-defined]

    def _common(self, episode: Episode, at: datetime) -> dict[str, Any]:
        return {"case_id": episode.case_id, "program_id": self.program, "occurred_at": at}

    def attempt(
        self,
        episode: Episode,
        *,
        at: datetime,
        outcome: str = "no_answer",
        channel: str = "phone",
        task_id: uuid.UUID | None = None,
    ) -> None:
        task = task_id or episode.remote_task
        assert task is not None, "no task to attempt"
        self._activity(
            episode,
            AttemptLogged(
                **self._common(episode, at),
                attempt_id=uuid.uuid4(),
                task_id=task,
                channel=channel,
                outcome=outcome,
            ),
        )
        if outcome == "reached":
            self._activity(
                episode,
                ContactMade(**self._common(episode, at), task_id=task, channel=channel),
            )
            self._case(
                TaskCompleted(
                    case_id=episode.case_id,
                    program_id=self.program,
                    task_id=task,
                    outcome="contact_made",
                    completed_at=at,
                ),
                episode.person,  # type: ignore[arg-type]
                at,
            )

    def contact(self, episode: Episode, *, at: datetime) -> None:
        """The person called in: a contact without an attempt or a task."""
        self._activity(episode, ContactMade(**self._common(episode, at), channel="phone"))

    def visit(self, episode: Episode, *, at: datetime, reached: bool) -> None:
        """Escalation to an in-person visit, which takes place."""
        task = self.task(episode, TaskKind.IN_PERSON_VISIT, at=at - timedelta(hours=2))
        episode.visit_task = task
        visit_id = uuid.uuid4()
        self._activity(
            episode,
            VisitScheduled(
                **self._common(episode, at - timedelta(hours=1)),
                visit_id=visit_id,
                task_id=task,
                window_start=at,
                window_end=at + timedelta(hours=1),
            ),
        )
        self.attempt(
            episode,
            at=at,
            outcome="reached" if reached else "not_found",
            channel="in_person",
            task_id=task,
        )
        self._activity(
            episode, VisitCompleted(**self._common(episode, at), visit_id=visit_id, reached=reached)
        )

    def services(
        self, episode: Episode, *, at: datetime, naloxone: int = 0, strips: int = 0
    ) -> None:
        items = []
        if naloxone:
            items.append(ServiceItem(kind="naloxone_kit", count=naloxone))
        if strips:
            items.append(ServiceItem(kind="fentanyl_test_strips", count=strips))
        items.append(ServiceItem(kind="education"))
        self._activity(episode, ServicesProvided(**self._common(episode, at), items=items))

    def hot_spot(
        self, *, at: datetime, county: str = "Guilford", naloxone: int = 0, strips: int = 0
    ) -> uuid.UUID:
        """A lead concluded a hot-spot task (no person, no case)."""
        task_id = uuid.uuid4()
        event = HotSpotConcluded(
            task_id=task_id,
            program_id=self.program,
            county=county,
            state="NC",
            naloxone_kits=naloxone,
            test_strips=strips,
            warnings_given=3,
            contacts_checked=2,
            concluded_at=at,
        )
        self._emit(event, str(task_id), at)
        return task_id

    def referral(
        self,
        episode: Episode,
        *,
        at: datetime,
        kind: str = "moud_buprenorphine",
        warm: bool = False,
        care_started_at: datetime | None = None,
    ) -> uuid.UUID:
        referral_id = uuid.uuid4()
        self._activity(
            episode,
            ReferralMade(
                **self._common(episode, at),
                referral_id=referral_id,
                kind=kind,
                warm_handoff=warm,
            ),
        )
        if care_started_at is not None:
            for status, when in (
                ("appointment", at + timedelta(hours=1)),
                ("care_started", care_started_at),
            ):
                self._activity(
                    episode,
                    ReferralStatusChanged(
                        **self._common(episode, when),
                        referral_id=referral_id,
                        status=status,
                    ),
                )
        return referral_id

    def decline(self, episode: Episode, *, at: datetime) -> None:
        self._activity(episode, OutreachDeclined(**self._common(episode, at)))

    def do_not_contact(self, episode: Episode, *, at: datetime) -> None:
        self._activity(episode, DoNotContactRequested(**self._common(episode, at)))

    def conclude(self, episode: Episode, *, at: datetime, reason: str = "engaged") -> None:
        self._activity(
            episode,
            OutreachConcluded(**self._common(episode, at), reason=reason),
        )


def shuffled_across_topics(envelopes: Sequence[Envelope], seed: int) -> list[Envelope]:
    """The events in another order, as several topics (and partitions) may deliver them:
    each (topic, key)'s events stay in their order, the rest interleave at random."""
    rng = random.Random(seed)
    queues: dict[tuple[str, str], list[Envelope]] = {}
    for envelope in envelopes:
        topic = type(envelope.event()).topic
        queues.setdefault((topic, envelope.subject), []).append(envelope)
    out: list[Envelope] = []
    lanes = [q for q in queues.values() if q]
    while lanes:
        lane = rng.choice(lanes)
        out.append(lane.pop(0))
        lanes = [q for q in lanes if q]
    return out


class World:
    def __init__(self, app: Any, client: httpx.AsyncClient, tokens: DevTokens) -> None:
        self.app = app
        self.client = client
        self.tokens = tokens
        self._processor: InboxProcessor[Any] | None = None
        self._offset = 0

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    @property
    def clock(self) -> ManualClock:
        clock: ManualClock = self.runtime.clock
        return clock

    def auth(self, role: str, program: str = "demo") -> dict[str, str]:
        return self.tokens.headers(role, program, f"{role}-1")

    def processor(self) -> InboxProcessor[Any]:
        if self._processor is None:
            spec = self.runtime.consumers[0]
            self._processor = InboxProcessor(
                "reporting.events",
                self.runtime.uow,
                spec.handler,
                batch_handler=spec.batch_handler,
                max_attempts=1,
            )
        return self._processor

    async def deliver(self, envelopes: Iterable[Envelope], batch: int = 50) -> None:
        """Through the inbox, in batches, as the consumer loop would."""
        items = list(envelopes)
        for start in range(0, len(items), batch):
            messages = []
            for envelope in items[start : start + batch]:
                self._offset += 1
                messages.append(
                    IncomingMessage(
                        topic=type(envelope.event()).topic,
                        partition=0,
                        offset=self._offset,
                        key=envelope.subject.encode(),
                        value=envelope.to_bytes(),
                    )
                )
            outcomes = await self.processor().process_batch(messages)
            assert all(o.value != "dead_lettered" for o in outcomes), outcomes

    async def metrics(
        self,
        start: str,
        end: str,
        *,
        by: Sequence[str] = (),
        view: str | None = None,
        role: str = "analyst",
    ) -> dict[str, Any]:
        params: list[tuple[str, str]] = [("from", start), ("to", end)]
        params += [("by", b) for b in by]
        if view:
            params.append(("view", view))
        r = await self.client.get("/v1/metrics", params=params, headers=self.auth(role))
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def figures(self, start: str, end: str, **kwargs: Any) -> dict[str, Any]:
        """{metric: row} for an answer without breakdown, internal view (exact figures)."""
        kwargs.setdefault("view", "internal")
        kwargs.setdefault("role", "team_lead")
        body = await self.metrics(start, end, **kwargs)
        return {row["metric"]: row for row in body["rows"]}


@asynccontextmanager
async def postgres_reporting_world(
    tmp_path: Path, postgres_url: str, *, now: datetime | None = None, **overrides: Any
) -> AsyncIterator[World]:
    """`reporting_world` on PostgreSQL, in a schema of its own that is dropped afterwards."""
    prefix = f"it{uuid.uuid4().hex[:8]}_"
    try:
        async with reporting_world(
            tmp_path, now=now, database_url=postgres_url, db_schema_prefix=prefix, **overrides
        ) as world:
            yield world
    finally:
        engine = create_engine(postgres_url, service="admin", schema="public")
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{prefix}reporting" CASCADE'))
        await engine.dispose()


@asynccontextmanager
async def reporting_world(
    tmp_path: Path, *, now: datetime | None = None, **overrides: Any
) -> AsyncIterator[World]:
    defaults: dict[str, Any] = {
        "env": "development",
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/{{service}}.db",
        "kafka_bootstrap_servers": "127.0.0.1:9",
        "var_dir": tmp_path,
    }
    settings = Settings(**(defaults | overrides))
    engine = create_engine(
        settings.db_url, service="reporting", schema=settings.schema_for("reporting")
    )
    await upgrade(engine, service="reporting", schema=settings.schema_for("reporting"))
    await engine.dispose()
    clock = ManualClock(now or datetime.now(UTC))
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        tokens = DevTokens(settings)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://reporting") as client:
            yield World(app, client, tokens)
