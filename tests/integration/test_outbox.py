"""The transactional outbox against real PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.bus import ConsumerLoop, KafkaPublisher, make_consumer
from shared.clock import SystemClock
from shared.envelope import Envelope
from shared.inbox import InboxProcessor
from shared.outbox import OUTBOX, OutboxRecord, OutboxRelay, RelayStage
from shared.uow import UnitOfWork
from tests.support import TEST_TOPIC, applied, create_widget, read_topic, wait_for, widgets

pytestmark = pytest.mark.integration


class SimulatedCrash(Exception):
    """The relay process dying at an injected point."""


def crash_at(stage: RelayStage) -> Callable[[RelayStage], None]:
    def hook(current: RelayStage) -> None:
        if current == stage:
            raise SimulatedCrash(stage)

    return hook


def relay(
    sessions: async_sessionmaker[AsyncSession],
    publisher: KafkaPublisher,
    on_stage: Callable[[RelayStage], None] | None = None,
) -> OutboxRelay:
    return OutboxRelay(sessions, publisher, clock=SystemClock(), on_stage=on_stage)


def for_subject(subject: str) -> Callable[[object], bool]:
    return lambda record: record.key == subject.encode()  # type: ignore[attr-defined]


async def drain(r: OutboxRelay) -> int:
    total = 0
    while n := await r.run_once():
        total += n
    return total


async def test_change_and_event_commit_together_and_rollback_publishes_nothing(
    uow_factory: Callable[[], UnitOfWork],
    sessions: async_sessionmaker[AsyncSession],
    publisher: KafkaPublisher,
    kafka_bootstrap: str,
) -> None:
    subject = f"person-{uuid.uuid4()}"
    async with uow_factory() as uow:
        kept = await create_widget(uow, "kept", subject=subject)
        await uow.commit()
    async with uow_factory() as uow:
        await create_widget(uow, "left uncommitted", subject=subject)

    async def fail_midway() -> None:
        async with uow_factory() as uow:
            await create_widget(uow, "failed midway", subject=subject)
            raise RuntimeError("handler failed before commit")

    with pytest.raises(RuntimeError):
        await fail_midway()

    assert await drain(relay(sessions, publisher)) == 1

    records = await read_topic(kafka_bootstrap, TEST_TOPIC, where=for_subject(subject), expect=1)
    assert [Envelope.from_bytes(r.value).id for r in records] == [kept.id]
    async with sessions() as s:
        names = (await s.execute(sa.select(widgets.c.name))).scalars().all()
    assert names == ["kept"]


async def _consume_until(
    kafka_bootstrap: str,
    processor: InboxProcessor[UnitOfWork],
    done: Callable[[], object],
    *,
    group: str,
) -> None:
    stop = asyncio.Event()
    consumer = make_consumer(kafka_bootstrap, group_id=group, topics=[TEST_TOPIC])
    await consumer.start()
    task = asyncio.create_task(ConsumerLoop(consumer, processor).run(stop))
    try:
        await wait_for(done, timeout=30)
        await asyncio.sleep(1.0)  # let any duplicate deliveries arrive too
    finally:
        stop.set()
        await task
        await consumer.stop()


def applying_handler(subject: str) -> Callable[[UnitOfWork, Envelope], object]:
    async def handle(uow: UnitOfWork, envelope: Envelope) -> None:
        if envelope.subject == subject:
            await uow.session.execute(
                applied.insert().values(event_id=envelope.id, name=envelope.data["name"])
            )

    return handle


async def _applied(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessions() as s:
        return list((await s.execute(sa.select(applied.c.event_id))).scalars())


async def test_crash_between_commit_and_publish_then_restart_applies_exactly_once(
    uow_factory: Callable[[], UnitOfWork],
    sessions: async_sessionmaker[AsyncSession],
    publisher: KafkaPublisher,
    kafka_bootstrap: str,
) -> None:
    subject = f"person-{uuid.uuid4()}"
    async with uow_factory() as uow:
        before_send = await create_widget(uow, "crash before send", subject=subject)
        await uow.commit()

    with pytest.raises(SimulatedCrash):
        await relay(sessions, publisher, crash_at("claimed")).run_once()
    nothing = await read_topic(
        kafka_bootstrap, TEST_TOPIC, where=for_subject(subject), expect=1, timeout=2
    )
    assert nothing == []

    async with uow_factory() as uow:
        after_send = await create_widget(uow, "crash after send", subject=subject)
        await uow.commit()
    # Restarted relay: sends both, then dies before marking them published ...
    with pytest.raises(SimulatedCrash):
        await relay(sessions, publisher, crash_at("sent")).run_once()
    # ... so the next restart sends them again: at-least-once on the wire.
    assert await drain(relay(sessions, publisher)) == 2
    copies = await read_topic(kafka_bootstrap, TEST_TOPIC, where=for_subject(subject), expect=4)
    sent_ids = sorted(Envelope.from_bytes(r.value).id for r in copies)
    assert sent_ids == sorted([before_send.id, after_send.id] * 2)

    processor = InboxProcessor("test.exactly-once", uow_factory, applying_handler(subject))

    async def both_applied() -> bool:
        return len(await _applied(sessions)) >= 2

    await _consume_until(kafka_bootstrap, processor, both_applied, group=f"g-{uuid.uuid4()}")
    assert sorted(await _applied(sessions)) == sorted([before_send.id, after_send.id])


async def test_relay_does_not_skip_rows_committed_out_of_id_order(
    uow_factory: Callable[[], UnitOfWork],
    sessions: async_sessionmaker[AsyncSession],
    publisher: KafkaPublisher,
    kafka_bootstrap: str,
) -> None:
    subject = f"person-{uuid.uuid4()}"
    r = relay(sessions, publisher)
    async with uow_factory() as slow:
        first = await create_widget(slow, "lower id, commits last", subject=subject)
        await slow.flush()  # takes its id from the sequence now
        async with uow_factory() as fast:
            second = await create_widget(fast, "higher id, commits first", subject=subject)
            await fast.flush()
            await fast.commit()
        assert await r.run_once() == 1  # only the committed, higher id is visible
        await slow.commit()
    assert await r.run_once() == 1  # the lower id, committed later, is not skipped

    async with sessions() as s:
        ids = dict(
            (
                await s.execute(
                    sa.select(OutboxRecord.__table__.c.event_id, OutboxRecord.__table__.c.id)
                )
            ).all()
        )
    assert ids[first.id] < ids[second.id]
    records = await read_topic(kafka_bootstrap, TEST_TOPIC, where=for_subject(subject), expect=2)
    assert [Envelope.from_bytes(rec.value).id for rec in records] == [second.id, first.id]


async def test_relay_looks_again_soon_while_another_replica_publishes(
    uow_factory: Callable[[], UnitOfWork],
    sessions: async_sessionmaker[AsyncSession],
    publisher: KafkaPublisher,
) -> None:
    """While another replica holds the publishing lock, the relay retries within
    milliseconds, not at its next poll: that replica may have read the outbox before this
    process's rows were committed."""
    r = OutboxRelay(sessions, publisher, clock=SystemClock(), poll_interval=60)
    await drain(r)

    async def published() -> bool:
        async with sessions() as s:
            unpublished = await s.scalar(
                sa.select(sa.func.count()).where(OUTBOX.c.published_at.is_(None))
            )
        return unpublished == 0

    stop = asyncio.Event()
    async with sessions() as other_replica, other_replica.begin():
        schema = (await other_replica.execute(sa.text("select current_schema()"))).scalar_one()
        await other_replica.execute(
            sa.text("select pg_advisory_xact_lock(:id)"),
            {"id": zlib.crc32(f"portline-outbox:{schema}".encode())},
        )
        async with uow_factory() as uow:
            await create_widget(uow, "w", subject=f"person-{uuid.uuid4()}")
            await uow.commit()
        task = asyncio.create_task(r.run(stop))
        await asyncio.sleep(0.3)
        assert not await published()  # the lock is taken: nothing may go out
    try:
        await wait_for(published, timeout=5)  # far sooner than the 60 s poll
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
