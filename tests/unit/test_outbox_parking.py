"""Outbox parking on SQLite: a row that can never be published is parked with its reason, the
rows after it flow, a parked row's key waits behind it, and operators see and retry it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiokafka import errors as kafka
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import shared.outbox
from shared.bus import InMemoryPublisher, KafkaPublisher, kafka_park_reason
from shared.clock import ManualClock
from shared.db import create_engine, session_factory
from shared.envelope import Envelope
from shared.events import InboundRejected
from shared.migrations import upgrade
from shared.outbox import (
    OUTBOX,
    OutboxRelay,
    OutgoingMessage,
    PublishFailed,
    Unpublishable,
    park_reason,
    parked_rows,
    unpark,
)
from shared.outbox_rows import EventTooLargeError, outbox_row
from shared.settings import SERVICES
from shared.uow import UnitOfWork
from tests.support import create_widget, test_metadata, wait_for

LIMIT = 2_000
"""The fake broker's largest message, in bytes (Kafka's max.message.bytes)."""
HUGE = "x" * (2 * LIMIT)
"""A widget name that makes its event larger than the broker takes."""


class Broker(InMemoryPublisher):
    """Refuses for good a message larger than LIMIT, as Kafka does past max.message.bytes.

    `whole_batch`: a batch with such a message fails whole, nothing acknowledged (its records
    shared one produce request); otherwise those before it are acknowledged and the rest are
    not sent. `outage`: the next publishes fail with a transient error, nothing sent."""

    def __init__(self, *, whole_batch: bool = False, limit: int = LIMIT) -> None:
        super().__init__()
        self.whole_batch = whole_batch
        self.limit = limit
        self.outage: list[Exception] = []
        self.calls: list[int] = []

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        self.calls.append(len(messages))
        if self.outage:
            raise self.outage.pop(0)
        for i, m in enumerate(messages):
            if len(m.value) > self.limit:
                refused = {i: Unpublishable("too_large")}
                if self.whole_batch:
                    raise PublishFailed(acked=(), failures=refused)
                await super().publish(messages[:i])
                raise PublishFailed(acked=range(i), failures=refused)
        await super().publish(messages)

    def names(self) -> list[str]:
        return [Envelope.from_bytes(m.value).data["name"] for m in self.sent]


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/{{service}}.db", service="outreach")
    await upgrade(engine, service="outreach")
    async with engine.begin() as conn:
        await conn.run_sync(test_metadata.create_all)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC))


@pytest.fixture
def service() -> str:
    """A service label of this test's own, so that its metrics start from nothing."""
    return f"test-{uuid.uuid4().hex[:8]}"


async def commit(
    sessions: async_sessionmaker[AsyncSession], clock: ManualClock, *events: tuple[str, str]
) -> None:
    """(key, widget name) events, committed together in this order."""
    async with UnitOfWork(sessions, clock=clock, source="/portline/test") as uow:
        for key, name in events:
            await create_widget(uow, name, subject=key)
        await uow.commit()


async def states(sessions: async_sessionmaker[AsyncSession]) -> dict[str, str]:
    """Each widget's outbox row: 'published', 'parked:<reason>' or 'waiting'."""
    async with sessions() as s:
        rows = await s.execute(
            sa.select(OUTBOX.c.payload, OUTBOX.c.published_at, OUTBOX.c.park_reason)
        )
        found = {}
        for payload, published_at, reason in rows:
            name = Envelope.from_bytes(payload).data["name"]
            name = "HUGE" if name == HUGE else name
            if published_at is not None:
                found[name] = "published"
            else:
                found[name] = f"parked:{reason}" if reason else "waiting"
        return found


def parked_total(service: str) -> float:
    return REGISTRY.get_sample_value("portline_outbox_parked_total", {"service": service}) or 0


def parked_now(service: str) -> float | None:
    return REGISTRY.get_sample_value("portline_outbox_parked_rows", {"service": service})


def oldest_age(service: str) -> float | None:
    return REGISTRY.get_sample_value(
        "portline_outbox_oldest_unpublished_seconds", {"service": service}
    )


@pytest.mark.parametrize("service", SERVICES)
async def test_every_service_migrates_its_outbox_to_parking(tmp_path: Path, service: str) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/{service}.db", service=service)
    await upgrade(engine, service=service)

    def inspect(connection: sa.Connection) -> tuple[dict[str, bool], dict[str, list[str]]]:
        inspector = sa.inspect(connection)
        columns = {c["name"]: c["nullable"] for c in inspector.get_columns("outbox")}
        indexes = {
            str(i["name"]): [str(c) for c in i["column_names"]]
            for i in inspector.get_indexes("outbox")
        }
        return columns, indexes

    async with engine.connect() as conn:
        columns, indexes = await conn.run_sync(inspect)
        ddl = (
            await conn.execute(
                sa.text("select sql from sqlite_master where name = 'ix_outbox_parked_key'")
            )
        ).scalar_one()
    await engine.dispose()
    assert columns["parked_at"] is True
    assert columns["park_reason"] is True
    assert indexes["ix_outbox_parked_key"] == ["key", "id"]
    assert indexes["ix_outbox_unpublished"] == ["id"]  # the table was not rebuilt without it
    assert "parked_at IS NOT NULL" in ddl


@pytest.mark.parametrize("whole_batch", [False, True], ids=["prefix-acked", "batch-fails-whole"])
async def test_a_row_too_large_is_parked_and_the_rows_after_it_go_once(
    sessions: async_sessionmaker[AsyncSession],
    clock: ManualClock,
    service: str,
    whole_batch: bool,
) -> None:
    await commit(sessions, clock, ("k1", "a"), ("k2", "b"), ("k3", HUGE), ("k4", "c"), ("k5", "d"))
    broker = Broker(whole_batch=whole_batch)
    relay = OutboxRelay(sessions, broker, clock=clock, service=service)

    assert await relay.run_once() == 5  # four published, one parked
    assert await relay.run_once() == 0

    assert broker.names() == ["a", "b", "c", "d"]  # each once, in order
    assert await states(sessions) == {
        "a": "published",
        "b": "published",
        "HUGE": "parked:too_large",
        "c": "published",
        "d": "published",
    }
    async with sessions() as s:
        parked_at = (
            await s.execute(sa.select(OUTBOX.c.parked_at).where(OUTBOX.c.parked_at.is_not(None)))
        ).scalar_one()
    assert parked_at == clock.now()
    assert parked_total(service) == 1


async def test_the_later_rows_of_a_parked_key_wait_while_other_keys_flow(
    sessions: async_sessionmaker[AsyncSession], clock: ManualClock, service: str
) -> None:
    await commit(sessions, clock, ("p1", "p1-first"), ("p1", HUGE), ("p2", "p2-first"))
    await commit(sessions, clock, ("p1", "p1-after"), ("p2", "p2-after"))
    broker = Broker()
    relay = OutboxRelay(sessions, broker, clock=clock, service=service)

    await relay.run_once()
    await commit(sessions, clock, ("p1", "p1-later"), ("p2", "p2-later"))
    await relay.run_once()
    assert await relay.run_once() == 0

    assert broker.names() == ["p1-first", "p2-first", "p2-after", "p2-later"]
    assert await states(sessions) == {
        "p1-first": "published",
        "HUGE": "parked:too_large",
        "p1-after": "waiting",  # held, not parked
        "p1-later": "waiting",
        "p2-first": "published",
        "p2-after": "published",
        "p2-later": "published",
    }
    assert parked_total(service) == 1


async def test_a_retried_row_that_now_goes_releases_its_key_in_order(
    sessions: async_sessionmaker[AsyncSession], clock: ManualClock, service: str
) -> None:
    await commit(sessions, clock, ("p1", HUGE), ("p1", "p1-after"), ("p2", "p2"))
    broker = Broker()
    relay = OutboxRelay(sessions, broker, clock=clock, service=service)
    await relay.run_once()
    [parked] = await parked_rows(sessions)
    assert (parked.key, parked.reason) == ("p1", "too_large")

    # Retried before its cause is fixed: parked again, with its reason.
    assert await unpark(sessions, parked.id)
    await relay.run_once()
    assert [(r.id, r.reason) for r in await parked_rows(sessions)] == [(parked.id, "too_large")]
    assert parked_total(service) == 2
    assert broker.names() == ["p2"]

    # The operator raised the broker's limit, then retried: the key's events go, in order.
    broker.limit = 10 * LIMIT
    assert await unpark(sessions, parked.id)
    assert not await unpark(sessions, parked.id)  # no longer parked
    assert not await unpark(sessions, parked.id + 1000)  # no such row
    assert await relay.run_once() == 2
    assert broker.names() == ["p2", HUGE, "p1-after"]
    assert await parked_rows(sessions) == []
    assert set((await states(sessions)).values()) == {"published"}


async def test_transient_failures_park_nothing_and_keep_the_order(
    sessions: async_sessionmaker[AsyncSession], clock: ManualClock, service: str
) -> None:
    await commit(sessions, clock, ("p1", "one"), ("p1", "two"), ("p2", "three"))
    broker = Broker()
    broker.outage = [
        kafka.KafkaConnectionError(),
        PublishFailed(acked=[0], failures={1: kafka.NotEnoughReplicasError()}),
    ]
    relay = OutboxRelay(sessions, broker, clock=clock, service=service)

    with pytest.raises(kafka.KafkaConnectionError):
        await relay.run_once()
    # The broker acknowledged "one" (the fake does not record it), then failed "two".
    with pytest.raises(kafka.NotEnoughReplicasError):
        await relay.run_once()
    assert await states(sessions) == {"one": "published", "two": "waiting", "three": "waiting"}
    assert await relay.run_once() == 2

    assert broker.names() == ["two", "three"]  # "one" was acknowledged, so it is not sent again
    assert await parked_rows(sessions) == []
    assert parked_total(service) == 0


async def test_a_row_that_cannot_be_encoded_is_parked_as_unserialisable(
    sessions: async_sessionmaker[AsyncSession], clock: ManualClock, service: str
) -> None:
    await commit(sessions, clock, ("p1", "fine"), ("p2", "cannot encode"), ("p3", "also fine"))

    class Encoder(Broker):
        async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
            if any(b"cannot encode" in m.value for m in messages):
                raise UnicodeEncodeError("utf-8", "\udc80", 0, 1, "surrogates not allowed")
            await super().publish(messages)

    broker = Encoder()
    relay = OutboxRelay(sessions, broker, clock=clock, service=service)
    assert await relay.run_once() == 3
    assert broker.names() == ["fine", "also fine"]
    assert (await states(sessions))["cannot encode"] == "parked:unserialisable"


async def test_the_oldest_waiting_row_s_age_and_the_parked_rows_are_reported_each_pass(
    sessions: async_sessionmaker[AsyncSession], clock: ManualClock, service: str
) -> None:
    broker = Broker()
    relay = OutboxRelay(sessions, broker, clock=clock, service=service)
    assert (oldest_age(service), parked_now(service)) == (0, 0)  # on /metrics from the start

    await commit(sessions, clock, ("p1", HUGE))
    clock.advance(timedelta(minutes=1))
    await commit(sessions, clock, ("p1", "held"), ("p2", "goes"))
    clock.advance(timedelta(minutes=5))
    await relay.run_once()
    # The parked row does not count; the row held behind it does.
    assert oldest_age(service) == 300
    assert parked_now(service) == 1
    clock.advance(timedelta(seconds=30))
    assert relay.report_age() == 330

    [parked] = await parked_rows(sessions)
    broker.limit = 10 * LIMIT
    await unpark(sessions, parked.id)
    await relay.run_once()
    assert (oldest_age(service), parked_now(service)) == (0, 0)


async def test_a_row_parked_by_another_replica_is_counted_within_the_recount_interval(
    sessions: async_sessionmaker[AsyncSession], clock: ManualClock, service: str
) -> None:
    """While a relay knows of no parked row it counts them only every PARKED_RECOUNT_SECONDS
    (the count cannot use its index until the table has statistics); a row another replica
    parked meanwhile shows within that interval."""
    relay = OutboxRelay(sessions, Broker(), clock=clock, service=service)
    await relay.run_once()
    assert parked_now(service) == 0

    await commit(sessions, clock, ("p1", "parked elsewhere"))
    async with sessions() as s, s.begin():  # as the replica holding the lock would have
        await s.execute(OUTBOX.update().values(parked_at=clock.now(), park_reason="too_large"))
    clock.advance(timedelta(seconds=shared.outbox.PARKED_RECOUNT_SECONDS - 1))
    await relay.run_once()
    assert parked_now(service) == 0  # not counted yet

    clock.advance(timedelta(seconds=1))
    await relay.run_once()
    assert parked_now(service) == 1
    [parked] = await parked_rows(sessions)
    await unpark(sessions, parked.id)
    await relay.run_once()  # it knows of one, so it counts on every pass
    assert parked_now(service) == 0
    assert await states(sessions) == {"parked elsewhere": "published"}


async def test_a_stuck_pass_keeps_the_age_rising(
    sessions: async_sessionmaker[AsyncSession],
    clock: ManualClock,
    service: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker that stops answering leaves the relay inside one pass: the gauge must keep
    rising meanwhile, or the alert on it would never fire."""
    monkeypatch.setattr(shared.outbox, "AGE_REPORT_SECONDS", 0.02)
    answering = asyncio.Event()
    entered = asyncio.Event()

    class Silent(Broker):
        async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
            entered.set()
            await asyncio.wait_for(answering.wait(), 10)
            await super().publish(messages)

    broker = Silent()
    relay = OutboxRelay(sessions, broker, clock=clock, service=service, poll_interval=60)
    await commit(sessions, clock, ("p1", "stuck"))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await asyncio.wait_for(entered.wait(), 5)
        clock.advance(timedelta(minutes=10))
        await wait_for(lambda: oldest_age(service) == 600, timeout=5)
        answering.set()
        await wait_for(lambda: oldest_age(service) == 0, timeout=5)
    finally:
        answering.set()
        stop.set()
        await asyncio.wait_for(task, 5)
    assert broker.names() == ["stuck"]


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (kafka.MessageSizeTooLargeError(), "too_large"),
        (kafka.RecordListTooLargeError(), "too_large"),
        (kafka.InvalidTopicError(), "refused:InvalidTopicError"),
        (kafka.TopicAuthorizationFailedError(), "refused:TopicAuthorizationFailedError"),
        (kafka.CorruptRecordException(), "refused:CorruptRecordException"),
        (kafka.KafkaConnectionError(), None),
        (kafka.NodeNotReadyError(), None),
        (kafka.LeaderNotAvailableError(), None),
        (kafka.NotLeaderForPartitionError(), None),
        (kafka.RequestTimedOutError(), None),
        (kafka.KafkaTimeoutError(), None),
        (kafka.NotEnoughReplicasError(), None),
        (kafka.NotEnoughReplicasAfterAppendError(), None),
        (kafka.UnknownTopicOrPartitionError(), None),
        (kafka.OutOfOrderSequenceNumber(), None),
        (kafka.ClusterAuthorizationFailedError(), None),
        (ConnectionError(), None),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_kafka_failures_are_final_only_when_no_retry_can_mend_them(
    error: BaseException, reason: str | None
) -> None:
    assert kafka_park_reason(error) == reason


class FakeProducer:
    """Stands for aiokafka's producer: the broker fails `rejected` values' deliveries, and
    `refused` values are refused before sending (the producer's own size check)."""

    def __init__(self, *, rejected: set[bytes], refused: set[bytes]) -> None:
        self.rejected = rejected
        self.refused = refused
        self.started = self.stopped = False
        self.delivered: list[bytes] = []

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(
        self, topic: str, *, value: bytes, key: bytes, headers: object
    ) -> asyncio.Future[None]:
        if value in self.refused:
            raise kafka.MessageSizeTooLargeError("larger than max_request_size")
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if value in self.rejected:
            delivery.set_exception(kafka.MessageSizeTooLargeError())
        else:
            self.delivered.append(value)
            delivery.set_result(None)
        return delivery


class FakeKafka(KafkaPublisher):
    def __init__(self, **outcomes: set[bytes]) -> None:
        self.producers: list[FakeProducer] = []
        self._outcomes = outcomes
        super().__init__("127.0.0.1:9", client_id="test")

    def _new_producer(self) -> FakeProducer:
        self.producers.append(FakeProducer(**self._outcomes))
        return self.producers[-1]


def messages(*values: bytes) -> list[OutgoingMessage]:
    return [OutgoingMessage("t", b"k", v) for v in values]


async def test_the_publisher_tells_what_was_acknowledged_and_renews_after_a_rejection() -> None:
    publisher = FakeKafka(rejected={b"big"}, refused=set())
    await publisher.start()
    with pytest.raises(PublishFailed) as failed:
        await publisher.publish(messages(b"a", b"big", b"c"))
    assert failed.value.acked == {0, 2}
    assert [(i, park_reason(e)) for i, e in failed.value.failures.items()] == [(1, "too_large")]
    assert len(publisher.producers) == 1  # renewed at the next publish, not before

    await publisher.publish(messages(b"d"))
    first, second = publisher.producers
    assert (first.stopped, second.started, second.delivered) == (True, True, [b"d"])
    await publisher.stop()


async def test_a_message_refused_before_sending_stops_the_batch_there() -> None:
    publisher = FakeKafka(rejected=set(), refused={b"huge"})
    await publisher.start()
    with pytest.raises(PublishFailed) as failed:
        await publisher.publish(messages(b"a", b"huge", b"c"))
    assert failed.value.acked == {0}
    assert list(failed.value.failures) == [1]  # "c" was not sent at all
    assert publisher.producers[0].delivered == [b"a"]
    await publisher.publish(messages(b"c"))
    assert len(publisher.producers) == 1  # nothing was delivered out of sequence: no renewal
    await publisher.stop()


def test_an_event_over_the_size_limit_never_becomes_an_outbox_row() -> None:
    """The limit counts the envelope's JSON and its key, and is inclusive: an event of
    exactly the limit is written, one byte more raises before any row exists."""
    envelope = Envelope.wrap(
        InboundRejected(
            inbound_id=uuid.uuid4(),
            source_kind="ed",
            source_org="demo-hospital",
            reason_code="field_too_long",
            reason="A field is longer than intake accepts.",
            received_at=datetime.now(UTC),
        ),
        source="/portline/intake",
        subject="demo-hospital",
        time=datetime.now(UTC),
    )
    size = len(envelope.model_dump_json().encode()) + len("demo-hospital")
    row = outbox_row(envelope, max_bytes=size)
    assert Envelope.from_bytes(row["payload"]).id == envelope.id
    assert outbox_row(envelope)["payload"] == row["payload"]  # no limit: the same row
    with pytest.raises(EventTooLargeError) as refused:
        outbox_row(envelope, max_bytes=size - 1)
    assert (refused.value.size, refused.value.limit) == (size, size - 1)
    assert str(size) in str(refused.value)
