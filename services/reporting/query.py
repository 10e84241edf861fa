"""The measures behind the metrics, per group of the breakdowns asked for, and their margins.

A request by month and county needs more than its cells when it is published: suppression
must know the margins a reader can see (the figures by month, by county, and for the whole
period, which are other answers of the same API). So a published answer is measured at every
subset of its breakdowns; an internal one only at its own.

How it stays fast on a year of a large program:

- Each episode's conditions are one integer (`rpt_episode.flags`, kept by the database), to
  which a query adds the few that depend on the moment of the question. Episodes are grouped
  by it first, so the database evaluates nothing per row and figure; the figures come from
  the few groups.
- Counts that add up (episodes, reports, referrals, kits, and people with a single episode)
  are measured for the cells only; their margins are sums, made here.
- People with more than one episode are the only ones who could be counted twice in a
  margin: they are grouped per person (GROUPING SETS on PostgreSQL; in Python on SQLite),
  a small share of the rows.
- Medians are taken for the cells only (a margin's median is never shown; its count is).
- On PostgreSQL the queries run side by side, each on its own connection.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal, get_args

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.reporting.models import EPISODE, HOT_SPOT, REFERRAL, REPORT, Flag
from shared.db import UTCDateTime
from shared.events.outreach import ReferralKind

__all__ = [
    "DIMENSIONS",
    "REFERRAL_KINDS",
    "TIME_DIMENSIONS",
    "Dimension",
    "Key",
    "Levels",
    "Scope",
    "measure",
    "subsets",
]

Dimension = Literal[
    "day", "week", "month", "quarter", "county", "source", "partner", "referral_kind"
]
DIMENSIONS: tuple[Dimension, ...] = get_args(Dimension)
TIME_DIMENSIONS: tuple[Dimension, ...] = ("day", "week", "month", "quarter")
REFERRAL_KINDS: tuple[str, ...] = get_args(ReferralKind)

Key = tuple[Any, ...]
"""A group: the values of its breakdowns, in the order asked for (dates for periods)."""
Measures = dict[str, Any]
Levels = dict[tuple[Dimension, ...], dict[Key, Measures]]
"""For each subset of the breakdowns measured, each group's measures."""

EPISODE_COUNTS: dict[str, Flag] = {
    "overdoses": Flag.OVERDOSE,
    "deaths": Flag.DEATH,
    "consent_declined": Flag.DECLINED_AT_SCENE,
    "first_attempt_n": Flag.TIMED_FIRST_ATTEMPT,
}
"""Measures that count episodes."""
EPISODE_SUMS = ("visits_completed", "naloxone_kits", "test_strips")
PEOPLE: dict[str, Flag] = {
    "people_referred": Flag.ALIVE,
    "people_with_task": Flag.TASK,
    "people_attempted": Flag.ATTEMPTED,
    "people_task_attempted": Flag.TASK_ATTEMPTED,
    "people_reached": Flag.REACHED,
    "people_engaged": Flag.ENGAGED,
    "people_declined_outreach": Flag.DECLINED_OUTREACH,
    "do_not_contact": Flag.DO_NOT_CONTACT,
    "first24_den": Flag.DUE_24H,
    "first24_num": Flag.FIRST_24H,
    "first72_den": Flag.DUE_72H,
    "first72_num": Flag.FIRST_72H,
    "repeat30_den": Flag.PASSED_30D,
    "repeat30_num": Flag.REPEAT_30D,
    "repeat90_den": Flag.PASSED_90D,
    "repeat90_num": Flag.REPEAT_90D,
}
"""Measures that count people: a person counts once per group if any of their episodes of
the group has the flag."""


@dataclass(frozen=True, slots=True)
class Scope:
    program_id: str
    start: date
    end: date
    """Both included: incident dates on the program's clock."""
    as_of: datetime
    """Now: follow-up windows that have not passed by then are left out (right-censoring)."""


def subsets(dims: Sequence[Dimension]) -> list[tuple[Dimension, ...]]:
    """Every subset of the breakdowns, keeping their order: the cells and their margins."""
    return [
        tuple(d for d, keep in zip(dims, mask, strict=True) if keep)
        for mask in itertools.product((True, False), repeat=len(dims))
    ]


E = EPISODE.c
R = REPORT.c
F = REFERRAL.c
_GROUP_COLUMN = {"source": "source_kind", "partner": "source_org", "referral_kind": "kind"}

# The parameters of every statement: statements are built once per shape of question (and
# cached), then run with these.
_PROGRAM = sa.bindparam("program", type_=sa.String())
_START = sa.bindparam("start", type_=sa.Date())
_END = sa.bindparam("end", type_=sa.Date())
_PASSED = {
    "due24": sa.bindparam("due24", type_=UTCDateTime()),
    "due72": sa.bindparam("due72", type_=UTCDateTime()),
    "old30": sa.bindparam("old30", type_=UTCDateTime()),
    "old90": sa.bindparam("old90", type_=UTCDateTime()),
}


def _parameters(scope: Scope) -> dict[str, Any]:
    return {
        "program": scope.program_id,
        "start": scope.start,
        "end": scope.end,
        "due24": scope.as_of - timedelta(hours=24),
        "due72": scope.as_of - timedelta(hours=72),
        "old30": scope.as_of - timedelta(days=30),
        "old90": scope.as_of - timedelta(days=90),
    }


def _column(table: sa.Table, dim: Dimension) -> sa.ColumnElement[Any]:
    return table.c[_GROUP_COLUMN.get(dim, dim)]


def _has(value: sa.ColumnElement[int], flag: Flag) -> sa.ColumnElement[bool]:
    return value.op("&")(int(flag)) != 0


def _flags() -> sa.ColumnElement[int]:
    """An episode's flags with those of the moment of the question added."""
    windows_from = sa.func.coalesce(E.windows_from, E.incident_at)
    added: list[tuple[sa.ColumnElement[bool], Flag]] = []
    for passed, due, within in (
        ("due24", Flag.DUE_24H, Flag.FIRST_24H),
        ("due72", Flag.DUE_72H, Flag.FIRST_72H),
    ):
        elapsed = windows_from <= _PASSED[passed]
        added.append((_has(E.flags, Flag.REMOTE) & (elapsed | _has(E.flags, within)), due))
    for passed, passed_flag, repeat, again in (
        ("old30", Flag.PASSED_30D, Flag.REPEAT_30D, Flag.AGAIN_30D),
        ("old90", Flag.PASSED_90D, Flag.REPEAT_90D, Flag.AGAIN_90D),
    ):
        old = _has(E.flags, Flag.OVERDOSE) & (E.incident_at <= _PASSED[passed])
        added.append((old, passed_flag))
        added.append((old & _has(E.flags, again), repeat))
    value: sa.ColumnElement[int] = E.flags
    for condition, flag in added:
        value = value + sa.case((condition, int(flag)), else_=0)
    return value


def _in_scope(table: sa.Table) -> sa.ColumnElement[bool]:
    return sa.and_(table.c.program_id == _PROGRAM, table.c.day.between(_START, _END))


def _total(value: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
    """A sum as a whole number: PostgreSQL sums a bigint as numeric, which the driver would
    hand back as Decimal, slower to read and to add up than an int, for the same figure."""
    return sa.cast(sa.func.sum(value), sa.BigInteger)


def _count_if(flags: sa.ColumnElement[int], flag: Flag, n: sa.ColumnElement[int]) -> Any:
    return _total(sa.case((_has(flags, flag), n), else_=0))


def _flag(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.case((condition, 1), else_=0)


def _key(row: Any, dims: Sequence[str]) -> Key:
    mapping = row._mapping
    return tuple(mapping[d] for d in dims)


Reader = Callable[[Sequence[Any]], Levels]


@dataclass(frozen=True)
class _Job:
    """A statement and how its rows become measures."""

    statement: sa.Executable
    read: Reader


def _cells(dims: tuple[Dimension, ...], names: Sequence[str]) -> Reader:
    def read(rows: Sequence[Any]) -> Levels:
        cells: dict[Key, Measures] = {}
        for row in rows:
            mapping = row._mapping
            cells[tuple(mapping[d] for d in dims)] = {k: mapping[k] or 0 for k in names}
        return {dims: cells}

    return read


# -- the statements --------------------------------------------------------------------------


def _episodes(dims: tuple[Dimension, ...]) -> _Job:
    """Episode counts and sums, and people with a single episode, for the cells: grouped by
    flags first, then the figures from the (few) groups."""
    flags = _flags()
    grouped = (
        sa.select(
            *[_column(EPISODE, d).label(d) for d in dims],
            flags.label("f"),
            sa.func.count().label("n"),
            *[sa.func.sum(E[s]).label(s) for s in EPISODE_SUMS],
        )
        .where(_in_scope(EPISODE))
        .group_by(*[_column(EPISODE, d) for d in dims], flags)
        .subquery()
    )
    f, n = grouped.c.f, grouped.c.n
    alone = f.op("&")(int(Flag.NAMED | Flag.MULTI)) == int(Flag.NAMED)
    statement = sa.select(
        *[grouped.c[d] for d in dims],
        *[_count_if(f, flag, n).label(name) for name, flag in EPISODE_COUNTS.items()],
        *[_total(grouped.c[s]).label(s) for s in EPISODE_SUMS],
        *[
            _total(sa.case((alone & _has(f, flag), n), else_=0)).label(name)
            for name, flag in PEOPLE.items()
        ],
    ).group_by(*[grouped.c[d] for d in dims])
    return _Job(statement, _cells(dims, [*EPISODE_COUNTS, *EPISODE_SUMS, *PEOPLE]))


def _grouping_id(subset: Sequence[Dimension], dims: Sequence[Dimension]) -> int:
    """What GROUPING(dims...) answers for the grouping set of `subset`."""
    return sum(1 << (len(dims) - 1 - i) for i, d in enumerate(dims) if d not in subset)


def _people_of_many(
    dims: tuple[Dimension, ...], wanted: tuple[tuple[Dimension, ...], ...], pg: bool
) -> _Job:
    """People with more than one episode, counted once per group of each level wanted."""
    columns = [_column(EPISODE, d) for d in dims]
    flags = _flags()
    where = sa.and_(_in_scope(EPISODE), _has(E.flags, Flag.MULTI))
    if not pg:
        # SQLite has no OR aggregate: the rows themselves (a small share), grouped here.
        def read_rows(rows: Sequence[Any]) -> Levels:
            levels: Levels = {}
            for subset in wanted:
                people: dict[tuple[Key, Any], int] = {}
                for row in rows:
                    slot = (_key(row, subset), row.person_id)
                    people[slot] = people.get(slot, 0) | row.f
                groups = levels.setdefault(subset, {})
                for (key, _person), value in people.items():
                    target = groups.setdefault(key, dict.fromkeys(PEOPLE, 0))
                    for name, flag in PEOPLE.items():
                        if value & flag:
                            target[name] += 1
            return levels

        statement = sa.select(
            *[c.label(d) for c, d in zip(columns, dims, strict=True)],
            E.person_id,
            flags.label("f"),
        ).where(where)
        return _Job(statement, read_rows)

    sets = [sa.tuple_(*[_column(EPISODE, d) for d in s], E.person_id) for s in wanted]
    grouping = sa.func.grouping(*columns) if columns else sa.literal(0)
    per_person = (
        sa.select(
            *[c.label(d) for c, d in zip(columns, dims, strict=True)],
            grouping.label("g"),
            E.person_id,
            sa.func.bit_or(flags).label("f"),
        )
        .where(where)
        .group_by(sa.func.grouping_sets(*sets))
        .subquery()
    )
    per_flags = (
        sa.select(
            *[per_person.c[d] for d in dims],
            per_person.c.g,
            per_person.c.f,
            sa.func.count().label("n"),
        )
        .group_by(per_person.c.g, per_person.c.f, *[per_person.c[d] for d in dims])
        .subquery()
    )
    statement = sa.select(
        *[per_flags.c[d] for d in dims],
        per_flags.c.g,
        *[
            _count_if(per_flags.c.f, flag, per_flags.c.n).label(name)
            for name, flag in PEOPLE.items()
        ],
    ).group_by(per_flags.c.g, *[per_flags.c[d] for d in dims])
    by_id = {_grouping_id(s, dims): s for s in wanted}

    def read(rows: Sequence[Any]) -> Levels:
        levels: Levels = {}
        for row in rows:
            subset = by_id[row.g]
            mapping = row._mapping
            levels.setdefault(subset, {})[_key(row, subset)] = {k: mapping[k] or 0 for k in PEOPLE}
        return levels

    return _Job(statement, read)


def _median(
    dims: tuple[Dimension, ...],
    table: sa.Table,
    value: sa.ColumnElement[float],
    where: sa.ColumnElement[bool],
    name: str,
    pg: bool,
) -> _Job:
    """The median of `value` in each cell."""
    columns = [_column(table, d).label(d) for d in dims]
    where = sa.and_(where, value.is_not(None))
    if pg:
        statement = (
            sa.select(*columns, sa.func.percentile_cont(0.5).within_group(value).label(name))
            .where(where)
            .group_by(*[_column(table, d) for d in dims])
        )
        return _Job(statement, _cells(dims, [name]))

    def read(rows: Sequence[Any]) -> Levels:
        found: dict[Key, list[float]] = {}
        for row in rows:
            found.setdefault(_key(row, dims), []).append(row.v)
        return {dims: {k: {name: statistics.median(v)} for k, v in found.items()}}

    return _Job(sa.select(*columns, value.label("v")).where(where), read)


def _sums(
    dims: tuple[Dimension, ...],
    table: sa.Table,
    sums: dict[str, sa.ColumnElement[Any]],
    where: sa.ColumnElement[bool],
    medians: dict[str, sa.ColumnElement[float]] | None = None,
) -> _Job:
    """Sums per cell; on PostgreSQL also `medians` of the same rows, in the same scan
    (percentile_cont skips nulls, as `_median` does; a cell whose values are all null gets
    0, where only a count of 0 values is ever shown)."""
    medians = medians or {}
    statement = (
        sa.select(
            *[_column(table, d).label(d) for d in dims],
            *[_total(v).label(k) for k, v in sums.items()],
            *[sa.func.percentile_cont(0.5).within_group(v).label(k) for k, v in medians.items()],
        )
        .where(where)
        .group_by(*[_column(table, d) for d in dims])
    )
    return _Job(statement, _cells(dims, [*sums, *medians]))


HOT_SPOT_SUMS = ("naloxone_kits", "test_strips")
"""Measures that hot-spot outreach adds to (what was distributed where a county's overdoses
spiked, by the conclusion's date and the hot spot's county)."""


def _hot_spots(dims: tuple[Dimension, ...]) -> tuple[_Job, ...]:
    """Hot-spot distribution per cell, its measures named `hot_spot_<measure>` (`_combine`
    adds them to the episodes'). It followed no report: not in a breakdown by source or
    partner."""
    if any(d not in (*TIME_DIMENSIONS, "county") for d in dims):
        return ()
    sums: dict[str, sa.ColumnElement[Any]] = {
        f"hot_spot_{name}": HOT_SPOT.c[name] for name in HOT_SPOT_SUMS
    }
    return (_sums(dims, HOT_SPOT, sums, _in_scope(HOT_SPOT)),)


@functools.cache
def _jobs(
    dims: tuple[Dimension, ...], wanted: tuple[tuple[Dimension, ...], ...], pg: bool
) -> tuple[_Job | None, tuple[_Job, ...]]:
    """The statements for a shape of question: people of many episodes (per level), and the
    cells of everything else."""
    referrals = _sums(
        dims,
        REFERRAL,
        {
            "referrals": sa.literal(1),
            "referrals_warm": _flag(F.warm_handoff),
            "referrals_care_started": _flag(F.care_started),
        },
        sa.and_(_in_scope(REFERRAL), F.episode_id.is_not(None)),
    )
    if "referral_kind" in dims:
        return None, (referrals,)
    late = sa.func.coalesce(R.late_by_policy, R.late_by_age, sa.false())
    timed = sa.and_(_in_scope(EPISODE), _has(E.flags, Flag.TIMED_FIRST_ATTEMPT))
    report_sums: dict[str, sa.ColumnElement[Any]] = {
        "reports": sa.literal(1),
        "reports_late": _flag(late),
        "reports_with_lag": _flag(R.lag_hours.is_not(None)),
    }
    if pg:  # the reports' sums and their median lag in one scan
        reports = [
            _sums(dims, REPORT, report_sums, _in_scope(REPORT), {"report_lag_hours": R.lag_hours})
        ]
    else:
        reports = [
            _sums(dims, REPORT, report_sums, _in_scope(REPORT)),
            _median(dims, REPORT, R.lag_hours, _in_scope(REPORT), "report_lag_hours", pg),
        ]
    # In this order `measure` deals them, with people of many episodes first, alternately to
    # two connections: the two heaviest scans (people of many episodes, the episodes' counts)
    # go to different ones, and each gets about half of the database's work.
    return _people_of_many(dims, wanted, pg), (
        _episodes(dims),
        _median(dims, EPISODE, E.first_attempt_hours, timed, "first_attempt_hours", pg),
        *reports,
        *_hot_spots(dims),
        referrals,
    )


async def measure(
    sessions: async_sessionmaker[AsyncSession],
    scope: Scope,
    dims: Sequence[Dimension],
    *,
    margins: bool,
) -> Levels:
    """Every measure of every metric per cell; with `margins`, at every subset of `dims`
    too (what suppression needs)."""
    dims = tuple(dims)
    async with sessions() as probe:
        assert probe.bind is not None
        pg = probe.bind.dialect.name == "postgresql"
    wanted = tuple(subsets(dims)) if margins else (dims,)
    many, cells = _jobs(dims, wanted, pg)
    jobs = [*([many] if many else []), *cells]
    parameters = _parameters(scope)

    async def run(lane: Sequence[_Job]) -> list[Levels]:
        async with sessions() as session:
            return [
                job.read(list(await session.execute(job.statement, parameters))) for job in lane
            ]

    parts: list[Levels] = []
    if pg:  # two connections side by side: the database has the cores for both
        first, second = await asyncio.gather(run(jobs[0::2]), run(jobs[1::2]))
        parts = [{}] * len(jobs)
        parts[0::2], parts[1::2] = first, second
    else:
        parts = await run(jobs)
    people_of_many = parts.pop(0) if many else {}
    return _combine(parts, people_of_many, dims, wanted)


_NOT_ADDED = frozenset({"first_attempt_hours", "report_lag_hours"})
"""Medians: a margin's median is never shown (only how many values it is of, which adds)."""


def _combine(
    cells: Iterable[Levels],
    people_of_many: Levels,
    dims: tuple[Dimension, ...],
    wanted: Sequence[tuple[Dimension, ...]],
) -> Levels:
    """The parts together. Margins of what adds up are sums of the cells; people with more
    than one episode were counted per level, and are added last."""
    merged: dict[Key, Measures] = {}
    for part in cells:
        for key, values in part.get(dims, {}).items():
            target = merged.get(key)
            if target is None:
                merged[key] = dict(values)
            else:
                target.update(values)  # the parts measure different things
    for values in merged.values():  # hot-spot distribution adds to the services
        for name in HOT_SPOT_SUMS:
            extra = values.pop(f"hot_spot_{name}", 0)
            if extra:
                values[name] = (values.get(name) or 0) + extra
    levels: Levels = {dims: merged}
    # What adds up of each cell, as a row of values under a tuple of names (cells from the
    # same parts share one): a margin's figures are then column sums of such rows.
    addable: list[tuple[Key, tuple[str, ...], tuple[Any, ...]]] = []
    for key, values in merged.items():
        names = tuple(k for k in values if k not in _NOT_ADDED)
        addable.append((key, names, tuple(values[k] for k in names)))
    for subset in wanted:
        if subset == dims:
            continue
        positions = [dims.index(d) for d in subset]
        grouped: dict[tuple[Key, tuple[str, ...]], list[tuple[Any, ...]]] = {}
        for key, names, row in addable:
            outer = tuple(key[i] for i in positions)
            grouped.setdefault((outer, names), []).append(row)
        margin: dict[Key, Measures] = {}
        for (outer, names), rows in grouped.items():
            sums = rows[0] if len(rows) == 1 else map(sum, zip(*rows, strict=True))
            target = margin.get(outer)
            if target is None:
                margin[outer] = dict(zip(names, sums, strict=True))
                continue
            for name, value in zip(names, sums, strict=True):
                target[name] = target.get(name, 0) + value
        levels[subset] = margin
    for subset, groups in people_of_many.items():
        level = levels.setdefault(subset, {})
        for key, values in groups.items():
            target = level.setdefault(key, {})
            for name, value in values.items():
                target[name] = target.get(name, 0) + value
    return levels
