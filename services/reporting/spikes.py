"""Spike detection on daily overdose counts: the EWMA of NSSP-ESSENCE, and the ODMAP rule.

Pure functions over counts and times; no clock, database or bus.

EWMA (:func:`ewma`), as NSSP-ESSENCE runs it and CDC's Rnssp package publishes it
(``alert_ewma``; Burkom, "Development, Adaptation, and Assessment of Alerting Algorithms for
Biosurveillance", Johns Hopkins APL Technical Digest 24(4), 2003):

* The series is one count per day, oldest first. Each day *i* is tested against a baseline
  of the days before it, separated from it by a **guard band** of ``guard_days`` (2) so that
  the start of an outbreak does not raise its own expectation. The baseline is
  ``baseline_days`` (28) long once there is enough history; it starts at 11 days, so a
  series needs ``11 + guard_days + 1`` days before the first test. Earlier days get no
  result (``None``).
* The expected count is the baseline's mean; its spread the baseline's sample standard
  deviation ``s`` (n - 1).
* The smoothed value is ``z_i = w * y_i + (1 - w) * z_{i-1}`` (``z_0 = y_0``) for the
  smoothing coefficient ``w``: 0.4 is sensitive to gradual rises (the default), 0.9 to sudden
  ones. Several coefficients may be given; the day's result is the one with the smallest
  p-value, as Rnssp does with (0.4, 0.9).
* The spread of ``z`` is ``s`` times the EWMA correction
  ``sqrt(w/(2-w) + 1/n - 2(1-w)^(g+1) (1 - (1-w)^n)/n)`` (n baseline days, g guard days),
  plus a small constant, and never below a floor. Both keep small counts (a baseline of
  zeros) from alerting on a single report:
  ``floor = (w / t_w) (1 + 0.5 (1-w)^2)``,
  ``constant = (0.1289 - (0.2414 - 0.1826 (1-w)^4) ln(10 * 0.05)) (w / t_w)``,
  where ``t_w`` is Student's t quantile at 1 - ``warning_p`` with n - 1 degrees of freedom.
* The statistic is ``(z_i - expected) / spread``; its p-value is the upper tail of Student's
  t with n - 1 degrees of freedom. Below ``alert_p`` (0.01) the day is an **alert**, below
  ``warning_p`` (0.05) a **warning**.
* A day beyond the alert limit does not drag the smoothed value with it: ``z_i`` is pulled
  back to the limit before the next day, so one spike does not hide the next.

ODMAP rule (:func:`odmap`): at least ``threshold`` overdoses within ``window`` (24 h) of each
other, counted by incident time: the spike rule ODMAP's jurisdictions set ("N overdoses in
24 hours in a county"), which anyone can check by hand.

Exceptions::

    ValueError   parameters out of range, a negative or non-finite count, a naive datetime
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal

from scipy.stats import t as student_t

__all__ = [
    "MIN_BASELINE_DAYS",
    "EwmaDay",
    "EwmaParams",
    "Level",
    "OdmapParams",
    "OdmapSpike",
    "ewma",
    "ewma_last",
    "ewma_tail",
    "history_days",
    "odmap",
]

MIN_BASELINE_DAYS = 11
"""The shortest baseline tested on (Rnssp's ``min_baseline``)."""

Level = Literal["alert", "warning", "none"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EwmaParams:
    """The detector's parameters (the defaults are NSSP-ESSENCE's)."""

    baseline_days: int = 28
    guard_days: int = 2
    smoothing: tuple[float, ...] = (0.4,)
    alert_p: float = 0.01
    warning_p: float = 0.05

    def __post_init__(self) -> None:
        if not MIN_BASELINE_DAYS <= self.baseline_days <= 366:
            raise ValueError(f"baseline_days must be {MIN_BASELINE_DAYS} to 366")
        if not 0 <= self.guard_days <= 14:
            raise ValueError("guard_days must be 0 to 14")
        if not self.smoothing or not all(0 < w < 1 for w in self.smoothing):
            raise ValueError("smoothing coefficients must be between 0 and 1")
        if not 0 < self.alert_p < self.warning_p < 0.5:
            raise ValueError("need 0 < alert_p < warning_p < 0.5")

    @property
    def first_tested_day(self) -> int:
        """The index of the first day with a result."""
        return MIN_BASELINE_DAYS + self.guard_days


@dataclass(frozen=True, slots=True, kw_only=True)
class EwmaDay:
    """One day's test."""

    observed: float
    expected: float
    """The baseline's mean."""
    smoothed: float
    """The smoothed value tested (for the coefficient with the smallest p-value)."""
    statistic: float
    p_value: float
    level: Level
    baseline_days: int
    smoothing: float


@lru_cache(maxsize=1024)
def _quantile(p: float, dof: int) -> float:
    # Rounded as Rnssp rounds it, so limits match to the published digits.
    return round(float(student_t.ppf(1 - p, dof)), 5)


def _upper_tail(statistic: float, dof: int) -> float:
    return float(student_t.sf(statistic, dof))


@dataclass(slots=True)
class _Smoother:
    w: float
    z: float
    last: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))
    """(smoothed, statistic, spread) of the latest day."""


def _check_count(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError("counts must be finite and not negative")
    return float(value)


def ewma(
    counts: Sequence[float], params: EwmaParams | None = None, *, report_from: int = 0
) -> list[EwmaDay | None]:
    """Each day's test, oldest first; ``None`` for days without enough baseline, and for days
    before ``report_from`` (they are still smoothed, only not reported)."""
    p = params or EwmaParams()
    y = [_check_count(c) for c in counts]
    out: list[EwmaDay | None] = [None] * len(y)
    if not y:
        return out
    smoothers = [_Smoother(w=w, z=y[0]) for w in p.smoothing]
    first = p.first_tested_day
    for i in range(1, min(first, len(y))):
        for s in smoothers:
            s.z = s.w * y[i] + (1 - s.w) * s.z
    g = p.guard_days
    for i in range(first, len(y)):
        end = i - g  # the baseline is y[start:end]
        start = max(0, end - p.baseline_days)
        base = y[start:end]
        n = len(base)
        dof = n - 1
        mean = sum(base) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in base) / dof)
        t_alert = _quantile(p.alert_p, dof)
        t_warn = _quantile(p.warning_p, dof)
        best: _Smoother | None = None
        for s in smoothers:
            w = s.w
            correction = math.sqrt(
                w / (2 - w) + 1 / n - 2 * (1 - w) ** (g + 1) * ((1 - (1 - w) ** n) / n)
            )
            floor = (w / t_warn) * (1 + 0.5 * (1 - w) ** 2)
            constant = (0.1289 - (0.2414 - 0.1826 * (1 - w) ** 4) * math.log(10 * 0.05)) * (
                w / t_warn
            )
            spread = max(floor, sd * correction + constant)
            s.z = w * y[i] + (1 - w) * s.z
            statistic = (s.z - mean) / spread
            s.last = (s.z, statistic, spread)
            if abs(statistic) > t_alert:
                s.z = mean + math.copysign(t_alert, statistic) * spread
            # With one number of degrees of freedom, the smallest p-value is the largest
            # statistic.
            if best is None or statistic > best.last[1]:
                best = s
        if i < report_from:
            continue
        assert best is not None
        smoothed, statistic, _ = best.last
        p_value = _upper_tail(statistic, dof)
        level: Level = (
            "alert" if p_value < p.alert_p else "warning" if p_value < p.warning_p else "none"
        )
        out[i] = EwmaDay(
            observed=y[i],
            expected=mean,
            smoothed=smoothed,
            statistic=statistic,
            p_value=p_value,
            level=level,
            baseline_days=n,
            smoothing=best.w,
        )
    return out


def history_days(params: EwmaParams | None = None) -> int:
    """How many days before the first day tested a result depends on (to 1e-9): the
    smoothed value forgets the past geometrically, so days further back are not read."""
    p = params or EwmaParams()
    forget = math.ceil(math.log(1e-9) / math.log(1 - min(p.smoothing)))
    return p.first_tested_day + p.baseline_days + forget


def ewma_tail(
    counts: Sequence[float], params: EwmaParams | None = None, *, days: int = 1
) -> list[EwmaDay | None]:
    """The tests of the last ``days`` days of the series (the days being watched: today, and
    yesterday while late reports still come in), oldest first."""
    p = params or EwmaParams()
    if days < 1:
        raise ValueError("days must be at least 1")
    recent = counts[-(history_days(p) + days - 1) :]
    results = ewma(recent, p, report_from=max(0, len(recent) - days))
    return results[-days:]


def ewma_last(counts: Sequence[float], params: EwmaParams | None = None) -> EwmaDay | None:
    """The test of the last day of the series (the day being watched)."""
    results = ewma_tail(counts, params)
    return results[-1] if results else None


# --------------------------------------------------------------------------- ODMAP


@dataclass(frozen=True, slots=True, kw_only=True)
class OdmapParams:
    threshold: int = 5
    window: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if self.threshold < 2:
            raise ValueError("threshold must be at least 2")
        if not timedelta(hours=1) <= self.window <= timedelta(days=7):
            raise ValueError("window must be 1 hour to 7 days")


@dataclass(frozen=True, slots=True, kw_only=True)
class OdmapSpike:
    observed: int
    window_start: datetime
    window_end: datetime


def _instant(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("incident times must be timezone-aware")
    return value.astimezone(UTC)


def odmap(
    incidents: Sequence[datetime], at: datetime, params: OdmapParams | None = None
) -> OdmapSpike | None:
    """The fullest ``window`` holding the overdose at ``at`` and at least ``threshold``
    overdoses in all, if there is one; ``None`` otherwise. ``incidents`` are the county's
    overdose times, ``at`` among them.

    Asked for each overdose as it arrives, every spike is seen at the overdose that completes
    it, a late report included: its window may end at a later overdose already on record."""
    p = params or OdmapParams()
    point = _instant(at)
    times = sorted(_instant(t) for t in incidents)
    best: OdmapSpike | None = None
    # Every window holding `point` with the most overdoses ends at an overdose in
    # [point, point + window] (slide it right until its end meets one).
    for k in range(bisect_left(times, point), bisect_right(times, point + p.window)):
        end = times[k]
        first = bisect_left(times, end - p.window)
        observed = k + 1 - first
        if observed >= p.threshold and (best is None or observed > best.observed):
            best = OdmapSpike(observed=observed, window_start=times[first], window_end=end)
    return best
