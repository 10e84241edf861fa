"""Re-estimating the weights from a program's kept decisions: m and u per level, with counts.

A lead's confirm says a possible match is one person, a split says two
(``possible_match.status``), and each decision kept the levels its pair fell in
(``possible_match.explanation``). Among the confirmed pairs where a comparison had a value, the
share that fell in a level estimates its ``m``; among the split pairs, its ``u``. Each count is
smoothed by half a pair (a Jeffreys prior), so a level no decision fell in keeps a small
probability rather than an infinite weight.

What the estimates do not say: a lead decides only the pairs linking doubted (between the
thresholds, or flagged), not every pair, so the estimates describe those pairs. A level that
decided pairs rarely reach (an exact date of birth with a shared phone) rests on few counts;
the table prints them. Re-estimate once a program has a few hundred decisions of each kind,
and read the table before writing the snippet into the policy.

Comparisons that appear only when they apply (``suffix``, ``mrn``) have no share to estimate
and keep their pinned values. Levels a decision was made under that the current model no longer
has are left out.

Exceptions::

    TooFewDecisions   fewer confirmed or split decisions than the estimate needs
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.scheduler.matching.weights import LEVELS, MISSING, MODEL_VERSION, Level

__all__ = [
    "DEFAULT_MIN_DECISIONS",
    "ESTIMATED",
    "Decision",
    "Estimate",
    "Estimates",
    "TooFewDecisions",
    "decision_of",
    "estimate",
    "policy_snippet",
    "render",
]

DEFAULT_MIN_DECISIONS = 50
"""Confirmed and split decisions each, at the least, before anything is estimated."""

ESTIMATED = tuple(c for c in LEVELS if c not in ("suffix", "mrn"))
"""The comparisons whose levels share out every pair where they have a value."""

_SMOOTHING = 0.5


class TooFewDecisions(ValueError):
    """Not enough kept decisions to estimate from."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One kept decision: one person (confirmed) or two (split), and the pair's levels."""

    confirmed: bool
    levels: Mapping[str, str]
    """Level by comparison, as the explanation recorded it."""


def decision_of(status: str, explanation: str | None) -> Decision | None:
    """A decision from a ``possible_match`` row; None for an open one, or one kept without an
    explanation (recorded before match weights) or with one that cannot be read."""
    if status not in ("confirmed", "split") or not explanation:
        return None
    try:
        evidence = json.loads(explanation)["evidence"]
        levels = {str(e["comparison"]): str(e["level"]) for e in evidence}
    except (ValueError, KeyError, TypeError):
        return None
    return Decision(confirmed=status == "confirmed", levels=levels)


@dataclass(frozen=True, slots=True)
class Estimate:
    """One level: its pinned probabilities, the re-estimated ones and the counts behind them."""

    pinned: Level
    m: float
    u: float
    confirmed: int
    """Confirmed pairs that fell in the level."""
    split: int
    """Split pairs that fell in the level."""

    @property
    def level(self) -> Level:
        """The level with the re-estimated probabilities (its weight, its reason)."""
        p = self.pinned
        return Level(p.comparison, p.name, self.m, self.u, p.reason, p.doubt)


@dataclass(frozen=True, slots=True)
class Estimates:
    rows: tuple[Estimate, ...]
    confirmed: int
    split: int
    models: tuple[str, ...]
    """The model versions the decisions were made under."""


def estimate(
    decisions: Iterable[Decision],
    *,
    min_decisions: int = DEFAULT_MIN_DECISIONS,
    models: Iterable[str] = (),
) -> Estimates:
    """m and u for every level of the estimated comparisons (module docs)."""
    kept = list(decisions)
    confirmed = [d for d in kept if d.confirmed]
    split = [d for d in kept if not d.confirmed]
    if len(confirmed) < min_decisions or len(split) < min_decisions:
        raise TooFewDecisions(
            f"{len(confirmed)} confirmed and {len(split)} split decisions kept; re-estimating "
            f"needs at least {min_decisions} of each (a lead's confirm and split decisions on "
            "possible matches), so the weights stay as they are"
        )
    rows: list[Estimate] = []
    for comparison in ESTIMATED:
        levels = [lv for name, lv in LEVELS[comparison].items() if name != MISSING]
        names = {lv.name for lv in levels}
        m_counts = _counts(confirmed, comparison, names)
        u_counts = _counts(split, comparison, names)
        m_total = sum(m_counts.values()) + _SMOOTHING * len(levels)
        u_total = sum(u_counts.values()) + _SMOOTHING * len(levels)
        for lv in levels:
            rows.append(
                Estimate(
                    pinned=lv,
                    m=(m_counts[lv.name] + _SMOOTHING) / m_total,
                    u=(u_counts[lv.name] + _SMOOTHING) / u_total,
                    confirmed=m_counts[lv.name],
                    split=u_counts[lv.name],
                )
            )
    return Estimates(tuple(rows), len(confirmed), len(split), tuple(sorted(set(models))))


def _counts(decisions: list[Decision], comparison: str, names: set[str]) -> Counter[str]:
    return Counter(
        level
        for d in decisions
        if (level := d.levels.get(comparison)) is not None and level in names
    )


def render(estimates: Estimates) -> str:
    """The re-estimated m and u next to the pinned ones, with the counts, as a table."""
    lines = [
        f"re-estimated from {estimates.confirmed} confirmed and {estimates.split} split "
        f"decisions (made under {', '.join(estimates.models) or 'unknown models'}; pinned: "
        f"{MODEL_VERSION})",
        f"  {'comparison':<12} {'level':<28} {'m pinned':>9} {'m new':>9} {'n':>5} "
        f"{'u pinned':>10} {'u new':>10} {'n':>5} {'bits pinned':>11} {'bits new':>9}",
    ]
    for e in estimates.rows:
        p = e.pinned
        lines.append(
            f"  {p.comparison:<12} {p.name:<28} {p.m:>9.4f} {e.m:>9.4f} {e.confirmed:>5} "
            f"{p.u:>10.6f} {e.u:>10.6f} {e.split:>5} {p.weight:>+11.2f} {e.level.weight:>+9.2f}"
        )
    return "\n".join(lines)


def policy_snippet(estimates: Estimates) -> str:
    """The ``[linking.weights]`` tables for a program's policy file (TOML)."""
    lines = [
        f"# Re-estimated by `portline linking estimate` from {estimates.confirmed} confirmed "
        f"and {estimates.split} split decisions;",
        f"# the pinned weights are {MODEL_VERSION}. Read the table it printed before using this.",
    ]
    comparison = None
    for e in estimates.rows:
        if e.pinned.comparison != comparison:
            comparison = e.pinned.comparison
            lines += ["", f"[linking.weights.{comparison}]"]
        lines.append(f"{e.pinned.name} = {{ m = {e.m:.6g}, u = {e.u:.6g} }}")
    return "\n".join(lines) + "\n"
