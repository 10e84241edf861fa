"""The scheduler on real Kafka and PostgreSQL: reports arrive as events, through the inbox."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler.models import CASE, EPISODE, POSSIBLE_MATCH, TASK
from shared.bus import ConsumerLoop, KafkaPublisher, make_consumer
from shared.clock import ManualClock
from shared.db import session_factory
from shared.envelope import Envelope
from shared.events import OverdoseReported
from shared.inbox import InboxProcessor
from shared.migrations import upgrade
from shared.outbox import OutgoingMessage
from tests.support import ensure_topic, wait_for
from tests.unit.test_scheduler_handlers import INCIDENT, World

pytestmark = pytest.mark.integration


async def test_an_ems_and_ed_pair_is_one_episode_and_a_repeat_reprioritizes(
    pg_engine: AsyncEngine, pg_schema: str, kafka_bootstrap: str
) -> None:
    await upgrade(pg_engine, service="scheduler", schema=pg_schema)
    sessions = session_factory(pg_engine)
    world = World(sessions, ManualClock(INCIDENT + timedelta(minutes=30)))
    topic = await ensure_topic(kafka_bootstrap, f"port.test.scheduler.{uuid.uuid4().hex[:8]}")

    reports = [
        world.build(kind="ems"),
        world.build(kind="ed", incident_at=INCIDENT + timedelta(hours=2)),
        world.build(kind="ed", incident_at=INCIDENT + timedelta(days=2)),
    ]
    person_key = (reports[0].blind_keys.name_dob or "").encode()

    async def publish(*batch: OverdoseReported) -> None:
        publisher = KafkaPublisher(kafka_bootstrap, client_id="it-scheduler")
        await publisher.start()
        try:
            await publisher.publish(
                [
                    OutgoingMessage(
                        topic,
                        person_key,
                        Envelope.wrap(
                            r, source="/portline/intake", subject="p", time=world.clock.now()
                        ).to_bytes(),
                    )
                    for r in batch
                ]
            )
        finally:
            await publisher.stop()

    await publish(*reports)
    processor = InboxProcessor(  # as the service runs it, with the batch handler
        "scheduler.overdoses",
        world.uow,
        world.scheduler.on_overdose,
        batch_handler=world.scheduler.on_overdoses,
    )
    consumer = make_consumer(kafka_bootstrap, group_id=f"g-{uuid.uuid4()}", topics=[topic])
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.create_task(ConsumerLoop(consumer, processor).run(stop))

    async def linked(n: int) -> bool:
        return len(await world.events("ReportLinked")) == n

    try:
        await wait_for(lambda: linked(3), timeout=30)
        # A later batch finds the person, case and episodes in the database: the EMS run of
        # the repeat overdose joins its episode.
        await publish(world.build(kind="ems", incident_at=INCIDENT + timedelta(days=2, hours=1)))
        await wait_for(lambda: linked(4), timeout=30)
    finally:
        stop.set()
        await loop
        await consumer.stop()

    async with sessions() as s:
        episodes = list(await s.execute(sa.select(EPISODE).order_by(EPISODE.c.incident_at)))
        (case,) = list(await s.execute(sa.select(CASE)))
        tasks = list(await s.execute(sa.select(TASK).order_by(TASK.c.created_at)))
    assert [(sorted(e.sources.split(",")), e.repeat) for e in episodes] == [
        (["ed", "ems"], False),
        (["ed", "ems"], True),
    ]
    matches = [e["match"] for e in await world.events("ReportLinked")]
    assert matches == ["new_person", "exact", "exact", "exact"]
    assert [(t.status, t.priority) for t in tasks] == [("cancelled", 2), ("open", 3)]
    assert case.priority == 3


async def test_a_later_batch_finds_a_person_by_the_overdose_alone(
    pg_engine: AsyncEngine, pg_schema: str
) -> None:
    """No blind key in common (a nickname, no DOB, no phone at the scene): the episode query
    on PostgreSQL finds the ED visit 40 minutes after the EMS run, and the pair goes to a lead
    with its explanation."""
    await upgrade(pg_engine, service="scheduler", schema=pg_schema)
    sessions = session_factory(pg_engine)
    world = World(sessions, ManualClock(INCIDENT + timedelta(hours=2)))
    ed = world.build(
        family="Doyle",
        given="Elizabeth",
        dob="1987-03-11",
        phone=None,
        kind="ed",
        incident_at=INCIDENT + timedelta(minutes=40),
    )
    other_ed = world.build(family="Quint", given="Marcus", dob="1970-07-07", phone=None, kind="ed")
    await world.deliver(world.scheduler.on_overdose, ed)
    await world.deliver(world.scheduler.on_overdose, other_ed)
    ems = world.build(family="Doyle", given="Liz", dob=None, phone=None, kind="ems")
    await world.deliver(world.scheduler.on_overdose, ems)

    assert [e["match"] for e in await world.events("ReportLinked")] == [
        "new_person",
        "new_person",
        "possible",
    ]
    async with sessions() as s:
        rows = {r.level: r for r in await s.execute(sa.select(POSSIBLE_MATCH))}
        (ed_person,) = list(
            await s.execute(
                sa.select(EPISODE.c.person_id).where(EPISODE.c.incident_at == ed.incident_at)
            )
        )
    # The other ED visit of the hour is flagged after the review (Linking II: a flag is
    # recorded with the reviews, never dropped); the review is the Doyle visit.
    assert set(rows) == {"review", "flag"}
    match = rows["review"]
    assert match.candidate_id == ed_person.person_id
    assert rows["flag"].candidate_id != ed_person.person_id
    explanation = json.loads(match.explanation)
    levels = {e["comparison"]: e["level"] for e in explanation["evidence"]}
    assert levels["event"] == "same_overdose"
    assert levels["given_name"] == "nickname"
    assert explanation["doubts"] == []


async def test_a_run_that_transported_and_named_no_hospital_flags_the_ed_visit_after_it(
    pg_engine: AsyncEngine, pg_schema: str
) -> None:
    """A false name and date of birth at the scene and no destination: the episode keeps that
    the run transported (eDisposition.30), and the ED visit within 3 hours after it is flagged,
    in either order of arrival and from a later batch (read from PostgreSQL); a run whose
    patient refused transport flags nothing."""
    await upgrade(pg_engine, service="scheduler", schema=pg_schema)
    sessions = session_factory(pg_engine)
    world = World(sessions, ManualClock(INCIDENT + timedelta(days=5)))
    aliases = ("Miller", "Kevin"), ("Novak", "Dana"), ("Pryce", "Owen")
    bates = {"family": "Bates", "given": "Robert", "dob": "1987-03-11", "phone": None}

    def run(day: int, disposition: str) -> OverdoseReported:
        at = INCIDENT + timedelta(days=day)
        family, given = aliases[day // 2]
        return world.build(
            kind="ems", incident_at=at, disposition=disposition, family=family, given=given,
            dob="1979-02-22", phone=None,
        )  # fmt: skip

    def visit(day: int, **who: str | None) -> OverdoseReported:
        at = INCIDENT + timedelta(days=day, minutes=50)
        return world.build(kind="ed", incident_at=at, hospital="GUILFORD-1", **who)

    # EMS first (transported by this unit), the ED visit in a later batch.
    await world.deliver(world.scheduler.on_overdose, run(0, "4230001"))
    await world.deliver(world.scheduler.on_overdose, visit(0, **bates))
    # ED first, then the run (transported by another unit).
    ortiz = {"family": "Ortiz", "given": "Ana", "dob": "1990-05-06", "phone": None}
    await world.deliver(world.scheduler.on_overdose, visit(2, **ortiz))
    await world.deliver(world.scheduler.on_overdose, run(2, "4230005"))
    # The patient refused transport: no destination for a reason, nothing flagged.
    await world.deliver(world.scheduler.on_overdose, run(4, "4230009"))
    quint = {"family": "Quint", "given": "Marcus", "dob": "1970-07-07", "phone": None}
    await world.deliver(world.scheduler.on_overdose, visit(4, **quint))

    async with sessions() as s:
        episodes = {
            (e.incident_at - INCIDENT, e.sources): e.transported
            for e in await s.execute(sa.select(EPISODE))
        }
        matches = list(await s.execute(sa.select(POSSIBLE_MATCH)))
    assert episodes[(timedelta(0), "ems")] is True
    assert episodes[(timedelta(days=2), "ems")] is True
    assert episodes[(timedelta(days=4), "ems")] is False
    assert episodes[(timedelta(days=4, minutes=50), "ed")] is False
    assert [m.level for m in matches] == ["flag", "flag"]
    for m in matches:
        explanation = json.loads(m.explanation)
        assert "50 min later" in explanation["unnamed_transport"]
        assert explanation["weight"] < explanation["thresholds"]["flag"]
    assert [e["match"] for e in await world.events("ReportLinked")] == [
        "new_person", "new_person", "new_person", "new_person", "new_person", "new_person",
    ]  # fmt: skip
