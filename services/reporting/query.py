"""The measures behind the metrics, grouped by the breakdowns asked for and all their margins.

A request by month and county needs more than its cells: suppression must know the margins a
reader can see (the figures by month, by county, and for the whole period), which are other
answers of the same API. So every request is measured at each subset of its breakdowns. On
PostgreSQL that is one scan per basis (GROUP BY GROUPING SETS); on SQLite one query per subset.

People are counted once per group: the episodes of a group are first grouped per person, and
a person counts if any of their episodes of the group does (a person with two overdoses in a
month counts once in that month, and once in each of two months).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal, get_args

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.reporting.models import EPISODE, REFERRAL, REPORT
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
Measures = dict[str, float | int | None]
Levels = dict[tuple[Dimension, ...], dict[Key, Measures]]
"""For each subset of the breakdowns (the margins included), each group's measures."""


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


def _flag(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.case((condition, 1), else_=0)


def _episode_columns(dim: Dimension) -> sa.ColumnElement[Any]:
    column = {"source": "source_kind", "partner": "source_org"}.get(dim, dim)
    return E[column]


def _report_columns(dim: Dimension) -> sa.ColumnElement[Any]:
    column = {"source": "source_kind", "partner": "source_org"}.get(dim, dim)
    return R[column]


def _referral_columns(dim: Dimension) -> sa.ColumnElement[Any]:
    if dim == "referral_kind":
        return REFERRAL.c.kind
    return _episode_columns(dim)


def _at(when: datetime) -> sa.ColumnElement[datetime]:
    return sa.literal(when, UTCDateTime())


def _episode_sums() -> dict[str, sa.ColumnElement[Any]]:
    """Measures that add up over episodes."""
    return {
        "overdoses": _flag(E.overdose & ~E.fatal),
        "deaths": _flag(E.overdose & E.fatal),
        "consent_declined": _flag(E.consent_declined),
        "visits_completed": E.visits_completed,
        "naloxone_kits": E.naloxone_kits,
        "test_strips": E.test_strips,
    }


def _person_flags(as_of: datetime) -> dict[str, sa.ColumnElement[bool]]:
    """Measures that count people: a person counts if any of their episodes does."""
    windows_from = sa.func.coalesce(E.windows_from, E.incident_at)
    attempted = E.first_attempt_at.is_not(None)
    flags: dict[str, sa.ColumnElement[bool]] = {
        "people_referred": ~E.fatal,
        "people_with_task": E.outreach_task,
        "people_attempted": attempted,
        "people_task_attempted": E.outreach_task & attempted,
        "people_reached": E.reached_at.is_not(None),
        "people_engaged": E.engaged,
        "people_declined_outreach": E.declined_outreach,
        "do_not_contact": E.do_not_contact,
    }
    for hours in (24, 72):
        within = E.first_attempt_hours <= hours
        passed = windows_from <= _at(as_of - timedelta(hours=hours))
        flags[f"first{hours}_den"] = E.remote_task & (passed | within)
        flags[f"first{hours}_num"] = E.remote_task & within
    for days in (30, 90):
        eligible = E.overdose & ~E.fatal & (E.incident_at <= _at(as_of - timedelta(days=days)))
        flags[f"repeat{days}_den"] = eligible
        flags[f"repeat{days}_num"] = eligible & (E.next_overdose_hours <= days * 24)
    return flags


def _grouping_id(subset: Sequence[Dimension], dims: Sequence[Dimension]) -> int:
    """What GROUPING(dims...) answers for the grouping set of `subset`."""
    return sum(1 << (len(dims) - 1 - i) for i, d in enumerate(dims) if d not in subset)


def _grouping(columns: Sequence[sa.ColumnElement[Any]]) -> sa.ColumnElement[int]:
    if not columns:
        return sa.literal(0)
    return sa.func.grouping(*columns)


class _Collector:
    """Puts the rows of one (grouping-sets or per-subset) query into `Levels`."""

    def __init__(self, levels: Levels, dims: Sequence[Dimension]) -> None:
        self._levels = levels
        self._dims = tuple(dims)
        self._by_id = {_grouping_id(s, dims): s for s in subsets(dims)}

    def add(
        self, row: Any, names: Iterable[str], subset: tuple[Dimension, ...] | None = None
    ) -> None:
        mapping = row._mapping
        chosen = subset if subset is not None else self._by_id[mapping["g"]]
        key = tuple(mapping[d] for d in chosen)
        target = self._levels.setdefault(chosen, {}).setdefault(key, {})
        for name in names:
            target[name] = mapping[name]


def _in_scope(
    column_day: sa.ColumnElement[date], program: sa.ColumnElement[str], scope: Scope
) -> sa.ColumnElement[bool]:
    return sa.and_(program == scope.program_id, column_day.between(scope.start, scope.end))


async def _episodes(
    session: AsyncSession, scope: Scope, dims: Sequence[Dimension], levels: Levels, pg: bool
) -> None:
    """Episode sums, and people counted once per group (grouped per person first)."""
    sums, flags = _episode_sums(), _person_flags(scope.as_of)
    columns = [_episode_columns(d) for d in dims]
    names = [*sums, *flags]
    collect = _Collector(levels, dims)

    def per_person(labels: Sequence[sa.ColumnElement[Any]], *group_by: Any) -> sa.Subquery:
        return (
            sa.select(
                *[c.label(d) for c, d in zip(labels, dims, strict=True)],
                (_grouping(columns) if pg else sa.literal(0)).label("g"),
                E.person_id,
                *[sa.func.sum(v).label(k) for k, v in sums.items()],
                *[sa.func.max(_flag(v)).label(k) for k, v in flags.items()],
            )
            .where(_in_scope(E.day, E.program_id, scope))
            .group_by(*group_by)
            .subquery()
        )

    def per_group(sub: sa.Subquery) -> sa.Select[Any]:
        named = sub.c.person_id.is_not(None)  # a report without a name is nobody to count
        return sa.select(
            *[sub.c[d] for d in dims],
            sub.c.g,
            *[sa.func.sum(sub.c[k]).label(k) for k in sums],
            *[sa.func.sum(sa.case((named, sub.c[k]), else_=0)).label(k) for k in flags],
        ).group_by(sub.c.g, *[sub.c[d] for d in dims])

    if pg:
        sets = [sa.tuple_(*[_episode_columns(d) for d in s], E.person_id) for s in subsets(dims)]
        for row in await session.execute(
            per_group(per_person(columns, sa.func.grouping_sets(*sets)))
        ):
            collect.add(row, names)
        return
    for subset in subsets(dims):
        labels = [c if d in subset else sa.null() for c, d in zip(columns, dims, strict=True)]
        group_by = [*(_episode_columns(d) for d in subset), E.person_id]
        for row in await session.execute(per_group(per_person(labels, *group_by))):
            collect.add(row, names, subset)


async def _grouped(
    session: AsyncSession,
    levels: Levels,
    dims: Sequence[Dimension],
    *,
    columns: Sequence[sa.ColumnElement[Any]],
    sums: dict[str, sa.ColumnElement[Any]],
    median: tuple[str, str, sa.ColumnElement[float]] | None,
    source: Any,
    where: sa.ColumnElement[bool],
    pg: bool,
) -> None:
    """Plain sums (and a median with its count of values) per group, at every subset."""
    collect = _Collector(levels, dims)
    aggregates = [sa.func.sum(v).label(k) for k, v in sums.items()]
    names = list(sums)
    if median is not None:
        name, count, value = median
        names.append(count)
        aggregates.append(sa.func.count(value).label(count))
    labelled = [c.label(d) for c, d in zip(columns, dims, strict=True)]
    if pg:
        if median is not None:
            aggregates.append(sa.func.percentile_cont(0.5).within_group(median[2]).label(median[0]))
            names.append(median[0])
        sets = [sa.tuple_(*[columns[dims.index(d)] for d in s]) for s in subsets(dims)]
        query = (
            sa.select(*labelled, _grouping(columns).label("g"), *aggregates)
            .select_from(source)
            .where(where)
            .group_by(sa.func.grouping_sets(*sets))
        )
        for row in await session.execute(query):
            collect.add(row, names)
        return
    for subset in subsets(dims):
        part = [c if d in subset else sa.null() for c, d in zip(columns, dims, strict=True)]
        query = (
            sa.select(*[c.label(d) for c, d in zip(part, dims, strict=True)], *aggregates)
            .select_from(source)
            .where(where)
            .group_by(*[columns[dims.index(d)] for d in subset])
        )
        for row in await session.execute(query):
            collect.add(row, names, subset)
    if median is not None:
        # SQLite has no percentile: the values themselves, a median per group here.
        name, _count, value = median
        values: dict[tuple[Dimension, ...], dict[Key, list[float]]] = {}
        query = (
            sa.select(*labelled, value.label("value"))
            .select_from(source)
            .where(sa.and_(where, value.is_not(None)))
        )
        for row in await session.execute(query):
            for subset in subsets(dims):
                key = tuple(row._mapping[d] for d in subset)
                values.setdefault(subset, {}).setdefault(key, []).append(row.value)
        for subset, groups in values.items():
            for key, found in groups.items():
                levels.setdefault(subset, {}).setdefault(key, {})[name] = statistics.median(found)


async def measure(session: AsyncSession, scope: Scope, dims: Sequence[Dimension]) -> Levels:
    """Every measure of every metric, per group, at every subset of `dims`."""
    assert session.bind is not None
    pg = session.bind.dialect.name == "postgresql"
    levels: Levels = {}
    dims = tuple(dims)
    if "referral_kind" not in dims:
        await _episodes(session, scope, dims, levels, pg)
        await _grouped(
            session,
            levels,
            dims,
            columns=[_episode_columns(d) for d in dims],
            sums={},
            median=("first_attempt_hours", "first_attempt_n", E.first_attempt_hours),
            source=EPISODE,
            where=sa.and_(
                _in_scope(E.day, E.program_id, scope),
                E.remote_task,
                E.first_attempt_hours.is_not(None),
            ),
            pg=pg,
        )
        late = sa.func.coalesce(R.late_by_policy, R.late_by_age, sa.false())
        await _grouped(
            session,
            levels,
            dims,
            columns=[_report_columns(d) for d in dims],
            sums={"reports": sa.literal(1), "reports_late": _flag(late)},
            median=("report_lag_hours", "reports_with_lag", R.lag_hours),
            source=REPORT,
            where=_in_scope(R.day, R.program_id, scope),
            pg=pg,
        )
    await _grouped(
        session,
        levels,
        dims,
        columns=[_referral_columns(d) for d in dims],
        sums={
            "referrals": sa.literal(1),
            "referrals_warm": _flag(REFERRAL.c.warm_handoff),
            "referrals_care_started": _flag(REFERRAL.c.care_started),
        },
        median=None,
        source=REFERRAL.join(EPISODE, EPISODE.c.episode_id == REFERRAL.c.episode_id),
        where=_in_scope(E.day, E.program_id, scope),
        pg=pg,
    )
    return levels
