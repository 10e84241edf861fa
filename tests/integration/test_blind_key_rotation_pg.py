"""A blind-index key rotation on real Kafka and PostgreSQL (ADR 0026): a person indexed under b1
is linked by a report indexed during the rotation and, after the re-index (interrupted and
resumed) and b1's retirement, by a report under b2 alone; replicas holding different versions
during the rotation take turns on one person; an SMS STOP recorded under b1 (with its number
sealed, or before outreach_0013 without) still blocks a text after the re-index and b1's
retirement."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.outreach import reindex as opt_outs
from services.scheduler.handlers import PolicyBook, Scheduler
from services.scheduler.models import PERSON, PERSON_KEY, REPORT_LINK
from services.scheduler.reindex import RetireRefused, person_keys, reindex, retire, usage
from shared.bus import ConsumerLoop, KafkaPublisher, make_consumer
from shared.clock import ManualClock
from shared.db import session_factory
from shared.envelope import Envelope
from shared.events import OverdoseReported
from shared.identity import person_key
from shared.inbox import InboxProcessor
from shared.migrations import upgrade
from shared.outbox import OutgoingMessage
from shared.sealing import BlindIndexer
from shared.uow import UnitOfWork
from tests.support import ensure_topic, wait_for
from tests.unit.test_blind_key_rotation import B1, B2, ROTATING, SEALER, reported
from tests.unit.test_opt_out_rotation import PHONES, blocked, keyword, old_stop
from tests.unit.test_opt_out_rotation import reported as outreach_reported

pytestmark = pytest.mark.integration

HELD = 8.0
"""How long the second replica's batch is given while the first is open."""


def uow_of(sessions: async_sessionmaker[AsyncSession]) -> UnitOfWork:
    return UnitOfWork(sessions, clock=ManualClock(datetime.now(UTC)), source="/portline/scheduler")


def scheduler(indexer: BlindIndexer) -> Scheduler:
    return Scheduler(sealer=SEALER, policies=PolicyBook(), indexer=indexer)


async def through_kafka(
    kafka_bootstrap: str,
    sessions: async_sessionmaker[AsyncSession],
    held: BlindIndexer,
    event: OverdoseReported,
) -> str:
    """Publish ``event`` as intake does and apply it with a scheduler holding ``held``, through
    its inbox; the link's match."""
    topic = await ensure_topic(kafka_bootstrap, f"port.test.blindkeys.{uuid.uuid4().hex[:8]}")
    publisher = KafkaPublisher(kafka_bootstrap, client_id="it-blindkeys")
    await publisher.start()
    try:
        envelope = Envelope.wrap(
            event, source="/portline/intake", subject="p", time=datetime.now(UTC)
        )
        key = person_key(event.blind_keys, event.report_id).encode()
        await publisher.publish([OutgoingMessage(topic, key, envelope.to_bytes())])
    finally:
        await publisher.stop()
    replica = scheduler(held)
    processor = InboxProcessor(
        "scheduler.overdoses",
        lambda: uow_of(sessions),
        replica.on_overdose,
        batch_handler=replica.on_overdoses,
    )
    consumer = make_consumer(kafka_bootstrap, group_id=f"g-{uuid.uuid4()}", topics=[topic])
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.create_task(ConsumerLoop(consumer, processor).run(stop))

    async def match() -> str | None:
        async with sessions() as s:
            found = await s.scalar(
                sa.select(REPORT_LINK.c.match).where(REPORT_LINK.c.report_id == event.report_id)
            )
        return None if found is None else str(found)

    try:
        await wait_for(match, timeout=30)
    finally:
        stop.set()
        await loop
        await consumer.stop()
    return str(await match())


async def people(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as s:
        return int(await s.scalar(sa.select(sa.func.count()).select_from(PERSON)) or 0)


async def seed_b1_people(sessions: async_sessionmaker[AsyncSession], n: int) -> None:
    """People linked before the rotation: keys under b1 only."""
    for i in range(n):
        identity = {"family": "Roe", "given": f"Kim{chr(97 + i)}", "dob": "1980-02-03"}
        pid = uuid.uuid4()
        async with sessions() as s, s.begin():
            await s.execute(
                PERSON.insert().values(
                    id=pid,
                    program_id="demo",
                    identity_sealed=SEALER.seal_json(identity, context="identity"),
                    do_not_contact=False,
                    created_at=datetime.now(UTC),
                )
            )
            await s.execute(
                PERSON_KEY.insert(),
                [
                    {"person_id": pid, "kind": k, "value": v, "version": "b1"}
                    for k, v in person_keys(B1, identity)
                ],
            )


async def test_a_person_indexed_under_b1_is_linked_through_the_rotation_and_after_retirement(
    pg_engine: AsyncEngine, pg_schema: str, kafka_bootstrap: str
) -> None:
    await upgrade(pg_engine, service="scheduler", schema=pg_schema)
    sessions = session_factory(pg_engine)

    # Before the rotation: Jane is indexed under b1.
    assert await through_kafka(kafka_bootstrap, sessions, B1, reported(B1, days_ago=40)) == (
        "new_person"
    )
    await seed_b1_people(sessions, 5)
    assert (await usage(sessions)).only == {"b1": 6}

    # During: intake sends b2 and b1; the scheduler holds both. Jane is found.
    during = reported(ROTATING, days_ago=20)
    assert await through_kafka(kafka_bootstrap, sessions, ROTATING, during) == "exact"
    assert await people(sessions) == 6

    # Retiring now is refused: five people are under b1 only.
    with pytest.raises(RetireRefused, match="5 person"):
        await retire(sessions, "b1")

    # The re-index dies after its first batch, then a second run finishes what is left.
    class Interrupted(Exception):
        pass

    async def die(_seconds: float) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        await reindex(sessions, SEALER, B2, rate=1.0, batch=2, sleep=die)
    assert (await usage(sessions)).only == {"b1": 3}
    resumed = await reindex(sessions, SEALER, B2, rate=1000, batch=2)
    assert resumed.reindexed == 3
    assert (await usage(sessions)).only == {}

    # b1 retired: a report under b2 alone still finds Jane, and each seeded person.
    assert await retire(sessions, "b1") > 0
    assert await through_kafka(kafka_bootstrap, sessions, B2, reported(B2)) == "exact"
    assert await people(sessions) == 6
    found = await usage(sessions)
    assert found.people == {"b2": 6}


async def test_a_stop_recorded_under_b1_still_blocks_a_text_after_b1_retires(
    pg_engine: AsyncEngine, pg_schema: str
) -> None:
    await upgrade(pg_engine, service="outreach", schema=pg_schema)
    sessions = session_factory(pg_engine)

    # Before the rotation: a STOP through the webhook's code (number sealed), one recorded
    # before outreach_0013 (index only) whose person outreach holds a report of, and one
    # whose number outreach does not know.
    await keyword(sessions, B1, PHONES[0])
    await old_stop(sessions, PHONES[1])
    await outreach_reported(sessions, PHONES[1])
    await old_stop(sessions, PHONES[2])
    assert all([await blocked(sessions, B1, p) for p in PHONES[:3]])

    # During: a STOP is looked up and recorded under both versions.
    assert all([await blocked(sessions, ROTATING, p) for p in PHONES[:3]])
    await keyword(sessions, ROTATING, PHONES[3])
    with pytest.raises(opt_outs.RetireRefused, match="3 SMS opt-out"):
        await opt_outs.retire(sessions, "b1")

    # The re-index: from the sealed number, and from the report's phone.
    done = await opt_outs.reindex(sessions, SEALER, ROTATING, rate=1000, batch=1)
    assert (done.reindexed, done.recovered, done.unrecoverable) == (1, 1, 1)
    with pytest.raises(opt_outs.RetireRefused, match="1 SMS opt-out"):
        await opt_outs.retire(sessions, "b1")
    await keyword(sessions, ROTATING, PHONES[2], "START")  # the one lost is settled

    # b1 retired: with b2 alone, every STOP still blocks a text.
    assert await opt_outs.retire(sessions, "b1") == 3
    assert (await opt_outs.usage(sessions)).opt_outs == {"b2": 3}
    for phone in (PHONES[0], PHONES[1], PHONES[3]):
        assert await blocked(sessions, B2, phone)
    assert not await blocked(sessions, B2, PHONES[2])


async def test_replicas_holding_b1_and_b1_b2_take_turns_on_one_new_person(
    pg_engine: AsyncEngine, pg_schema: str
) -> None:
    """The rolling restart of step 2: one replica holds b1 only, another b2 and b1. Reports of
    one new person, one under b1 alone and one under both, under two Kafka keys."""
    await upgrade(pg_engine, service="scheduler", schema=pg_schema)
    sessions = session_factory(pg_engine)
    assert await race(sessions, (ROTATING, reported(ROTATING)), (B1, reported(B1, days_ago=0)))
    assert await people(sessions) == 1


async def test_replicas_holding_b2_b1_and_b2_take_turns_on_one_new_person(
    pg_engine: AsyncEngine, pg_schema: str
) -> None:
    """The rolling restart of step 5: one replica still holds b2 and b1, another b2 only."""
    await upgrade(pg_engine, service="scheduler", schema=pg_schema)
    sessions = session_factory(pg_engine)
    assert await race(sessions, (B2, reported(B2)), (ROTATING, reported(ROTATING)))
    assert await people(sessions) == 1


async def race(
    sessions: async_sessionmaker[AsyncSession],
    first: tuple[BlindIndexer, OverdoseReported],
    second: tuple[BlindIndexer, OverdoseReported],
) -> bool:
    """Apply ``first`` in one replica's batch and, while it is open, ``second`` in another
    replica's; whether the second waited for the first to commit."""
    one, two = scheduler(first[0]), scheduler(second[0])

    async def deliver(event: OverdoseReported) -> None:
        envelope = Envelope.wrap(event, source="/t", subject="k", time=datetime.now(UTC))
        async with uow_of(sessions) as uow:
            await two.on_overdose(uow, envelope)
            await uow.commit()

    envelope = Envelope.wrap(first[1], source="/t", subject="k", time=datetime.now(UTC))
    async with uow_of(sessions) as uow:
        await one.on_overdoses(uow, [envelope])
        other = asyncio.create_task(deliver(second[1]))
        finished, _ = await asyncio.wait({other}, timeout=HELD)
        await uow.commit()
    await other
    return not finished


def test_the_rotation_reports_differ_in_kafka_key() -> None:
    """Why the locks matter: the same person's reports land under different Kafka keys."""
    b1, b2 = reported(B1), reported(B2)
    assert person_key(b1.blind_keys, b1.report_id) != person_key(b2.blind_keys, b2.report_id)
