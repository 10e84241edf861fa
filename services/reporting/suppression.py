"""Small-cell suppression: which cells of a published table are hidden. Pure functions.

A cell is one figure of a table, given by the counts it is made of: a count's value, a rate's
numerator and denominator, or how many values a median is taken over.

- **Primary** (CDC WONDER): a cell any of whose counts is from 1 to the threshold minus one
  (1-9 by default) is hidden. Zero is shown.
- **Complementary** (Washington State DOH): no hidden cell may be worked out exactly from what
  a reader sees: the other cells of its row or column and the totals (the same figures without
  that breakdown, which the API also answers). Further cells are hidden where needed.
- **Unstable** (CDC WISQARS): a rate whose numerator is the limit (20) or less is flagged.

Why the complementary rule works as it does. Treat every hidden figure as an unknown: a
table's cells, its row totals, its column totals and its grand total. Each row and each column
gives an equation (its cells add up to its total), and so do the row totals and the column
totals (each adds up to the grand total). Every unknown is in exactly two of these equations,
so the unknowns are the edges of a graph whose nodes are the equations, and (signing each
equation suitably) the system is that graph's incidence matrix. An unknown is determined by
the published figures exactly when it is linearly independent of the other unknowns'
columns: when its edge is a *bridge* (on no cycle). So a table is safe when the hidden
figures form a graph without bridges; to make it so, for each bridge we also hide the
cheapest published cells that close a cycle through it. Treating counts of people (which do
not add up exactly across groups) as if they did only makes this stricter.

A one-way table (by county, say) is the same with a single equation: its hidden cells and,
if hidden, its total must not be exactly one unknown.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "Hidden",
    "bridges",
    "is_primary",
    "protect_cross",
    "protect_line",
    "unstable",
]

K = TypeVar("K", bound=Hashable)
R = TypeVar("R", bound=Hashable)
C = TypeVar("C", bound=Hashable)

Counts = tuple[int, ...]

_ZERO_COST = 10**12
"""Hiding a zero protects as well as any cell, but a zero is rarely a secret: last resort."""


def is_primary(counts: Counts, threshold: int) -> bool:
    """A cell made of a small count: from 1 to threshold - 1."""
    return any(0 < c < threshold for c in counts)


def unstable(numerator: int | None, limit: int) -> bool:
    """A rate on this few events is unstable (CDC WISQARS: 20 or fewer)."""
    return numerator is not None and numerator <= limit


def _cost(counts: Counts) -> int:
    biggest = max(counts, default=0)
    return biggest if biggest > 0 else _ZERO_COST


@dataclass(frozen=True)
class Hidden:
    """The hidden cells of a table: hidden for their own small counts, or to protect them."""

    primary: frozenset[object]
    complementary: frozenset[object]

    def __contains__(self, key: object) -> bool:
        return key in self.primary or key in self.complementary

    @property
    def all(self) -> frozenset[object]:
        return self.primary | self.complementary


def _order(key: object) -> tuple[str, str]:
    return (type(key).__name__, repr(key))


def protect_line(cells: Mapping[K, Counts], *, total_hidden: bool, threshold: int) -> Hidden:
    """A one-way table with its total: primary cells, plus the cheapest published cell when
    exactly one figure (a cell, or the total) would be unknown."""
    primary = {k for k, counts in cells.items() if is_primary(counts, threshold)}
    unknowns = len(primary) + (1 if total_hidden else 0)
    complementary: set[K] = set()
    if unknowns == 1:
        published = sorted(
            (k for k in cells if k not in primary), key=lambda k: (_cost(cells[k]), _order(k))
        )
        if published:
            complementary.add(published[0])
    return Hidden(frozenset(primary), frozenset(complementary))


Node = tuple[str, object]
Edge = tuple[Node, Node]


def bridges(edges: Mapping[object, Edge]) -> set[object]:
    """The edges (by id) that lie on no cycle, in a multigraph: Tarjan's bridge-finding,
    iteratively (tables can be long)."""
    adjacency: dict[Node, list[tuple[Node, object]]] = {}
    for edge_id, (u, v) in edges.items():
        adjacency.setdefault(u, []).append((v, edge_id))
        adjacency.setdefault(v, []).append((u, edge_id))
    order: dict[Node, int] = {}
    low: dict[Node, int] = {}
    found: set[object] = set()
    counter = 0
    for root in sorted(adjacency, key=_order):
        if root in order:
            continue
        order[root] = low[root] = counter
        counter += 1
        stack: list[tuple[Node, object, int]] = [(root, None, 0)]
        while stack:
            node, via, index = stack[-1]
            neighbours = adjacency[node]
            if index < len(neighbours):
                stack[-1] = (node, via, index + 1)
                nxt, edge_id = neighbours[index]
                if edge_id == via:
                    continue
                if nxt in order:
                    low[node] = min(low[node], order[nxt])
                else:
                    order[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append((nxt, edge_id, 0))
            else:
                stack.pop()
                if stack:
                    parent = stack[-1][0]
                    low[parent] = min(low[parent], low[node])
                    if low[node] > order[parent]:
                        found.add(via)
    return found


def protect_cross(
    cells: Mapping[tuple[R, C], Counts],
    *,
    rows: Iterable[R],
    columns: Iterable[C],
    rows_hidden: Iterable[R],
    columns_hidden: Iterable[C],
    total_hidden: bool,
    threshold: int,
) -> Hidden:
    """A two-way table whose row totals, column totals and grand total are published as the
    one-way tables (and the overall figure) decided them: only its own cells may be hidden
    further. Cells not in `cells` are zero."""
    row_keys, column_keys = list(rows), list(columns)
    primary = {k for k, counts in cells.items() if is_primary(counts, threshold)}
    hidden: set[tuple[R, C]] = set(primary)

    def cell_edge(key: tuple[R, C]) -> Edge:
        return (("row", key[0]), ("column", key[1]))

    fixed: dict[object, Edge] = {}
    for r in rows_hidden:
        fixed[("row total", r)] = (("row", r), ("totals", "rows"))
    for c in columns_hidden:
        fixed[("column total", c)] = (("column", c), ("totals", "columns"))
    if total_hidden:
        fixed[("grand total", None)] = (("totals", "rows"), ("totals", "columns"))

    def cost(key: tuple[R, C]) -> int:
        return _cost(cells.get(key, ()))

    while True:
        edges: dict[object, Edge] = dict(fixed)
        edges.update({("cell", k): cell_edge(k) for k in hidden})
        weak = sorted(bridges(edges), key=_order)
        if not weak:
            break
        bridge = weak[0]
        path = _cheapest_path(edges, bridge, row_keys, column_keys, hidden, cost)
        if not path:  # cannot happen with totals decided by protect_line; stay safe anyway
            hidden.update((r, c) for r in row_keys for c in column_keys)
            break
        hidden.update(path)
    return Hidden(frozenset(primary), frozenset(hidden - primary))


def _cheapest_path(
    edges: Mapping[object, Edge],
    bridge: object,
    row_keys: list[R],
    column_keys: list[C],
    hidden: set[tuple[R, C]],
    cost: Callable[[tuple[R, C]], int],
) -> list[tuple[R, C]] | None:
    """The published cells to hide so that the bridge closes a cycle: the cheapest path
    between its ends over hidden figures (free) and published cells (their cost)."""
    start, goal = edges[bridge]
    free: dict[Node, list[Node]] = {}
    for edge_id, (u, v) in edges.items():
        if edge_id != bridge:
            free.setdefault(u, []).append(v)
            free.setdefault(v, []).append(u)
    best: dict[Node, int] = {start: 0}
    came: dict[Node, tuple[Node, tuple[R, C] | None]] = {}
    queue: list[tuple[int, tuple[str, str], Node]] = [(0, _order(start), start)]
    while queue:
        distance, _, node = heapq.heappop(queue)
        if node == goal:
            path: list[tuple[R, C]] = []
            while node != start:
                node, via = came[node]
                if via is not None:
                    path.append(via)
            return path
        if distance > best.get(node, distance):
            continue
        steps: list[tuple[Node, int, tuple[R, C] | None]] = [
            (n, 0, None) for n in free.get(node, [])
        ]
        kind, key = node
        if kind == "row":
            for c in column_keys:
                cell: tuple[R, C] = (key, c)  # type: ignore[assignment]
                if cell not in hidden:
                    steps.append((("column", c), cost(cell), cell))
        elif kind == "column":
            for r in row_keys:
                cell = (r, key)  # type: ignore[assignment]
                if cell not in hidden:
                    steps.append((("row", r), cost(cell), cell))
        for nxt, step, via in steps:
            candidate = distance + step
            if candidate < best.get(nxt, candidate + 1):
                best[nxt] = candidate
                came[nxt] = (node, via)
                heapq.heappush(queue, (candidate, _order(nxt), nxt))
    return None
