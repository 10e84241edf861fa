"""The board's two small questions to the read models, besides Reporting I's `measure` by
month and county (which the board asks as it is, for everything it shows by month, county
and for the period).

`measure` answers every measure of every metric; two of the board's questions need one each,
so they are asked here, for that measure only, with the same groups `measure` would give:

- `weekly_overdoses`: overdoses per week and source (or county), and the margins. The groups
  are every (week, source) that `measure` finds in the period in any of its tables (episodes,
  reports, referrals counted under an episode), even with no overdose: suppression decides on
  the whole line, zeros included, so the same groups give the same hidden figures.
- `first_attempt_medians`: the median hours to a first attempt for the period and each month
  (or each county), measured as cells of their own, as `GET /v1/metrics` measures a question
  by month (a margin's median is never taken). How many values each is of, and everything
  else, comes from the measure by month and county, whose margins are these groups.

tests/unit/test_dashboard_questions.py checks both against `measure` itself.

The board asks its questions through `board_sessions`: on PostgreSQL each of its transactions
sorts and groups in memory (`work_mem` BOARD_WORK_MEM; the default 4 MB spills a year's sorts
to disk) and without parallel workers (the board's questions already run side by side on
their own connections: workers only added CPU, a fifth of the database's time per page,
measured on a year of 1,000,000 events).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction

from services.reporting.metrics import METRICS_BY_ID
from services.reporting.models import EPISODE, REFERRAL, REPORT, Flag
from services.reporting.query import Dimension, Key, Levels, Scope, subsets

__all__ = [
    "BOARD_WORK_MEM",
    "FIRST_ATTEMPT_HOURS",
    "OVERDOSES",
    "board_sessions",
    "first_attempt_medians",
    "weekly_overdoses",
]


def _measure_of(metric_id: str) -> str:
    measure = METRICS_BY_ID[metric_id].measure
    assert measure is not None, metric_id
    return measure


OVERDOSES = _measure_of("overdoses_reported")
FIRST_ATTEMPT_HOURS = _measure_of("median_hours_to_first_attempt")

BOARD_WORK_MEM = "32MB"
"""A cap, not an allocation: a year of 1,000,000 events sorts in a few MB per statement."""

E = EPISODE.c


class _BoardSession(Session):
    """A read-only session of the board's (see `board_sessions`)."""


@event.listens_for(_BoardSession, "after_begin")
def _in_memory_and_serial(
    _session: Session, _transaction: SessionTransaction, connection: Connection
) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(
            f"SELECT set_config('work_mem', '{BOARD_WORK_MEM}', true), "
            "set_config('max_parallel_workers_per_gather', '0', true)"
        )


def board_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions on `engine` whose transactions (on PostgreSQL) sort in memory and run
    without parallel workers; for reading only (SET LOCAL: a transaction's own settings)."""
    return async_sessionmaker(
        engine, sync_session_class=_BoardSession, expire_on_commit=False, autoflush=False
    )


_COLUMN = {"source": "source_kind"}


def _column(table: sa.Table, dim: Dimension) -> sa.ColumnElement[Any]:
    return table.c[_COLUMN.get(dim, dim)]


def _in_scope(table: sa.Table, scope: Scope) -> sa.ColumnElement[bool]:
    return sa.and_(
        table.c.program_id == scope.program_id, table.c.day.between(scope.start, scope.end)
    )


def _has(flag: Flag) -> sa.ColumnElement[bool]:
    return E.flags.op("&")(int(flag)) != 0


async def _rows(
    sessions: async_sessionmaker[AsyncSession], statement: sa.Executable
) -> Sequence[Any]:
    async with sessions() as session:
        return list(await session.execute(statement))


async def weekly_overdoses(
    sessions: async_sessionmaker[AsyncSession], scope: Scope, by: Dimension
) -> Levels:
    """Overdoses by week and `by` (source or county), at every subset of the two."""
    dims: tuple[Dimension, ...] = ("week", by)
    overdoses = sa.func.sum(sa.case((_has(Flag.OVERDOSE), 1), else_=0))
    parts = [
        sa.select(E.week.label("week"), _column(EPISODE, by).label(by), overdoses.label("n"))
        .where(_in_scope(EPISODE, scope))
        .group_by(E.week, _column(EPISODE, by))
    ]
    for table, extra in (
        (REPORT, sa.true()),
        (REFERRAL, REFERRAL.c.episode_id.is_not(None)),
    ):
        parts.append(
            sa.select(table.c.week.label("week"), _column(table, by).label(by), sa.literal(0))
            .where(_in_scope(table, scope), extra)
            .distinct()
        )
    union = sa.union_all(*parts).subquery()
    statement = sa.select(union.c.week, union.c[by], sa.func.sum(union.c.n).label("n")).group_by(
        union.c.week, union.c[by]
    )
    cells: dict[Key, int] = {
        (row[0], row[1]): int(row[2] or 0) for row in await _rows(sessions, statement)
    }
    levels: Levels = {}
    for subset in subsets(dims):
        positions = [dims.index(d) for d in subset]
        level: dict[Key, dict[str, Any]] = {}
        for key, n in cells.items():
            outer = tuple(key[i] for i in positions)
            found = level.setdefault(outer, {OVERDOSES: 0})
            found[OVERDOSES] += n
        levels[subset] = level
    return levels


async def first_attempt_medians(
    sessions: async_sessionmaker[AsyncSession],
    scope: Scope,
    by: Dimension | None,
) -> dict[tuple[Dimension, ...], dict[Key, float]]:
    """The median hours to a first attempt for the period and by `by` (month or county; None:
    the period alone): the values `measure` takes its median of, each group on its own."""
    hours = E.first_attempt_hours
    where = sa.and_(_in_scope(EPISODE, scope), _has(Flag.TIMED_FIRST_ATTEMPT), hours.is_not(None))
    async with sessions() as probe:
        assert probe.bind is not None
        pg = probe.bind.dialect.name == "postgresql"
    found: dict[tuple[Dimension, ...], dict[Key, float]] = {(): {}}
    if by is not None:
        found[(by,)] = {}
    if pg:
        median = sa.func.percentile_cont(0.5).within_group(hours)
        if by is None:
            statement = sa.select(sa.literal(None).label("v"), sa.literal(1).label("g"), median)
        else:
            column = _column(EPISODE, by)
            statement = sa.select(
                column.label("v"), sa.func.grouping(column).label("g"), median
            ).group_by(sa.func.rollup(column))
        for value, whole, result in await _rows(sessions, statement.where(where)):
            if result is not None:
                level = () if whole else (by,)
                found[level][() if whole else (value,)] = float(result)  # type: ignore[index]
        return found
    # SQLite has no percentile_cont: the values themselves, as `measure` takes them there
    column = _column(EPISODE, by) if by is not None else sa.literal(None)
    values: dict[Any, list[float]] = {}
    for value, hour in await _rows(sessions, sa.select(column, hours).where(where)):
        values.setdefault(value, []).append(hour)
    everything = [v for group in values.values() for v in group]
    if everything:
        found[()][()] = statistics.median(everything)
    if by is not None:
        found[(by,)] = {(value,): statistics.median(group) for value, group in values.items()}
    return found
