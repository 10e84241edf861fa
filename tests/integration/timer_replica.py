"""One scheduler replica, run as a process by test_scheduler_timers: fires due timers, each
into the plain (not unique) table fired_log, until none are left.

    DATABASE_URL=postgresql://… python -m tests.integration.timer_replica \\
        --schema SCHEMA --replica NAME [--batch-size 50] [--ready-file PATH --go-file PATH]
        [--hang-after N --hang-file PATH]

With --ready-file and --go-file, the replica connects, creates the ready file and starts firing
only once the go file exists, so that replicas start together whatever their start-up time.

With --hang-after, the replica stops dead in the middle of a batch once it has fired N timers:
its transaction stays open with some effects written and the whole batch locked, and it
writes the keys of those uncommitted effects to --hang-file. The test then kills it.
Exits 0 once no due timer is left unfired, 2 if that takes longer than --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler.timers import TIMER, Timer, TimerRunner
from shared.clock import SystemClock
from shared.db import create_engine, session_factory
from shared.uow import UnitOfWork

fired_log_metadata = sa.MetaData()
FIRED_LOG = sa.Table(
    "fired_log",
    fired_log_metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("replica", sa.String(100), nullable=False),
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--replica", required=True)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--go-file", type=Path)
    parser.add_argument("--hang-after", type=int)
    parser.add_argument("--hang-file", type=Path)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    return parser.parse_args(argv)


async def main(argv: list[str]) -> int:
    args = parse(argv)
    engine = create_engine(os.environ["DATABASE_URL"], service="scheduler", schema=args.schema)
    try:
        async with asyncio.timeout(args.max_seconds):
            await run_replica(args, session_factory(engine))
        return 0
    except TimeoutError:
        return 2
    finally:
        await engine.dispose()


async def run_replica(args: argparse.Namespace, sessions: async_sessionmaker[AsyncSession]) -> None:
    clock = SystemClock()
    fired = 0
    this_batch: list[str] = []

    def new_batch() -> UnitOfWork:
        this_batch.clear()
        return UnitOfWork(sessions, clock=clock, source="/portline/scheduler")

    async def fire(uow: UnitOfWork, timer: Timer, late: bool) -> None:
        nonlocal fired
        await uow.session.execute(FIRED_LOG.insert().values(key=timer.key, replica=args.replica))
        fired += 1
        this_batch.append(timer.key)
        if args.hang_after is not None and fired > args.hang_after and len(this_batch) >= 5:
            args.hang_file.write_text(json.dumps(this_batch))
            await asyncio.Event().wait()  # until killed

    async with sessions() as s:
        await s.execute(sa.text("select 1"))
    if args.ready_file and args.go_file:
        args.ready_file.touch()
        while not args.go_file.exists():  # noqa: ASYNC110 - another process creates it
            await asyncio.sleep(0.01)

    runner = TimerRunner(
        new_batch, fire, replica=args.replica, batch_size=args.batch_size, poll_interval=0.05
    )
    stop = asyncio.Event()
    running = asyncio.create_task(runner.run(stop))
    unfired_due = (
        sa.select(sa.func.count())
        .select_from(TIMER)
        .where(
            TIMER.c.fired_at.is_(None),
            TIMER.c.cancelled_at.is_(None),
            TIMER.c.due_at <= sa.func.now(),
        )
    )
    try:
        quiet = 0
        while quiet < 3:  # a few polls in a row with nothing left, then done
            await asyncio.sleep(0.1)
            async with sessions() as s:
                quiet = quiet + 1 if (await s.execute(unfired_due)).scalar_one() == 0 else 0
    finally:
        stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(running, timeout=5)  # cancelled if stuck in a batch


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(asyncio.run(main(sys.argv[1:])))
