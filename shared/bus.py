"""Kafka plumbing: the idempotent producer, the consumer loop, and an in-memory fake.

The consumer commits a partition's offset only after the inbox processor has committed the
handler's database transaction, so a crash anywhere redelivers instead of losing a message.
The records of one fetch are applied in batches (one unit of work each), every partition's
records in their order; a batch may hold several partitions' records, since records of
different partitions have no order between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.inbox import InboxProcessor, IncomingMessage, is_transient
from shared.outbox import OutgoingMessage
from shared.topics import ALL_TOPICS, TopicSpec

__all__ = [
    "ConsumerLoop",
    "InMemoryPublisher",
    "KafkaPublisher",
    "create_topics",
    "make_consumer",
]

log = logging.getLogger(__name__)


class KafkaPublisher:
    """An idempotent, acks=all producer; publish() returns once every message is acked."""

    def __init__(self, bootstrap_servers: str, *, client_id: str) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=15000,
        )
        self._started = False

    async def start(self) -> None:
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        if self._started:
            await self._producer.stop()
            self._started = False

    @property
    def started(self) -> bool:
        return self._started

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        # Enqueue in order first (keeps per-partition order), then wait for every ack.
        futures = [
            await self._producer.send(m.topic, value=m.value, key=m.key, headers=list(m.headers))
            for m in messages
        ]
        await asyncio.gather(*futures)


class InMemoryPublisher:
    """A fake publisher for unit tests: records what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []
        self.by_topic: dict[str, list[OutgoingMessage]] = defaultdict(list)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        for m in messages:
            self.sent.append(m)
            self.by_topic[m.topic].append(m)


def make_consumer(
    bootstrap_servers: str, *, group_id: str, topics: Sequence[str], start: str = "earliest"
) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset=start,
        isolation_level="read_committed",
        max_poll_interval_ms=300000,
    )


class ConsumerLoop:
    """Feeds records to an inbox processor and commits offsets after each applied batch."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        processor: InboxProcessor,  # type: ignore[type-arg]
        *,
        retry_backoff: float = 1.0,
        batch_size: int = 50,
    ) -> None:
        self._batch_size = batch_size
        self._consumer = consumer
        self._processor = processor
        self._retry_backoff = retry_backoff

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            fetched = await self._consumer.getmany(timeout_ms=500, max_records=200)
            messages = [
                IncomingMessage(
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    key=record.key,
                    value=record.value,
                )
                for records in fetched.values()
                for record in records
            ]
            await self._drain(messages, stop)

    async def _drain(self, messages: Sequence[IncomingMessage], stop: asyncio.Event) -> None:
        for start in range(0, len(messages), self._batch_size):
            chunk = messages[start : start + self._batch_size]
            try:
                await self._processor.process_batch(chunk)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning(
                    "transient failure; will redeliver",
                    extra={"topic": chunk[0].topic, "partition": chunk[0].partition},
                )
                # Fetch again from each partition's first record not yet applied.
                for tp, offset in _offsets(messages[start:], after=False).items():
                    self._consumer.seek(tp, offset)
                await asyncio.sleep(self._retry_backoff)
                return
            await self._consumer.commit(_offsets(chunk, after=True))
            if stop.is_set():
                return


def _offsets(messages: Sequence[IncomingMessage], *, after: bool) -> dict[TopicPartition, int]:
    """Per partition, the offset after its last message (after=True: the offset to commit) or
    of its first message (after=False: where to fetch again)."""
    offsets: dict[TopicPartition, int] = {}
    for m in messages:
        tp = TopicPartition(m.topic, m.partition)
        if after:
            offsets[tp] = m.offset + 1
        else:
            offsets.setdefault(tp, m.offset)
    return offsets


async def create_topics(
    bootstrap_servers: str, specs: Sequence[TopicSpec] = ALL_TOPICS, *, replication: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="portline-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [s for s in specs if s.name not in existing]
        if not wanted:
            return []
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(
                [
                    NewTopic(
                        name=s.name,
                        num_partitions=s.partitions,
                        replication_factor=replication,
                        topic_configs={"retention.ms": str(s.retention_ms)},
                    )
                    for s in wanted
                ]
            )
        return [s.name for s in wanted]
    finally:
        await admin.close()
