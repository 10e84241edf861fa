"""The dashboard: its chart specifications (marks drawn, hidden figures never drawn, the table
behind each chart), the page assembled from Reporting I's figures, who may see it, its sign-in
cookie and its security headers. The browser tests are in tests/e2e/test_dashboard_e2e.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.reporting.dashboard.charts import (
    counties_heat_map,
    first_attempt_by_month,
    funnel,
    overdoses_by_week,
    supplies_by_month,
    trend,
)
from services.reporting.dashboard.render import SvgRenderer
from services.reporting.dashboard.signals import AlertView, FeedView
from services.reporting.dashboard.views import COOKIE, SESSION_SECONDS
from tests.reporting_world import History, World, reporting_world

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
Q1 = {"from": "2025-01-01", "to": "2025-03-31"}


def row(
    value: float | None, *, suppressed: bool = False, display: str | None = None
) -> dict[str, Any]:
    if suppressed:
        return {"value": None, "suppressed": True, "display": display or "<10"}
    shown = display if display is not None else (f"{value:g}" if value is not None else "n/a")
    return {"value": value, "suppressed": False, "display": shown}


def data_marks(svg: str) -> int:
    """Bars, cells and points Vega drew (not axes, legends or labels): the paths of its
    rect and symbol mark groups."""
    count = 0
    for match in re.finditer(r'<g class="mark-(?:rect|symbol) role-mark[^"]*"[^>]*>', svg):
        if not match.group().endswith("/>"):  # an empty group closes itself
            count += svg[match.end() : svg.index("</g>", match.end())].count("<path")
    return count


@pytest.fixture(scope="module")
def renderer() -> SvgRenderer:
    return SvgRenderer(workers=1)


WEEKS = ["2025-W01", "2025-W02", "2025-W03", "2025-W04", "2025-W05"]


def test_weekly_chart_draws_shown_cells_and_never_a_hidden_one(renderer: SvgRenderer) -> None:
    cells = {
        (w, s): row(n) for w, s, n in [
            ("2025-W01", "ems", 12), ("2025-W01", "ed", 0), ("2025-W02", "ems", 15),
            ("2025-W03", "ems", 14), ("2025-W04", "ems", 20), ("2025-W05", "ems", 11),
        ]
    }  # fmt: skip
    cells[("2025-W02", "ed")] = row(None, suppressed=True)
    cells[("2025-W03", "ed")] = row(None, suppressed=True, display="*")
    cells |= {(w, "ed"): row(10) for w in ("2025-W04", "2025-W05")}
    totals = {w: row(n) for w, n in zip(WEEKS, [12, 19, 17, 30, 21], strict=True)}
    chart = overdoses_by_week(WEEKS, ["ems", "ed"], cells, totals)
    # W01: EMS (ED is 0); W02, W03: their totals alone, grey (ED hidden, so EMS would tell
    # it); W04, W05: EMS and ED
    assert (chart.marks, chart.hidden) == (7, 2)
    bars = [d for d in chart.spec["data"]["values"] if d["kind"] == "bar"]
    assert [(d["week"], d["source"], d["n"]) for d in bars][:3] == [
        ("2025-W01", "EMS", 12),
        ("2025-W02", "All (split hidden)", 19),
        ("2025-W03", "All (split hidden)", 17),
    ]
    assert chart.columns == ("Week", "EMS", "ED", "All", "4-week average")
    assert chart.rows[1] == ("2025-W02", "15", "<10", "19", "")
    assert chart.rows[2][2] == "*"
    assert chart.rows[3][-1] == "19.5"  # (12 + 19 + 17 + 30) / 4
    assert "2 figures are hidden" in chart.summary
    assert "most in one week: 30 (2025-W04)" in chart.summary
    svg = renderer.render_now(chart.spec)
    assert data_marks(svg) == chart.marks
    assert 'class="mark-line role-mark' in svg


def test_the_trend_breaks_where_a_week_is_hidden() -> None:
    totals = {w: row(n) for w, n in zip(WEEKS, [10, 20, 30, 40, 50], strict=True)}
    assert trend(WEEKS, totals) == [None, None, None, 25.0, 35.0]
    totals["2025-W02"] = row(None, suppressed=True)
    # an average over a hidden week would give it away
    assert trend(WEEKS, totals) == [None, None, None, None, None]


def test_funnel_shows_every_step_and_draws_the_shown_ones(renderer: SvgRenderer) -> None:
    overall = {
        "people_referred": row(40),
        "people_attempted": row(31),
        "people_reached": row(18),
        "people_engaged": row(12),
        "referrals_made": row(None, suppressed=True),
        "referrals_care_started": row(0),
        "reach_rate": row(0.5806, display="58.1%"),
        "engagement_rate": row(0.6667, display="66.7%"),
    }
    chart = funnel(overall)
    assert (chart.marks, chart.hidden) == (4, 1)
    assert [r[0] for r in chart.rows] == [
        "Referred", "Attempted", "Reached", "Engaged", "Referred on", "Care started",
    ]  # fmt: skip
    assert chart.rows[2] == ("Reached", "18", "58.1%")
    assert chart.rows[4] == ("Referred on", "<10", "")
    assert "referred on <10" in chart.summary
    svg = renderer.render_now(chart.spec)
    assert data_marks(svg) == 4
    assert ">&lt;10</text>" in svg  # the hidden step is labelled, not drawn


def test_first_attempt_and_supplies_by_month(renderer: SvgRenderer) -> None:
    months = ["2025-01", "2025-02", "2025-03"]
    within_24 = {"2025-01": row(0.5, display="50.0%"), "2025-02": row(None, suppressed=True,
                 display="*"), "2025-03": row(0.75, display="75.0%")}  # fmt: skip
    within_72 = {m: row(0.9, display="90.0%") for m in months}
    median = {m: row(20.5) for m in months}
    overall = {"first_attempt_within_24h": row(0.6, display="60.0%")}
    chart = first_attempt_by_month(months, within_24, within_72, median, overall)
    assert (chart.marks, chart.hidden) == (5, 1)
    assert chart.rows[1] == ("2025-02", "*", "90.0%", "20.5")
    assert "60.0% within 24 hours" in chart.summary
    assert data_marks(renderer.render_now(chart.spec)) == 5

    kits = {"2025-01": row(30), "2025-02": row(None, suppressed=True), "2025-03": row(0)}
    strips = {m: row(100) for m in months}
    supplies = supplies_by_month(months, kits, strips)
    assert (supplies.marks, supplies.hidden) == (4, 1)
    assert supplies.rows[1] == ("2025-02", "<10", "100")
    assert data_marks(renderer.render_now(supplies.spec)) == 4


def test_a_text_xml_cannot_hold_is_replaced_before_rendering(renderer: SvgRenderer) -> None:
    """vl-convert aborts the whole process on such a character (found by schemathesis: a
    county filter carrying U+0006); a county name from a feed could carry one too."""
    spec = {
        "title": "Guil\u0006ford",
        "data": {"values": [{"a": "A\u0000\ud800", "b": 1}]},
        "mark": "bar",
        "encoding": {
            "x": {"field": "a", "type": "nominal"},
            "y": {"field": "b", "type": "quantitative"},
        },
    }
    svg = renderer.render_now(spec)
    assert "Guil\ufffdford" in svg
    assert data_marks(svg) == 1


def test_heat_map_has_a_cell_for_every_county_and_month(renderer: SvgRenderer) -> None:
    months = ["2025-01", "2025-02"]
    counties = ["Guilford", "Wake", "<script>alert(1)</script>"]
    cells = {(m, c): row(15) for m in months for c in counties}
    cells[("2025-02", "Wake")] = row(None, suppressed=True)
    cells[("2025-01", "Wake")] = row(None, suppressed=True, display="*")
    totals = {c: row(30) for c in counties}
    chart = counties_heat_map(months, counties, cells, totals)
    assert (chart.marks, chart.hidden) == (6, 2)
    assert chart.rows[1] == ("Wake", "*", "<10", "30")
    svg = renderer.render_now(chart.spec)
    assert data_marks(svg) == 6
    assert "<script" not in svg  # a county name is text, never markup


def test_the_renderer_remembers_a_spec_it_drew(renderer: SvgRenderer) -> None:
    chart = funnel({"people_referred": row(12)})
    first = renderer.render_now(chart.spec)
    assert renderer.render_now(dict(chart.spec)) is first


# -- the page, through the service ------------------------------------------------------


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with reporting_world(tmp_path, now=NOW) as w:
        h = History()
        start = datetime(2025, 1, 6, 15, tzinfo=UTC)
        for i in range(14):  # Guilford: 14 overdoses, Forsyth: 3, Wake: 12
            episode = h.overdose(at=start + timedelta(days=i), county="Guilford")
            h.attempt(episode, at=start + timedelta(days=i, hours=2), outcome="reached")
            h.services(episode, at=start + timedelta(days=i, hours=3), naloxone=1)
        for i in range(3):
            h.overdose(at=start + timedelta(days=20 + i), county="Forsyth")
        for i in range(12):
            h.overdose(at=start + timedelta(days=40 + i), county="Wake")
        await w.deliver(h.envelopes)
        yield w


def sections(html: str) -> dict[str, tuple[int, int]]:
    return {
        m.group(1): (int(m.group(2)), int(m.group(3)))
        for m in re.finditer(r'<section class="card chart" id="([\w-]+)" data-marks="(\d+)" '
                             r'data-hidden="(\d+)"', html)
    }  # fmt: skip


async def test_an_analyst_sees_the_published_page(world: World) -> None:
    r = await world.client.get("/dashboard", params=Q1, headers=world.auth("analyst"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert r.headers["cache-control"] == "no-store"
    html = r.text
    found = sections(html)
    assert list(found) == ["overdoses-by-week", "funnel", "first-attempt", "supplies", "counties"]
    # the heat map: 3 counties x 3 months; Forsyth's 3 (and what would reveal them) hidden
    assert found["counties"][0] == 9
    assert found["counties"][1] >= 1
    assert "&lt;10" in html
    assert "Published figures" in html
    assert "INTERNAL" not in html
    assert 'name="view"' not in html  # an analyst is not offered the internal view
    assert 'data-metric="overdoses_reported"><span class="value">29<' in html
    # the service's own alerts and feeds (LiveSignals): none open here, every feed listed
    assert "No open alerts." in html
    assert "not available yet" not in html
    for chart_id in found:
        svg = html.split(f'id="{chart_id}"', 1)[1].split("</figure>", 1)[0]
        assert data_marks(svg) == found[chart_id][0], chart_id
    assert "http://" not in html.replace("http://www.w3.org/", "")  # nothing from elsewhere
    assert "https://" not in html.replace("https://vega.github.io/schema", "")


async def test_a_lead_may_ask_for_the_internal_view(world: World) -> None:
    lead = world.auth("team_lead")
    published = await world.client.get("/dashboard", params=Q1, headers=lead)
    assert 'name="view" value="internal"' in published.text
    r = await world.client.get("/dashboard", params=Q1 | {"view": "internal"}, headers=lead)
    assert r.status_code == 200
    assert "INTERNAL FIGURES - NOT FOR PUBLICATION" in r.text
    assert "&lt;10" not in r.text
    assert sections(r.text)["counties"][1] == 0
    denied = await world.client.get(
        "/dashboard", params=Q1 | {"view": "internal"}, headers=world.auth("analyst")
    )
    assert denied.status_code == 403
    assert 'data-code="internal_view_forbidden"' in denied.text


async def test_the_county_filter_narrows_every_chart(world: World) -> None:
    r = await world.client.get(
        "/dashboard", params=Q1 | {"county": "Guilford"}, headers=world.auth("analyst")
    )
    assert r.status_code == 200
    found = sections(r.text)
    assert found["counties"] == (3, 0)  # one row, three months
    assert 'data-metric="overdoses_reported"><span class="value">14<' in r.text
    assert '<option value="Guilford" selected>' in r.text
    assert "All sources" in r.text


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"from": "2025-13-01", "to": "2025-03-31"}, 422, "validation_error"),
        ({"from": "2025-03-31", "to": "2025-01-01"}, 422, "invalid_range"),
        ({"from": "2020-01-01", "to": "2025-03-31"}, 422, "range_too_large"),
        (Q1 | {"view": "secret"}, 422, "validation_error"),
        (Q1 | {"county": "x" * 101}, 422, "validation_error"),
        (Q1 | {"county": "Guil\u0006ford"}, 422, "validation_error"),
        (Q1 | {"county": "Guilford\u009b"}, 422, "validation_error"),
    ],
)
async def test_bad_filters_get_a_precise_error(
    world: World, params: dict[str, str], status: int, code: str
) -> None:
    r = await world.client.get("/dashboard", params=params, headers=world.auth("analyst"))
    assert r.status_code == status
    assert f'data-code="{code}"' in r.text


@pytest.mark.parametrize("role", ["peer", "deputy"])
async def test_peers_and_deputies_see_no_dashboard(world: World, role: str) -> None:
    r = await world.client.get("/dashboard", headers=world.auth(role))
    assert r.status_code == 403
    assert 'data-code="forbidden_role"' in r.text
    session = await world.client.post("/dashboard/session", headers=world.auth(role))
    assert session.status_code == 403
    assert COOKIE not in session.headers.get("set-cookie", "")


async def test_without_a_token_the_page_asks_to_sign_in(world: World) -> None:
    r = await world.client.get("/dashboard")
    assert r.status_code == 401
    assert "Sign in" in r.text
    assert "/dashboard/static/dashboard.js" in r.text
    bad = await world.client.get("/dashboard", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401


async def test_a_sign_in_link_becomes_a_short_strict_cookie(world: World) -> None:
    r = await world.client.post("/dashboard/session", headers=world.auth("team_lead"))
    assert r.status_code == 204
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/dashboard" in cookie
    max_age = int(re.search(r"Max-Age=(\d+)", cookie).group(1))  # type: ignore[union-attr]
    assert 0 < max_age <= SESSION_SECONDS
    token = cookie.split(";", 1)[0].split("=", 1)[1]
    world.client.cookies.clear()  # sent by hand below, as a browser would
    page = await world.client.get("/dashboard", params=Q1, headers={"Cookie": f"{COOKIE}={token}"})
    assert page.status_code == 200
    assert 'action="/dashboard/signout"' in page.text
    out = await world.client.post("/dashboard/signout", headers={"Cookie": f"{COOKIE}={token}"})
    assert out.status_code == 303
    assert f'{COOKIE}=""' in out.headers["set-cookie"]
    stale = await world.client.get("/dashboard", headers={"Cookie": f"{COOKIE}=not-a-token"})
    assert stale.status_code == 401
    assert f'{COOKIE}=""' in stale.headers["set-cookie"]  # a bad cookie is dropped


async def test_static_files_are_served_from_the_service(world: World) -> None:
    css = await world.client.get("/dashboard/static/dashboard.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert "@media print" in css.text
    assert "@import" not in css.text
    assert "url(" not in css.text
    js = await world.client.get("/dashboard/static/dashboard.js")
    assert js.status_code == 200
    assert "replaceState" in js.text
    missing = await world.client.get("/dashboard/static/../app.py")
    assert missing.status_code == 404


class _Signals:
    """What spike alerts and feed health will give the dashboard (issue 16's second half)."""

    async def open_alerts(self, program_id: str) -> list[AlertView]:
        assert program_id == "demo"
        return [
            AlertView(
                county="Guilford",
                detector="ewma",
                level="alert",
                observed=9,
                expected=2.25,
                window_start=NOW - timedelta(days=1),
                window_end=NOW,
            )
        ]

    async def feeds(self, program_id: str) -> list[FeedView]:
        return [FeedView("cone-health", "ed", "silent", NOW - timedelta(hours=5), "quiet 5 h")]


async def test_alerts_and_feeds_panels_show_what_signals_give(world: World) -> None:
    world.app.state.signals = _Signals()
    r = await world.client.get("/dashboard", params=Q1, headers=world.auth("analyst"))
    assert r.status_code == 200
    alerts = r.text.split('id="alerts"', 1)[1].split("</section>", 1)[0]
    assert '<th scope="row">Guilford</th><td>alert</td><td>ewma</td><td>9</td><td>2.2' in alerts
    feeds = r.text.split('id="feeds"', 1)[1].split("</section>", 1)[0]
    assert "cone-health" in feeds
    assert "<td>silent</td>" in feeds
