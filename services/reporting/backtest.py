"""`portline reporting backtest`: the spike detectors run over a program's history, day by
day as they would have run live, to show how often each county would have been alerted, so a
program can tune its thresholds before trusting them.

Read-only: it reads the read models (overdoses per county and local day, their incident
times) and writes nothing, publishes nothing.

* EWMA: every day of the range tested, each against the baseline before it (history before
  `from` is read for the first days' baselines). A county is counted by its warning days and
  alert days.
* ODMAP: every overdose of the range asked whether it completes N in the window; spikes that
  overlap count once, as the live alerts do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import IO

import sqlalchemy as sa

from services.reporting.alerts import daily_counts, incidents_since
from services.reporting.models import PROGRAM
from services.reporting.programs import DETECTORS, Detector, ProgramBook, ProgramRules
from services.reporting.spikes import EwmaParams, OdmapParams, ewma, history_days, odmap
from shared.settings import Settings

__all__ = [
    "CountyBacktest",
    "backtest_program",
    "ewma_days",
    "odmap_spikes",
    "print_backtest",
    "run_backtest",
]


@dataclass(frozen=True, slots=True)
class CountyBacktest:
    county: str
    days: int
    overdoses: int
    ewma_warnings: int | None
    ewma_alerts: int | None
    odmap_spikes: int | None


def ewma_days(
    counts: dict[date, int], start: date, end: date, params: EwmaParams
) -> tuple[int, int]:
    """(warning days, alert days) among [start, end] for a county's counts per day."""
    first = start - timedelta(days=history_days(params))
    length = (end - first).days + 1
    series = [counts.get(first + timedelta(days=i), 0) for i in range(length)]
    results = ewma(series, params, report_from=(start - first).days)
    warnings = sum(1 for r in results if r is not None and r.level == "warning")
    alerts = sum(1 for r in results if r is not None and r.level == "alert")
    return warnings, alerts


def odmap_spikes(
    incidents: Sequence[datetime], start: datetime, end: datetime, params: OdmapParams
) -> int:
    """Distinct spikes (overlapping windows counted once) completed by an overdose in
    [start, end)."""
    times = sorted(incidents)
    spikes = 0
    reached: datetime | None = None
    for at in times:
        if not start <= at < end:
            continue
        spike = odmap(times, at, params)
        if spike is None:
            continue
        if reached is None or spike.window_start > reached:
            spikes += 1
        reached = max(reached or spike.window_end, spike.window_end)
    return spikes


async def backtest_program(
    settings: Settings,
    rules: ProgramRules,
    start: date,
    end: date,
    detectors: Sequence[Detector] = DETECTORS,
) -> list[CountyBacktest]:
    """Each county of the program with overdoses in the range (or its baseline)."""
    from shared.db import create_engine, session_factory

    engine = create_engine(
        settings.db_url, service="reporting", schema=settings.schema_for("reporting")
    )
    try:
        async with session_factory(engine)() as session:
            first = start - timedelta(days=history_days(rules.spikes.ewma))
            counts = await daily_counts(session, rules.program_id, None, first, end)
            window = rules.spikes.odmap.window
            since = datetime.combine(start, time(), tzinfo=rules.zone)
            until = datetime.combine(end + timedelta(days=1), time(), tzinfo=rules.zone)
            incidents = await incidents_since(session, rules.program_id, None, since - window)
    finally:
        await engine.dispose()
    out = []
    for county in sorted(set(counts) | set(incidents)):
        days = counts.get(county, {})
        in_range = sum(n for d, n in days.items() if start <= d <= end)
        warnings = alerts = spikes = None
        if "ewma" in detectors:
            warnings, alerts = ewma_days(days, start, end, rules.spikes.ewma)
        if "odmap" in detectors:
            spikes = odmap_spikes(
                [t for t in incidents.get(county, []) if t < until],
                since,
                until,
                rules.spikes.odmap,
            )
        out.append(
            CountyBacktest(county, (end - start).days + 1, in_range, warnings, alerts, spikes)
        )
    return out


def print_backtest(rows: Sequence[CountyBacktest], rules: ProgramRules, out: IO[str]) -> None:
    ewma_p, odmap_p = rules.spikes.ewma, rules.spikes.odmap
    print(
        f"program {rules.program_id}: EWMA baseline {ewma_p.baseline_days} d, guard "
        f"{ewma_p.guard_days} d, smoothing {', '.join(map(str, ewma_p.smoothing))}, alert p < "
        f"{ewma_p.alert_p}, warning p < {ewma_p.warning_p}; ODMAP {odmap_p.threshold} in "
        f"{odmap_p.window.total_seconds() / 3600:g} h",
        file=out,
    )
    header = ("county", "days", "overdoses", "ewma warning days", "ewma alert days", "odmap")
    table = [header] + [
        (
            r.county,
            str(r.days),
            str(r.overdoses),
            *("-" if v is None else str(v) for v in (r.ewma_warnings, r.ewma_alerts)),
            "-" if r.odmap_spikes is None else str(r.odmap_spikes),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        print("  ".join(cells), file=out)
    if not rows:
        print("(no overdoses with a county in that range)", file=out)


async def program_ids(settings: Settings) -> list[str]:
    """Every program the read models know."""
    from shared.db import create_engine, session_factory

    engine = create_engine(
        settings.db_url, service="reporting", schema=settings.schema_for("reporting")
    )
    try:
        async with session_factory(engine)() as session:
            found = await session.execute(sa.select(PROGRAM.c.program_id))
            return sorted(found.scalars())
    finally:
        await engine.dispose()


def run_backtest(
    settings: Settings,
    start: date,
    end: date,
    *,
    program: str | None,
    detectors: Sequence[Detector],
    out: IO[str],
) -> int:
    """The CLI's entry: one table per program; the exit status."""
    book = ProgramBook.from_settings(settings)

    async def go() -> int:
        programs = [program] if program else await program_ids(settings)
        if not programs:
            print("no program in the read models yet", file=out)
        for program_id in programs:
            rules = book.for_program(program_id)
            rows = await backtest_program(settings, rules, start, end, detectors)
            print_backtest(rows, rules, out)
            print(file=out)
        return 0

    return asyncio.run(go())
