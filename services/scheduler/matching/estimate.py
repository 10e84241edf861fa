"""Re-estimating the weights from a program's own pairs: m and u per level, with counts.

* ``m`` comes from the pairs the program holds for one person: every report linked
  automatically (``report_link.explanation``) and every possible match a lead confirmed
  (``possible_match``). Among those pairs where a comparison had a value, the share that fell in
  a level estimates its m.
* ``u`` comes from random pairs of two of the program's people, compared as linking compares
  them (the caller opens their identities in memory): as splink does, since two people drawn at
  random are almost never one. The share of a level among them estimates its u.

Each count is smoothed by half a pair (a Jeffreys prior), so a level no pair fell in keeps a
small probability rather than an infinite weight. A comparison with no value in any pair of a
kind keeps its pinned probability on that side (``Estimate.m_pinned``, ``u_pinned``).

Why not u from the pairs a lead split: a lead sees only the pairs linking doubted, which look
alike by construction; on the evaluation's population their shares put an exact family name's u
at 0.17 instead of 0.0015, which would undo every weight (docs/linking.md). The splits are
counted and shown, not used. The m side keeps a milder bias: reports never linked to their
person (missed) are not in it.

Comparisons that appear only when they apply (``suffix``, ``mrn``) have no share to estimate
and keep their pinned values. Levels that the current model no longer has are left out.

Exceptions::

    TooFewPairs   fewer pairs of one person, or of two people, than the estimate needs
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.scheduler.matching.weights import LEVELS, MISSING, MODEL_VERSION, Level

__all__ = [
    "DEFAULT_MIN_DECISIONS",
    "DEFAULT_MIN_PAIRS",
    "ESTIMATED",
    "Estimate",
    "Estimates",
    "Levels",
    "TooFewPairs",
    "estimate",
    "levels_of",
    "policy_snippet",
    "render",
]

DEFAULT_MIN_DECISIONS = 50
"""Pairs of one person (automatic links and confirmed matches), at the least."""
DEFAULT_MIN_PAIRS = 1000
"""Random pairs of two people, at the least."""

ESTIMATED = tuple(c for c in LEVELS if c not in ("suffix", "mrn"))
"""The comparisons whose levels share out every pair where they have a value."""

_SMOOTHING = 0.5

Levels = Mapping[str, str]
"""A pair's level by comparison, as an explanation records it."""


class TooFewPairs(ValueError):
    """Not enough pairs to estimate from."""


def levels_of(explanation: str | None) -> Levels | None:
    """A pair's levels from a stored explanation (JSON); None for none (a row kept before match
    weights) or one that cannot be read."""
    if not explanation:
        return None
    try:
        evidence = json.loads(explanation)["evidence"]
        return {str(e["comparison"]): str(e["level"]) for e in evidence}
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class Estimate:
    """One level: its pinned probabilities, the re-estimated ones and the counts behind them."""

    pinned: Level
    m: float
    u: float
    matches: int
    """Pairs of one person that fell in the level."""
    non_matches: int
    """Random pairs of two people that fell in the level."""
    m_pinned: bool = False
    """No pair of one person had a value for the comparison: m is the pinned one."""
    u_pinned: bool = False
    """No random pair had a value for the comparison: u is the pinned one."""

    @property
    def level(self) -> Level:
        """The level with the re-estimated probabilities (its weight, its reason)."""
        p = self.pinned
        return Level(p.comparison, p.name, self.m, self.u, p.reason, p.doubt)


@dataclass(frozen=True, slots=True)
class Estimates:
    rows: tuple[Estimate, ...]
    matches: int
    non_matches: int
    sources: Mapping[str, int]
    """What the pairs were, with their numbers (for the table's header)."""


def estimate(
    matches: Iterable[Levels],
    non_matches: Iterable[Levels],
    *,
    min_matches: int = DEFAULT_MIN_DECISIONS,
    min_non_matches: int = DEFAULT_MIN_PAIRS,
    sources: Mapping[str, int] | None = None,
) -> Estimates:
    """m and u for every level of the estimated comparisons (module docs)."""
    same = list(matches)
    other = list(non_matches)
    if len(same) < min_matches:
        raise TooFewPairs(
            f"{len(same)} pairs of one person kept (reports linked automatically and possible "
            f"matches a lead confirmed); re-estimating needs at least {min_matches}, so the "
            "weights stay as they are"
        )
    if len(other) < min_non_matches:
        raise TooFewPairs(
            f"{len(other)} random pairs of two people; re-estimating needs at least "
            f"{min_non_matches} (drawn from a program of 50 people or more), so the weights "
            "stay as they are"
        )
    rows: list[Estimate] = []
    for comparison in ESTIMATED:
        levels = [lv for name, lv in LEVELS[comparison].items() if name != MISSING]
        names = {lv.name for lv in levels}
        m_counts = _counts(same, comparison, names)
        u_counts = _counts(other, comparison, names)
        m_seen, u_seen = sum(m_counts.values()), sum(u_counts.values())
        for lv in levels:
            rows.append(
                Estimate(
                    pinned=lv,
                    m=_share(m_counts[lv.name], m_seen, len(levels)) if m_seen else lv.m,
                    u=_share(u_counts[lv.name], u_seen, len(levels)) if u_seen else lv.u,
                    matches=m_counts[lv.name],
                    non_matches=u_counts[lv.name],
                    m_pinned=not m_seen,
                    u_pinned=not u_seen,
                )
            )
    return Estimates(tuple(rows), len(same), len(other), dict(sources or {}))


def _share(count: int, seen: int, levels: int) -> float:
    return (count + _SMOOTHING) / (seen + _SMOOTHING * levels)


def _counts(pairs: list[Levels], comparison: str, names: set[str]) -> Counter[str]:
    return Counter(
        level for p in pairs if (level := p.get(comparison)) is not None and level in names
    )


def render(estimates: Estimates) -> str:
    """The re-estimated m and u next to the pinned ones, with the counts, as a table."""
    sources = ", ".join(f"{name} {n}" for name, n in estimates.sources.items())
    lines = [
        f"m from {estimates.matches} pairs of one person, u from {estimates.non_matches} random "
        f"pairs of two people ({sources or 'no sources given'}); pinned model {MODEL_VERSION}; "
        "* = pinned, no pair had a value",
        f"  {'comparison':<12} {'level':<28} {'m pinned':>9} {'m new':>9} {'n':>5} "
        f"{'u pinned':>10} {'u new':>10} {'n':>6} {'bits pinned':>11} {'bits new':>9}",
    ]
    for e in estimates.rows:
        p = e.pinned
        m_mark, u_mark = "*" if e.m_pinned else " ", "*" if e.u_pinned else " "
        lines.append(
            f"  {p.comparison:<12} {p.name:<28} {p.m:>9.4f} {e.m:>8.4f}{m_mark} {e.matches:>5} "
            f"{p.u:>10.6f} {e.u:>9.6f}{u_mark} {e.non_matches:>6} {p.weight:>+11.2f} "
            f"{e.level.weight:>+9.2f}"
        )
    return "\n".join(lines)


def policy_snippet(estimates: Estimates) -> str:
    """The ``[linking.weights]`` tables for a program's policy file (TOML): every level with
    at least one side re-estimated."""
    lines = [
        f"# Re-estimated by `portline linking estimate`: m from {estimates.matches} pairs of one "
        f"person, u from {estimates.non_matches} random pairs;",
        f"# the pinned weights are {MODEL_VERSION}. Read the table it printed before using this.",
    ]
    comparison = None
    for e in estimates.rows:
        if e.m_pinned and e.u_pinned:
            continue
        if e.pinned.comparison != comparison:
            comparison = e.pinned.comparison
            lines += ["", f"[linking.weights.{comparison}]"]
        lines.append(f"{e.pinned.name} = {{ m = {e.m:.6g}, u = {e.u:.6g} }}")
    return "\n".join(lines) + "\n"
