"""The dashboard in a real browser (Debian's chromium, headless, driven by Playwright) against
real services: overdoses posted to intake (EMS run reports over HTTP, ED visits over MLLP),
worked in outreach, counted by reporting through Kafka.

Checks: the sign-in link's token leaves the address bar and never reaches a log; every chart
drew as many marks as its specification says and the figures are the ones GET /v1/metrics
answers; small numbers show `<10` (a county of this test's own, 3 overdoses, months back); the
filters and the lead's internal view work; a phone's viewport has no sideways scrolling; no
console errors and no request to anywhere but the service. It saves screenshots under
var/test-artifacts/; with PORTLINE_REFRESH_SCREENSHOT=1 (`make dashboard-screenshot`) it also
writes the README's docs/img/dashboard.png.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import string
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.e2e.conftest import IntakeProcess, ServiceProcess, dev_token
from tests.hl7_builder import adt, framed, hl7_time

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("PORTLINE_TEST_ARTIFACTS", ROOT / "var" / "test-artifacts"))
README_IMAGE = ROOT / "docs" / "img" / "dashboard.png"
COUNTIES = {"Guilford": 22, "Forsyth": 14, "Wake": 11, "Durham": 7}
"""EMS overdoses per county over the last six weeks (plus ED visits, all in Guilford)."""
ED_VISITS = 9
WORKED = 14
"""People a peer reaches, of those who said yes to a follow-up."""
MARKS = "g.role-mark.mark-rect > path, g.role-mark.mark-symbol > path"


def chromium() -> str:
    path = os.environ.get("PORTLINE_CHROMIUM", "/usr/bin/chromium")
    assert os.access(path, os.X_OK), (
        f"{path} is not there: run scripts/chromium.sh (make test does) or set PORTLINE_CHROMIUM"
    )
    return path


async def _eventually(
    probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 180.0
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


GIVEN = (
    "Avery", "Blake", "Casey", "Dakota", "Emerson", "Finley", "Gray", "Harper", "Indigo",
    "Jordan", "Kendall", "Logan", "Marlow", "Noel", "Oakley", "Peyton", "Quinn", "Rowan",
    "Sawyer", "Tatum", "Umber", "Vesper", "Wren", "Xavi", "Yael", "Zion",
)  # fmt: skip
_PEOPLE = itertools.count()


def _run_report(family: str, county: str, incident: datetime, consent: str) -> dict[str, Any]:
    """A run report of a person of their own: linking (issue 18) weighs names, date of birth,
    phone and the overdose itself, so people who share a given name and a birthday and whose
    family names differ by a digit are rightly taken for one. Each report here differs in all."""
    n = next(_PEOPLE)
    return {
        "pcr_number": f"PCR-{uuid.uuid4().hex[:10]}",
        "incident_at": incident.isoformat(),
        "patient": {
            "family_name": family,
            "given_name": GIVEN[n % len(GIVEN)],
            "date_of_birth": (date(1960, 1, 1) + timedelta(days=113 * n)).isoformat(),
            "phones": [f"336-555-{1000 + n:04d}"],
        },
        "scene": {"street": "10 Main St", "city": "Greensboro", "county": county},
        "impressions": ["T40.1X1A"],
        "medications": [{"rxnorm": "7242", "response": "improved"}],
        "peer_follow_up": consent,
    }


async def _post_overdoses(
    intake: IntakeProcess, tag: str, small_county: str, now: datetime
) -> None:
    rng = random.Random(tag)
    reports: list[dict[str, Any]] = []
    for county, n in COUNTIES.items():
        for i in range(n):
            incident = now - timedelta(days=rng.uniform(0.2, 41), hours=i % 5)
            consent = "declined" if i % 6 == 5 else "accepted"
            reports.append(_run_report(f"Dash{tag}{county}{i}", county, incident, consent))
    # three overdoses in a county of this test's own, 20 weeks back: a figure of 1-9
    for i in range(3):
        incident = now - timedelta(weeks=20, hours=i)
        reports.append(_run_report(f"Small{tag}{i}", small_county, incident, "accepted"))
    async with httpx.AsyncClient(base_url=intake.http, timeout=30) as client:
        for report in reports:
            posted = await client.post(
                "/v1/ems/run-reports",
                json=report,
                headers={"Authorization": f"Bearer {intake.ems_key}"},
            )
            assert posted.status_code == 200, posted.text
            assert posted.json()["results"][0]["status"] == "accepted", posted.text
    for i in range(ED_VISITS):
        admit = now - timedelta(days=rng.uniform(0.2, 41))
        message = adt(
            f"DASH{tag}{i}",
            visit=f"V{tag}{i}",
            family=f"Ed{tag}{i}",
            admit=hl7_time(admit),
            phone=f"^PRN^PH^^^336^555{rng.randint(1000, 9999)}",
        )
        (ack,) = await intake.mllp(framed(message))
        assert "MSA|AA" in ack, ack


async def _work_cases(outreach: ServiceProcess, tag: str) -> None:
    """A peer reaches WORKED people, hands over naloxone (and strips to some), refers some."""
    peer = await dev_token(outreach.env, "peer", "peer-dash")
    async with httpx.AsyncClient(base_url=outreach.http, timeout=30) as api:

        async def ours() -> list[dict[str, Any]] | None:
            r = await api.get(
                "/v1/tasks", params={"kind": "remote_contact", "limit": 200}, headers=peer
            )
            assert r.status_code == 200, r.text
            found = [
                t
                for t in r.json()["items"]
                if f"Dash{tag}" in (t["person"]["name"] or "") and t["stage"] == "due"
            ]
            return found if len(found) >= WORKED else None

        tasks = (await _eventually(ours, "the remote-contact tasks"))[:WORKED]
        for n, task in enumerate(tasks):
            claimed = await api.post(
                f"/v1/tasks/{task['id']}/claim",
                headers=peer | {"If-Match": f'"{task["version"]}"'},
            )
            assert claimed.status_code == 200, claimed.text
            attempt = await api.post(
                f"/v1/tasks/{task['id']}/attempts",
                json={"channel": "phone", "outcome": "reached"},
                headers=peer,
            )
            assert attempt.status_code == 201, attempt.text
            items = [{"kind": "naloxone_kit", "count": 2}]
            if n % 2 == 0:
                items.append({"kind": "fentanyl_test_strips", "count": 10})
            services = await api.post(
                f"/v1/cases/{task['case_id']}/services", json={"items": items}, headers=peer
            )
            assert services.status_code == 201, services.text
            if n % 3 == 0:
                referral = await api.post(
                    f"/v1/cases/{task['case_id']}/referrals",
                    json={"kind": "moud_buprenorphine", "status": "accepted"},
                    headers=peer,
                )
                assert referral.status_code == 201, referral.text


class Watch:
    """What a page did that it must not: console errors, page errors, requests elsewhere."""

    def __init__(self, base: str) -> None:
        self.origin = urlsplit(base).netloc
        self.errors: list[str] = []
        self.outside: list[str] = []

    async def attach(self, page: Page) -> None:
        async def route(route: Any) -> None:
            url = urlsplit(route.request.url)
            if url.scheme in ("data", "about") or (
                url.hostname == "127.0.0.1" and url.netloc == self.origin
            ):
                await route.continue_()
            else:
                self.outside.append(route.request.url)
                await route.abort()

        await page.route("**/*", route)
        page.on(
            "console",
            lambda m: (
                self.errors.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None
            ),
        )
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))


async def _marks(page: Page) -> dict[str, tuple[int, int]]:
    """Per chart: the marks its specification says it draws, and those in the page."""
    found: dict[str, tuple[int, int]] = await page.evaluate(
        """(selector) => Object.fromEntries(
            [...document.querySelectorAll('section.chart')].map(s => [
                s.id, [Number(s.dataset.marks), s.querySelectorAll(selector).length]]))""",
        MARKS,
    )
    return {k: (v[0], v[1]) for k, v in found.items()}


async def _table(page: Page, chart: str) -> list[list[str]]:
    rows: list[list[str]] = await page.evaluate(
        """(id) => [...document.querySelectorAll(`#${id} tbody tr`)].map(
            tr => [...tr.children].map(c => c.textContent))""",
        chart,
    )
    return rows


async def _tiles(page: Page) -> dict[str, str]:
    tiles: dict[str, str] = await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('.tile')].map(
            t => [t.dataset.metric, t.querySelector('.value').textContent]))"""
    )
    return tiles


async def _api(
    reporting: ServiceProcess, headers: dict[str, str], params: dict[str, str]
) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=reporting.http, timeout=30) as client:
        r = await client.get("/v1/metrics", params=params, headers=headers)
        assert r.status_code == 200, r.text
        return {row["metric"]: row for row in r.json()["rows"]}


async def _submit(page: Page) -> None:
    async with page.expect_navigation():
        await page.click("form.filters button[type=submit]")


async def _check_page(page: Page, watch: Watch) -> dict[str, tuple[int, int]]:
    marks = await _marks(page)
    assert list(marks) == ["overdoses-by-week", "funnel", "first-attempt", "supplies", "counties"]
    for chart, (expected, drawn) in marks.items():
        assert drawn == expected, f"{chart}: {drawn} marks drawn, {expected} expected"
    assert watch.errors == []
    assert watch.outside == []
    return marks


async def test_the_dashboard_in_a_browser(
    intake_process: IntakeProcess,
    scheduler_process: ServiceProcess,
    outreach_process: ServiceProcess,
    reporting_process: ServiceProcess,
) -> None:
    tag = "".join(random.choices(string.ascii_lowercase, k=6))
    small = ("Zz" + tag).title()  # as reporting evens out a county's name
    now = datetime.now(UTC)
    await _post_overdoses(intake_process, tag, small, now)
    await _work_cases(outreach_process, tag)

    env = reporting_process.env
    lead_token = (await dev_token(env, "team_lead", "lead-dash"))["Authorization"][7:]
    lead = {"Authorization": f"Bearer {lead_token}"}
    analyst = await dev_token(env, "analyst", "analyst-dash")
    today = now.date()
    recent = {"from": (today - timedelta(days=90)).isoformat(), "to": today.isoformat()}
    back = {
        "from": (today - timedelta(weeks=22)).isoformat(),
        "to": (today - timedelta(weeks=18)).isoformat(),
    }

    async def counted() -> bool:
        async with httpx.AsyncClient(base_url=reporting_process.http, timeout=30) as client:
            r = await client.get(
                "/v1/metrics",
                params=back | {"by": "county", "view": "internal"},
                headers=lead,
            )
            assert r.status_code == 200, r.text
            small_counted = any(
                row["metric"] == "overdoses_reported"
                and row["group"] == {"county": small}
                and row["value"] == 3
                for row in r.json()["rows"]
            )
        rows = await _api(reporting_process, lead, recent | {"view": "internal"})
        return (
            small_counted
            and rows["people_reached"]["value"] >= WORKED
            and rows["naloxone_kits_distributed"]["value"] >= 2 * WORKED
        )

    await _eventually(counted, "reporting to count the overdoses and the work")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = reporting_process.http
    async with async_playwright() as p:
        browser: Browser = await p.chromium.launch(
            executable_path=chromium(), args=["--no-sandbox"], headless=True
        )
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            watch = Watch(base)
            await watch.attach(page)

            # 1. A sign-in link: the fragment becomes a cookie and leaves the address bar.
            await page.goto(f"{base}/dashboard#token={lead_token}")
            await page.wait_for_selector("section#funnel", timeout=60_000)
            assert "token" not in page.url
            assert await page.evaluate("location.hash") == ""
            cookies = await context.cookies()
            (session,) = [c for c in cookies if c["name"] == "portline_dashboard"]
            assert session["httpOnly"] is True
            assert session["sameSite"] == "Strict"
            assert session["path"] == "/dashboard"
            # The sign-in page itself answers 401 (no credentials yet), which chromium notes.
            assert watch.errors == [
                "console error: Failed to load resource: the server responded with a status "
                "of 401 (Unauthorized)"
            ]
            watch.errors.clear()
            await _check_page(page, watch)

            # 2. The default page (the last 13 weeks) shows what GET /v1/metrics answers.
            api = await _api(reporting_process, lead, recent)
            tiles = await _tiles(page)
            for metric in ("overdoses_reported", "people_referred", "people_reached"):
                assert tiles[metric] == api[metric]["display"], metric
            funnel = {r[0]: r[1] for r in await _table(page, "funnel")}
            assert funnel["Reached"] == api["people_reached"]["display"]
            assert funnel["Engaged"] == api["people_engaged"]["display"]
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            if os.environ.get("PORTLINE_REFRESH_SCREENSHOT") == "1":
                await page.screenshot(path=str(README_IMAGE), full_page=True)
            await page.emulate_media(media="print")
            await page.screenshot(path=str(ARTIFACTS / "dashboard-print.png"), full_page=True)
            assert await page.locator("form.filters").is_hidden()
            await page.emulate_media(media="screen")

            # 3. Filters: the small county, months back, through the form.
            await page.fill("input[name=from]", back["from"])
            await page.fill("input[name=to]", back["to"])
            await _submit(page)
            await page.select_option("select[name=county]", small)
            await _submit(page)
            assert f"county={small}" in page.url
            marks = await _check_page(page, watch)
            assert marks["counties"][0] >= 1  # its one row, a cell a month
            tiles = await _tiles(page)
            assert tiles["overdoses_reported"] == "<10"
            funnel = {r[0]: r[1] for r in await _table(page, "funnel")}
            assert funnel["Referred"] == "<10"
            counties = await _table(page, "counties")
            assert [row[0] for row in counties] == [small]
            assert "<10" in counties[0]
            assert await page.locator("#funnel svg text", has_text="<10").count() >= 1

            # 4. The lead's internal view shows the exact figure, marked internal.
            await page.check("input[name=view]")
            await _submit(page)
            assert "view=internal" in page.url
            await _check_page(page, watch)
            assert (await _tiles(page))["overdoses_reported"] == "3"
            assert await page.locator(".banner.internal").is_visible()

            # 5. A phone: one column, nothing wider than the screen.
            phone = await browser.new_context(
                viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
            )
            await phone.add_cookies([{**session, "sameSite": "Strict"}])  # type: ignore[list-item]
            mobile = await phone.new_page()
            phone_watch = Watch(base)
            await phone_watch.attach(mobile)
            await mobile.goto(f"{base}/dashboard")
            await mobile.wait_for_selector("section#funnel")
            await _check_page(mobile, phone_watch)
            overflow = await mobile.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 1
            widths = await mobile.evaluate(
                "[...document.querySelectorAll('section.card')].map(s => s.offsetWidth)"
            )
            assert max(widths) <= 390
            await mobile.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
            await phone.close()

            # 6. An analyst (by header, as behind a sign-in proxy) is not offered the internal view.
            analyst_context = await browser.new_context(extra_http_headers=analyst)
            analyst_page = await analyst_context.new_page()
            analyst_watch = Watch(base)
            await analyst_watch.attach(analyst_page)
            await analyst_page.goto(f"{base}/dashboard")
            await _check_page(analyst_page, analyst_watch)
            assert await analyst_page.locator("input[name=view]").count() == 0
            await analyst_context.close()
        finally:
            await browser.close()

    # The token never reached a log.
    log = (Path(env["PORTLINE_VAR_DIR"]) / "reporting.log").read_text()
    assert lead_token not in log
    assert lead_token[-20:] not in log
