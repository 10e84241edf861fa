"""`make bench`, dashboard part: how fast GET /dashboard answers for a program with a year of
data (issue 16: p95 under 1 s with 1,000,000 events).

    python -m tests.bench.dashboard_bench [--events 1000000] [--requests 40] [--reuse]

Needs DATABASE_URL (PostgreSQL; its database name must contain "test" or "bench", or set
BENCH_ALLOW_RESET=1) and KAFKA_BOOTSTRAP_SERVERS; scripts/bench.sh provides both.

How, exactly:

1. A fresh schema `bench_reporting` (dropped and migrated; the reporting benchmark's, which
   runs before this one).
2. `--events` (1,000,000) events of ONE program over ONE year (last year), written as the
   services publish them (tests/bench/reporting_bench.py's synthetic history: 20 counties, 12
   partners, attempts, visits, services, referrals...), loaded through the read models' real
   handler, 5,000 per transaction; then VACUUM ANALYZE. With `--reuse`, steps 1 and 2 are
   skipped when the schema still holds what a previous run loaded with the same `--events`
   and `--seed` for the same year (a marker table says so; the reporting benchmark drops
   the schema, and with it the marker); that run's load time is shown.
3. `portline run reporting` on that schema, as a subprocess; a team lead's development token.
4. Timed over HTTP, one client, sequential, after the service is up (its chart renderer is
   warmed at start-up):
   - **the year**: GET /dashboard?from=<Jan 1>&to=<Dec 31>, published view, `--requests`
     times. The first answer renders the charts; later ones find them in the renderer's
     memory (same figures, same pictures) and still measure and suppress every figure;
   - **each county, first time**: the same year for each of the 20 counties, once each, so
     that every answer renders its charts (nothing in memory);
   - **the year, internal view**, `--requests` times.

Target (issue 16): p95 under 1 s for the year. Exit status: 0 when met, 1 when not, 2 for
set-up errors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa

from shared.clock import SystemClock
from shared.db import create_engine
from shared.migrations import upgrade
from shared.settings import Settings
from tests.bench.intake_bench import BenchError, percentile
from tests.bench.prepare import refuse_unless_resettable
from tests.bench.reporting_bench import (
    COUNTIES,
    PREFIX,
    PROGRAM,
    SCHEMA,
    _get,
    drop_schema,
    load,
    served,
    sizes,
)
from tests.tokens import DevTokens


async def _timed(port: int, target: str, authorization: str) -> tuple[float, int]:
    began = time.perf_counter()
    status, body = await _get(port, target, authorization)
    elapsed = time.perf_counter() - began
    if status != 200:
        raise BenchError(f"GET {target} answered {status}: {body[:300]!r}")
    if b'id="counties"' not in body:
        raise BenchError(f"GET {target} is not the dashboard")
    return elapsed, len(body)


async def latencies(
    settings: Settings, env: dict[str, str], year: int, requests: int, work: Path
) -> dict[str, list[float]]:
    authorization = DevTokens(settings).headers("team_lead", PROGRAM, "bench")["Authorization"]
    year_query = f"/dashboard?from={year}-01-01&to={year}-12-31"
    results: dict[str, list[float]] = {}
    async with served(env, work) as port:
        timings, size = [], 0
        for _ in range(requests):
            elapsed, size = await _timed(port, year_query, authorization)
            timings.append(elapsed)
        results["year"] = timings
        results["year_bytes"] = [float(size)]
        results["counties"] = [
            (await _timed(port, f"{year_query}&county={quote(county)}", authorization))[0]
            for county in COUNTIES
        ]
        results["internal"] = [
            (await _timed(port, f"{year_query}&view=internal", authorization))[0]
            for _ in range(requests)
        ]
    return results


_MARKER = f'"{SCHEMA}".dashboard_bench_loaded'


async def _mark_loaded(
    database_url: str, args: argparse.Namespace, year: int, seconds: float
) -> None:
    """Note what was loaded, for a later run with `--reuse`."""
    engine = create_engine(database_url, service="bench", schema="public")
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    f"CREATE TABLE {_MARKER} "
                    "(events integer, seed integer, year integer, seconds double precision)"
                )
            )
            await conn.execute(
                sa.text(f"INSERT INTO {_MARKER} VALUES (:events, :seed, :year, :seconds)"),
                {"events": args.events, "seed": args.seed, "year": year, "seconds": seconds},
            )
    finally:
        await engine.dispose()


async def _loaded(database_url: str, args: argparse.Namespace, year: int) -> float | None:
    """The load time of the same load by an earlier run, if the schema still holds it."""
    engine = create_engine(database_url, service="bench", schema="public")
    try:
        async with engine.connect() as conn:
            if (await conn.execute(sa.text(f"SELECT to_regclass('{_MARKER}')"))).scalar() is None:
                return None
            found = (
                await conn.execute(
                    sa.text(
                        f"SELECT seconds FROM {_MARKER} "
                        "WHERE events = :events AND seed = :seed AND year = :year"
                    ),
                    {"events": args.events, "seed": args.seed, "year": year},
                )
            ).scalar()
    finally:
        await engine.dispose()
    return None if found is None else float(found)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench.dashboard_bench", description=__doc__)
    p.add_argument("--events", type=int, default=1_000_000, help="events of the program's year")
    p.add_argument("--requests", type=int, default=40, help="timed GET /dashboard per series")
    p.add_argument("--seed", type=int, default=16)
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep the schema a previous run loaded with the same --events and --seed",
    )
    return p.parse_args(argv)


async def run(args: argparse.Namespace, work: Path) -> int:
    database_url = os.environ.get("DATABASE_URL")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not database_url or not bootstrap or not database_url.startswith("postgres"):
        raise BenchError("set DATABASE_URL (PostgreSQL) and KAFKA_BOOTSTRAP_SERVERS")
    try:
        refuse_unless_resettable(database_url)
    except RuntimeError as exc:
        raise BenchError(str(exc)) from None
    env = {k: v for k, v in os.environ.items() if k != "PORTLINE_DB_SCHEMA_PREFIX"} | {
        "PORTLINE_ENV": "development",
        "PORTLINE_VAR_DIR": str(work),
        "PORTLINE_DB_SCHEMA_PREFIX": PREFIX,
        "PORTLINE_KAFKA_CONSUMER_START": "latest",  # only the benchmark's own data
        "PORTLINE_HOST": "127.0.0.1",
    }
    settings = Settings(
        env="development",
        var_dir=work,
        database_url=database_url,
        db_schema_prefix=PREFIX,
        kafka_bootstrap_servers=bootstrap,
    )
    load_at_start = os.getloadavg()[0]
    year = SystemClock().now().year - 1  # the last whole year, whenever this runs
    load_seconds = await _loaded(database_url, args, year) if args.reuse else None
    reused = load_seconds is not None
    if load_seconds is not None:
        print(f"== dashboard: reusing {SCHEMA}, loaded by an earlier run", flush=True)
    else:
        print(f"== dashboard: fresh schema {SCHEMA}", flush=True)
        await drop_schema(database_url)
        engine = create_engine(database_url, service="reporting", schema=SCHEMA)
        await upgrade(engine, service="reporting", schema=SCHEMA)
        await engine.dispose()
        print(f"== dashboard: loading {args.events:,} events of one program's {year}", flush=True)
        periods = [(PROGRAM, datetime(year, 1, 1, 5, tzinfo=UTC))]
        load_seconds = await load(settings, random.Random(args.seed), args.events, periods)
        await _mark_loaded(database_url, args, year, load_seconds)
    loaded = await sizes(settings, year)
    print(f"== dashboard: GET /dashboard, {args.requests} requests per series", flush=True)
    found = await latencies(settings, env, year, args.requests, work)

    lines = ["=" * 78, f"PORTline dashboard benchmark: PostgreSQL, {os.cpu_count()} CPUs"]

    def row(label: str, value: str) -> None:
        lines.append(f"  {label:<52} {value}")

    row(
        f"one program's year ({PROGRAM}, {year}), 20 counties",
        f"{args.events:,} events loaded in {load_seconds:,.0f} s"
        + (" (by an earlier run)" if args.reuse and reused else ""),
    )
    row(
        "its read models",
        f"{loaded['queried episodes']:,} episodes, {loaded['queried people']:,} people, "
        f"{loaded['queried reports']:,} reports",
    )
    lines.append("GET /dashboard, the whole year (HTTP, one client, sequential)")

    def series(label: str, timings: list[float]) -> tuple[float, float]:
        ordered = sorted(timings)
        p50, p95 = percentile(ordered, 0.5) * 1000, percentile(ordered, 0.95) * 1000
        row(f"{label}, p50 / p95", f"{p50:,.0f} / {p95:,.0f} ms")
        return p50, p95

    size = found["year_bytes"][0] / 1000
    row("first answer (charts rendered)", f"{found['year'][0] * 1000:,.0f} ms, {size:,.0f} kB")
    _p50, p95 = series(f"all counties, published ({args.requests} answers)", found["year"])
    series("each county once (20 answers, every chart rendered)", found["counties"])
    series(f"all counties, internal view ({args.requests} answers)", found["internal"])
    ok = p95 < 1000
    row("target (p95 < 1 s for the year)", "MET" if ok else "NOT MET")
    row(
        "machine load (1-minute average): start, end",
        f"{load_at_start:.1f}, {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
    )
    lines.append("=" * 78)
    print("\n".join(lines))
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pl-dashboard-bench-") as tmp:
        try:
            return asyncio.run(run(args, Path(tmp)))
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
