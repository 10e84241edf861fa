"""From a spike to a task, through the public APIs of real processes: a county's baseline,
then a spike, both posted to intake as EMS run reports, raise an alert in reporting's
GET /v1/alerts and a SpikeDetected on port.reporting.alerts.v1; a team lead acknowledges it
with a note. The scheduler opens a hot-spot task for the county, which appears in outreach's
queue; a lead concludes it with the kits distributed, and reporting's services metric counts
them. No person's data is in the alert, the task, their events or the answers.

The broker and database are shared with the other e2e tests, so this test's overdoses are in a
county of their own.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from shared.bus import make_consumer
from shared.envelope import Envelope
from shared.topics import OUTREACH_ACTIVITY, REPORTING_ALERTS, SCHEDULER_CASES
from tests.e2e.conftest import IntakeProcess, ServiceProcess, dev_token
from tests.support import read_topic

pytestmark = pytest.mark.e2e


async def _eventually(
    probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 120.0
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


GIVEN = ("Robin", "Alex", "Jordan", "Casey", "Morgan", "Riley", "Jamie", "Quinn")


def _run_report(n: int, family: str, phone: str, county: str, incident: datetime) -> dict[str, Any]:
    """Someone else each time (name, birth date, phone), so no two reports are one person's
    and no two of the spike's overdoses become one episode."""
    return {
        "pcr_number": f"PCR-{uuid.uuid4().hex[:10]}",
        "incident_at": incident.isoformat(),
        "patient": {
            "family_name": family,
            "given_name": GIVEN[n % len(GIVEN)],
            "date_of_birth": f"19{60 + n % 40}-0{1 + n % 9}-1{n % 10}",
            "phones": [phone],
        },
        "scene": {"street": "10 Spike Alley", "city": "Greensboro", "county": county},
        "impressions": ["T40.1X1A"],
        "medications": [{"rxnorm": "7242", "response": "improved"}],
        "peer_follow_up": "accepted",
    }


async def _spike_events(bootstrap: str, county: str, timeout: float = 60) -> list[Envelope]:
    consumer = make_consumer(
        bootstrap,
        group_id=f"e2e-spikes-{uuid.uuid4().hex[:8]}",
        topics=[REPORTING_ALERTS.name],
        start="earliest",
    )
    await consumer.start()
    found: list[Envelope] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(found) < 2:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    envelope = Envelope.from_bytes(record.value)
                    if envelope.data.get("county") == county:
                        found.append(envelope)
    finally:
        await consumer.stop()
    return found


async def test_a_spike_posted_to_intake_becomes_an_alert_and_a_hot_spot_task(
    intake_process: IntakeProcess,
    scheduler_process: ServiceProcess,  # links the reports into episodes, which are counted
    outreach_process: ServiceProcess,
    reporting_process: ServiceProcess,
    kafka_bootstrap: str,
) -> None:
    env = reporting_process.env
    lead = await dev_token(env, "team_lead", "lead-ana")
    analyst = await dev_token(env, "analyst", "analyst-kai")
    county = "Zz" + "".join(random.choices(string.ascii_lowercase, k=10))
    tag = uuid.uuid4().hex[:6]
    now = datetime.now(UTC).replace(microsecond=0)
    people: list[tuple[str, str, str]] = []  # family name, phone, birth date of every report
    spike_times: list[datetime] = []

    async with httpx.AsyncClient(base_url=intake_process.http, timeout=30) as intake:

        async def post(incident: datetime) -> None:
            n = len(people)
            family = f"Spike{tag}{n}"
            phone = f"336-555-{random.randint(1000, 9999)}"
            report = _run_report(n, family, phone, county, incident)
            people.append((family, phone, report["patient"]["date_of_birth"]))
            posted = await intake.post(
                "/v1/ems/run-reports",
                json=report,
                headers={"Authorization": f"Bearer {intake_process.ems_key}"},
            )
            assert posted.status_code == 200, posted.text
            assert posted.json()["results"][0]["status"] == "accepted"

        # 1. A baseline: one overdose a day, three to twenty-two days ago.
        for days in range(3, 23):
            await post(now - timedelta(days=days, hours=1))
        # 2. Then a spike: eight in the last two hours.
        for k in range(8):
            spike_times.append(now - timedelta(minutes=10 + 12 * k))
            await post(spike_times[-1])

    async with httpx.AsyncClient(base_url=reporting_process.http, timeout=30) as reporting:

        async def ours() -> list[dict[str, Any]] | None:
            r = await reporting.get("/v1/alerts", params={"status": "open"}, headers=analyst)
            assert r.status_code == 200, r.text
            found = {a["detector"]: a for a in r.json()["alerts"] if a["county"] == county}
            # raised at the fifth report or so, then grown with the rest
            done = set(found) == {"ewma", "odmap"} and found["odmap"]["observed"] == 8
            return list(found.values()) if done else None

        try:
            found = await _eventually(ours, "the county's alerts", timeout=300)
        except AssertionError:  # say what reporting counted, to tell a slow pipe from a bug
            today = now.date()
            r = await reporting.get(
                "/v1/metrics",
                params={
                    "from": (today - timedelta(days=30)).isoformat(),
                    "to": (today + timedelta(days=1)).isoformat(),
                    "by": ["county", "day"],
                    "view": "internal",
                },
                headers=lead,
            )
            counted = [
                (row["group"]["day"], row["value"])
                for row in r.json().get("rows", [])
                if row["metric"] == "overdoses_reported" and row["group"].get("county") == county
            ]
            raise AssertionError(f"no alerts; overdoses counted by day: {counted}") from None
        by_detector = {a["detector"]: a for a in found}
        ewma, spike = by_detector["ewma"], by_detector["odmap"]
        assert ewma["level"] == "alert"
        start, end = (datetime.fromisoformat(ewma[k]) for k in ("window_start", "window_end"))
        assert ewma["observed"] == sum(1 for t in spike_times if start <= t < end)
        assert ewma["expected"] < 1
        assert spike["threshold"] == 5
        assert datetime.fromisoformat(spike["window_start"]) == min(spike_times)

        acknowledged = await reporting.post(
            f"/v1/alerts/{ewma['alert_id']}/acknowledge",
            json={"note": f"team out in {county} with kits; Spike{tag}0 seen"},
            headers=lead,
        )
        assert acknowledged.status_code == 200, acknowledged.text
        assert acknowledged.json()["status"] == "acknowledged"
        r = await reporting.get("/v1/alerts", params={"status": "open"}, headers=analyst)
        assert ewma["alert_id"] not in {a["alert_id"] for a in r.json()["alerts"]}
        answer = (await reporting.get("/v1/alerts", headers=analyst)).text

    # 3. The scheduler opened a hot-spot task for the county: one, both alerts attached.
    team_lead = await dev_token(outreach_process.env, "team_lead", "lead-ana")
    peer = await dev_token(outreach_process.env, "peer", "peer-sam")
    deputy = await dev_token(outreach_process.env, "deputy", "deputy-lee")
    alert_ids = {a["alert_id"] for a in found}
    async with httpx.AsyncClient(base_url=outreach_process.http, timeout=30) as outreach:

        async def hot_spot() -> dict[str, Any] | None:
            r = await outreach.get("/v1/tasks", headers=peer)
            assert r.status_code == 200, r.text
            spots = [h for h in r.json()["hot_spots"] if h["county"] == county]
            assert len(spots) <= 1, spots  # never a second task for the county
            done = spots and alert_ids <= set(spots[0]["alert_ids"])
            return spots[0] if done else None

        spot = await _eventually(hot_spot, "the county's hot-spot task", timeout=180)
        assert spot["kind"] == "hot_spot"
        assert spot["detector"] in {"ewma", "odmap"}
        assert datetime.fromisoformat(spot["due_at"]) > now
        # the queue's other items are people's tasks (this test's own reports among them):
        # the hot spot is what must name no one
        queue_answer = json.dumps(spot)
        denied = await outreach.get(f"/v1/hot-spots/{spot['id']}", headers=deputy)
        assert denied.status_code == 403

        # 4. A lead concludes it with what the team distributed.
        concluded = await outreach.post(
            f"/v1/hot-spots/{spot['id']}/conclude",
            json={
                "naloxone_kits": 25,
                "test_strips": 120,
                "warnings_given": 40,
                "contacts_checked": 6,
                "note": "kits handed out at the bus station and the shelter",
            },
            headers=team_lead,
        )
        assert concluded.status_code == 200, concluded.text
        assert concluded.json()["status"] == "concluded"
        task_answer = concluded.text

    # 5. Reporting counts the kits and strips in the services metrics (the county's own).
    today = datetime.now(UTC).date()
    async with httpx.AsyncClient(base_url=reporting_process.http, timeout=30) as reporting:

        async def counted() -> dict[str, Any] | None:
            r = await reporting.get(
                "/v1/metrics",
                params={
                    "from": (today - timedelta(days=1)).isoformat(),
                    "to": (today + timedelta(days=1)).isoformat(),
                    "by": "county",
                    "view": "internal",
                },
                headers=lead,
            )
            assert r.status_code == 200, r.text
            rows = {
                row["metric"]: row["value"]
                for row in r.json()["rows"]
                if row["group"].get("county") == county
            }
            return rows if rows.get("naloxone_kits_distributed") == 25 else None

        figures = await _eventually(counted, "the hot spot's kits in the metrics", timeout=120)
        assert figures["test_strips_distributed"] == 120

    events = await _spike_events(kafka_bootstrap, county)
    assert {e.data["detector"] for e in events} == {"ewma", "odmap"}
    task_events = [
        *await read_topic(
            kafka_bootstrap,
            SCHEDULER_CASES.name,
            where=lambda r: Envelope.from_bytes(r.value).data.get("task_id") == spot["id"],
            expect=1,
            timeout=30,
        ),
        *await read_topic(
            kafka_bootstrap,
            OUTREACH_ACTIVITY.name,
            where=lambda r: Envelope.from_bytes(r.value).data.get("task_id") == spot["id"],
            expect=1,
            timeout=30,
        ),
    ]
    assert {Envelope.from_bytes(r.value).type for r in task_events} == {
        "HotSpotTaskScheduled",
        "HotSpotConcluded",
    }
    # No person's data anywhere: not in the alerts, the task or the queue the APIs answer,
    # not in their events.
    texts = [
        answer,
        queue_answer,
        task_answer,
        *(e.to_bytes().decode() for e in events),
        *(r.value.decode() for r in task_events),
    ]
    for text in texts[1:]:
        assert "person_id" not in text
        assert "case_id" not in text
    for family, phone, born in people:
        assert not any(family in text for text in texts)
        assert not any(phone in text for text in texts)
        assert not any(born in text for text in texts)
    assert not any("Spike Alley" in t for t in texts)
    assert not any("v1.k" in t for t in texts)  # no sealed token either
