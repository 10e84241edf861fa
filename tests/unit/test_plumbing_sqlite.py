"""The outbox relay and the inbox on the embedded SQLite database, with an in-memory broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.bus import InMemoryPublisher
from shared.clock import ManualClock
from shared.db import create_engine, session_factory
from shared.envelope import Envelope
from shared.inbox import DEAD_LETTER, InboxProcessor, InboxRecord, IncomingMessage, Outcome
from shared.migrations import current_revision, upgrade
from shared.outbox import OUTBOX, OutboxRelay, OutgoingMessage
from shared.uow import UnitOfWork
from tests.support import (
    TEST_TOPIC,
    applied,
    create_widget,
    test_metadata,
    wait_for,
    widgets,
)

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/{{service}}.db", service="intake")
    await upgrade(engine, service="intake")
    async with engine.begin() as conn:
        await conn.run_sync(test_metadata.create_all)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def uow_factory(
    sessions: async_sessionmaker[AsyncSession], clock: ManualClock
) -> Callable[[], UnitOfWork]:
    return lambda: UnitOfWork(sessions, clock=clock, source="/portline/test")


async def test_migrations_are_idempotent(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/x.db", service="scheduler")
    await upgrade(engine, service="scheduler")
    first = await current_revision(engine)
    await upgrade(engine, service="scheduler")
    assert first is not None
    assert first.startswith("scheduler_")
    assert await current_revision(engine) == first
    await engine.dispose()


async def test_relay_publishes_committed_events_once_in_order_and_marks_them(
    uow_factory: Callable[[], UnitOfWork],
    sessions: async_sessionmaker[AsyncSession],
    clock: ManualClock,
) -> None:
    async with uow_factory() as uow:
        first = await create_widget(uow, "one", subject="p1")
        second = await create_widget(uow, "two", subject="p1")
        await uow.commit()
    async with uow_factory() as uow:
        await create_widget(uow, "rolled back", subject="p1")

    broker = InMemoryPublisher()
    relay = OutboxRelay(sessions, broker, clock=clock)
    assert await relay.run_once() == 2
    assert await relay.run_once() == 0

    sent = [Envelope.from_bytes(m.value) for m in broker.by_topic[TEST_TOPIC]]
    assert [e.id for e in sent] == [first.id, second.id]
    assert {m.key for m in broker.sent} == {b"p1"}
    async with sessions() as s:
        marks = (await s.execute(sa.select(OUTBOX.c.published_at))).scalars().all()
    assert marks == [T0, T0]


async def test_failed_publish_leaves_rows_for_the_next_run(
    uow_factory: Callable[[], UnitOfWork],
    sessions: async_sessionmaker[AsyncSession],
    clock: ManualClock,
) -> None:
    class BrokerDown(InMemoryPublisher):
        async def publish(self, messages: object) -> None:
            raise ConnectionError("broker unreachable")

    async with uow_factory() as uow:
        await create_widget(uow, "w", subject="p")
        await uow.commit()
    with pytest.raises(ConnectionError):
        await OutboxRelay(sessions, BrokerDown(), clock=clock).run_once()
    broker = InMemoryPublisher()
    assert await OutboxRelay(sessions, broker, clock=clock).run_once() == 1


class CountingRelay(OutboxRelay):
    """Counts its passes; a poll interval far beyond the test, so only wakes drive it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, poll_interval=60, **kwargs)
        self.passes = 0

    async def run_once(self) -> int:
        self.passes += 1
        return await super().run_once()


async def _commit_widget(
    sessions: async_sessionmaker[AsyncSession],
    clock: ManualClock,
    name: str,
    *,
    wake: Callable[[], None] | None = None,
) -> None:
    """A widget and its event, committed; `wake` is the relay to tell (as runtime.uow() does)."""
    async with UnitOfWork(sessions, clock=clock, source="/t", on_published=wake) as uow:
        await create_widget(uow, name, subject="p")
        await uow.commit()


async def _running(relay: OutboxRelay) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_relay_publishes_on_wake_without_an_idle_pass_after(
    sessions: async_sessionmaker[AsyncSession], clock: ManualClock
) -> None:
    broker = InMemoryPublisher()
    relay = CountingRelay(sessions, broker, clock=clock)
    async for _ in _running(relay):
        await wait_for(lambda: relay.passes == 1)  # the first pass, at start: nothing yet
        await _commit_widget(sessions, clock, "w", wake=relay.wake)
        await wait_for(lambda: len(broker.sent) == 1)
        await asyncio.sleep(0.2)
        # One pass for the wake. The batch was not full and nothing woke the relay since,
        # so it waits instead of reading the outbox again.
        assert relay.passes == 2


async def test_relay_goes_again_when_woken_during_a_pass(
    sessions: async_sessionmaker[AsyncSession], clock: ManualClock
) -> None:
    """A commit that lands while the relay is publishing (after its read) is not left for
    the next poll: its wake ends the relay's wait at once."""
    committed_meanwhile = False
    relay: CountingRelay

    class CommitWhilePublishing(InMemoryPublisher):
        async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
            nonlocal committed_meanwhile
            await super().publish(messages)
            if not committed_meanwhile:
                committed_meanwhile = True
                await _commit_widget(sessions, clock, "second", wake=relay.wake)

    broker = CommitWhilePublishing()
    relay = CountingRelay(sessions, broker, clock=clock)
    await _commit_widget(sessions, clock, "first")
    async for _ in _running(relay):
        await wait_for(lambda: len(broker.sent) == 2)
        assert relay.passes == 2


async def test_relay_goes_on_after_a_full_batch(
    sessions: async_sessionmaker[AsyncSession], clock: ManualClock
) -> None:
    for name in ("a", "b", "c"):
        await _commit_widget(sessions, clock, name)
    broker = InMemoryPublisher()
    relay = CountingRelay(sessions, broker, clock=clock, batch_size=2)
    async for _ in _running(relay):
        await wait_for(lambda: len(broker.sent) == 3)  # two passes, without any wake or poll
        assert relay.passes == 2


async def test_commits_close_together_share_one_relay_pass(
    sessions: async_sessionmaker[AsyncSession], clock: ManualClock
) -> None:
    broker = InMemoryPublisher()
    relay = CountingRelay(sessions, broker, clock=clock, min_interval=0.5)
    async for _ in _running(relay):
        await wait_for(lambda: relay.passes == 1)  # at start: nothing yet
        for name in ("a", "b", "c"):  # each commit wakes the relay
            await _commit_widget(sessions, clock, name, wake=relay.wake)
        await wait_for(lambda: len(broker.sent) == 3)
        assert relay.passes == 2  # the three commits waited out the interval together


async def test_an_occasional_commit_is_relayed_at_once_despite_the_interval(
    sessions: async_sessionmaker[AsyncSession], clock: ManualClock
) -> None:
    broker = InMemoryPublisher()
    relay = CountingRelay(sessions, broker, clock=clock, min_interval=2.0)
    async for _ in _running(relay):
        await wait_for(lambda: relay.passes == 1)
        await asyncio.sleep(2.1)  # the interval since the last pass is over
        started = time.monotonic()
        await _commit_widget(sessions, clock, "w", wake=relay.wake)
        await wait_for(lambda: len(broker.sent) == 1)
        assert time.monotonic() - started < 1.5  # not held back by another interval


def message(env: Envelope | bytes, offset: int) -> IncomingMessage:
    value = env if isinstance(env, bytes) else env.to_bytes()
    return IncomingMessage(topic=TEST_TOPIC, partition=0, offset=offset, key=b"p", value=value)


async def test_inbox_applies_each_event_once(
    uow_factory: Callable[[], UnitOfWork], sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with uow_factory() as uow:
        env = await create_widget(uow, "w", subject="p")

    async def handle(uow: UnitOfWork, e: Envelope) -> None:
        await uow.session.execute(applied.insert().values(event_id=e.id, name=e.data["name"]))

    processor = InboxProcessor("t", uow_factory, handle)
    assert await processor.process(message(env, 0)) is Outcome.APPLIED
    assert await processor.process(message(env, 0)) is Outcome.DUPLICATE
    assert await processor.process(message(env, 7)) is Outcome.DUPLICATE
    async with sessions() as s:
        assert (await s.execute(sa.select(sa.func.count()).select_from(applied))).scalar() == 1


async def test_handler_failure_rolls_back_its_effects_then_dead_letters(
    uow_factory: Callable[[], UnitOfWork], sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with uow_factory() as uow:
        env = await create_widget(uow, "w", subject="p")
    naps: list[float] = []

    async def sleep(seconds: float) -> None:
        naps.append(seconds)

    async def half_then_fail(uow: UnitOfWork, e: Envelope) -> None:
        await uow.session.execute(widgets.insert().values(id=str(uuid.uuid4()), name="partial"))
        raise KeyError("missing reference")

    processor = InboxProcessor(
        "t", uow_factory, half_then_fail, max_attempts=4, backoff_seconds=0.5, sleep=sleep
    )
    assert await processor.process(message(env, 3)) is Outcome.DEAD_LETTERED
    assert await processor.process(message(env, 3)) is Outcome.DEAD_LETTERED  # redelivered
    assert naps == [0.5, 1.0, 1.5] * 2
    async with sessions() as s:
        partial = (await s.execute(sa.select(widgets.c.name))).scalars().all()
        letters = (await s.execute(sa.select(DEAD_LETTER.c.attempts, DEAD_LETTER.c.error))).all()
    assert partial == []
    assert letters == [(4, "KeyError: 'missing reference'")]


async def test_undecodable_message_is_dead_lettered_at_once(
    uow_factory: Callable[[], UnitOfWork],
) -> None:
    async def never(uow: UnitOfWork, e: Envelope) -> None:
        raise AssertionError("must not be called")

    processor = InboxProcessor("t", uow_factory, never)
    assert await processor.process(message(b"\xff\xfe", 1)) is Outcome.DEAD_LETTERED


async def test_transient_database_failure_is_raised_not_dead_lettered(
    uow_factory: Callable[[], UnitOfWork],
) -> None:
    async with uow_factory() as uow:
        env = await create_widget(uow, "w", subject="p")

    async def db_down(uow: UnitOfWork, e: Envelope) -> None:
        raise sa.exc.OperationalError("select 1", {}, ConnectionRefusedError())

    processor = InboxProcessor("t", uow_factory, db_down, max_attempts=2, backoff_seconds=0)
    with pytest.raises(sa.exc.OperationalError):
        await processor.process(message(env, 0))


async def test_handler_breaking_a_constraint_is_a_failure_not_a_duplicate(
    uow_factory: Callable[[], UnitOfWork], sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with uow_factory() as uow:
        env = await create_widget(uow, "w", subject="p")
    async with sessions() as s, s.begin():
        s.add(InboxRecord(consumer="other", event_id="taken", processed_at=T0))

    async def clash(uow: UnitOfWork, e: Envelope) -> None:
        # Flushed only at commit, where it collides with a row that has nothing to do with
        # this delivery: the handler failed; the event was not seen before.
        uow.session.add(InboxRecord(consumer="other", event_id="taken", processed_at=T0))

    processor = InboxProcessor("t", uow_factory, clash, max_attempts=2, backoff_seconds=0)
    assert await processor.process(message(env, 9)) is Outcome.DEAD_LETTERED


async def test_a_failure_no_retry_can_mend_is_dead_lettered_at_once(
    uow_factory: Callable[[], UnitOfWork], sessions: async_sessionmaker[AsyncSession]
) -> None:
    from shared.sealing import SealBrokenError

    async with uow_factory() as uow:
        env = await create_widget(uow, "w", subject="p")
    calls: list[int] = []

    async def foreign_keys(uow: UnitOfWork, e: Envelope) -> None:
        calls.append(1)
        raise SealBrokenError("sealed under another key")

    processor = InboxProcessor("t", uow_factory, foreign_keys, max_attempts=5, backoff_seconds=9)
    assert await processor.process(message(env, 4)) is Outcome.DEAD_LETTERED
    assert calls == [1]
    async with sessions() as s:
        attempts = (await s.execute(sa.select(DEAD_LETTER.c.attempts))).scalar_one()
    assert attempts == 1


async def test_a_batch_applies_each_new_event_once_in_one_commit(
    uow_factory: Callable[[], UnitOfWork], sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with uow_factory() as uow:
        first = await create_widget(uow, "a", subject="p")
        second = await create_widget(uow, "b", subject="p")
    commits: list[int] = []

    class CountingUnitOfWork(UnitOfWork):
        async def commit(self) -> None:
            commits.append(1)
            await super().commit()

    async def handle(uow: UnitOfWork, e: Envelope) -> None:
        await uow.session.execute(applied.insert().values(event_id=e.id, name=e.data["name"]))

    processor = InboxProcessor(
        "t",
        lambda: CountingUnitOfWork(sessions, clock=ManualClock(T0), source="/t"),
        handle,
    )
    assert await processor.process(message(first, 0)) is Outcome.APPLIED
    outcomes = await processor.process_batch(
        [message(first, 0), message(second, 1), message(second, 2)]
    )
    assert outcomes == [Outcome.DUPLICATE, Outcome.APPLIED, Outcome.DUPLICATE]
    assert len(commits) == 2  # one for the single message, one for the whole batch
    async with sessions() as s:
        names = sorted((await s.execute(sa.select(applied.c.name))).scalars())
    assert names == ["a", "b"]


async def test_a_failing_event_in_a_batch_falls_back_to_one_at_a_time(
    uow_factory: Callable[[], UnitOfWork], sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with uow_factory() as uow:
        envs = [await create_widget(uow, name, subject="p") for name in ("ok-1", "bad", "ok-2")]

    async def handle(uow: UnitOfWork, e: Envelope) -> None:
        if e.data["name"] == "bad":
            raise ValueError("cannot apply")
        await uow.session.execute(applied.insert().values(event_id=e.id, name=e.data["name"]))

    processor = InboxProcessor("t", uow_factory, handle, max_attempts=2, backoff_seconds=0)
    outcomes = await processor.process_batch([message(e, i) for i, e in enumerate(envs)])
    assert outcomes == [Outcome.APPLIED, Outcome.DEAD_LETTERED, Outcome.APPLIED]
    async with sessions() as s:
        names = sorted((await s.execute(sa.select(applied.c.name))).scalars())
    assert names == ["ok-1", "ok-2"]  # each once, although the batch was tried first


async def test_a_batch_handler_gets_the_new_events_of_a_batch_in_one_call(
    uow_factory: Callable[[], UnitOfWork], sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with uow_factory() as uow:
        envs = [await create_widget(uow, name, subject="p") for name in ("a", "b", "c")]
    calls: list[list[str]] = []

    async def handle_one(uow: UnitOfWork, e: Envelope) -> None:
        raise AssertionError("the batch handler applies every event")

    async def handle_many(uow: UnitOfWork, batch: Sequence[Envelope]) -> None:
        calls.append([e.data["name"] for e in batch])
        for e in batch:
            await uow.session.execute(applied.insert().values(event_id=e.id, name=e.data["name"]))

    processor = InboxProcessor("t", uow_factory, handle_one, batch_handler=handle_many)
    assert await processor.process(message(envs[0], 0)) is Outcome.APPLIED
    outcomes = await processor.process_batch(
        [message(envs[0], 0), message(envs[1], 1), message(envs[2], 2), message(envs[1], 3)]
    )
    assert outcomes == [Outcome.DUPLICATE, Outcome.APPLIED, Outcome.APPLIED, Outcome.DUPLICATE]
    assert calls == [["a"], ["b", "c"]]  # a batch of one goes through the batch handler too
    async with sessions() as s:
        names = sorted((await s.execute(sa.select(applied.c.name))).scalars())
        inbox = (await s.execute(sa.select(sa.func.count()).select_from(InboxRecord))).scalar_one()
    assert names == ["a", "b", "c"]
    assert inbox == 3


async def test_published_events_reach_the_outbox_only_with_the_commit(
    uow_factory: Callable[[], UnitOfWork], sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with uow_factory() as uow:
        await create_widget(uow, "kept", subject="p")
        await uow.commit()
    async with uow_factory() as uow:
        await create_widget(uow, "dropped", subject="p")  # never committed
    async with sessions() as s:
        payloads = (await s.execute(sa.select(OUTBOX.c.payload).order_by(OUTBOX.c.id))).scalars()
        names = [Envelope.from_bytes(p).data["name"] for p in payloads]
    assert names == ["kept"]


async def test_a_tombstone_is_dead_lettered_and_the_batch_goes_on(
    uow_factory: Callable[[], UnitOfWork], sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A record without a value used to fail its own dead-lettering (payload is NOT NULL), so
    the partition was redelivered for ever."""
    async with uow_factory() as uow:
        before = await create_widget(uow, "before", subject="p")
        after = await create_widget(uow, "after", subject="p")

    async def handle(uow: UnitOfWork, e: Envelope) -> None:
        await uow.session.execute(applied.insert().values(event_id=e.id, name=e.data["name"]))

    tombstone = IncomingMessage(topic=TEST_TOPIC, partition=0, offset=1, key=b"p", value=None)
    processor = InboxProcessor("t", uow_factory, handle)
    outcomes = await processor.process_batch([message(before, 0), tombstone, message(after, 2)])
    assert outcomes == [Outcome.APPLIED, Outcome.DEAD_LETTERED, Outcome.APPLIED]
    assert await processor.process(tombstone) is Outcome.DEAD_LETTERED  # redelivered: one row
    async with sessions() as s:
        letters = (await s.execute(sa.select(DEAD_LETTER.c.payload, DEAD_LETTER.c.error))).all()
        names = sorted((await s.execute(sa.select(applied.c.name))).scalars())
    assert [(payload, "tombstone" in error) for payload, error in letters] == [(b"", True)]
    assert names == ["after", "before"]


async def test_a_dead_letter_is_cut_to_fit_whatever_the_message_holds(
    uow_factory: Callable[[], UnitOfWork], sessions: async_sessionmaker[AsyncSession]
) -> None:
    """On PostgreSQL an event id over 64 characters or a NUL in the error text would make the
    dead letter's own insert fail, and the partition would be redelivered for ever."""
    async with uow_factory() as uow:
        await create_widget(uow, "w", subject="p")
        env = uow.published[0].model_copy(update={"id": "e" * 100})

    async def fail(uow: UnitOfWork, e: Envelope) -> None:
        raise ValueError("cannot apply \x00 this")

    processor = InboxProcessor("t", uow_factory, fail, max_attempts=1)
    assert await processor.process(message(env, 5)) is Outcome.DEAD_LETTERED
    async with sessions() as s:
        [(event_id, error)] = (
            await s.execute(sa.select(DEAD_LETTER.c.event_id, DEAD_LETTER.c.error))
        ).all()
    assert event_id == "e" * 64
    assert error == "ValueError: cannot apply  this"


async def test_a_dead_letter_that_cannot_be_stored_whole_is_stored_as_a_pointer(
    uow_factory: Callable[[], UnitOfWork], sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions() as s, s.begin():
        # Stands for a value the database refuses, whatever it may be.
        await s.execute(
            sa.text(
                "CREATE TRIGGER refuse_payloads BEFORE INSERT ON dead_letter "
                "WHEN length(NEW.payload) > 0 BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        )

    async def never(uow: UnitOfWork, e: Envelope) -> None:
        raise AssertionError("must not be called")

    processor = InboxProcessor("t", uow_factory, never)
    assert await processor.process(message(b"not an envelope", 7)) is Outcome.DEAD_LETTERED
    async with sessions() as s:
        [(payload, error)] = (
            await s.execute(sa.select(DEAD_LETTER.c.payload, DEAD_LETTER.c.error))
        ).all()
    assert payload == b""
    assert error.startswith("stored without its payload (IntegrityError)")
    assert f"{TEST_TOPIC}/0/7" in error
