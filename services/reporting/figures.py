"""From measures to published figures: one row per metric and group, suppressed unless the
internal view was asked for.

Groups: every period of the range for a time breakdown (a month without an overdose is a 0,
not a gap), every value seen in the range for county, source and partner, and every kind for
referral_kind. A two-way breakdown is every pair. Suppression is decided on each metric's
whole family of tables (the overall figure, each one-way table, the two-way table), as
`suppression.py` explains, so a figure hidden in one answer cannot be recovered from another.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

from services.reporting.facts import UNKNOWN
from services.reporting.metrics import METRICS, Metric
from services.reporting.programs import ProgramRules, periods_of
from services.reporting.query import (
    REFERRAL_KINDS,
    TIME_DIMENSIONS,
    Dimension,
    Key,
    Levels,
    subsets,
)
from services.reporting.suppression import (
    Hidden,
    is_primary,
    protect_cross,
    protect_line,
    unstable,
)

__all__ = ["Figures", "View", "build_figures", "group_label", "periods_between"]

View = Literal["published", "internal"]

Counts = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Figures:
    """The rows of an answer, and what they were computed for."""

    program_id: str
    start: date
    end: date
    dims: tuple[Dimension, ...]
    view: View
    as_of: datetime
    rules: ProgramRules
    rows: list[dict[str, Any]]
    metrics: tuple[Metric, ...]


def periods_between(dim: Dimension, start: date, end: date) -> list[date]:
    """The first day of every period of a kind that overlaps [start, end]."""
    first = getattr(periods_of(start), dim)
    found: list[date] = []
    current = first
    while current <= end:
        found.append(current)
        if dim == "day":
            current += timedelta(days=1)
        elif dim == "week":
            current += timedelta(days=7)
        else:
            step = 1 if dim == "month" else 3
            month = current.month - 1 + step
            current = date(current.year + month // 12, month % 12 + 1, 1)
    return found


def group_label(dim: Dimension, value: Any) -> str:
    if dim == "day":
        return str(value.isoformat())
    if dim == "week":
        year, week, _ = value.isocalendar()
        return f"{year}-W{week:02d}"
    if dim == "month":
        return f"{value.year}-{value.month:02d}"
    if dim == "quarter":
        return f"{value.year}-Q{(value.month - 1) // 3 + 1}"
    return str(value)


def _values(
    dim: Dimension, dims: tuple[Dimension, ...], levels: Levels, start: date, end: date
) -> list[Any]:
    if dim in TIME_DIMENSIONS:
        return periods_between(dim, start, end)
    if dim == "referral_kind":
        return list(REFERRAL_KINDS)
    position = dims.index(dim)
    seen = {key[position] for key in levels.get(dims, {})}
    return sorted(seen, key=lambda v: (v == UNKNOWN, str(v)))


def _applies(metric: Metric, dims: Sequence[Dimension]) -> bool:
    return metric.basis == "referrals" or "referral_kind" not in dims


def _count_names(metric: Metric) -> tuple[str | None, ...]:
    """The measures a metric's cell is made of (what suppression looks at)."""
    if metric.unit == "count":
        return (metric.measure,)
    if metric.unit == "rate":
        return (metric.numerator, metric.denominator)
    return (metric.denominator,)


_NO_MEASURES: dict[Any, Any] = {}


def _counts(
    names: tuple[str | None, ...], keys: Sequence[Key], measures: Sequence[dict[Any, Any]]
) -> dict[Key, Counts]:
    """Each group's counts (a missing measure is 0); made for every metric and level of an
    answer, so written as comprehensions."""
    if len(names) == 1:
        (name,) = names
        return dict(zip(keys, [(int(m.get(name) or 0),) for m in measures], strict=True))
    top, bottom = names
    return dict(
        zip(
            keys,
            [(int(m.get(top) or 0), int(m.get(bottom) or 0)) for m in measures],
            strict=True,
        )
    )


class _Family:
    """One metric's tables: the overall figure, the one-way tables and the two-way one."""

    def __init__(
        self,
        metric: Metric,
        keys: dict[tuple[Dimension, ...], list[Key]],
        measures: dict[tuple[Dimension, ...], list[dict[Any, Any]]],
    ) -> None:
        self.metric = metric
        names = _count_names(metric)
        self.cells: dict[tuple[Dimension, ...], dict[Key, Counts]] = {
            subset: _counts(names, subset_keys, measures[subset])
            for subset, subset_keys in keys.items()
        }

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
    metric_id, version = metric.id, metric.version
    rows: list[dict[str, Any]] = []
    for key, group in zip(keys, groups, strict=True):
        if hidden is not None and key in hidden:
            primary = key in hidden.primary
            rows.append(
                {
                    "metric": metric_id,
                    "version": version,
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
        measures = found.get(key) or _NO_MEASURES
        value: float | int | None
        numerator: int | None = None
        denominator: int | None = None
        if unit == "count":
            value = int(measures.get(measure) or 0)
            display = str(value)
            flagged = False
        elif unit == "rate":
            numerator = int(measures.get(top) or 0)
            denominator = int(measures.get(bottom) or 0)
            value = round(numerator / denominator, 4) if denominator else None
            display = "n/a" if value is None else f"{value * 100:.1f}%"
            flagged = value is not None and unstable(numerator, limit)
        else:
            denominator = int(measures.get(bottom) or 0)
            median = measures.get(measure) if denominator else None
            value = round(float(median), 1) if median is not None else None
            display = "n/a" if value is None else f"{value:.1f}"
            flagged = False
        rows.append(
            {
                "metric": metric_id,
                "version": version,
                "group": group,
                "value": value,
                "numerator": numerator,
                "denominator": denominator,
                "suppressed": False,
                "unstable": flagged,
                "display": display,
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
    measures = {}
    if view == "published":  # each group's measures, looked up once for every metric
        measures = {
            subset: [levels.get(subset, {}).get(k) or _NO_MEASURES for k in subset_keys]
            for subset, subset_keys in keys.items()
        }
    rows: list[dict[str, Any]] = []
    for metric in chosen:
        hidden = None
        if view == "published":
            hidden = _Family(metric, keys, measures).hidden(dims, rules.suppression_threshold)
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
