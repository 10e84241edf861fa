"""`portline reporting backtest`: the detectors over history, per county, read-only."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from services.reporting.backtest import backtest_program, ewma_days, odmap_spikes, print_backtest
from services.reporting.models import ALERT
from services.reporting.programs import ProgramBook
from services.reporting.spikes import EwmaParams, OdmapParams
from shared.cli import build_parser
from shared.settings import Settings
from tests.reporting_world import History, reporting_world

NOW = datetime(2025, 6, 1, 18, tzinfo=UTC)
TODAY = date(2025, 6, 1)


def test_ewma_days_counts_the_warning_and_alert_days_of_the_range() -> None:
    flat = {TODAY - timedelta(days=i): 1 for i in range(200)}
    assert ewma_days(flat, TODAY - timedelta(days=30), TODAY, EwmaParams()) == (0, 0)
    spiked = flat | {TODAY - timedelta(days=10): 9}
    # one alert day: the smoothed value is pulled back to the limit after it
    assert ewma_days(spiked, TODAY - timedelta(days=30), TODAY, EwmaParams()) == (0, 1)
    # the same spike before the range is not counted
    assert ewma_days(spiked, TODAY - timedelta(days=5), TODAY, EwmaParams()) == (0, 0)


def test_odmap_spikes_that_overlap_count_once() -> None:
    params = OdmapParams(threshold=3)
    start = NOW - timedelta(days=10)
    burst = [start + timedelta(hours=h) for h in (1, 2, 3, 4, 5)]  # one spike, growing
    later = [start + timedelta(days=3, hours=h) for h in (1, 2, 3)]  # another
    lone = [start + timedelta(days=5)]
    assert odmap_spikes([*burst, *later, *lone], start, NOW, params) == 2
    assert odmap_spikes([*burst, *later], start + timedelta(days=1), NOW, params) == 1


async def test_the_backtest_reads_the_read_models_and_writes_nothing(tmp_path: Path) -> None:
    async with reporting_world(tmp_path, now=NOW) as world:
        h = History()
        for i in range(120, 0, -1):
            if i % 2 == 0:
                h.overdose(at=NOW - timedelta(days=i), county="Guilford")
                h.overdose(at=NOW - timedelta(days=i), county="Wake")
        for k in range(7):  # 30 days ago, Guilford: seven in a few hours
            h.overdose(at=NOW - timedelta(days=31, hours=k), county="Guilford")
        await world.deliver(h.envelopes, batch=500)
        settings = Settings(
            env="development",
            database_url=f"sqlite+aiosqlite:///{tmp_path}/{{service}}.db",
            var_dir=tmp_path,
        )
        rules = ProgramBook().for_program("demo")
        rows = await backtest_program(settings, rules, TODAY - timedelta(days=60), TODAY)
        by_county = {r.county: r for r in rows}
        assert set(by_county) == {"Guilford", "Wake"}
        guilford, wake = by_county["Guilford"], by_county["Wake"]
        assert guilford.days == 61
        assert guilford.overdoses == wake.overdoses + 7
        assert guilford.ewma_alerts is not None
        assert guilford.ewma_alerts >= 1
        assert guilford.odmap_spikes == 1
        assert (wake.ewma_alerts, wake.odmap_spikes) == (0, 0)

        only_odmap = await backtest_program(
            settings, rules, TODAY - timedelta(days=60), TODAY, ("odmap",)
        )
        assert {r.ewma_alerts for r in only_odmap} == {None}

        out = io.StringIO()
        print_backtest(rows, rules, out)
        text = out.getvalue()
        assert "EWMA baseline 28 d" in text
        assert "ODMAP 5 in 24 h" in text
        assert any(line.startswith("Guilford") for line in text.splitlines())

        async with world.runtime.sessions() as session:  # found in history, raised nowhere
            assert (
                await session.execute(sa.select(sa.func.count()).select_from(ALERT))
            ).scalar() == 0


def test_the_cli_takes_the_range_program_and_detector() -> None:
    args = build_parser().parse_args(
        [
            "reporting",
            "backtest",
            "--from",
            "2025-01-01",
            "--to",
            "2025-03-31",
            "--program",
            "demo",
            "--detector",
            "ewma",
        ]
    )
    assert (args.start, args.end, args.program, args.detector) == (
        date(2025, 1, 1),
        date(2025, 3, 31),
        "demo",
        "ewma",
    )
