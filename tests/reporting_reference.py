"""Reporting I's answers as they were computed before the speed work of issue 15's second
round (query._combine, figures.build_figures and JSONResponse, at a4ccbfd): the oracle that
tests/unit/test_reporting_answers_equal.py and its PostgreSQL twin hold today's faster code
to, figure for figure and byte for byte. Plain code, not to be optimised: that is its point.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.reporting.figures import Figures, View, _applies, _values, group_label
from services.reporting.metrics import METRICS, Metric
from services.reporting.programs import ProgramRules
from services.reporting.query import (
    HOT_SPOT_SUMS,
    Dimension,
    Key,
    Levels,
    Measures,
    Scope,
    _jobs,
    _parameters,
    subsets,
)
from services.reporting.suppression import (
    Hidden,
    is_primary,
    protect_cross,
    protect_line,
    unstable,
)

Counts = tuple[int, ...]


async def measure(
    sessions: async_sessionmaker[AsyncSession],
    scope: Scope,
    dims: Sequence[Dimension],
    *,
    margins: bool,
) -> Levels:
    """Today's statements, one after the other, combined as before."""
    dims = tuple(dims)
    async with sessions() as session:
        assert session.bind is not None
        pg = session.bind.dialect.name == "postgresql"
        wanted = tuple(subsets(dims)) if margins else (dims,)
        many, cells = _jobs(dims, wanted, pg)
        parts = [
            job.read(list(await session.execute(job.statement, _parameters(scope))))
            for job in [*([many] if many else []), *cells]
        ]
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
    # what adds up of each cell, picked out once for all the margins
    addable = [
        (key, [(k, v) for k, v in values.items() if k not in _NOT_ADDED])
        for key, values in merged.items()
    ]
    for subset in wanted:
        if subset == dims:
            continue
        positions = [dims.index(d) for d in subset]
        margin: dict[Key, Measures] = {}
        for key, items in addable:
            outer = tuple(key[i] for i in positions)
            target = margin.get(outer)
            if target is None:
                margin[outer] = dict(items)
                continue
            for name, value in items:
                target[name] = target.get(name, 0) + value
        levels[subset] = margin
    for subset, groups in people_of_many.items():
        level = levels.setdefault(subset, {})
        for key, values in groups.items():
            target = level.setdefault(key, {})
            for name, value in values.items():
                target[name] = target.get(name, 0) + value
    return levels


def _number(measures: dict[str, Any] | None, name: str | None) -> int:
    if measures is None or name is None:
        return 0
    value = measures.get(name)
    return int(value) if value is not None else 0


def _counts(metric: Metric, measures: dict[str, Any] | None) -> Counts:
    if metric.unit == "count":
        return (_number(measures, metric.measure),)
    if metric.unit == "rate":
        return (_number(measures, metric.numerator), _number(measures, metric.denominator))
    return (_number(measures, metric.denominator),)


class _Family:
    """One metric's tables: the overall figure, the one-way tables and the two-way one."""

    def __init__(
        self, metric: Metric, levels: Levels, keys: dict[tuple[Dimension, ...], list[Key]]
    ) -> None:
        self.metric = metric
        self.cells: dict[tuple[Dimension, ...], dict[Key, Counts]] = {}
        for subset, subset_keys in keys.items():
            found = levels.get(subset, {})
            self.cells[subset] = {k: _counts(metric, found.get(k)) for k in subset_keys}

    def hidden(self, dims: tuple[Dimension, ...], threshold: int) -> Hidden:
        grand = self.cells[()][()]
        total_hidden = is_primary(grand, threshold)
        if not dims:
            return Hidden(frozenset([()] if total_hidden else []), frozenset())
        lines = {
            d: protect_line(
                {k[0]: v for k, v in self.cells[(d,)].items()},
                total_hidden=total_hidden,
                threshold=threshold,
            )
            for d in dims
        }
        if len(dims) == 1:
            line = lines[dims[0]]
            return Hidden(
                frozenset((k,) for k in line.primary), frozenset((k,) for k in line.complementary)
            )
        x, y = dims
        return protect_cross(
            self.cells[dims],
            rows=[k[0] for k in self.cells[(x,)]],
            columns=[k[0] for k in self.cells[(y,)]],
            rows_hidden=lines[x].all,
            columns_hidden=lines[y].all,
            total_hidden=total_hidden,
            threshold=threshold,
        )


def _display_number(unit: str, value: float | int | None) -> str:
    if value is None:
        return "n/a"
    if unit == "count":
        return str(int(value))
    if unit == "rate":
        return f"{value * 100:.1f}%"
    return f"{value:.1f}"


def _rows(
    metric: Metric,
    keys: Sequence[Key],
    groups: Sequence[dict[str, str]],
    found: dict[Key, Any],
    hidden: Hidden | None,
    rules: ProgramRules,
) -> list[dict[str, Any]]:
    """One metric's rows, one per group (made in one place: an answer has thousands)."""
    unit, measure, top, bottom = metric.unit, metric.measure, metric.numerator, metric.denominator
    small_display = f"<{rules.suppression_threshold}" if unit == "count" else "*"
    limit = rules.unstable_max
    rows: list[dict[str, Any]] = []
    for key, group in zip(keys, groups, strict=True):
        if hidden is not None and key in hidden:
            primary = key in hidden.primary
            rows.append(
                {
                    "metric": metric.id,
                    "version": metric.version,
                    "group": group,
                    "value": None,
                    "numerator": None,
                    "denominator": None,
                    "suppressed": True,
                    "unstable": False,
                    "display": small_display if primary else "*",
                }
            )
            continue
        measures = found.get(key) or {}
        value: float | int | None
        numerator: int | None = None
        denominator: int | None = None
        if unit == "count":
            value = int(measures.get(measure) or 0)
        elif unit == "rate":
            numerator = int(measures.get(top) or 0)
            denominator = int(measures.get(bottom) or 0)
            value = round(numerator / denominator, 4) if denominator else None
        else:
            denominator = int(measures.get(bottom) or 0)
            median = measures.get(measure) if denominator else None
            value = round(float(median), 1) if median is not None else None
        rows.append(
            {
                "metric": metric.id,
                "version": metric.version,
                "group": group,
                "value": value,
                "numerator": numerator,
                "denominator": denominator,
                "suppressed": False,
                "unstable": unit == "rate" and value is not None and unstable(numerator, limit),
                "display": _display_number(unit, value),
            }
        )
    return rows


def build_figures(
    levels: Levels,
    *,
    program_id: str,
    start: date,
    end: date,
    dims: Sequence[Dimension],
    view: View,
    as_of: datetime,
    rules: ProgramRules,
    metrics: Sequence[Metric] = METRICS,
) -> Figures:
    dims = tuple(dims)
    values = {d: _values(d, dims, levels, start, end) for d in dims}
    labels = {d: {v: group_label(d, v) for v in values[d]} for d in dims}
    measured = subsets(dims) if view == "published" else [dims]
    keys = {
        subset: [tuple(k) for k in itertools.product(*(values[d] for d in subset))]
        for subset in measured
    }
    groups = [{str(d): labels[d][v] for d, v in zip(dims, key, strict=True)} for key in keys[dims]]
    chosen = tuple(m for m in metrics if _applies(m, dims))
    found = levels.get(dims, {})
    rows: list[dict[str, Any]] = []
    for metric in chosen:
        hidden = None
        if view == "published":
            hidden = _Family(metric, levels, keys).hidden(dims, rules.suppression_threshold)
        rows.extend(_rows(metric, keys[dims], groups, found, hidden, rules))
    return Figures(
        program_id=program_id,
        start=start,
        end=end,
        dims=dims,
        view=view,
        as_of=as_of,
        rules=rules,
        rows=rows,
        metrics=chosen,
    )
