"""The scheduler's alerts consumer on real Kafka and PostgreSQL: a real `SpikeDetected` opens
one hot-spot task, a redelivered one changes nothing, a later alert for the county extends it."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler.handlers import PolicyBook, Scheduler
from services.scheduler.models import HOT_SPOT_TASK
from shared.bus import ConsumerLoop, KafkaPublisher, make_consumer
from shared.clock import ManualClock
from shared.db import session_factory
from shared.envelope import Envelope
from shared.events import SpikeDetected
from shared.inbox import InboxProcessor
from shared.migrations import upgrade
from shared.outbox import OUTBOX, OutgoingMessage
from shared.sealing import Keyring, Sealer
from shared.uow import UnitOfWork
from tests.support import ensure_topic, wait_for

pytestmark = pytest.mark.integration


async def test_a_spike_alert_on_kafka_opens_one_hot_spot_task_exactly_once(
    pg_engine: AsyncEngine, pg_schema: str, kafka_bootstrap: str
) -> None:
    await upgrade(pg_engine, service="scheduler", schema=pg_schema)
    sessions = session_factory(pg_engine)
    now = datetime.now(UTC)
    clock = ManualClock(now)
    scheduler = Scheduler(sealer=Sealer(Keyring({"t": b"s" * 32}, "t")), policies=PolicyBook())
    topic = await ensure_topic(kafka_bootstrap, f"port.test.alerts.{uuid.uuid4().hex[:8]}")

    def alert(detected_at: datetime) -> Envelope:
        event = SpikeDetected(
            alert_id=uuid.uuid4(),
            program_id="demo",
            county="Guilford",
            state="NC",
            detector="odmap",
            level="alert",
            observed=6,
            threshold=5,
            window_start=detected_at - timedelta(hours=20),
            window_end=detected_at,
            detected_at=detected_at,
        )
        return Envelope.wrap(event, source="/portline/reporting", subject="demo", time=now)

    first, later = alert(now - timedelta(hours=1)), alert(now)

    async def publish(*envelopes: Envelope) -> None:
        publisher = KafkaPublisher(kafka_bootstrap, client_id="it-hot-spots")
        await publisher.start()
        try:
            await publisher.publish(
                [OutgoingMessage(topic, b"demo", e.to_bytes()) for e in envelopes]
            )
        finally:
            await publisher.stop()

    def uow() -> UnitOfWork:
        return UnitOfWork(sessions, clock=clock, source="/portline/scheduler")

    async def published() -> list[dict[str, object]]:
        async with sessions() as s:
            rows = (await s.execute(sa.select(OUTBOX.c.payload).order_by(OUTBOX.c.id))).scalars()
            return [json.loads(r) for r in rows]

    # the alert, then the same event delivered again (a producer retry): one task
    await publish(first, first)
    processor = InboxProcessor("scheduler.alerts", uow, scheduler.hot_spots.on_alert)
    consumer = make_consumer(kafka_bootstrap, group_id=f"g-{uuid.uuid4()}", topics=[topic])
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.create_task(ConsumerLoop(consumer, processor).run(stop))
    try:
        await wait_for(lambda: _count(published, 1), timeout=30)
        await publish(later)
        await wait_for(lambda: _count(published, 2), timeout=30)
    finally:
        stop.set()
        await loop
        await consumer.stop()

    async with sessions() as s:
        (task,) = list(await s.execute(sa.select(HOT_SPOT_TASK)))
    assert (task.county, task.status, task.program_id) == ("Guilford", "open", "demo")
    first_event, second_event = await published()
    assert [e["type"] for e in (first_event, second_event)] == ["HotSpotTaskScheduled"] * 2
    data = second_event["data"]
    assert isinstance(data, dict)
    assert data["task_id"] == str(task.id)
    assert data["alert_ids"] == [
        str(first.event().alert_id),  # type: ignore[attr-defined]
        str(later.event().alert_id),  # type: ignore[attr-defined]
    ]
    assert datetime.fromisoformat(data["due_at"]) == now + timedelta(hours=48)
    assert task.due_at == now + timedelta(hours=48)
    assert not {"person_id", "case_id", "identity"} & set(data)


async def _count(published: object, n: int) -> bool:
    return len(await published()) == n  # type: ignore[operator]
