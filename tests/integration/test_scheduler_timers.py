"""Durable timers on real PostgreSQL: racing replicas, one killed mid-batch, fire each once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.scheduler import timers
from services.scheduler.timers import TIMER, TIMER_FIRING, Timer, TimerRunner
from shared.clock import SystemClock
from shared.uow import UnitOfWork
from tests.integration.timer_replica import FIRED_LOG, fired_log_metadata
from tests.support import wait_for, widgets

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TIMERS = 5_000


@pytest.fixture
async def timer_sessions(
    sessions: async_sessionmaker[AsyncSession], pg_engine: AsyncEngine
) -> async_sessionmaker[AsyncSession]:
    """The migrated scheduler schema plus fired_log, where test effects land."""
    async with pg_engine.begin() as conn:
        await conn.run_sync(fired_log_metadata.create_all)
    return sessions


async def add_due_timers(sessions: async_sessionmaker[AsyncSession], n: int) -> None:
    now = SystemClock().now()
    rows = [
        {
            "key": f"{uuid.uuid4()}:due",
            "kind": "due",
            "task_id": None,
            "due_at": now - timedelta(minutes=1) + timedelta(milliseconds=i),
            "created_at": now,
        }
        for i in range(n)
    ]
    async with sessions() as s:
        await s.execute(TIMER.insert(), rows)
        await s.commit()


async def scalar(sessions: async_sessionmaker[AsyncSession], query: sa.Select[int]) -> int:
    async with sessions() as s:
        return int((await s.execute(query)).scalar_one())


def count(table: sa.Table) -> sa.Select[int]:
    return sa.select(sa.func.count()).select_from(table)


async def assert_fired_exactly_once(sessions: async_sessionmaker[AsyncSession], n: int) -> None:
    assert await scalar(sessions, count(FIRED_LOG)) == n
    assert await scalar(sessions, sa.select(sa.func.count(sa.distinct(FIRED_LOG.c.key)))) == n
    assert await scalar(sessions, count(TIMER).where(TIMER.c.fired_at.is_(None))) == 0
    assert await scalar(sessions, count(TIMER_FIRING)) == n
    async with sessions() as s:
        mismatched = await s.execute(
            sa.select(FIRED_LOG.c.key)
            .join(TIMER_FIRING, TIMER_FIRING.c.key == FIRED_LOG.c.key)
            .where(TIMER_FIRING.c.replica != FIRED_LOG.c.replica)
        )
        assert mismatched.all() == [], "each effect committed with its own replica's firing row"


def start_replica(
    schema: str, name: str, extra: list[str], *, env: dict[str, str], log: IO[bytes]
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.timer_replica",
            "--schema",
            schema,
            "--replica",
            name,
            "--batch-size",
            "50",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def fire_into_log(replica: str) -> timers.FireTimer:
    async def fire(uow: UnitOfWork, timer: Timer, late: bool) -> None:
        await uow.session.execute(FIRED_LOG.insert().values(key=timer.key, replica=replica))
        await asyncio.sleep(0)  # let the other runner in between effects

    return fire


async def test_three_replicas_one_killed_midway_fire_every_timer_once(
    timer_sessions: async_sessionmaker[AsyncSession],
    postgres_url: str,
    pg_schema: str,
    tmp_path: Path,
) -> None:
    """r1 stops dead mid-batch (effects written, batch locked, nothing committed) once it has
    fired its share of the first third; it is then SIGKILLed and r2 and r3 must fire the rest,
    its lost batch included, with no timer fired twice."""
    await add_due_timers(timer_sessions, TIMERS)
    hang_file = tmp_path / "hung.json"
    go_file = tmp_path / "go"
    env = {**os.environ, "DATABASE_URL": postgres_url}
    replicas = {
        "r1": ["--hang-after", str(TIMERS // 9), "--hang-file", str(hang_file)],
        "r2": [],
        "r3": [],
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, IO[bytes]] = {}

    def output() -> str:
        return "\n".join(f"--- {n}:\n{(tmp_path / f'{n}.log').read_text()}" for n in logs)

    async def fired() -> int:
        return await scalar(timer_sessions, count(TIMER_FIRING))

    try:
        for name, extra in replicas.items():
            logs[name] = (tmp_path / f"{name}.log").open("wb")
            ready = ["--ready-file", str(tmp_path / f"{name}.ready"), "--go-file", str(go_file)]
            procs[name] = start_replica(pg_schema, name, [*ready, *extra], env=env, log=logs[name])
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"{name}.ready").exists() for name in replicas):
            assert time.monotonic() < deadline, "replicas did not start\n" + output()
            assert all(p.poll() is None for p in procs.values()), "a replica died\n" + output()
            await asyncio.sleep(0.05)
        go_file.touch()
        started = time.monotonic()

        # r1 hangs mid-batch once it has fired its share of the first third.
        while not (hang_file.exists() and await fired() >= TIMERS // 3):
            assert time.monotonic() < deadline, "replica r1 never hung mid-batch\n" + output()
            assert all(p.poll() is None for p in procs.values()), "a replica died\n" + output()
            await asyncio.sleep(0.05)
        at_kill = await fired()
        killed_at = time.monotonic()
        procs["r1"].send_signal(signal.SIGKILL)
        procs["r1"].wait(timeout=10)
        uncommitted = json.loads(hang_file.read_text())

        for name in ("r2", "r3"):
            rc = await asyncio.to_thread(
                procs[name].wait, timeout=max(1, deadline + 20 - time.monotonic())
            )
            assert rc == 0, f"replica {name} exited {rc}\n" + output()
        done_at = time.monotonic()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for log_file in logs.values():
            log_file.close()

    await assert_fired_exactly_once(timer_sessions, TIMERS)
    async with timer_sessions() as s:
        by_replica: dict[str, int] = dict(
            (
                await s.execute(
                    sa.select(FIRED_LOG.c.replica, sa.func.count()).group_by(FIRED_LOG.c.replica)
                )
            ).all()
        )
        refired: dict[str, str] = dict(
            (
                await s.execute(
                    sa.select(FIRED_LOG.c.key, FIRED_LOG.c.replica).where(
                        FIRED_LOG.c.key.in_(uncommitted)
                    )
                )
            ).all()
        )
    assert set(by_replica) == {"r1", "r2", "r3"}
    assert len(uncommitted) >= 5
    assert set(refired) == set(uncommitted), "the killed replica's batch was fired by the others"
    assert set(refired.values()) <= {"r2", "r3"}
    print(
        f"\n{TIMERS} timers, 3 replicas (batch 50): "
        f"{at_kill / (killed_at - started):.0f} timers/s with three running; "
        f"{TIMERS / (done_at - started):.0f} timers/s overall, the kill included; "
        f"fired per replica {by_replica}; whole run {done_at - started:.1f} s"
    )


async def test_two_runners_racing_fire_each_timer_once(
    timer_sessions: async_sessionmaker[AsyncSession],
    uow_factory: Callable[[], UnitOfWork],
) -> None:
    await add_due_timers(timer_sessions, 500)
    runners = [
        TimerRunner(
            uow_factory, fire_into_log(name), replica=name, batch_size=20, poll_interval=0.01
        )
        for name in ("a", "b")
    ]
    stop = asyncio.Event()

    async def all_fired() -> bool:
        return await scalar(timer_sessions, count(TIMER_FIRING)) == 500

    async def until_all_fired() -> None:
        try:
            await wait_for(all_fired, timeout=30)
        finally:
            stop.set()

    await asyncio.gather(*(r.run(stop) for r in runners), until_all_fired())
    await assert_fired_exactly_once(timer_sessions, 500)
    async with timer_sessions() as s:
        replicas = (await s.execute(sa.select(FIRED_LOG.c.replica).distinct())).scalars().all()
    assert sorted(replicas) == ["a", "b"], "both runners took part"


async def test_missed_timers_fire_on_start_up_marked_late(
    timer_sessions: async_sessionmaker[AsyncSession],
    uow_factory: Callable[[], UnitOfWork],
) -> None:
    now = SystemClock().now()
    task = uuid.uuid4()
    due: dict[str, datetime] = {
        f"{task}:opens": now - timedelta(hours=3),
        f"{task}:due": now - timedelta(hours=2),
        f"{task}:expires": now + timedelta(hours=2),
    }
    async with uow_factory() as uow:
        for key, at in due.items():
            kind = key.rsplit(":", 1)[1]
            assert await timers.schedule(
                uow.session, key=key, kind=kind, due_at=at, task_id=task, now=now
            )
        assert not await timers.schedule(
            uow.session, key=f"{task}:due", kind="due", due_at=now, task_id=task, now=now
        )
        await uow.commit()

    calls: list[tuple[str, bool]] = []

    async def fire(uow: UnitOfWork, timer: Timer, late: bool) -> None:
        calls.append((timer.kind, late))

    runner = TimerRunner(uow_factory, fire, replica="after-downtime")
    assert await runner.run_once() == 2
    assert calls == [("opens", True), ("due", True)]
    async with timer_sessions() as s:
        rows = {r.kind: r for r in await s.execute(sa.select(TIMER))}
    assert rows["opens"].late is True
    assert rows["due"].late is True
    assert rows["expires"].fired_at is None
    assert await runner.run_once() == 0


async def test_an_effect_failing_in_the_database_is_set_aside(
    timer_sessions: async_sessionmaker[AsyncSession],
    uow_factory: Callable[[], UnitOfWork],
) -> None:
    """PostgreSQL aborts the transaction on a failed statement; the timer's savepoint must
    bring it back so the rest of the batch still commits."""
    await add_due_timers(timer_sessions, 3)
    async with timer_sessions() as s:
        keys = (await s.execute(sa.select(TIMER.c.key).order_by(TIMER.c.due_at))).scalars().all()
        await s.execute(widgets.insert().values(id="taken", name="already there"))
        await s.commit()

    async def fire(uow: UnitOfWork, timer: Timer, late: bool) -> None:
        widget_id = "taken" if timer.key == keys[1] else timer.key[:36]
        await uow.session.execute(widgets.insert().values(id=widget_id, name="effect"))

    runner = TimerRunner(uow_factory, fire, replica="r")
    assert await runner.run_once() == 2
    async with timer_sessions() as s:
        unfired = (await s.execute(sa.select(TIMER.c.key).where(TIMER.c.fired_at.is_(None)))).all()
        assert [k for (k,) in unfired] == [keys[1]]
        assert (await s.execute(count(widgets))).scalar_one() == 3
