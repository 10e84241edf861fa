"""Outbox parking against real PostgreSQL and Kafka: a record larger than the topic's
max.message.bytes is parked and the rows after it reach Kafka exactly once."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.bus import KafkaPublisher
from shared.clock import SystemClock
from shared.envelope import Envelope
from shared.outbox import OUTBOX, OutboxRelay, parked_rows, unpark
from tests.support import WidgetCreated, ensure_topic, read_topic

pytestmark = pytest.mark.integration

MAX_MESSAGE_BYTES = 10_000


@pytest.fixture
async def small_topic(kafka_bootstrap: str) -> AsyncIterator[str]:
    """A topic of its own, with one partition (every key shares it, as the refused record's
    neighbours would) and a small max.message.bytes."""
    name = f"port.test.small-{uuid.uuid4().hex[:8]}.v1"
    await ensure_topic(kafka_bootstrap, name, configs={"max.message.bytes": str(MAX_MESSAGE_BYTES)})
    yield name
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([name])
    finally:
        await admin.close()


async def raise_limit(kafka_bootstrap: str, topic: str, limit: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        [response] = await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": str(limit)}
                )
            ]
        )
        assert all(resource[0] == 0 for resource in response.resources), response
    finally:
        await admin.close()


async def add_rows(
    sessions: async_sessionmaker[AsyncSession], topic: str, rows: list[tuple[str, str]]
) -> dict[str, str]:
    """Outbox rows (key, widget name) on `topic`, committed in this order; name -> event id."""
    ids: dict[str, str] = {}
    values = []
    for key, name in rows:
        envelope = Envelope.wrap(
            WidgetCreated(widget_id=uuid.uuid4(), name=name),
            source="/portline/test",
            subject=key,
            time=datetime.now(UTC),
        )
        ids[name] = envelope.id
        values.append(
            {
                "event_id": envelope.id,
                "topic": topic,
                "key": key,
                "payload": envelope.model_dump_json(),
                "created_at": envelope.time,
            }
        )
    async with sessions() as s, s.begin():
        await s.execute(OUTBOX.insert(), values)
    return ids


async def drain(relay: OutboxRelay) -> None:
    for _ in range(50):  # bounded: a pass publishes or parks at least one row
        if not await relay.run_once():
            return
    raise AssertionError("the relay did not settle")


def names(records: list[object]) -> list[str]:
    return [Envelope.from_bytes(r.value).data["name"] for r in records]  # type: ignore[attr-defined]


async def test_a_record_too_large_for_the_topic_is_parked_and_the_rest_arrive_once(
    sessions: async_sessionmaker[AsyncSession],
    publisher: KafkaPublisher,
    kafka_bootstrap: str,
    small_topic: str,
) -> None:
    run = uuid.uuid4().hex[:8]
    k1, k2, k3 = (f"person-{run}-{n}" for n in (1, 2, 3))
    # random text: the producer compresses (gzip), and repeated letters would fit
    huge = base64.b64encode(os.urandom(4 * MAX_MESSAGE_BYTES)).decode()
    await add_rows(
        sessions,
        small_topic,
        [(k1, "a"), (k2, "b"), (k3, huge), (k3, "c, held"), (k1, "d"), (k2, "e")],
    )
    relay = OutboxRelay(sessions, publisher, clock=SystemClock(), service="test")

    await drain(relay)

    everything = await read_topic(kafka_bootstrap, small_topic, where=lambda _r: True, expect=4)
    assert names(everything) == ["a", "b", "d", "e"]  # each exactly once, in order
    [parked] = await parked_rows(sessions)
    assert (parked.key, parked.reason, parked.topic) == (k3, "too_large", small_topic)
    async with sessions() as s:
        waiting = (
            await s.execute(
                sa.select(OUTBOX.c.key).where(
                    OUTBOX.c.published_at.is_(None), OUTBOX.c.parked_at.is_(None)
                )
            )
        ).scalars()
        assert list(waiting) == [k3]  # "c" waits behind its key's parked row

    # Later rows keep flowing, on the same partition, through the same publisher.
    await add_rows(sessions, small_topic, [(k1, "f")])
    await drain(relay)

    # On call: the topic's limit is raised, then the row retried; its key follows in order.
    await raise_limit(kafka_bootstrap, small_topic, 10 * MAX_MESSAGE_BYTES)
    assert await unpark(sessions, parked.id)
    await drain(relay)

    everything = await read_topic(kafka_bootstrap, small_topic, where=lambda _r: True, expect=7)
    assert names(everything) == ["a", "b", "d", "e", "f", huge, "c, held"]
    assert await parked_rows(sessions) == []
