"""Helpers for tests that talk to the real broker and databases."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.envelope import Envelope, Event
from shared.uow import UnitOfWork

TEST_TOPIC = "port.test.widgets.v1"


class WidgetCreated(Event):
    """A stand-in domain event for plumbing tests."""

    event_type = "WidgetCreated"
    topic = TEST_TOPIC

    widget_id: uuid.UUID
    name: str


test_metadata = sa.MetaData()
widgets = sa.Table(
    "widget",
    test_metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
)
applied = sa.Table(
    "applied_event",
    test_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("name", sa.String(100), nullable=False),
)


async def create_widget(uow: UnitOfWork, name: str, *, subject: str) -> Envelope:
    """A domain change and its event in one unit of work (not committed here)."""
    widget_id = uuid.uuid4()
    await uow.session.execute(widgets.insert().values(id=str(widget_id), name=name))
    return uow.publish(WidgetCreated(widget_id=widget_id, name=name), subject=subject)


async def ensure_topic(
    bootstrap: str, name: str, partitions: int = 1, *, configs: dict[str, str] | None = None
) -> str:
    """Create the topic unless it exists (`configs`, e.g. max.message.bytes, apply to a new one)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if name not in await admin.list_topics():
            await admin.create_topics(
                [
                    NewTopic(
                        name=name,
                        num_partitions=partitions,
                        replication_factor=1,
                        topic_configs=configs or {},
                    )
                ]
            )
    finally:
        await admin.close()
    return name


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    where: Callable[[ConsumerRecord[bytes, bytes]], bool],
    expect: int,
    timeout: float = 20.0,
    settle: float = 1.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record on the topic matching `where`, waiting until `expect` arrive (bounded),
    then a little longer so that unexpected extra copies would show up too."""
    # No group: the consumer takes every partition and, with nothing committed, starts at the
    # beginning of each.
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        found: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                found.extend(r for r in records if where(r))
            if len(found) >= expect and settle_until is None:
                settle_until = time.monotonic() + settle
            if settle_until is not None and time.monotonic() >= settle_until:
                break
        return found
    finally:
        await consumer.stop()


async def wait_for(predicate: Callable[[], object], *, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")
