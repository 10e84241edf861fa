"""`make bench`, spike part: one timed detection pass over every county of a state (100) for a
day, as reporting's timer runs it.

    python -m tests.bench.spikes_bench [--counties 100] [--days 120] [--rounds 5] [--sqlite]

Needs DATABASE_URL (PostgreSQL; its database name must contain "test" or "bench", or set
BENCH_ALLOW_RESET=1), unless `--sqlite`; scripts/bench.sh provides it.

How, exactly:

1. A fresh schema `bench_spikes` (dropped and migrated), or a SQLite file in a temp dir.
2. `--days` (120) days of overdoses in `--counties` (100) counties of one program: each
   county's daily count drawn from a Poisson law with a mean from 0.2 to 4 (rural to urban)
   and a weekly cycle, as episode rows of the read models (what the detectors read), written
   directly: loading is not what is measured. Today, five counties get a spike.
3. `--rounds` (5) passes of `alerts.detect_program` over every county (both detectors: the
   EWMA of NSSP-ESSENCE on each county's last 96 days, the ODMAP rule on its last 48 hours),
   each in a unit of work rolled back afterwards, so every pass finds and writes the same
   alerts. Best and median shown (the machine is shared).

Target (issue 16): a pass under 1 s, and the planted spikes among the alerts. Exit status: 0
when both hold, 1 when not, 2 for set-up errors.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from services.reporting.alerts import detect_program
from services.reporting.models import COUNTY, EPISODE, PROGRAM
from services.reporting.programs import ProgramBook
from services.reporting.store import blank_row
from shared.clock import ManualClock, SystemClock
from shared.db import create_engine, session_factory
from shared.migrations import upgrade
from shared.uow import UnitOfWork
from tests.bench.intake_bench import BenchError
from tests.bench.prepare import refuse_unless_resettable

SCHEMA = "bench_spikes"
PROGRAM_ID = "bench"
TARGET_SECONDS = 1.0
SPIKED = 5


def _poisson(rng: random.Random, mean: float) -> int:
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def history(
    rng: random.Random, counties: int, days: int, now: datetime, zone: Any
) -> list[dict[str, Any]]:
    rows = []
    blank = blank_row(EPISODE)
    today = now.astimezone(zone).date()
    for c in range(counties):
        county = f"County {c:03d}"
        mean = rng.uniform(0.2, 4.0)
        for back in range(days, -1, -1):
            day = today - timedelta(days=back)
            weekly = 1.3 if day.weekday() >= 5 else 0.9
            n = _poisson(rng, mean * weekly)
            if back == 0:
                n = min(n, 1) + (12 if c < SPIKED else 0)
            for k in range(n):
                at = datetime.combine(day, datetime.min.time(), tzinfo=zone) + timedelta(
                    hours=1 + (k * 37) % 12
                )
                if at > now:
                    at = now - timedelta(minutes=k + 1)
                local = at.astimezone(zone).date()
                rows.append(
                    blank
                    | {
                        "episode_id": uuid.uuid4(),
                        "program_id": PROGRAM_ID,
                        "deidentified": True,
                        "incident_at": at,
                        "day": local,
                        "week": local - timedelta(days=local.weekday()),
                        "month": local.replace(day=1),
                        "quarter": local.replace(month=3 * ((local.month - 1) // 3) + 1, day=1),
                        "received_at": at + timedelta(hours=1),
                        "county": county,
                        "state": "NC",
                        "source_kind": "ems",
                        "source_org": "bench-ems",
                        "overdose": True,
                        "fatal_reported": False,
                        "late": False,
                        "repeat": False,
                        "consent_declined": False,
                    }
                )
    return rows


async def run(args: argparse.Namespace, work: Path) -> int:
    if args.sqlite:
        database_url = f"sqlite+aiosqlite:///{work}/{{service}}.db"
        schema = None
    else:
        database_url = os.environ.get("DATABASE_URL", "")
        if not database_url.startswith("postgres"):
            raise BenchError("set DATABASE_URL (PostgreSQL), or pass --sqlite")
        try:
            refuse_unless_resettable(database_url)
        except RuntimeError as exc:
            raise BenchError(str(exc)) from None
        schema = SCHEMA
        owner = create_engine(database_url, service="bench", schema="public")
        try:
            async with owner.begin() as conn:
                await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
        finally:
            await owner.dispose()
    engine = create_engine(database_url, service="reporting", schema=schema)
    await upgrade(engine, service="reporting", schema=schema)
    sessions = session_factory(engine)
    rules = ProgramBook().for_program(PROGRAM_ID)
    now = SystemClock().now().replace(microsecond=0)
    rows = history(random.Random(args.seed), args.counties, args.days, now, rules.zone)
    try:
        async with sessions() as session:
            await session.execute(PROGRAM.insert().values(program_id=PROGRAM_ID, first_seen_at=now))
            await session.execute(
                COUNTY.insert(),
                [
                    {"program_id": PROGRAM_ID, "county": f"County {c:03d}", "state": "NC"}
                    for c in range(args.counties)
                ],
            )
            for start in range(0, len(rows), 2000):
                await session.execute(EPISODE.insert(), rows[start : start + 2000])
            await session.commit()
            if not args.sqlite:
                await session.execute(sa.text("ANALYZE"))
        print(
            f"== spikes: {len(rows):,} overdoses in {args.counties} counties over "
            f"{args.days + 1} days ({'SQLite' if args.sqlite else 'PostgreSQL'})",
            flush=True,
        )
        clock = ManualClock(now)
        seconds = []
        found: set[str] = set()
        for _ in range(args.rounds):
            async with UnitOfWork(sessions, clock=clock, source="/portline/reporting") as uow:
                started = time.perf_counter()
                published = await detect_program(uow, rules)
                await uow.flush()
                seconds.append(time.perf_counter() - started)
                found = {e.county for e in published}
                await uow.rollback()
    finally:
        await engine.dispose()
    median = statistics.median(seconds)
    planted = {f"County {c:03d}" for c in range(SPIKED)}
    ok = median < TARGET_SECONDS and planted <= found
    print("=" * 78)
    print(
        f"spike detection, {args.counties} counties for a day: best {min(seconds) * 1000:,.0f} ms, "
        f"median {median * 1000:,.0f} ms (target < {TARGET_SECONDS * 1000:,.0f} ms) "
        f"{'OK' if median < TARGET_SECONDS else 'MISSED'}"
    )
    print(
        f"counties alerted: {len(found)}, among them the {SPIKED} planted spikes: "
        f"{'yes' if planted <= found else 'NO'} (the rest: the ODMAP rule's 5 in 24 h in busy "
        "counties, and the EWMA's warnings at p < 0.05 on random counts)"
    )
    print("=" * 78)
    return 0 if ok else 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench.spikes_bench", description=__doc__)
    p.add_argument("--counties", type=int, default=100)
    p.add_argument("--days", type=int, default=120)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--sqlite", action="store_true", help="SQLite in a temp dir, no PostgreSQL")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pl-spikes-bench-") as tmp:
        try:
            return asyncio.run(run(args, Path(tmp)))
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
