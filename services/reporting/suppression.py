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

from collections.abc import Hashable, Iterable, Mapping, Sequence
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
    for c in counts:  # noqa: SIM110 - a loop is faster than any(); called per cell
        if 0 < c < threshold:
            return True
    return False


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


Node = Hashable


def _bridge_indices(n_nodes: int, edges: Sequence[tuple[int, int]]) -> set[int]:
    """The indices of the edges on no cycle, in a multigraph on nodes 0..n-1 (Tarjan's
    bridge-finding, iteratively: tables can be long)."""
    adjacency: list[list[tuple[int, int]]] = [[] for _ in range(n_nodes)]
    for index, (u, v) in enumerate(edges):
        adjacency[u].append((v, index))
        adjacency[v].append((u, index))
    order = [-1] * n_nodes
    low = [0] * n_nodes
    found: set[int] = set()
    counter = 0
    for root in range(n_nodes):
        if order[root] >= 0 or not adjacency[root]:
            continue
        order[root] = low[root] = counter
        counter += 1
        stack: list[tuple[int, int, int]] = [(root, -1, 0)]
        while stack:
            node, via, position = stack[-1]
            neighbours = adjacency[node]
            if position < len(neighbours):
                stack[-1] = (node, via, position + 1)
                nxt, edge = neighbours[position]
                if edge == via:
                    continue
                if order[nxt] >= 0:
                    low[node] = min(low[node], order[nxt])
                else:
                    order[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append((nxt, edge, 0))
            else:
                stack.pop()
                if stack:
                    parent = stack[-1][0]
                    low[parent] = min(low[parent], low[node])
                    if low[node] > order[parent]:
                        found.add(via)
    return found


def bridges(edges: Mapping[object, tuple[Node, Node]]) -> set[object]:
    """The edges (by id) that lie on no cycle, in a multigraph."""
    ids = list(edges)
    nodes: dict[Node, int] = {}
    pairs = []
    for edge_id in ids:
        u, v = edges[edge_id]
        pairs.append((nodes.setdefault(u, len(nodes)), nodes.setdefault(v, len(nodes))))
    return {ids[i] for i in _bridge_indices(len(nodes), pairs)}


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
    n_rows, n_columns = len(row_keys), len(column_keys)
    row_index = {r: i for i, r in enumerate(row_keys)}
    column_index = {c: j for j, c in enumerate(column_keys)}
    primary = {k for k, counts in cells.items() if is_primary(counts, threshold)}
    # Nodes: rows 0..R-1, columns R..R+C-1, then the row totals' and the column totals' own
    # equations (each adds up to the grand total).
    totals_of_rows, totals_of_columns = n_rows + n_columns, n_rows + n_columns + 1
    fixed = [(row_index[r], totals_of_rows) for r in rows_hidden]
    fixed += [(n_rows + column_index[c], totals_of_columns) for c in columns_hidden]
    if total_hidden:
        fixed.append((totals_of_rows, totals_of_columns))
    if not primary and not fixed:
        return Hidden(frozenset(), frozenset())
    hidden = {(row_index[r], column_index[c]) for r, c in primary}
    cost: list[list[int]] = []  # made when a first bridge needs it: most tables have none
    n_nodes = n_rows + n_columns + 2
    while True:
        cell_edges = sorted(hidden)
        edges = fixed + [(i, n_rows + j) for i, j in cell_edges]
        weak = sorted(_bridge_indices(n_nodes, edges))
        if not weak:
            break
        if not cost:
            cost = [[_cost(cells.get((r, c), ())) for c in column_keys] for r in row_keys]
        adjacency: list[list[int]] = [[] for _ in range(n_nodes)]
        for u, v in edges:
            adjacency[u].append(v)
            adjacency[v].append(u)
        added = False
        for index in weak:
            u, v = edges[index]
            path = _cheapest_path(u, v, adjacency, hidden, cost, n_rows, n_columns, skip=(u, v))
            if path is None:  # cannot happen with totals decided by protect_line; stay safe
                hidden = {(i, j) for i in range(n_rows) for j in range(n_columns)}
                added = False
                break
            for i, j in path:
                hidden.add((i, j))
                adjacency[i].append(n_rows + j)
                adjacency[n_rows + j].append(i)
                added = True
        if not added:
            break
    chosen = {(row_keys[i], column_keys[j]) for i, j in hidden}
    return Hidden(frozenset(primary), frozenset(chosen - primary))


def _cheapest_path(
    start: int,
    goal: int,
    adjacency: list[list[int]],
    hidden: set[tuple[int, int]],
    cost: list[list[int]],
    n_rows: int,
    n_columns: int,
    *,
    skip: tuple[int, int],
) -> list[tuple[int, int]] | None:
    """The published cells to hide so that the edge `skip` closes a cycle: the cheapest path
    between its ends over hidden figures (free; `skip` itself once) and published cells
    (their cost). Dense Dijkstra: a table has few rows and columns."""
    n_nodes = len(adjacency)
    infinity = float("inf")
    distance: list[float] = [infinity] * n_nodes
    came: list[tuple[int, tuple[int, int] | None]] = [(-1, None)] * n_nodes
    done = [False] * n_nodes
    distance[start] = 0
    skip_left = {skip: 1, (skip[1], skip[0]): 1}
    while True:
        node, best = -1, infinity
        for candidate in range(n_nodes):
            if not done[candidate] and distance[candidate] < best:
                node, best = candidate, distance[candidate]
        if node < 0:
            return None
        if node == goal:
            path: list[tuple[int, int]] = []
            while node != start:
                node, via = came[node]
                if via is not None:
                    path.append(via)
            return path
        done[node] = True
        skipped = dict(skip_left)
        for nxt in adjacency[node]:
            if skipped.get((node, nxt), 0) > 0:
                skipped[(node, nxt)] -= 1
                continue
            if best < distance[nxt]:
                distance[nxt] = best
                came[nxt] = (node, None)
        if node < n_rows:
            for j in range(n_columns):
                if (node, j) not in hidden and best + cost[node][j] < distance[n_rows + j]:
                    distance[n_rows + j] = best + cost[node][j]
                    came[n_rows + j] = (node, (node, j))
        elif node < n_rows + n_columns:
            j = node - n_rows
            for i in range(n_rows):
                if (i, j) not in hidden and best + cost[i][j] < distance[i]:
                    distance[i] = best + cost[i][j]
                    came[i] = (node, (i, j))
