"""Spike alerts through the reporting service (SQLite, its real consumer path): a county's
baseline then a spike raises one alert, published once as SpikeDetected; warnings become
alerts; ODMAP spikes that grow stay one alert; old history raises nothing; leads acknowledge
or dismiss with a sealed note; per-program detector settings."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from services.reporting.alerts import ewma_findings, odmap_findings
from services.reporting.models import ALERT_DECISION
from services.reporting.programs import ProgramBook, ProgramConfigError
from shared.envelope import Envelope
from shared.outbox import OUTBOX
from shared.topics import REPORTING_ALERTS
from tests.reporting_world import SEALED, History, World, reporting_world

NOW = datetime(2025, 6, 1, 18, tzinfo=UTC)  # 14:00 in New York
TODAY = date(2025, 6, 1)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with reporting_world(tmp_path, now=NOW) as w:
        yield w


def baseline(h: History, county: str = "Guilford", days: int = 60, every: int = 2) -> None:
    """One overdose every `every` days for `days` days before today (noon, local time)."""
    for i in range(days, 0, -1):
        if i % every == 0:
            h.overdose(at=NOW - timedelta(days=i, hours=2), county=county)


PATTERN = (1, 2, 0, 1, 3, 1, 0, 2, 1, 1)


def varied_baseline(h: History, county: str = "Guilford", days: int = 90) -> None:
    """Counts that vary from day to day (mean 1.2): 4 in a day is a warning, 6 an alert."""
    for i in range(days, 0, -1):
        for k in range(PATTERN[(days - i) % len(PATTERN)]):
            h.overdose(at=NOW - timedelta(days=i, hours=2, minutes=-10 * k), county=county)


def spike(h: History, n: int, county: str = "Guilford", hours: float = 6) -> None:
    for i in range(n):
        h.overdose(at=NOW - timedelta(hours=hours) + timedelta(minutes=20 * i), county=county)


async def published(world: World) -> list[Envelope]:
    async with world.runtime.sessions() as session:
        rows = await session.execute(
            sa.select(OUTBOX.c.payload)
            .where(OUTBOX.c.topic == REPORTING_ALERTS.name)
            .order_by(OUTBOX.c.id)
        )
        return [Envelope.from_bytes(r.payload) for r in rows]


async def alerts(world: World, role: str = "team_lead", **params: Any) -> list[dict[str, Any]]:
    r = await world.client.get("/v1/alerts", params=params, headers=world.auth(role))
    assert r.status_code == 200, r.text
    body: list[dict[str, Any]] = r.json()["alerts"]
    return body


# -- the detectors over a county (pure) ------------------------------------------------------


def test_a_flat_county_raises_nothing_and_a_spike_today_an_alert() -> None:
    rules = ProgramBook().for_program("demo")
    flat = {TODAY - timedelta(days=i): 1 for i in range(1, 90)}
    assert ewma_findings(rules, "Guilford", flat | {TODAY: 1}, TODAY) == []
    found = ewma_findings(rules, "Guilford", flat | {TODAY: 9}, TODAY)
    assert [(f.detector, f.level, f.observed) for f in found] == [("ewma", "alert", 9)]
    (alert,) = found
    assert alert.expected == pytest.approx(1.0)
    assert alert.p_value is not None
    assert alert.p_value < 0.01
    assert alert.window_end - alert.window_start == timedelta(days=1)
    assert alert.window_start.astimezone(rules.zone).date() == TODAY


def test_yesterday_is_tested_too_for_its_late_reports() -> None:
    rules = ProgramBook().for_program("demo")
    flat = {TODAY - timedelta(days=i): 1 for i in range(2, 90)}
    found = ewma_findings(rules, "Guilford", flat | {TODAY - timedelta(days=1): 9}, TODAY)
    assert [f.window_start.astimezone(rules.zone).date() for f in found] == [
        TODAY - timedelta(days=1)
    ]


def test_odmap_finds_n_in_24_hours_only_among_recent_overdoses() -> None:
    rules = ProgramBook().for_program("demo")
    four = [NOW - timedelta(hours=h) for h in (1, 3, 5, 7)]
    assert odmap_findings(rules, "Wake", four, NOW) == []
    five = [*four, NOW - timedelta(hours=20)]
    (found,) = odmap_findings(rules, "Wake", five, NOW)
    assert (found.level, found.observed, found.threshold) == ("alert", 5, 5)
    assert found.window_start == NOW - timedelta(hours=20)
    assert found.window_end == NOW - timedelta(hours=1)
    # five two days ago are no spike now
    old = [t - timedelta(days=2) for t in five]
    assert odmap_findings(rules, "Wake", old, NOW) == []


_RANK = {None: 0, "warning": 1, "alert": 2}


def _today_level(counts: dict[date, int]) -> str | None:
    rules = ProgramBook().for_program("demo")
    found = [
        f
        for f in ewma_findings(rules, "Guilford", counts, TODAY)
        if f.window_start.astimezone(rules.zone).date() == TODAY
    ]
    return found[0].level if found else None


@settings(max_examples=40, deadline=None)
@given(
    history=st.lists(st.integers(0, 6), min_size=20, max_size=90),
    today=st.integers(0, 12),
    more=st.integers(1, 6),
)
def test_more_overdoses_today_never_lower_today_s_level(
    history: list[int], today: int, more: int
) -> None:
    counts = {TODAY - timedelta(days=i + 1): n for i, n in enumerate(history)}
    before = _today_level(counts | {TODAY: today})
    after = _today_level(counts | {TODAY: today + more})
    assert _RANK[after] >= _RANK[before]


@settings(max_examples=40, deadline=None)
@given(
    hours=st.lists(st.floats(0, 47.9), max_size=12),
    extra=st.floats(0, 23.9),
)
def test_another_overdose_never_undoes_an_odmap_spike(hours: list[float], extra: float) -> None:
    rules = ProgramBook().for_program("demo")
    times = [NOW - timedelta(hours=h) for h in hours]
    before = odmap_findings(rules, "Wake", times, NOW)
    after = odmap_findings(rules, "Wake", [*times, NOW - timedelta(hours=extra)], NOW)
    assert len(after) >= len(before)
    if before:
        assert after[0].observed >= before[0].observed


# -- through the service ---------------------------------------------------------------------


async def test_a_spike_after_a_baseline_raises_one_alert_published_once(world: World) -> None:
    h = History()
    baseline(h)
    baseline(h, county="Wake")
    await world.deliver(h.envelopes)
    assert await alerts(world) == []

    h.envelopes.clear()
    spike(h, 8)
    await world.deliver(h.envelopes)  # seen in the batch that brought the reports

    found = await alerts(world)
    counties = {(a["county"], a["detector"], a["level"]) for a in found}
    assert counties == {("Guilford", "ewma", "alert"), ("Guilford", "odmap", "alert")}
    ewma = next(a for a in found if a["detector"] == "ewma")
    assert ewma["observed"] == 8
    assert ewma["expected"] == pytest.approx(0.5, abs=0.1)
    assert ewma["status"] == "open"
    assert ewma["state"] == "NC"

    events = await published(world)
    assert sorted(e.event().detector for e in events) == ["ewma", "odmap"]  # type: ignore[attr-defined]
    assert all(e.subject == "demo" and e.type == "SpikeDetected" for e in events)

    await world.app.state.watch.run_once(world.runtime.uow)  # the timer finds it again
    await world.app.state.watch.run_once(world.runtime.uow)
    assert len(await alerts(world)) == 2
    assert len(await published(world)) == 2


async def test_alerts_name_no_person_report_or_episode(world: World) -> None:
    h = History()
    baseline(h)
    spike(h, 8)
    await world.deliver(h.envelopes)
    ids = {
        str(e.event().model_dump().get(k))
        for e in h.envelopes
        for k in ("case_id", "person_id", "episode_id", "report_id")
    } - {"None"}
    events = await published(world)
    assert events
    for envelope in events:
        text = envelope.to_bytes().decode()
        assert SEALED not in text
        assert not any(i in text for i in ids)
        assert set(envelope.data) == {
            "alert_id",
            "program_id",
            "county",
            "state",
            "detector",
            "level",
            "observed",
            "expected",
            "p_value",
            "threshold",
            "window_start",
            "window_end",
            "detected_at",
        }


async def test_a_warning_that_grows_is_published_again_as_an_alert(world: World) -> None:
    h = History()
    varied_baseline(h)
    await world.deliver(h.envelopes)
    h.envelopes.clear()
    spike(h, 4, hours=10)  # four today: a warning
    await world.deliver(h.envelopes)
    (warning,) = [a for a in await alerts(world) if a["detector"] == "ewma"]
    assert warning["level"] == "warning"
    h.envelopes.clear()
    spike(h, 2, hours=4)  # six today: an alert
    await world.deliver(h.envelopes)
    (alert,) = [a for a in await alerts(world) if a["detector"] == "ewma"]
    assert alert["alert_id"] == warning["alert_id"]
    assert (alert["level"], alert["observed"]) == ("alert", 6)
    ewma_events = [e.data for e in await published(world) if e.data["detector"] == "ewma"]
    assert [(e["alert_id"], e["level"]) for e in ewma_events] == [
        (warning["alert_id"], "warning"),
        (warning["alert_id"], "alert"),
    ]


async def test_an_odmap_spike_that_grows_stays_one_alert(world: World) -> None:
    h = History()
    spike(h, 5, county="Wake", hours=8)
    await world.deliver(h.envelopes)
    h.envelopes.clear()
    spike(h, 2, county="Wake", hours=1)
    await world.deliver(h.envelopes)
    (alert,) = [a for a in await alerts(world) if a["detector"] == "odmap"]
    assert alert["observed"] == 7
    assert alert["threshold"] == 5
    assert len([e for e in await published(world) if e.data["detector"] == "odmap"]) == 1


async def test_an_earlier_overdose_reported_late_widens_the_spike_backwards(world: World) -> None:
    """Found by the e2e on a loaded machine: reports arrive in any order."""
    h = History()
    spike(h, 5, county="Wake", hours=4)  # from 4 h ago, 20 minutes apart
    await world.deliver(h.envelopes)
    h.envelopes.clear()
    h.overdose(at=NOW - timedelta(hours=5), county="Wake")  # before them, sent last
    await world.deliver(h.envelopes)
    (alert,) = [a for a in await alerts(world) if a["detector"] == "odmap"]
    assert alert["observed"] == 6
    assert datetime.fromisoformat(alert["window_start"]) == NOW - timedelta(hours=5)


async def test_history_replayed_raises_nothing(world: World) -> None:
    """A spike long ago (a backlog, a replay): today's test is all that is asked."""
    h = History()
    long_ago = NOW - timedelta(days=200)
    for i in range(60, 0, -2):
        h.overdose(at=long_ago - timedelta(days=i), county="Guilford")
    for i in range(9):
        h.overdose(at=long_ago + timedelta(minutes=10 * i), county="Guilford")
    await world.deliver(h.envelopes)
    await world.app.state.watch.run_once(world.runtime.uow)
    assert await alerts(world) == []


async def test_an_unknown_county_raises_nothing(world: World) -> None:
    h = History()
    spike(h, 9, county=None)  # type: ignore[arg-type]
    await world.deliver(h.envelopes)
    await world.app.state.watch.run_once(world.runtime.uow)
    assert await alerts(world) == []


# -- acknowledging and dismissing ------------------------------------------------------------


async def _one_alert(world: World) -> str:
    h = History()
    spike(h, 6, county="Wake")
    await world.deliver(h.envelopes)
    found = await alerts(world)  # a county quiet for months: both detectors
    assert {a["detector"] for a in found} == {"ewma", "odmap"}
    return str(next(a for a in found if a["detector"] == "odmap")["alert_id"])


async def test_a_lead_acknowledges_with_a_sealed_note(world: World) -> None:
    alert_id = await _one_alert(world)
    note = "Called the Wake syringe program; John at the shelter says a bad batch"
    r = await world.client.post(
        f"/v1/alerts/{alert_id}/acknowledge", json={"note": note}, headers=world.auth("team_lead")
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["status"], body["note"], body["decided_by"]) == (
        "acknowledged",
        note,
        "team_lead-1",
    )
    assert datetime.fromisoformat(body["decided_at"]) == NOW

    async with world.runtime.sessions() as session:
        (stored,) = (await session.execute(sa.select(ALERT_DECISION.c.note_sealed))).scalars()
    assert stored is not None
    assert "John" not in stored
    assert "Wake" not in stored

    (seen,) = [a for a in await alerts(world, role="analyst") if a["alert_id"] == alert_id]
    assert seen["status"] == "acknowledged"
    assert seen["note"] is None
    (seen,) = await alerts(world, role="admin", status="acknowledged")
    assert seen["note"] == note
    assert [a["detector"] for a in await alerts(world, status="open")] == ["ewma"]
    assert all("John" not in e.to_bytes().decode() for e in await published(world))


async def test_a_decided_alert_cannot_be_decided_again(world: World) -> None:
    alert_id = await _one_alert(world)
    lead = world.auth("team_lead")
    r = await world.client.post(f"/v1/alerts/{alert_id}/dismiss", headers=lead)
    assert r.status_code == 200
    assert r.json()["status"] == "dismissed"
    assert r.json()["note"] is None
    again = await world.client.post(f"/v1/alerts/{alert_id}/acknowledge", headers=lead)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "alert_decided"


async def test_deciding_errors(world: World) -> None:
    alert_id = await _one_alert(world)
    r = await world.client.post(f"/v1/alerts/{alert_id}/acknowledge", headers=world.auth("analyst"))
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden_role")
    r = await world.client.post(
        f"/v1/alerts/{alert_id}/acknowledge", headers=world.auth("team_lead", program="other")
    )
    assert (r.status_code, r.json()["error"]["code"]) == (404, "alert_not_found")
    r = await world.client.post(
        f"/v1/alerts/{uuid.uuid4()}/dismiss", headers=world.auth("team_lead")
    )
    assert r.status_code == 404
    r = await world.client.post(
        f"/v1/alerts/{alert_id}/dismiss", json={"note": "x" * 2001}, headers=world.auth("admin")
    )
    assert r.status_code == 422
    r = await world.client.post("/v1/alerts/not-a-uuid/dismiss", headers=world.auth("admin"))
    assert r.status_code == 422
    r = await world.client.get(
        "/v1/alerts", params={"since": "2025-06-01T00:00:00"}, headers=world.auth("analyst")
    )
    assert (r.status_code, r.json()["error"]["code"]) == (422, "naive_datetime")
    for role in ("peer", "deputy"):
        r = await world.client.get("/v1/alerts", headers=world.auth(role))
        assert r.status_code == 403
    r = await world.client.get("/v1/alerts", headers=world.auth("analyst", program="other"))
    assert r.json()["alerts"] == []
    assert len(await alerts(world, role="analyst")) == 2


# -- per-program detectors -------------------------------------------------------------------


async def test_a_program_may_set_its_detectors(tmp_path: Path) -> None:
    programs = tmp_path / "programs.toml"
    programs.write_text(
        "[programs.demo.spikes]\ndetectors = ['odmap']\nodmap_threshold = 3\n"
        "odmap_window_hours = 12\n",
        "utf-8",
    )
    async with reporting_world(tmp_path, now=NOW, reporting_programs=programs) as world:
        h = History()
        baseline(h)
        spike(h, 3, hours=6)
        await world.deliver(h.envelopes)
        found = await alerts(world)
        assert [(a["detector"], a["observed"], a["threshold"]) for a in found] == [("odmap", 3, 3)]


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ("detectors = ['cusum']", "detectors"),
        ("odmap_threshold = 1", "threshold"),
        ("ewma_alert_p = 0.2", "alert_p"),
        ("ewma_smoothing = [1.5]", "smoothing"),
        ("guard = 2", "unknown keys"),
    ],
)
def test_bad_spike_settings_are_refused_at_start(table: str, error: str) -> None:
    import tomllib

    entry = tomllib.loads(f"[programs.demo.spikes]\n{table}\n")["programs"]
    with pytest.raises(ProgramConfigError, match=error):
        ProgramBook(programs=entry)


def test_spike_settings_reach_the_detectors() -> None:
    book = ProgramBook(
        programs={"demo": {"spikes": {"ewma_smoothing": [0.4, 0.9], "ewma_baseline_days": 14}}}
    )
    rules = book.for_program("demo").spikes
    assert rules.ewma.smoothing == (0.4, 0.9)
    assert rules.ewma.baseline_days == 14
    assert rules.detectors == ("ewma", "odmap")
    assert book.for_program("other").spikes.ewma.baseline_days == 28
