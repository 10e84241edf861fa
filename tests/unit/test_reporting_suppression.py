"""Small-cell suppression, over random tables (hypothesis).

The property that matters: a reader holding every answer of a family (the figure for the whole
period, each one-way table and the two-way table) cannot work out any hidden figure exactly
by adding and subtracting rows, columns and totals. It is checked with exact linear algebra:
a hidden figure is determined exactly when removing it from the system of row and column
equations lowers the system's rank.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.reporting.figures import build_figures
from services.reporting.metrics import METRICS_BY_ID
from services.reporting.programs import ProgramRules
from services.reporting.query import Levels
from services.reporting.suppression import (
    bridges,
    is_primary,
    protect_cross,
    protect_line,
    unstable,
)

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def rules(threshold: int = 10) -> ProgramRules:
    return ProgramRules("demo", "America/New_York", threshold, 20)


# -- exact linear algebra --------------------------------------------------------------------


def _rank(rows: list[list[Fraction]]) -> int:
    matrix = [list(r) for r in rows if any(r)]
    rank, columns = 0, len(matrix[0]) if matrix else 0
    for column in range(columns):
        pivot = next((i for i in range(rank, len(matrix)) if matrix[i][column] != 0), None)
        if pivot is None:
            continue
        matrix[rank], matrix[pivot] = matrix[pivot], matrix[rank]
        for i in range(len(matrix)):
            if i != rank and matrix[i][column] != 0:
                factor = matrix[i][column] / matrix[rank][column]
                matrix[i] = [a - factor * b for a, b in zip(matrix[i], matrix[rank], strict=True)]
        rank += 1
    return rank


def determined(equations: Sequence[Sequence[object]], unknown: set[object]) -> set[object]:
    """The unknowns that the equations (each a list of figures that add up to zero, signs
    aside) pin down exactly, whatever the known figures are."""
    names = sorted(unknown, key=repr)
    index = {n: i for i, n in enumerate(names)}
    rows = []
    for terms in equations:
        row = [Fraction(0)] * len(names)
        for sign, name in terms:  # type: ignore[misc]
            if name in index:
                row[index[name]] += sign
        rows.append(row)
    full = _rank(rows)
    return {
        n
        for n in names
        if _rank([[v for j, v in enumerate(r) if j != index[n]] for r in rows]) < full
    }


def cross_equations(rows: Sequence[object], columns: Sequence[object]) -> list[list[object]]:
    """Cells add up to their row and column totals, which add up to the grand total."""
    eqs: list[list[object]] = []
    for r in rows:
        eqs.append([(1, ("cell", r, c)) for c in columns] + [(-1, ("row", r))])
    for c in columns:
        eqs.append([(1, ("cell", r, c)) for r in rows] + [(-1, ("column", c))])
    eqs.append([(1, ("row", r)) for r in rows] + [(-1, ("grand",))])
    eqs.append([(1, ("column", c)) for c in columns] + [(-1, ("grand",))])
    return eqs


# -- the graph shortcut agrees with brute force ----------------------------------------------


def _components(nodes: set[int], edges: Sequence[tuple[int, int]]) -> int:
    parent = {n: n for n in nodes}

    def find(n: int) -> int:
        while parent[n] != n:
            n = parent[n]
        return n

    for u, v in edges:
        parent[find(u)] = find(v)
    return len({find(n) for n in nodes})


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=12))
def test_bridges_are_the_edges_whose_removal_disconnects(edges: list[tuple[int, int]]) -> None:
    edges = [(u, v) for u, v in edges if u != v]
    nodes = {n for e in edges for n in e}
    found = bridges({i: (("n", u), ("n", v)) for i, (u, v) in enumerate(edges)})
    for i in range(len(edges)):
        rest = edges[:i] + edges[i + 1 :]
        cut = _components(nodes, rest) > _components(nodes, edges)
        assert (i in found) == cut


# -- one-way and two-way tables --------------------------------------------------------------

counts = st.integers(min_value=0, max_value=30)


@settings(deadline=None)
@given(st.lists(counts, min_size=1, max_size=8), st.integers(min_value=2, max_value=12))
def test_a_one_way_table_hides_small_cells_and_no_hidden_figure_follows(
    values: list[int], threshold: int
) -> None:
    cells = {i: (v,) for i, v in enumerate(values)}
    total = sum(values)
    total_hidden = is_primary((total,), threshold)
    hidden = protect_line(cells, total_hidden=total_hidden, threshold=threshold)
    for i, v in enumerate(values):
        if 0 < v < threshold:
            assert i in hidden.primary
        elif i not in hidden:
            assert v == 0 or v >= threshold
    unknown: set[object] = {("cell", i) for i in hidden.all}
    if total_hidden:
        unknown.add(("total",))
    equation = [(1, ("cell", i)) for i in cells] + [(-1, ("total",))]
    assert not determined([equation], unknown)


@settings(deadline=None, max_examples=150)
@given(
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=5),
    st.data(),
    st.integers(min_value=2, max_value=12),
)
def test_a_two_way_table_leaves_no_hidden_figure_to_arithmetic(
    n_rows: int, n_columns: int, data: st.DataObject, threshold: int
) -> None:
    table = {
        (r, c): data.draw(st.integers(0, 25) | st.just(0))
        for r in range(n_rows)
        for c in range(n_columns)
    }
    rows, columns = list(range(n_rows)), list(range(n_columns))
    row_totals = {r: sum(table[r, c] for c in columns) for r in rows}
    column_totals = {c: sum(table[r, c] for r in rows) for c in columns}
    grand = sum(table.values())
    grand_hidden = is_primary((grand,), threshold)
    row_line = protect_line(
        {r: (v,) for r, v in row_totals.items()}, total_hidden=grand_hidden, threshold=threshold
    )
    column_line = protect_line(
        {c: (v,) for c, v in column_totals.items()}, total_hidden=grand_hidden, threshold=threshold
    )
    hidden = protect_cross(
        {k: (v,) for k, v in table.items()},
        rows=rows,
        columns=columns,
        rows_hidden=row_line.all,
        columns_hidden=column_line.all,
        total_hidden=grand_hidden,
        threshold=threshold,
    )
    for key, v in table.items():
        assert (key in hidden.primary) == (0 < v < threshold)
    unknown: set[object] = {("cell", r, c) for r, c in hidden.all}  # type: ignore[misc]
    unknown |= {("row", r) for r in row_line.all}
    unknown |= {("column", c) for c in column_line.all}
    if grand_hidden:
        unknown.add(("grand",))
    assert not determined(cross_equations(rows, columns), unknown)


# -- what a reader of the API sees -----------------------------------------------------------


def _levels(table: Mapping[tuple[str, str], Mapping[str, int]], names: Sequence[str]) -> Levels:
    """Additive measures at every subset of (county, source), as query.measure gives them."""
    levels: Levels = {("county", "source"): {}, ("county",): {}, ("source",): {}, (): {}}
    for (county, source), measures in table.items():
        levels[("county", "source")][(county, source)] = dict(measures)
        for subset, key in (
            (("county",), (county,)),
            (("source",), (source,)),
            ((), ()),
        ):
            target = levels[subset].setdefault(key, dict.fromkeys(names, 0))
            for name in names:
                target[name] = int(target[name] or 0) + measures[name]
    return levels


def _answers(
    levels: Levels, metric_ids: Sequence[str], threshold: int
) -> dict[tuple[str, ...], Any]:
    metrics = [METRICS_BY_ID[m] for m in metric_ids]
    return {
        dims: build_figures(
            levels,
            program_id="demo",
            start=date(2025, 1, 1),
            end=date(2025, 3, 31),
            dims=dims,
            view="published",
            as_of=NOW,
            rules=rules(threshold),
            metrics=metrics,
        ).rows
        for dims in ((), ("county",), ("source",), ("county", "source"))
    }


def _figure_name(row: dict[str, Any]) -> tuple[object, ...]:
    group = row["group"]
    if "county" in group and "source" in group:
        return ("cell", group["county"], group["source"])
    if "county" in group:
        return ("row", group["county"])
    if "source" in group:
        return ("column", group["source"])
    return ("grand",)


@settings(deadline=None, max_examples=60)
@given(
    st.lists(
        st.sampled_from(["Alamance", "Forsyth", "Guilford", "Wake"]),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    st.lists(
        st.sampled_from(["ed", "ems", "law_enforcement"]), min_size=1, max_size=3, unique=True
    ),
    st.data(),
    st.integers(min_value=3, max_value=11),
)
def test_no_answer_of_the_api_lets_a_hidden_figure_be_worked_out(
    counties: list[str], sources: list[str], data: st.DataObject, threshold: int
) -> None:
    table: dict[tuple[str, str], dict[str, int]] = {}
    for county, source in itertools.product(counties, sources):
        with_task = data.draw(st.integers(0, 30))
        table[county, source] = {
            "overdoses": data.draw(st.integers(0, 30)),
            "people_with_task": with_task,
            "people_task_attempted": data.draw(st.integers(0, with_task)),
        }
    names = ["overdoses", "people_with_task", "people_task_attempted"]
    answers = _answers(_levels(table, names), ["overdoses_reported", "attempt_rate"], threshold)

    for metric, parts in (
        ("overdoses_reported", ("value",)),
        ("attempt_rate", ("numerator", "denominator")),
    ):
        rows = [r for dims in answers.values() for r in dims if r["metric"] == metric]
        hidden = {_figure_name(r) for r in rows if r["suppressed"]}
        for r in rows:
            if r["suppressed"]:
                assert (r["value"], r["numerator"], r["denominator"]) == (None, None, None)
            else:
                for part in parts:
                    assert r[part] == 0 or r[part] >= threshold, (metric, r)
        for part in parts:
            assert not determined(cross_equations(sorted(counties), sorted(sources)), hidden), part


def test_a_single_small_county_is_protected_by_the_next_smallest() -> None:
    levels = _levels(
        {
            ("Alamance", "ems"): {"overdoses": 4},
            ("Forsyth", "ems"): {"overdoses": 12},
            ("Guilford", "ems"): {"overdoses": 40},
        },
        ["overdoses"],
    )
    rows = _answers(levels, ["overdoses_reported"], 10)[("county",)]
    display = {r["group"]["county"]: r["display"] for r in rows}
    assert display == {"Alamance": "<10", "Forsyth": "*", "Guilford": "40"}


def test_rates_on_few_events_are_unstable() -> None:
    assert unstable(20, 20)
    assert not unstable(21, 20)
    levels = _levels(
        {("Wake", "ems"): {"people_with_task": 40, "people_task_attempted": 15}},
        ["people_with_task", "people_task_attempted"],
    )
    (row,) = _answers(levels, ["attempt_rate"], 10)[()]
    assert row["unstable"]
    assert row["display"] == "37.5%"
    assert (row["numerator"], row["denominator"]) == (15, 40)
