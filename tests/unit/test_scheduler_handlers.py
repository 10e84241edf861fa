"""The scheduler's handlers on the embedded database, with a clock the tests move."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler.handlers import PolicyBook, Scheduler
from services.scheduler.models import (
    CASE,
    EPISODE,
    PERSON,
    PERSON_KEY,
    POSSIBLE_MATCH,
    REPORT_LINK,
    TASK,
)
from services.scheduler.timers import TIMER, TimerRunner
from shared.clock import ManualClock
from shared.db import create_engine, session_factory
from shared.envelope import Envelope, Event, latest_event_model, registered_events
from shared.events import (
    AttemptLogged,
    Consent,
    ContactMade,
    DoNotContactRequested,
    OutreachConcluded,
    OutreachDeclined,
    OverdoseReported,
    TaskAssigned,
)
from shared.identity import Identity, Protector
from shared.migrations import upgrade
from shared.outbox import OUTBOX
from shared.sealing import BlindIndexer, Keyring, Sealer
from shared.topics import OUTREACH_ACTIVITY
from shared.uow import UnitOfWork

INCIDENT = datetime(2026, 11, 20, 22, 0, tzinfo=UTC)  # 17:00 in New York
PROTECTOR = Protector(Sealer(Keyring({"t": b"s" * 32}, "t")), BlindIndexer(b"b" * 32))


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/s.db", service="scheduler")
    await upgrade(engine, service="scheduler")
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(INCIDENT + timedelta(minutes=30))


class World:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock: ManualClock) -> None:
        self.sessions = sessions
        self.clock = clock
        self.scheduler = Scheduler(
            sealer=PROTECTOR.sealer, policies=PolicyBook(), indexer=PROTECTOR.indexer
        )
        self.runner = TimerRunner(self.uow, self.scheduler.on_timer, replica="test")

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self.sessions, clock=self.clock, source="/portline/scheduler")

    async def report(self, **kwargs: Any) -> OverdoseReported:
        event = self.build(**kwargs)
        await self.deliver(self.scheduler.on_overdose, event)
        return event

    def build(
        self,
        *,
        family: str | None = "Doe",
        given: str | None = "Jane",
        dob: str | None = "1990-01-01",
        kind: str = "ems",
        incident_at: datetime = INCIDENT,
        consent: Consent = Consent.ACCEPTED,
        phone: str | None = "336-555-0100",
        received_at: datetime | None = None,
        hospital: str | None = None,
        disposition: str | None = None,
    ) -> OverdoseReported:
        """A report received now, or 30 minutes after its overdose if that is later."""

        identity = Identity(
            family=family,
            given=given,
            dob=date.fromisoformat(dob) if dob else None,
            phones=(phone,) if phone else (),
        )
        event = OverdoseReported(
            report_id=uuid.uuid4(),
            program_id="demo",
            source_kind=kind,  # type: ignore[arg-type]
            source_org="x",
            source_ref="r",
            incident_at=incident_at,
            received_at=received_at or max(self.clock.now(), incident_at + timedelta(minutes=30)),
            identity=PROTECTOR.seal_identity(identity),
            blind_keys=PROTECTOR.blind_keys(identity, facility=None),
            deidentified=identity.deidentified,
            opioid=True,
            any_drug=True,
            reasons=[],
            consent=consent,
            hospital=hospital,
            disposition=disposition,
        )
        return event

    async def deliver(self, handler: Any, event: Event, subject: str = "k") -> None:
        envelope = Envelope.wrap(event, source="/test", subject=subject, time=self.clock.now())
        async with self.uow() as uow:
            await handler(uow, envelope)
            await uow.commit()

    async def activity(self, event: Event) -> None:
        await self.deliver(self.scheduler.on_activity, event)

    async def events(self, *types: str) -> list[dict[str, Any]]:
        async with self.sessions() as s:
            rows = (await s.execute(sa.select(OUTBOX.c.payload).order_by(OUTBOX.c.id))).scalars()
            found = [Envelope.from_bytes(r) for r in rows]
        return [{"type": e.type, **e.data} for e in found if not types or e.type in types]

    async def tasks(self) -> list[Any]:
        async with self.sessions() as s:
            return list(await s.execute(sa.select(TASK).order_by(TASK.c.created_at)))

    async def one_case(self) -> Any:
        async with self.sessions() as s:
            return (await s.execute(sa.select(CASE))).one()


@pytest.fixture
def world(sessions: async_sessionmaker[AsyncSession], clock: ManualClock) -> World:
    return World(sessions, clock)


async def test_an_overdose_with_consent_becomes_a_remote_contact_task_due_in_24_hours(
    world: World,
) -> None:
    await world.report()
    kinds = [e["type"] for e in await world.events()]
    assert kinds == ["CaseOpened", "EpisodeOpened", "ReportLinked", "TaskScheduled"]
    (task,) = await world.tasks()
    assert task.kind == "remote_contact"
    assert task.due_at == INCIDENT + timedelta(hours=24)
    assert task.expires_at == INCIDENT + timedelta(hours=72)
    async with world.sessions() as s:
        timers = {r.kind: r.due_at for r in await s.execute(sa.select(TIMER))}
    assert set(timers) == {"opens", "due", "expires", "escalate"}
    assert timers["escalate"] == INCIDENT + timedelta(hours=48)


async def test_ems_and_ed_reports_of_one_overdose_are_one_episode(world: World) -> None:
    await world.report(kind="ems")
    await world.report(kind="ed", incident_at=INCIDENT + timedelta(hours=1, minutes=20))
    linked = await world.events("ReportLinked")
    assert [e["match"] for e in linked] == ["new_person", "exact"]
    assert linked[0]["episode_id"] == linked[1]["episode_id"]
    assert len(await world.events("EpisodeOpened")) == 1
    assert len(await world.tasks()) == 1
    async with world.sessions() as s:
        (episode,) = list(await s.execute(sa.select(EPISODE)))
    assert set(episode.sources.split(",")) == {"ems", "ed"}


async def test_the_episode_keeps_the_first_hospital_a_report_of_it_names(world: World) -> None:
    await world.report(kind="ems")  # the crew named no destination
    await world.report(kind="ed", incident_at=INCIDENT + timedelta(minutes=40), hospital="H-1")
    async with world.sessions() as s:
        (episode,) = list(await s.execute(sa.select(EPISODE)))
    assert (set(episode.sources.split(",")), episode.hospital) == ({"ems", "ed"}, "H-1")


async def test_a_false_name_at_the_scene_is_flagged_for_a_lead_by_the_transport(
    world: World,
) -> None:
    await world.report(
        kind="ed", incident_at=INCIDENT + timedelta(minutes=40), hospital="H-1", given="Robert"
    )
    await world.report(
        kind="ems", family="Miller", given="Kevin", dob="1971-09-30", phone=None, hospital="H-1"
    )
    linked = await world.events("ReportLinked")
    assert [e["match"] for e in linked] == ["new_person", "new_person"]
    async with world.sessions() as s:
        (flag,) = list(await s.execute(sa.select(POSSIBLE_MATCH)))
    assert (flag.level, flag.status) == ("flag", "open")
    explanation = json.loads(flag.explanation)
    assert explanation["model"] == "fs-2026.2"
    event = next(e for e in explanation["evidence"] if e["comparison"] == "event")
    assert event["level"] == "transported_here"
    assert explanation["weight"] < -1  # whatever the names


async def test_a_repeat_overdose_while_the_case_is_open_raises_priority_and_restarts(
    world: World,
) -> None:
    await world.report()
    later = INCIDENT + timedelta(days=2)
    await world.report(kind="ed", incident_at=later)
    opened = await world.events("EpisodeOpened")
    assert [e["repeat"] for e in opened] == [False, True]
    first, second = await world.tasks()
    assert (first.status, first.outcome) == ("cancelled", "superseded_by_repeat_overdose")
    assert second.status == "open"
    assert second.due_at == later + timedelta(hours=24)
    assert second.priority > first.priority
    assert (await world.one_case()).priority == second.priority


async def test_declined_at_the_scene_schedules_nothing(world: World) -> None:
    await world.report(consent=Consent.DECLINED)
    assert await world.tasks() == []
    async with world.sessions() as s:
        (episode,) = list(await s.execute(sa.select(EPISODE)))
    assert "consent_declined_no_tasks" in episode.plan_reasons
    assert "leave_behind_recorded" in episode.plan_reasons


async def test_do_not_contact_is_final(world: World) -> None:
    await world.report()
    case = await world.one_case()
    await world.activity(
        DoNotContactRequested(case_id=case.id, program_id="demo", occurred_at=world.clock.now())
    )
    (task,) = await world.tasks()
    assert (task.status, task.outcome) == ("cancelled", "do_not_contact")
    await world.report(incident_at=INCIDENT + timedelta(days=3))
    assert [t.status for t in await world.tasks()] == ["cancelled"]


async def test_a_typo_in_the_family_name_with_the_same_dob_is_one_person(world: World) -> None:
    await world.report(family="Smith", given="Jane", phone=None)
    await world.report(
        family="Smtih", given="Jane", phone=None, incident_at=INCIDENT + timedelta(days=5)
    )
    linked = await world.events("ReportLinked")
    assert [e["match"] for e in linked] == ["new_person", "exact"]
    assert len(await world.events("CaseOpened")) == 1


async def test_a_dob_one_digit_off_is_a_possible_match_never_merged(
    world: World,
) -> None:
    await world.report(family="Smith", given="Jane", phone=None)
    await world.report(
        family="Smith",
        given="Jane",
        dob="1990-01-07",  # one digit off
        phone=None,
        incident_at=INCIDENT + timedelta(days=5),
    )
    linked = await world.events("ReportLinked")
    assert [e["match"] for e in linked] == ["new_person", "possible"]
    assert len(await world.events("CaseOpened")) == 2
    async with world.sessions() as s:
        (match,) = list(await s.execute(sa.select(POSSIBLE_MATCH)))
    assert match.status == "open"


async def test_three_failed_attempts_escalate_to_an_in_person_visit(world: World) -> None:
    await world.report()
    (task,) = await world.tasks()
    case = await world.one_case()
    for outcome in ("no_answer", "left_message", "no_answer"):
        world.clock.advance(timedelta(hours=2))
        await world.activity(
            AttemptLogged(
                case_id=case.id,
                program_id="demo",
                occurred_at=world.clock.now(),
                attempt_id=uuid.uuid4(),
                task_id=task.id,
                channel="phone",
                outcome=outcome,  # type: ignore[arg-type]
            )
        )
    remote, visit = await world.tasks()
    assert (remote.status, remote.outcome) == ("completed", "escalated_to_in_person")
    assert visit.kind == "in_person_visit"
    assert visit.due_at == INCIDENT + timedelta(hours=72)


async def test_48_hours_without_contact_escalates_when_the_timer_fires(world: World) -> None:
    await world.report()
    world.clock.set(INCIDENT + timedelta(hours=47))
    await world.runner.run_once()
    assert [t.kind for t in await world.tasks()] == ["remote_contact"]
    world.clock.set(INCIDENT + timedelta(hours=48, minutes=1))
    await world.runner.run_once()
    kinds = [(t.kind, t.status) for t in await world.tasks()]
    assert kinds == [("remote_contact", "completed"), ("in_person_visit", "open")]
    types = [e["type"] for e in await world.events("TaskDue", "TaskOverdue")]
    assert types == ["TaskDue", "TaskOverdue"]


async def test_contact_completes_the_task_and_plans_follow_ups(world: World) -> None:
    await world.report()
    case = await world.one_case()
    world.clock.advance(timedelta(hours=3))
    await world.activity(
        ContactMade(
            case_id=case.id, program_id="demo", occurred_at=world.clock.now(), channel="phone"
        )
    )
    tasks = await world.tasks()
    assert (tasks[0].status, tasks[0].outcome) == ("completed", "contact_made")
    assert [t.kind for t in tasks[1:]] == ["follow_up", "follow_up"]
    async with world.sessions() as s:
        escalations = (
            await s.execute(
                sa.select(TIMER.c.cancelled_at).where(TIMER.c.key == f"{tasks[0].id}:escalate")
            )
        ).scalar_one()
    assert escalations is not None  # the escalation will not fire after contact


async def test_reaching_the_person_on_a_follow_up_completes_it(world: World) -> None:
    await world.report()
    case = await world.one_case()
    world.clock.advance(timedelta(hours=3))
    await world.activity(
        ContactMade(
            case_id=case.id, program_id="demo", occurred_at=world.clock.now(), channel="phone"
        )
    )
    first_follow_up = (await world.tasks())[1]
    world.clock.advance(timedelta(days=7))
    await world.activity(
        AttemptLogged(
            case_id=case.id,
            program_id="demo",
            occurred_at=world.clock.now(),
            attempt_id=uuid.uuid4(),
            task_id=first_follow_up.id,
            channel="phone",
            outcome="reached",
        )
    )
    tasks = await world.tasks()
    assert [(t.kind, t.status) for t in tasks] == [
        ("remote_contact", "completed"),
        ("follow_up", "completed"),
        ("follow_up", "open"),
    ]
    assert tasks[1].outcome == "contact_made"


async def test_a_missed_window_expires_the_task_late_after_downtime(world: World) -> None:
    await world.report(consent=Consent.UNKNOWN)
    world.clock.set(INCIDENT + timedelta(days=10))  # the scheduler was down for days
    for _ in range(5):
        await world.runner.run_once()
    expired = await world.events("TaskExpired")
    assert expired
    assert all(e["late"] for e in expired)


async def test_concluding_outreach_closes_the_case(world: World) -> None:
    await world.report()
    case = await world.one_case()
    await world.activity(
        OutreachConcluded(
            case_id=case.id, program_id="demo", occurred_at=world.clock.now(), reason="engaged"
        )
    )
    assert (await world.one_case()).status == "closed"
    closed = await world.events("CaseClosed")
    assert [e["reason"] for e in closed] == ["engaged"]
    assert {t.status for t in await world.tasks()} == {"cancelled"}


async def test_a_deidentified_report_is_counted_but_never_assigned(world: World) -> None:
    await world.report(family=None, given=None, phone=None)
    assert await world.tasks() == []
    async with world.sessions() as s:
        (episode,) = list(await s.execute(sa.select(EPISODE)))
        cases = (await s.execute(sa.select(sa.func.count()).select_from(CASE))).scalar_one()
    assert episode.deidentified
    assert cases == 0


def _counting_ids() -> Callable[[], uuid.UUID]:
    counter = itertools.count(1)
    return lambda: uuid.UUID(int=next(counter))


async def _snapshot(world: World) -> dict[str, list[Any]]:
    """Every row the reports leave behind, and the events in their order (ids but the
    envelopes' own are deterministic here)."""
    found: dict[str, list[Any]] = {}
    async with world.sessions() as s:
        for table in (PERSON, PERSON_KEY, POSSIBLE_MATCH, CASE, EPISODE, REPORT_LINK, TASK):
            rows = [tuple(r) for r in await s.execute(sa.select(table))]
            found[table.name] = sorted(rows, key=repr)
        timer_columns = [c for c in TIMER.c if c.name != "id"]
        found["timer"] = sorted(
            (tuple(r) for r in await s.execute(sa.select(*timer_columns))), key=repr
        )
        payloads = (await s.execute(sa.select(OUTBOX.c.payload).order_by(OUTBOX.c.id))).scalars()
        found["events"] = [
            (e.type, e.subject, e.data) for e in (Envelope.from_bytes(p) for p in payloads)
        ]
    return found


async def test_a_batch_of_reports_has_the_effect_of_the_same_reports_one_at_a_time(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Later reports in a batch see the people, keys, cases, episodes, tasks and links that
    earlier ones created, and the rows that were there before the batch."""
    worlds = []
    for name in ("one-by-one", "batched"):
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/{name}.db", service="scheduler")
        await upgrade(engine, service="scheduler")
        world = World(session_factory(engine), clock)
        world.scheduler = Scheduler(
            sealer=PROTECTOR.sealer,
            policies=PolicyBook(),
            new_id=_counting_ids(),
            indexer=PROTECTOR.indexer,
        )
        worlds.append((world, engine))
    one_by_one, batched = worlds[0][0], worlds[1][0]
    build = one_by_one.build

    earlier = build(
        family="Roe",
        given="Sam",
        dob="1980-05-05",
        phone="336-555-0199",
        incident_at=INCIDENT - timedelta(days=1),
    )
    jane = build()
    reports = [
        jane,
        build(kind="ed", incident_at=INCIDENT + timedelta(hours=1, minutes=20)),  # same episode
        build(incident_at=INCIDENT + timedelta(days=2)),  # repeat of a case opened in the batch
        build(family="Roe", given="Sam", dob="1980-05-05", phone="336-555-0199", kind="ed"),
        # Jane's given name and DOB at her time, another family name: a lead reviews it.
        build(family="Smith", given="Jane", phone=None),
        # A typo of the Smith just created: linked to her (issue 18).
        build(family="Smtih", given="Jane", phone=None, incident_at=INCIDENT + timedelta(days=5)),
        build(family=None, given=None, phone=None),  # de-identified
        jane.model_copy(update={"revision": 2}),  # a revision of a report linked in the batch
        earlier.model_copy(update={"revision": 3}),  # ... and of one linked before it
        build(family="Lee", given="Ann", dob="1975-02-02", phone=None, consent=Consent.DECLINED),
        # Shares Jane's phone and family name, decades older: her parent, a new person.
        build(family="Doe", given="Bob", dob="1960-03-03"),
        jane,  # the same report again: nothing new
    ]
    for world, _engine in worlds:
        await world.deliver(world.scheduler.on_overdose, earlier)
    for report in reports:
        await one_by_one.deliver(one_by_one.scheduler.on_overdose, report)
    envelopes = [Envelope.wrap(r, source="/test", subject="k", time=clock.now()) for r in reports]
    async with batched.uow() as uow:
        await batched.scheduler.on_overdoses(uow, envelopes)
        await uow.commit()

    expected, got = await _snapshot(one_by_one), await _snapshot(batched)
    assert got == expected
    matches = [e[2]["match"] for e in got["events"] if e[0] == "ReportLinked"]
    assert matches == [
        "new_person",
        "new_person",
        "exact",
        "exact",
        "exact",
        "possible",
        "exact",
        "new_person",
        "new_person",
    ]
    cancelled = [e[2]["reason"] for e in got["events"] if e[0] == "TaskCancelled"]
    assert cancelled == ["superseded_by_repeat_overdose"] * 3
    for _world, engine in worlds:
        await engine.dispose()


# --- late reports -----------------------------------------------------------------------


async def test_a_report_ten_days_late_gets_a_late_task_counted_from_its_receipt(
    world: World,
) -> None:
    received = INCIDENT + timedelta(days=10)
    world.clock.set(received + timedelta(seconds=5))
    await world.report(received_at=received)
    (task,) = await world.tasks()
    assert task.late
    assert (task.window_opens_at, task.due_at, task.expires_at) == (
        received,
        received + timedelta(hours=24),
        received + timedelta(hours=72),
    )
    (scheduled,) = await world.events("TaskScheduled")
    assert scheduled["late"] is True
    (opened,) = await world.events("EpisodeOpened")
    assert opened["late"] is True
    assert datetime.fromisoformat(opened["windows_from"]) == received
    assert datetime.fromisoformat(opened["received_at"]) == received
    assert "late_report_windows_from_receipt" in opened["reasons"]
    (linked,) = await world.events("ReportLinked")
    assert linked["late"] is True

    # Escalation counts from the receipt too: nothing at 47 h, a late visit at 48 h.
    world.clock.set(received + timedelta(hours=47))
    await world.runner.run_once()
    assert [t.kind for t in await world.tasks()] == ["remote_contact"]
    world.clock.set(received + timedelta(hours=48, minutes=1))
    await world.runner.run_once()
    remote, visit = await world.tasks()
    assert (remote.status, visit.kind, visit.status) == ("completed", "in_person_visit", "open")
    assert visit.late
    assert visit.due_at == received + timedelta(hours=72)
    assert visit.expires_at > world.clock.now()


async def test_a_report_forty_days_late_is_counted_with_no_task(world: World) -> None:
    received = INCIDENT + timedelta(days=40)
    world.clock.set(received)
    await world.report(received_at=received)
    assert await world.tasks() == []
    async with world.sessions() as s:
        (episode,) = list(await s.execute(sa.select(EPISODE)))
    assert episode.late
    assert json.loads(episode.plan_reasons) == ["too_old_for_outreach"]
    (opened,) = await world.events("EpisodeOpened")
    assert opened["reasons"] == ["too_old_for_outreach"]


async def test_a_late_ed_report_of_a_known_overdose_joins_its_episode_marked_late(
    world: World,
) -> None:
    await world.report(kind="ems")
    received = INCIDENT + timedelta(days=4)  # the ED's codes came with the A03 at discharge
    world.clock.set(received)
    await world.report(kind="ed", received_at=received)
    (task,) = await world.tasks()
    assert not task.late  # the EMS report made it on time
    first, second = await world.events("ReportLinked")
    assert (first["late"], second["late"]) == (False, True)
    assert first["episode_id"] == second["episode_id"]


async def test_an_incident_time_after_the_receipt_is_taken_as_the_receipt(world: World) -> None:
    received = world.clock.now()
    await world.report(incident_at=received + timedelta(hours=5), received_at=received)
    (task,) = await world.tasks()
    assert task.window_opens_at == received
    async with world.sessions() as s:
        (episode,) = list(await s.execute(sa.select(EPISODE)))
    assert episode.incident_at == received
    assert "incident_time_after_receipt" in json.loads(episode.plan_reasons)


async def test_a_late_repeat_overdose_restarts_from_its_receipt(world: World) -> None:
    await world.report()
    repeat_at = INCIDENT + timedelta(days=2)
    received = repeat_at + timedelta(days=6)
    world.clock.set(received)
    await world.report(kind="ed", incident_at=repeat_at, received_at=received)
    tasks = await world.tasks()
    open_remote = [t for t in tasks if t.status == "open" and t.kind == "remote_contact"]
    (task,) = open_remote
    assert task.late
    assert task.window_opens_at == received
    assert task.expires_at > world.clock.now()


# --- deaths and community referrals ----------------------------------------------------


def _with(event: OverdoseReported, **changes: Any) -> OverdoseReported:
    return event.model_copy(update=changes)


async def test_a_fatal_overdose_never_creates_a_task_to_reach_the_person(world: World) -> None:
    await world.deliver(world.scheduler.on_overdose, _with(world.build(kind="ems"), fatal=True))
    assert await world.tasks() == []
    (death,) = await world.events("DeathRecorded")
    (opened,) = await world.events("EpisodeOpened")
    assert opened["fatal"] is True
    assert "fatal_overdose_no_outreach" in opened["reasons"]
    assert death["source_kind"] == "ems"
    # Any later report of that person plans nothing either.
    world.clock.advance(timedelta(days=3))
    await world.report(incident_at=world.clock.now() - timedelta(hours=1))
    assert await world.tasks() == []
    async with world.sessions() as s:
        person = (await s.execute(sa.select(PERSON))).one()
        reasons = [json.loads(e.plan_reasons) for e in await s.execute(sa.select(EPISODE))]
    assert person.deceased_at is not None
    assert ["person_deceased"] in reasons


async def test_a_later_record_of_death_cancels_every_open_task_of_the_case(world: World) -> None:
    ed = await world.report(kind="ed")
    (task,) = await world.tasks()
    assert task.status == "open"
    world.clock.advance(timedelta(hours=20))
    # the ED's A03 for the same visit: the patient expired (a revision of the same report)
    await world.deliver(world.scheduler.on_overdose, _with(ed, revision=2, fatal=True))
    (task,) = await world.tasks()
    assert (task.status, task.outcome) == ("cancelled", "person_deceased")
    (death,) = await world.events("DeathRecorded")
    assert death["episode_id"] == (await world.events("EpisodeOpened"))[0]["episode_id"]
    cancelled = await world.events("TaskCancelled")
    assert [c["reason"] for c in cancelled] == ["person_deceased"]
    # the same news again changes nothing
    await world.deliver(world.scheduler.on_overdose, _with(ed, revision=3, fatal=True))
    assert len(await world.events("DeathRecorded")) == 1


async def test_a_fatal_report_of_the_same_overdose_from_another_source_cancels_too(
    world: World,
) -> None:
    await world.report(kind="ed")
    ems = world.build(kind="ems", incident_at=INCIDENT + timedelta(minutes=20))
    await world.deliver(world.scheduler.on_overdose, _with(ems, fatal=True))
    (task,) = await world.tasks()
    assert task.outcome == "person_deceased"
    assert len(await world.events("EpisodeOpened")) == 1  # one overdose, one episode


async def test_family_support_is_opened_only_where_the_program_chooses_it(
    sessions: async_sessionmaker[AsyncSession], clock: ManualClock
) -> None:
    from services.scheduler.policy import Policy

    policy = Policy.model_validate(
        {"program_id": "demo", "timezone": "America/New_York", "fatal": {"family_support": True}}
    )
    world = World(sessions, clock)
    world.scheduler = Scheduler(
        sealer=PROTECTOR.sealer, policies=PolicyBook({"demo": policy}), indexer=PROTECTOR.indexer
    )
    await world.deliver(world.scheduler.on_overdose, _with(world.build(), fatal=True))
    (task,) = await world.tasks()
    assert task.kind == "family_support"
    assert task.expires_at - task.window_opens_at == timedelta(hours=168)
    (scheduled,) = await world.events("TaskScheduled")
    assert scheduled["kind"] == "family_support"


async def test_a_community_referral_is_a_report_like_any_other(world: World) -> None:
    from shared.events import CommunityReferralReceived

    template = world.build()
    referral = CommunityReferralReceived(
        referral_id=uuid.uuid4(),
        program_id="demo",
        referrer="syringe_services",
        identity=template.identity,
        blind_keys=template.blind_keys,
        deidentified=False,
        consent=Consent.ACCEPTED,
        overdose=True,
        incident_at=world.clock.now() - timedelta(hours=3),
        received_at=world.clock.now(),
        entered_by="peer-sam",
    )
    await world.activity(referral)
    (task,) = await world.tasks()
    assert task.kind == "remote_contact"
    (linked,) = await world.events("ReportLinked")
    assert linked["source_kind"] == "community"
    assert linked["report_id"] == str(referral.referral_id)
    # the same person reported by EMS an hour later is the same case, not a second person
    await world.report(incident_at=world.clock.now() - timedelta(hours=2))
    async with world.sessions() as s:
        people = (await s.execute(sa.select(sa.func.count()).select_from(PERSON))).scalar_one()
    assert people == 1


IGNORED_ACTIVITY = {
    "TaskAssigned",
    "ServicesProvided",
    "ReferralMade",
    "ReferralStatusChanged",
    "VisitScheduled",
}
"""Outreach activity that changes nothing on the program's clock (reporting counts it)."""


def test_every_kind_of_outreach_activity_is_handled_or_deliberately_ignored(
    world: World,
) -> None:
    types = {
        name
        for (name, _version), model in registered_events().items()
        if model.topic == OUTREACH_ACTIVITY.name
    }
    handled = {model.event_type for model in world.scheduler._activity}
    assert handled | IGNORED_ACTIVITY == types
    assert not handled & IGNORED_ACTIVITY
    assert all(latest_event_model(name) in world.scheduler._activity for name in handled)


async def test_ignored_activity_changes_nothing(world: World) -> None:
    await world.report()
    (task,) = await world.tasks()
    before = await world.events()
    await world.activity(
        TaskAssigned(
            case_id=task.case_id,
            program_id="demo",
            occurred_at=world.clock.now(),
            task_id=task.id,
            assignee_id="peer-1",
        )
    )
    assert await world.events() == before
    assert [t.status for t in await world.tasks()] == ["open"]


async def test_a_declined_case_is_remembered_until_a_repeat_overdose(world: World) -> None:
    await world.report()
    case = await world.one_case()
    await world.activity(
        OutreachDeclined(case_id=case.id, program_id="demo", occurred_at=world.clock.now())
    )
    assert (await world.one_case()).declined is True
    assert [t.status for t in await world.tasks()] == ["cancelled"]
    world.clock.advance(timedelta(days=3))
    await world.report(incident_at=INCIDENT + timedelta(days=3))
    assert (await world.one_case()).declined is False
    assert "open" in [t.status for t in await world.tasks()]


async def test_tasks_carry_the_program_s_quiet_hours(world: World) -> None:
    await world.report()
    (scheduled,) = await world.events("TaskScheduled")
    assert scheduled["quiet_hours"] == {
        "start": "21:00",
        "end": "08:00",
        "timezone": "America/New_York",
        "channels": ["phone", "text"],
    }
