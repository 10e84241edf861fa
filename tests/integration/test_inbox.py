"""Idempotent consumers and dead-lettering against real PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.bus import ConsumerLoop, KafkaPublisher, make_consumer
from shared.envelope import Envelope
from shared.inbox import DeadLetter, InboxProcessor, IncomingMessage
from shared.outbox import OutgoingMessage
from shared.uow import UnitOfWork
from tests.support import TEST_TOPIC, WidgetCreated, applied, wait_for

pytestmark = pytest.mark.integration


def envelope(name: str, subject: str) -> Envelope:
    return Envelope.wrap(
        WidgetCreated(widget_id=uuid.uuid4(), name=name),
        source="/portline/test",
        subject=subject,
        time=datetime.now(UTC),
    )


async def test_poison_message_is_retried_then_dead_lettered_and_the_rest_flow(
    uow_factory: Callable[[], UnitOfWork],
    sessions: async_sessionmaker[AsyncSession],
    publisher: KafkaPublisher,
    kafka_bootstrap: str,
) -> None:
    subject = f"person-{uuid.uuid4()}"
    good = [envelope(f"good-{i}", subject) for i in range(3)]
    poison = envelope("poison", subject)
    sequence = [good[0], poison, good[1], good[2]]
    messages = [OutgoingMessage(TEST_TOPIC, subject.encode(), e.to_bytes()) for e in sequence]
    garbage = OutgoingMessage(TEST_TOPIC, subject.encode(), b"\x00not an envelope{")
    await publisher.publish([*messages[:2], garbage, *messages[2:]])

    calls: Counter[str] = Counter()

    async def handle(uow: UnitOfWork, env: Envelope) -> None:
        if env.subject != subject:
            return
        calls[env.data["name"]] += 1
        if env.data["name"] == "poison":
            raise ValueError("this event can never be applied")
        await uow.session.execute(applied.insert().values(event_id=env.id, name=env.data["name"]))

    processor = InboxProcessor(
        "test.poison", uow_factory, handle, max_attempts=3, backoff_seconds=0
    )
    group = f"g-{uuid.uuid4()}"

    async def dead_letters() -> list[DeadLetter]:
        async with sessions() as s:
            rows = await s.execute(sa.select(DeadLetter).where(DeadLetter.key == subject.encode()))
            return list(rows.scalars())

    async def applied_names() -> list[str]:
        async with sessions() as s:
            return list(
                (await s.execute(sa.select(applied.c.name).order_by(applied.c.id))).scalars()
            )

    async def settled() -> bool:
        return len(await applied_names()) == 3 and len(await dead_letters()) == 2

    async def run_consumer(until: Callable[[], object], linger: float) -> None:
        stop = asyncio.Event()
        consumer = make_consumer(kafka_bootstrap, group_id=group, topics=[TEST_TOPIC])
        await consumer.start()
        task = asyncio.create_task(ConsumerLoop(consumer, processor).run(stop))
        try:
            await wait_for(until, timeout=30)
            await asyncio.sleep(linger)
        finally:
            stop.set()
            await task
            await consumer.stop()

    await run_consumer(settled, linger=0.5)

    assert await applied_names() == ["good-0", "good-1", "good-2"]
    assert calls == {"good-0": 1, "poison": 3, "good-1": 1, "good-2": 1}
    letters = {(d.event_id, d.attempts) for d in await dead_letters()}
    assert letters == {(poison.id, 3), (None, 1)}
    poison_letter = next(d for d in await dead_letters() if d.event_id == poison.id)
    assert "ValueError" in poison_letter.error
    assert poison_letter.payload == poison.to_bytes()

    # Offsets were committed past everything: a restarted consumer in the group sees nothing new.
    await run_consumer(lambda: True, linger=3.0)
    assert calls == {"good-0": 1, "poison": 3, "good-1": 1, "good-2": 1}


async def test_messages_that_do_not_fit_the_dead_letter_table_still_let_the_partition_move_on(
    uow_factory: Callable[[], UnitOfWork],
    sessions: async_sessionmaker[AsyncSession],
    kafka_bootstrap: str,
    test_topic: str,
) -> None:
    """A tombstone (NOT NULL payload), an event id longer than the columns and a NUL in the
    error text (PostgreSQL refuses both) each made the dead letter's own insert fail, so the
    consumer was restarted and handed the same record for ever."""
    subject = f"person-{uuid.uuid4()}"
    long_id = envelope("long id", subject).model_copy(update={"id": "e" * 100})
    nul = envelope("nul in its error", subject)
    good = [envelope(f"good-{i}", subject) for i in range(3)]

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        key = subject.encode()
        for value in (
            good[0].to_bytes(),
            None,  # a tombstone
            long_id.to_bytes(),
            good[1].to_bytes(),
            nul.to_bytes(),
            good[2].to_bytes(),
        ):
            await producer.send_and_wait(test_topic, value=value, key=key)
    finally:
        await producer.stop()

    async def handle(uow: UnitOfWork, env: Envelope) -> None:
        if env.subject != subject:
            return
        if env.id == nul.id:
            raise ValueError("cannot apply \x00 this")
        await uow.session.execute(applied.insert().values(event_id=env.id, name=env.data["name"]))

    processor = InboxProcessor("test.unfit", uow_factory, handle, max_attempts=2, backoff_seconds=0)

    async def dead_letters() -> list[DeadLetter]:
        async with sessions() as s:
            rows = await s.execute(
                sa.select(DeadLetter)
                .where(DeadLetter.key == subject.encode())
                .order_by(DeadLetter.offset)
            )
            return list(rows.scalars())

    async def applied_names() -> list[str]:
        async with sessions() as s:
            rows = await s.execute(
                sa.select(applied.c.name)
                .where(applied.c.name.like("good-%"))
                .order_by(applied.c.id)
            )
            return list(rows.scalars())

    async def settled() -> bool:
        return len(await applied_names()) == 3 and len(await dead_letters()) == 3

    stop = asyncio.Event()
    consumer = make_consumer(kafka_bootstrap, group_id=f"g-{uuid.uuid4()}", topics=[test_topic])
    await consumer.start()
    task = asyncio.create_task(ConsumerLoop(consumer, processor).run(stop))
    try:
        await wait_for(settled, timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await consumer.stop()

    assert await applied_names() == ["good-0", "good-1", "good-2"]
    letters = await dead_letters()
    assert [d.payload for d in letters] == [b"", long_id.to_bytes(), nul.to_bytes()]
    assert "tombstone" in letters[0].error
    assert letters[1].event_id == "e" * 64
    assert letters[2].error == "ValueError: cannot apply  this"


async def test_a_batch_seen_before_is_all_duplicates_on_postgres(
    uow_factory: Callable[[], UnitOfWork],
) -> None:
    """A batch's check of what was applied finds each event applied before, by this
    consumer only."""
    envelopes = [envelope(f"batch-{i}", f"person-{uuid.uuid4()}") for i in range(5)]
    messages = [
        IncomingMessage(TEST_TOPIC, 0, offset, e.subject.encode(), e.to_bytes())
        for offset, e in enumerate(envelopes)
    ]
    applied_names: list[str] = []

    async def handle_all(uow: UnitOfWork, batch: Sequence[Envelope]) -> None:
        applied_names.extend(e.data["name"] for e in batch)

    async def handle(uow: UnitOfWork, env: Envelope) -> None:
        await handle_all(uow, [env])

    consumer = f"test.batch.{uuid.uuid4().hex[:8]}"
    processor = InboxProcessor(consumer, uow_factory, handle, batch_handler=handle_all)
    first = await processor.process_batch(messages[:3])
    again = await processor.process_batch(messages)
    other = InboxProcessor(f"{consumer}.other", uow_factory, handle, batch_handler=handle_all)
    elsewhere = await other.process_batch(messages[:2])
    assert [o.value for o in first] == ["applied"] * 3
    assert [o.value for o in again] == ["duplicate"] * 3 + ["applied"] * 2
    assert [o.value for o in elsewhere] == ["applied"] * 2
    assert applied_names == [f"batch-{i}" for i in (0, 1, 2, 3, 4, 0, 1)]
