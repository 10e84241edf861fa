"""What the dashboard shows for a program, period and county: Reporting I's figures (measured
once per breakdown, suppressed as `GET /v1/metrics` suppresses them) arranged as headline
figures and charts.

Every figure is one that `GET /v1/metrics` answers for the same question, so the dashboard can
never show what the API would hide:

- without a county: by week and source (with the weekly totals), and by month and county
  (with the monthly totals, the county totals and the period's figures);
- for one county: by week and county, and by month and county, each narrowed to that county's
  rows (its weekly chart has no split by source: three breakdowns would be a question the API
  does not answer, so the suppression of one could not be checked against the other);
- and the medians (hours to a first attempt) of the period and of each month (or of the
  county), measured as cells of their own, as the API measures them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.reporting.dashboard.charts import (
    FUNNEL,
    FUNNEL_RATES,
    SOURCE_LABELS,
    Chart,
    Row,
    counties_heat_map,
    first_attempt_by_month,
    funnel,
    overdoses_by_week,
    supplies_by_month,
)
from services.reporting.dashboard.questions import (
    FIRST_ATTEMPT_HOURS,
    first_attempt_medians,
    weekly_overdoses,
)
from services.reporting.figures import View, build_figures, group_label, periods_between
from services.reporting.metrics import METRICS, METRICS_BY_ID, Metric
from services.reporting.programs import ProgramRules
from services.reporting.query import Dimension, Key, Levels, Scope, measure, subsets

__all__ = ["TILES", "Board", "Filters", "Tile", "assemble", "gather"]

TILES: tuple[tuple[str, str], ...] = (
    ("overdoses_reported", "Overdoses reported"),
    ("overdose_deaths_reported", "Overdose deaths reported"),
    ("people_referred", "People referred"),
    ("people_reached", "People reached"),
    ("people_engaged", "People engaged"),
    ("median_hours_to_first_attempt", "Median hours to first attempt"),
    ("naloxone_kits_distributed", "Naloxone kits given out"),
)


@dataclass(frozen=True, slots=True)
class Filters:
    start: date
    end: date
    county: str | None = None
    view: View = "published"


@dataclass(frozen=True, slots=True)
class Tile:
    metric: str
    label: str
    display: str
    suppressed: bool


@dataclass(frozen=True, slots=True)
class Board:
    program_id: str
    filters: Filters
    as_of: datetime
    threshold: int
    counties: tuple[str, ...]
    """Every county seen in the period (what the county filter offers)."""
    tiles: tuple[Tile, ...]
    charts: tuple[Chart, ...]


def _by(rows: Iterable[Row], metric: str, *dims: str) -> dict[Any, Row]:
    """A metric's rows keyed by their group: one breakdown's value, or a tuple of two."""
    found: dict[Any, Row] = {}
    for row in rows:
        if row["metric"] != metric:
            continue
        values = tuple(row["group"].get(d) for d in dims)
        found[values[0] if len(values) == 1 else values] = row
    return found


def _narrow(rows: Iterable[Row], county: str) -> list[dict[str, Any]]:
    """The rows of one county, without the county in their group."""
    return [
        {**row, "group": {k: v for k, v in row["group"].items() if k != "county"}}
        for row in rows
        if row["group"].get("county") == county
    ]


def _labels(dim: Dimension, start: date, end: date) -> list[str]:
    return [group_label(dim, p) for p in periods_between(dim, start, end)]


def _metrics(*ids: str) -> tuple[Metric, ...]:
    return tuple(METRICS_BY_ID[i] for i in dict.fromkeys(ids))


OVERALL = _metrics(
    *(m for m, _label in TILES),
    *(m for m, _label in FUNNEL),
    *FUNNEL_RATES.values(),
    "first_attempt_within_24h",
    "first_attempt_within_72h",
    "median_hours_to_first_attempt",
)
MONTHLY = _metrics(
    "overdoses_reported",
    "first_attempt_within_24h",
    "first_attempt_within_72h",
    "median_hours_to_first_attempt",
    "naloxone_kits_distributed",
    "test_strips_distributed",
)
_WANTED: dict[frozenset[str], tuple[Metric, ...]] = {
    frozenset(): OVERALL,
    frozenset({"county"}): OVERALL,
    frozenset({"month"}): MONTHLY,
    frozenset({"month", "county"}): MONTHLY,
    frozenset({"week"}): _metrics("overdoses_reported"),
    frozenset({"week", "source"}): _metrics("overdoses_reported"),
    frozenset({"week", "county"}): _metrics("overdoses_reported"),
}
"""The metrics each breakdown is asked for (suppression is decided per metric, so asking for
fewer changes no figure; it only saves the work of the others)."""

HOURS = frozenset(m.id for m in METRICS if m.unit == "hours")
"""Medians are measured for a question's own cells only (a margin's median is never taken),
so the board measures the groups it shows medians for as cells of their own."""


def assemble(
    levels_by_week: Levels,
    levels_by_month: Levels,
    medians: Mapping[tuple[Dimension, ...], Levels],
    *,
    program_id: str,
    filters: Filters,
    as_of: datetime,
    rules: ProgramRules,
) -> Board:
    """The board from the measures (pure: the unit tests feed it measures of their own)."""

    def figures(levels: Levels, *dims: Dimension) -> list[dict[str, Any]]:
        wanted = _WANTED[frozenset(dims)]
        rows = _figures(levels, dims, wanted)
        if dims not in medians:
            return rows
        exact = {
            (r["metric"], tuple(r["group"].items())): r
            for r in _figures(medians[dims], dims, [m for m in wanted if m.id in HOURS])
        }
        return [
            exact.get((r["metric"], tuple(r["group"].items())), r) if r["metric"] in HOURS else r
            for r in rows
        ]

    def _figures(
        levels: Levels, dims: tuple[Dimension, ...], wanted: Sequence[Metric]
    ) -> list[dict[str, Any]]:
        return build_figures(
            levels,
            program_id=program_id,
            start=filters.start,
            end=filters.end,
            dims=dims,
            view=filters.view,
            as_of=as_of,
            rules=rules,
            metrics=wanted,
        ).rows

    weeks = _labels("week", filters.start, filters.end)
    months = _labels("month", filters.start, filters.end)
    by_county = figures(levels_by_month, "county")
    by_month_county = figures(levels_by_month, "month", "county")
    counties = tuple(dict.fromkeys(r["group"]["county"] for r in by_county))
    county = filters.county
    if county is None:
        overall_rows = figures(levels_by_month)
        by_month = figures(levels_by_month, "month")
        by_week_source = figures(levels_by_week, "week", "source")
        weekly = _by(by_week_source, "overdoses_reported", "week", "source")
        weekly_totals = _by(figures(levels_by_week, "week"), "overdoses_reported", "week")
        seen = {r["group"]["source"] for r in by_week_source}
        sources = [s for s in SOURCE_LABELS if s in seen] + sorted(seen - set(SOURCE_LABELS))
        shown_counties: Sequence[str] = counties
    else:
        overall_rows = _narrow(by_county, county)
        by_month = _narrow(by_month_county, county)
        by_week = _narrow(figures(levels_by_week, "week", "county"), county)
        weekly_totals = _by(by_week, "overdoses_reported", "week")
        weekly = {(w, "all"): row for w, row in weekly_totals.items()}
        sources = ["all"]
        shown_counties = [county]
    overall = {r["metric"]: r for r in overall_rows}
    charts = (
        overdoses_by_week(weeks, sources, weekly, weekly_totals),
        funnel(overall),
        first_attempt_by_month(
            months,
            _by(by_month, "first_attempt_within_24h", "month"),
            _by(by_month, "first_attempt_within_72h", "month"),
            _by(by_month, "median_hours_to_first_attempt", "month"),
            overall,
        ),
        supplies_by_month(
            months,
            _by(by_month, "naloxone_kits_distributed", "month"),
            _by(by_month, "test_strips_distributed", "month"),
        ),
        counties_heat_map(
            months,
            shown_counties,
            _by(by_month_county, "overdoses_reported", "month", "county"),
            _by(by_county, "overdoses_reported", "county"),
        ),
    )
    tiles = tuple(
        Tile(
            metric,
            label,
            str(overall[metric]["display"]) if metric in overall else "0",
            bool(overall[metric]["suppressed"]) if metric in overall else False,
        )
        for metric, label in TILES
    )
    return Board(
        program_id=program_id,
        filters=filters,
        as_of=as_of,
        threshold=rules.suppression_threshold,
        counties=counties,
        tiles=tiles,
        charts=charts,
    )


async def gather(
    sessions: async_sessionmaker[AsyncSession],
    rules: ProgramRules,
    filters: Filters,
    *,
    as_of: datetime,
) -> Board:
    """Measure what the board needs (three questions, side by side, each on its own
    connection) and assemble it: everything by month and county (Reporting I's `measure`),
    overdoses by week, and the medians of the groups the board shows them for."""
    scope = Scope(rules.program_id, filters.start, filters.end, as_of)
    county = filters.county is not None
    by_week, by_month, medians = await asyncio.gather(
        weekly_overdoses(sessions, scope, "county" if county else "source"),
        measure(sessions, scope, ("month", "county"), margins=True),
        first_attempt_medians(sessions, scope, "county" if county else "month"),
    )
    exact: tuple[tuple[Dimension, ...], ...] = (("county",),) if county else ((), ("month",))
    return assemble(
        by_week,
        by_month,
        {dims: _with_medians(by_month, dims, medians) for dims in exact},
        program_id=rules.program_id,
        filters=filters,
        as_of=as_of,
        rules=rules,
    )


def _with_medians(
    by_month: Levels,
    dims: tuple[Dimension, ...],
    medians: Mapping[tuple[Dimension, ...], Mapping[Key, float]],
) -> Levels:
    """The measures of a question by `dims` (with its margins) as `measure` would answer it:
    the margins of the question by month and county, which sum what adds up, and the medians
    of its own groups."""
    levels: Levels = {subset: dict(by_month.get(subset, {})) for subset in subsets(dims)}
    cells = levels[dims]
    for key, median in medians.get(dims, {}).items():
        cells[key] = {**cells.get(key, {}), FIRST_ATTEMPT_HOURS: median}
    return levels
