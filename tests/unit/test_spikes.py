"""The spike detectors on series with known answers, and their properties."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.reporting.spikes import (
    MIN_BASELINE_DAYS,
    EwmaParams,
    OdmapParams,
    ewma,
    ewma_last,
    odmap,
)

NOW = datetime.now(UTC).replace(microsecond=0)


def _levels(counts: list[float], params: EwmaParams | None = None) -> list[str]:
    return [day.level for day in ewma(counts, params) if day is not None]


def test_no_result_before_the_first_baseline() -> None:
    p = EwmaParams()
    results = ewma([3.0] * 20, p)
    first = MIN_BASELINE_DAYS + p.guard_days
    assert results[:first] == [None] * first
    day = results[first]
    assert day is not None
    assert day.baseline_days == MIN_BASELINE_DAYS
    assert ewma([]) == []
    assert ewma_last([1, 2, 3]) is None


def test_the_baseline_grows_to_28_days_and_leaves_a_guard_band() -> None:
    counts = [float(i % 5) for i in range(60)]
    results = ewma(counts)
    last = results[-1]
    assert last is not None
    assert last.baseline_days == 28
    # The baseline is days -31 .. -4 (28 days), with the two days before the tested one left out.
    assert last.expected == pytest.approx(sum(counts[-31:-3]) / 28)


def test_a_flat_series_never_signals() -> None:
    for day in ewma([4.0] * 90):
        if day is not None:
            assert day.statistic == 0
            assert day.p_value == pytest.approx(0.5)
            assert day.level == "none"


def test_one_overdose_in_a_quiet_county_is_not_a_spike() -> None:
    """Known answer from the published formula: a baseline of zeros has no spread, so the
    floor applies: (w / t) (1 + 0.5 (1 - w)^2) with t = qt(0.95, 27) = 1.70329, about 0.27711;
    z = 0.4 * 1, and the statistic 0.4 / 0.27711 = 1.4435 (p about 0.080)."""
    day = ewma_last([0.0] * 40 + [1.0])
    assert day is not None
    assert day.expected == 0
    assert day.smoothed == pytest.approx(0.4)
    assert day.statistic == pytest.approx(1.4435, abs=1e-3)
    assert day.p_value == pytest.approx(0.0802, abs=1e-3)
    assert day.level == "none"


def test_three_overdoses_in_a_quiet_county_are() -> None:
    day = ewma_last([0.0] * 40 + [3.0])
    assert day is not None
    assert day.statistic == pytest.approx(3 * 1.4435, abs=3e-3)
    assert day.level == "alert"


def test_a_single_spike_alerts_on_its_day_and_not_before() -> None:
    base = [2, 3, 4, 3, 2, 3, 3] * 8
    levels = _levels([*base, 14.0, *[3.0] * 10])
    spike = len(base) - (MIN_BASELINE_DAYS + 2)
    assert "alert" not in levels[:spike]
    assert levels[spike] == "alert"


def test_one_spike_does_not_hide_the_next() -> None:
    """The smoothed value is pulled back to the alert limit, so a second spike a week later
    still alerts."""
    base = [3.0] * 50
    counts = [*base, 15.0, *[3.0] * 6, 15.0]
    results = ewma(counts)
    first, second = results[len(base)], results[-1]
    assert first is not None
    assert second is not None
    assert (first.level, second.level) == ("alert", "alert")


def test_a_gradual_rise_is_seen() -> None:
    flat = [3.0] * 40
    rise = [3.0 + 0.35 * k for k in range(1, 21)]
    levels = _levels(flat + rise)
    assert "alert" not in levels[: len(flat) - (MIN_BASELINE_DAYS + 2)]
    assert "alert" in levels[-15:]


def test_a_weekly_cycle_does_not_alert() -> None:
    week = [2.0, 2.0, 3.0, 3.0, 4.0, 6.0, 6.0]
    levels = _levels(week * 20)
    assert "alert" not in levels
    assert levels.count("warning") <= 0.05 * len(levels)


def test_sparse_counts() -> None:
    sparse = [0, 0, 1, 0, 0, 0, 1, 0, 0, 2, 0, 0, 0, 1] * 4
    assert "alert" not in _levels([float(c) for c in sparse])
    day = ewma_last([*map(float, sparse), 5.0])
    assert day is not None
    assert day.level == "alert"


def test_two_coefficients_take_the_smaller_p_value() -> None:
    counts = [3.0] * 40 + [9.0]
    gradual = ewma_last(counts, EwmaParams(smoothing=(0.4,)))
    sudden = ewma_last(counts, EwmaParams(smoothing=(0.9,)))
    both = ewma_last(counts, EwmaParams(smoothing=(0.4, 0.9)))
    assert gradual is not None
    assert sudden is not None
    assert both is not None
    assert both.p_value == pytest.approx(min(gradual.p_value, sudden.p_value))
    assert both.smoothing == (0.9 if sudden.p_value < gradual.p_value else 0.4)


def test_ewma_last_equals_the_full_run() -> None:
    counts = [float((i * 7) % 5 + (i % 11 == 0) * 6) for i in range(900)]
    full = ewma(counts)[-1]
    last = ewma_last(counts)
    assert full is not None
    assert last is not None
    assert last.statistic == pytest.approx(full.statistic, rel=1e-7)
    assert last.p_value == pytest.approx(full.p_value, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"baseline_days": 7},
        {"guard_days": -1},
        {"smoothing": ()},
        {"smoothing": (1.0,)},
        {"alert_p": 0.05, "warning_p": 0.01},
    ],
)
def test_parameters_are_checked(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        EwmaParams(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_counts_are_checked(bad: float) -> None:
    with pytest.raises(ValueError, match="finite and not negative"):
        ewma([1.0] * 20 + [bad])


series = st.lists(st.integers(min_value=0, max_value=40), min_size=14, max_size=80)


@given(counts=series, extra=st.integers(min_value=1, max_value=30))
def test_more_overdoses_today_never_make_today_less_unusual(counts: list[int], extra: int) -> None:
    before = ewma_last([float(c) for c in counts])
    after = ewma_last([float(c) for c in counts[:-1]] + [float(counts[-1] + extra)])
    assert before is not None
    assert after is not None
    assert after.statistic >= before.statistic
    assert after.p_value <= before.p_value


@given(counts=series, shift=st.integers(min_value=1, max_value=50))
def test_adding_the_same_number_every_day_changes_nothing(counts: list[int], shift: int) -> None:
    plain = ewma([float(c) for c in counts])
    shifted = ewma([float(c + shift) for c in counts])
    for a, b in zip(plain, shifted, strict=True):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert b.statistic == pytest.approx(a.statistic, abs=1e-6)
            assert b.level == a.level or abs(a.p_value - b.p_value) < 1e-6


# --------------------------------------------------------------------------- ODMAP


def _times(*hours: float) -> list[datetime]:
    return [NOW - timedelta(hours=h) for h in hours]


def test_odmap_counts_the_window_up_to_the_new_overdose() -> None:
    incidents = _times(30, 20, 10, 5, 0)
    spike = odmap(incidents, NOW, OdmapParams(threshold=4))
    assert spike is not None
    assert spike.observed == 4
    assert spike.window_start == NOW - timedelta(hours=20)
    assert spike.window_end == NOW
    assert odmap(incidents, NOW, OdmapParams(threshold=5)) is None


def test_odmap_sees_a_late_report_complete_a_window_that_ends_later() -> None:
    incidents = _times(3, 2, 1)
    late = NOW - timedelta(hours=20)
    spike = odmap([*incidents, late], late, OdmapParams(threshold=4))
    assert spike is not None
    assert spike.observed == 4
    assert (spike.window_start, spike.window_end) == (late, NOW - timedelta(hours=1))


def test_odmap_window_ends_are_inclusive_and_times_must_be_aware() -> None:
    incidents = _times(24, 0)
    assert odmap(incidents, NOW, OdmapParams(threshold=2)) is not None
    assert odmap(_times(24.01, 0), NOW, OdmapParams(threshold=2)) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        odmap([NOW.replace(tzinfo=None)], NOW)
    with pytest.raises(ValueError, match="at least 2"):
        OdmapParams(threshold=1)


@given(
    offsets=st.lists(st.integers(min_value=0, max_value=72 * 60), min_size=1, max_size=30),
    threshold=st.integers(min_value=2, max_value=8),
)
def test_odmap_agrees_with_counting_every_window(offsets: list[int], threshold: int) -> None:
    times = [NOW - timedelta(minutes=m) for m in offsets]
    at = times[0]
    window = timedelta(hours=24)
    # By brute force: the windows [end - 24 h, end] that hold `at`, for each possible end.
    best = 0
    for end in times:
        if end - window <= at <= end:
            best = max(best, sum(1 for t in times if end - window <= t <= end))
    spike = odmap(times, at, OdmapParams(threshold=threshold))
    if best >= threshold:
        assert spike is not None
        assert spike.observed == best
    else:
        assert spike is None
