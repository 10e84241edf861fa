"""Durable timers on the embedded SQLite database, with a manual clock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler import timers
from services.scheduler.timers import TIMER, TIMER_FIRING, Timer, TimerRunner
from shared.clock import ManualClock
from shared.db import create_engine, session_factory
from shared.migrations import upgrade
from shared.outbox import OUTBOX
from shared.uow import UnitOfWork
from tests.support import WidgetCreated, wait_for

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/scheduler.db", service="scheduler")
    await upgrade(engine, service="scheduler")
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def uow_factory(
    sessions: async_sessionmaker[AsyncSession], clock: ManualClock
) -> Callable[[], UnitOfWork]:
    return lambda: UnitOfWork(sessions, clock=clock, source="/portline/scheduler")


class Effects:
    """A fire() that publishes one event per timer, remembering what it was asked to fire."""

    def __init__(self, failing: set[str] | None = None) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.failing = failing if failing is not None else set()

    async def __call__(self, uow: UnitOfWork, timer: Timer, late: bool) -> None:
        self.calls.append((timer.key, late))
        uow.publish(WidgetCreated(widget_id=uuid.uuid4(), name=timer.key), subject=timer.key)
        if timer.key in self.failing:
            raise RuntimeError("effect failed")

    @property
    def keys(self) -> list[str]:
        return [key for key, _late in self.calls]


async def add(
    uow_factory: Callable[[], UnitOfWork],
    key: str,
    due_at: datetime,
    *,
    task_id: uuid.UUID | None = None,
) -> bool:
    async with uow_factory() as uow:
        added = await timers.schedule(
            uow.session,
            key=key,
            kind=key.rsplit(":", 1)[-1],
            due_at=due_at,
            task_id=task_id,
            now=uow.clock.now(),
        )
        await uow.commit()
    return added


async def timer_rows(sessions: async_sessionmaker[AsyncSession]) -> dict[str, sa.Row[Any]]:
    async with sessions() as s:
        return {r.key: r for r in await s.execute(sa.select(TIMER))}


async def count(sessions: async_sessionmaker[AsyncSession], table: sa.Table) -> int:
    async with sessions() as s:
        return int((await s.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


def runner(
    uow_factory: Callable[[], UnitOfWork], fire: timers.FireTimer, *, batch_size: int = 100
) -> TimerRunner:
    return TimerRunner(uow_factory, fire, replica="r1", batch_size=batch_size)


async def test_schedule_is_idempotent_by_key(
    uow_factory: Callable[[], UnitOfWork], sessions: async_sessionmaker[AsyncSession]
) -> None:
    assert await add(uow_factory, "t1:due", T0 + timedelta(hours=1))
    assert not await add(uow_factory, "t1:due", T0 + timedelta(hours=5))
    rows = await timer_rows(sessions)
    assert list(rows) == ["t1:due"]
    assert rows["t1:due"].due_at == T0 + timedelta(hours=1)
    assert rows["t1:due"].created_at == T0


async def test_due_timers_fire_once_and_later_ones_wait(
    uow_factory: Callable[[], UnitOfWork],
    sessions: async_sessionmaker[AsyncSession],
    clock: ManualClock,
) -> None:
    await add(uow_factory, "a:due", T0)
    await add(uow_factory, "b:due", T0 + timedelta(minutes=10))
    fire = Effects()
    r = runner(uow_factory, fire)

    assert await r.run_once() == 1
    assert await r.run_once() == 0
    assert fire.keys == ["a:due"]

    clock.advance(timedelta(minutes=10))
    assert await r.run_once() == 1
    assert await r.run_once() == 0
    assert fire.keys == ["a:due", "b:due"]

    rows = await timer_rows(sessions)
    assert rows["a:due"].fired_at == T0
    assert rows["b:due"].fired_at == T0 + timedelta(minutes=10)
    assert await count(sessions, TIMER_FIRING) == 2
    assert await count(sessions, OUTBOX) == 2


async def test_timers_fire_in_due_order_in_batches(
    uow_factory: Callable[[], UnitOfWork], clock: ManualClock
) -> None:
    for i in (3, 1, 2, 0, 4):
        await add(uow_factory, f"t{i}:due", T0 + timedelta(seconds=i))
    clock.advance(timedelta(minutes=1))
    fire = Effects()
    r = runner(uow_factory, fire, batch_size=2)
    assert [await r.run_once() for _ in range(4)] == [2, 2, 1, 0]
    assert fire.keys == [f"t{i}:due" for i in range(5)]


async def test_cancelled_timers_do_not_fire(
    uow_factory: Callable[[], UnitOfWork],
    sessions: async_sessionmaker[AsyncSession],
    clock: ManualClock,
) -> None:
    task = uuid.uuid4()
    await add(uow_factory, "one:due", T0)
    await add(uow_factory, f"{task}:due", T0, task_id=task)
    await add(uow_factory, f"{task}:expires", T0, task_id=task)
    await add(uow_factory, "kept:due", T0)
    async with uow_factory() as uow:
        assert await timers.cancel(uow.session, key="one:due", now=T0)
        assert not await timers.cancel(uow.session, key="one:due", now=T0)
        assert not await timers.cancel(uow.session, key="unknown", now=T0)
        assert await timers.cancel_for_task(uow.session, task_id=task, now=T0) == 2
        await uow.commit()

    fire = Effects()
    assert await runner(uow_factory, fire).run_once() == 1
    assert fire.keys == ["kept:due"]
    async with uow_factory() as uow:
        assert not await timers.cancel(uow.session, key="kept:due", now=T0), "already fired"
    rows = await timer_rows(sessions)
    assert rows["one:due"].cancelled_at == T0
    assert rows["one:due"].fired_at is None


async def test_reschedule_moves_a_pending_timer(
    uow_factory: Callable[[], UnitOfWork], clock: ManualClock
) -> None:
    await add(uow_factory, "t:due", T0)
    async with uow_factory() as uow:
        assert await timers.reschedule(uow.session, key="t:due", due_at=T0 + timedelta(hours=1))
        assert not await timers.reschedule(uow.session, key="unknown", due_at=T0)
        await uow.commit()
    fire = Effects()
    r = runner(uow_factory, fire)
    assert await r.run_once() == 0
    clock.advance(timedelta(hours=1))
    assert await r.run_once() == 1
    assert fire.calls == [("t:due", False)]
    async with uow_factory() as uow:
        assert not await timers.reschedule(uow.session, key="t:due", due_at=T0), "already fired"


async def test_late_only_when_fired_well_past_due(
    uow_factory: Callable[[], UnitOfWork],
    sessions: async_sessionmaker[AsyncSession],
    clock: ManualClock,
) -> None:
    await add(uow_factory, "missed:due", T0 - timedelta(hours=2))
    await add(uow_factory, "barely:due", T0 - timedelta(seconds=60))
    await add(uow_factory, "now:due", T0)
    fire = Effects()
    assert await runner(uow_factory, fire).run_once() == 3
    assert fire.calls == [("missed:due", True), ("barely:due", False), ("now:due", False)]
    rows = await timer_rows(sessions)
    assert {k: r.late for k, r in rows.items()} == {
        "missed:due": True,
        "barely:due": False,
        "now:due": False,
    }


async def test_a_failing_timer_does_not_block_the_others_and_fires_later(
    uow_factory: Callable[[], UnitOfWork],
    sessions: async_sessionmaker[AsyncSession],
    clock: ManualClock,
) -> None:
    for key in ("a:due", "bad:due", "c:due"):
        await add(uow_factory, key, T0)
    fire = Effects(failing={"bad:due"})
    r = runner(uow_factory, fire)

    assert await r.run_once() == 2
    rows = await timer_rows(sessions)
    assert rows["bad:due"].fired_at is None
    assert rows["a:due"].fired_at == rows["c:due"].fired_at == T0
    assert await count(sessions, OUTBOX) == 2, "the failed timer's event rolled back with it"
    assert await count(sessions, TIMER_FIRING) == 2

    assert await r.run_once() == 0, "held back until its retry time"
    clock.advance(timedelta(seconds=1))
    assert await r.run_once() == 0, "failed again"
    fire.failing.clear()
    clock.advance(timedelta(minutes=5))
    assert await r.run_once() == 1
    # Round one failed at bad:due without savepoints, rolled back and was redone with them.
    assert fire.keys == ["a:due", "bad:due", "a:due", "bad:due", "c:due", "bad:due", "bad:due"]
    assert (await timer_rows(sessions))["bad:due"].fired_at == T0 + timedelta(minutes=5, seconds=1)
    assert await count(sessions, OUTBOX) == 3


async def test_an_effect_failing_in_the_database_is_set_aside_too(
    uow_factory: Callable[[], UnitOfWork], sessions: async_sessionmaker[AsyncSession]
) -> None:
    for key in ("a:due", "dup:due", "c:due"):
        await add(uow_factory, key, T0)
    async with sessions() as s:
        await s.execute(TIMER_FIRING.insert().values(key="other", fired_at=T0, replica="r0"))
        await s.commit()

    async def fire(uow: UnitOfWork, timer: Timer, late: bool) -> None:
        key = "other" if timer.key == "dup:due" else f"effect-{timer.key}"
        await uow.session.execute(TIMER_FIRING.insert().values(key=key, fired_at=T0, replica="x"))

    assert await runner(uow_factory, fire).run_once() == 2
    rows = await timer_rows(sessions)
    assert [k for k, r in rows.items() if r.fired_at is None] == ["dup:due"]


async def test_failing_timers_filling_a_batch_do_not_starve_the_rest(
    uow_factory: Callable[[], UnitOfWork], clock: ManualClock
) -> None:
    await add(uow_factory, "bad1:due", T0 - timedelta(minutes=2))
    await add(uow_factory, "bad2:due", T0 - timedelta(minutes=1))
    await add(uow_factory, "good:due", T0)
    fire = Effects(failing={"bad1:due", "bad2:due"})
    r = runner(uow_factory, fire, batch_size=2)
    assert await r.run_once() == 0
    assert await r.run_once() == 1
    assert fire.keys[-1] == "good:due"


async def test_effect_and_mark_commit_together(
    sessions: async_sessionmaker[AsyncSession],
    uow_factory: Callable[[], UnitOfWork],
    clock: ManualClock,
) -> None:
    class CommitFails(UnitOfWork):
        async def commit(self) -> None:
            raise ConnectionError("database went away at commit")

    await add(uow_factory, "t:due", T0)
    fire = Effects()
    broken = runner(lambda: CommitFails(sessions, clock=clock, source="/portline/scheduler"), fire)
    with pytest.raises(ConnectionError):
        await broken.run_once()
    assert fire.keys == ["t:due"]
    assert (await timer_rows(sessions))["t:due"].fired_at is None
    assert await count(sessions, OUTBOX) == 0
    assert await count(sessions, TIMER_FIRING) == 0

    assert await runner(uow_factory, fire).run_once() == 1
    assert await count(sessions, OUTBOX) == 1


async def test_an_effect_may_cancel_timers_of_its_batch(
    uow_factory: Callable[[], UnitOfWork], sessions: async_sessionmaker[AsyncSession]
) -> None:
    task = uuid.uuid4()
    await add(uow_factory, f"{task}:expires", T0 - timedelta(hours=1), task_id=task)
    await add(uow_factory, f"{task}:due", T0, task_id=task)

    async def expire_task(uow: UnitOfWork, timer: Timer, late: bool) -> None:
        assert timer.task_id is not None
        await timers.cancel_for_task(uow.session, task_id=timer.task_id, now=uow.clock.now())

    assert await runner(uow_factory, expire_task).run_once() == 1
    rows = await timer_rows(sessions)
    assert rows[f"{task}:expires"].fired_at == T0
    assert rows[f"{task}:expires"].cancelled_at is None
    assert rows[f"{task}:due"].cancelled_at == T0
    assert rows[f"{task}:due"].fired_at is None
    async with sessions() as s:
        firings = (await s.execute(sa.select(TIMER_FIRING.c.key))).scalars().all()
    assert firings == [f"{task}:expires"]


async def test_a_timer_whose_firing_row_exists_is_not_fired_again(
    uow_factory: Callable[[], UnitOfWork], sessions: async_sessionmaker[AsyncSession]
) -> None:
    """The firing table's key is the last line of defence: a firing that somehow committed
    without marking its timer still stops a second effect."""
    await add(uow_factory, "done:due", T0)
    await add(uow_factory, "new:due", T0)
    async with sessions() as s:
        await s.execute(TIMER_FIRING.insert().values(key="done:due", fired_at=T0, replica="r0"))
        await s.commit()
    fire = Effects()
    assert await runner(uow_factory, fire).run_once() == 1
    assert fire.keys == ["new:due"]
    rows = await timer_rows(sessions)
    assert rows["done:due"].fired_at == T0
    assert rows["done:due"].late is None
    assert await runner(uow_factory, fire).run_once() == 0


async def test_run_survives_database_errors_and_stops_when_told(
    uow_factory: Callable[[], UnitOfWork], sessions: async_sessionmaker[AsyncSession]
) -> None:
    await add(uow_factory, "t:due", T0)
    outages = iter([True, True])

    def flaky() -> UnitOfWork:
        if next(outages, False):
            raise ConnectionRefusedError("database restarting")
        return uow_factory()

    fire = Effects()
    r = TimerRunner(flaky, fire, replica="r1", poll_interval=0.01)
    stop = asyncio.Event()

    async def fired() -> bool:
        return await count(sessions, TIMER_FIRING) == 1

    async def until_fired() -> None:
        try:
            await wait_for(fired, timeout=10)
        finally:
            stop.set()

    await asyncio.wait_for(asyncio.gather(r.run(stop), until_fired()), timeout=15)
    assert fire.keys == ["t:due"]


async def test_two_runners_on_one_sqlite_file_fire_each_timer_once(
    uow_factory: Callable[[], UnitOfWork],
    sessions: async_sessionmaker[AsyncSession],
    clock: ManualClock,
    tmp_path: Path,
) -> None:
    for i in range(200):
        await add(uow_factory, f"t{i}:due", T0)
    other_engine = create_engine(
        f"sqlite+aiosqlite:///{tmp_path}/scheduler.db", service="scheduler"
    )
    other = session_factory(other_engine)
    fire_a, fire_b = Effects(), Effects()
    a = TimerRunner(uow_factory, fire_a, replica="a", batch_size=10, poll_interval=0.01)
    b = TimerRunner(
        lambda: UnitOfWork(other, clock=clock, source="/portline/scheduler"),
        fire_b,
        replica="b",
        batch_size=10,
        poll_interval=0.01,
    )
    stop = asyncio.Event()

    async def all_fired() -> bool:
        return await count(sessions, TIMER_FIRING) == 200

    async def until_all_fired() -> None:
        try:
            await wait_for(all_fired, timeout=20)
        finally:
            stop.set()

    try:
        await asyncio.gather(a.run(stop), b.run(stop), until_all_fired())
    finally:
        await other_engine.dispose()
    fired = fire_a.keys + fire_b.keys
    assert len(fired) == len(set(fired)) == 200
    assert await count(sessions, OUTBOX) == 200
    rows = (await timer_rows(sessions)).values()
    assert all(r.late is False for r in rows), "each claimed under the lock, none found fired"


async def test_how_late_timers_fire_is_measured(
    uow_factory: Callable[[], UnitOfWork], clock: ManualClock
) -> None:
    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    late_before = sample("portline_scheduler_timer_lateness_seconds_count")
    slow_before = sample("portline_scheduler_timer_lateness_seconds_bucket", {"le": "300.0"})
    await add(uow_factory, "late:due", T0)
    await add(uow_factory, "later:due", T0 + timedelta(minutes=5))
    clock.advance(timedelta(minutes=10))
    r = runner(uow_factory, Effects(), batch_size=1)

    assert await r.run_once() == 1
    assert sample("portline_scheduler_oldest_due_timer_seconds") == 600  # waited 10 minutes
    assert await r.run_once() == 1
    assert sample("portline_scheduler_oldest_due_timer_seconds") == 300
    assert await r.run_once() == 0
    assert sample("portline_scheduler_oldest_due_timer_seconds") == 0
    assert sample("portline_scheduler_timer_lateness_seconds_count") == late_before + 2
    # 600 s and 300 s late: only the second is within the 300 s bucket.
    assert (
        sample("portline_scheduler_timer_lateness_seconds_bucket", {"le": "300.0"})
        == slow_before + 1
    )
