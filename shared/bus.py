"""Kafka plumbing: the idempotent producer, the consumer loop, and an in-memory fake.

The consumer commits a partition's offset only after the inbox processor has committed the
handler's database transaction, so a crash anywhere redelivers instead of losing a message.
The records of one fetch are applied in batches (one unit of work each), every partition's
records in their order; a batch may hold several partitions' records, since records of
different partitions have no order between them.

The publisher tells the outbox relay which messages the broker acknowledged and which it
refused for good (`Unpublishable`: too large, an invalid or forbidden topic), so that the relay
can park those and carry on; every other failure is transient and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    InvalidTopicError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)

from shared.inbox import InboxProcessor, IncomingMessage, is_transient
from shared.metrics import CONSUMER_LAG
from shared.outbox import OutgoingMessage, PublishFailed, Unpublishable
from shared.topics import ALL_TOPICS, TopicSpec

__all__ = [
    "ConsumerLoop",
    "InMemoryPublisher",
    "KafkaPublisher",
    "create_topics",
    "kafka_park_reason",
    "make_consumer",
]

log = logging.getLogger(__name__)


_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
_REFUSED = (
    InvalidTopicError,
    TopicAuthorizationFailedError,
    CorruptRecordException,
    InvalidTimestampError,
    UnsupportedForMessageFormatError,
)


def kafka_park_reason(exc: BaseException) -> str | None:
    """Why no retry can publish a message that failed with `exc` (a park reason), or None for
    a failure a retry may mend: not connected, no leader, a timeout, not enough replicas, a
    topic that does not exist yet (it can be created), or anything not known to be final."""
    if isinstance(exc, _TOO_LARGE):
        return "too_large"
    if isinstance(exc, _REFUSED):
        return f"refused:{type(exc).__name__}"
    return None


def _verdict(exc: BaseException) -> BaseException:
    """A Kafka failure as the relay reads it: Unpublishable when it is final."""
    reason = kafka_park_reason(exc)
    if reason is None:
        return exc
    unpublishable = Unpublishable(reason)
    unpublishable.__cause__ = exc
    return unpublishable


class KafkaPublisher:
    """An idempotent, acks=all producer; publish() returns once every message is acked.

    When the broker fails a batch for good (a record too large, say), the producer's sequence
    numbers for that partition run ahead of the broker's, and every later send to it would fail
    with OutOfOrderSequenceNumber. So after any failed delivery the producer is replaced (a
    new producer id, fresh sequences) before the next publish."""

    def __init__(self, bootstrap_servers: str, *, client_id: str) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._client_id = client_id
        self._producer = self._new_producer()
        self._started = False
        self._stale = False

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._bootstrap_servers,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=15000,
        )

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

    async def _renew(self) -> None:
        await self.stop()
        self._producer = self._new_producer()
        try:
            await self.start()
        except BaseException:
            # The broker is unreachable: the relay retries later, and this renews again.
            await self._producer.stop()  # closes what the failed start opened
            raise
        self._stale = False

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        if self._stale:
            await self._renew()
        # Enqueue in order first (keeps per-partition order), then wait for every ack.
        futures: list[asyncio.Future[object]] = []
        refused: BaseException | None = None
        for m in messages:
            try:
                futures.append(
                    await self._producer.send(
                        m.topic, value=m.value, key=m.key, headers=list(m.headers)
                    )
                )
            except Exception as exc:  # refused before sending (too large, no metadata)
                refused = exc
                break
        # Wait for all of them, failed or not, to know which the broker holds.
        results = await asyncio.gather(*futures, return_exceptions=True)
        failures = {i: _verdict(r) for i, r in enumerate(results) if isinstance(r, BaseException)}
        if failures:
            self._stale = True
        if refused is not None:
            failures[len(futures)] = _verdict(refused)
        if failures:
            acked = (i for i, r in enumerate(results) if not isinstance(r, BaseException))
            raise PublishFailed(acked=acked, failures=failures)


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
        self._committed: dict[TopicPartition, int] = {}
        self._lagging: set[TopicPartition] = set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            fetched = await self._consumer.getmany(
                timeout_ms=500, max_records=max(200, self._batch_size)
            )
            messages = [
                IncomingMessage(
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    key=record.key,
                    value=record.value,
                    headers=tuple(record.headers or ()),
                )
                for records in fetched.values()
                for record in records
            ]
            await self._drain(messages, stop)
            self._report_lag()

    def _report_lag(self) -> None:
        """How far each assigned partition's committed offset is behind its high watermark."""
        consumer = self._processor.consumer
        service = consumer.split(".", 1)[0]
        assigned = set(self._consumer.assignment())
        for tp in self._lagging - assigned:  # moved to another replica: it reports them now
            CONSUMER_LAG.remove(service, consumer, tp.topic, str(tp.partition))
        self._lagging &= assigned
        for tp in assigned:
            highwater = self._consumer.highwater(tp)
            committed = self._committed.get(tp)
            if highwater is None or committed is None:
                continue
            CONSUMER_LAG.labels(service, consumer, tp.topic, str(tp.partition)).set(
                max(0, highwater - committed)
            )
            self._lagging.add(tp)

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
            committed = _offsets(chunk, after=True)
            await self._consumer.commit(committed)
            self._committed.update(committed)
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
                        topic_configs=s.configs,
                    )
                    for s in wanted
                ]
            )
        return [s.name for s in wanted]
    finally:
        await admin.close()
