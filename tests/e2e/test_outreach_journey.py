"""The journey README.md walks a newcomer through, over the public APIs of real processes:

EMS reports an overdose with consent → a task appears in outreach's queue → three failed
phone attempts → an in-person visit task → the visit reaches the person → naloxone and a MOUD
referral are recorded → the lead concludes outreach as engaged → the scheduler closes the case.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import IntakeProcess, ServiceProcess

pytestmark = pytest.mark.e2e

PORTLINE = str(Path(sys.executable).parent / "portline")


async def _token(env: dict[str, str], role: str, subject: str) -> dict[str, str]:
    done = await asyncio.to_thread(
        subprocess.run,
        [PORTLINE, "dev-token", "--role", role, "--program", "demo", "--subject", subject],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return {"Authorization": f"Bearer {done.stdout.strip()}"}


async def _eventually(probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


async def test_from_an_ems_report_to_engagement(
    intake_process: IntakeProcess,
    scheduler_process: ServiceProcess,
    outreach_process: ServiceProcess,
) -> None:
    env = outreach_process.env
    lead = await _token(env, "team_lead", "lead-ana")
    peer = await _token(env, "peer", "peer-sam")
    family = f"Journey{uuid.uuid4().hex[:6]}"
    incident = datetime.now(UTC) - timedelta(hours=1)

    # 1. EMS reports an overdose; the person said yes to a peer follow-up.
    report = {
        "pcr_number": f"PCR-{uuid.uuid4().hex[:10]}",
        "incident_at": incident.isoformat(),
        "patient": {
            "family_name": family,
            "given_name": "Alex",
            "date_of_birth": "1991-05-06",
            "phones": ["336-555-0123"],
            "language": "en",
        },
        "scene": {"street": "400 Market St", "city": "Greensboro", "county": "Guilford"},
        "impressions": ["T40.1X1A"],
        "medications": [{"rxnorm": "7242", "response": "improved"}],
        "peer_follow_up": "accepted",
    }
    async with httpx.AsyncClient(base_url=intake_process.http) as intake:
        posted = await intake.post(
            "/v1/ems/run-reports",
            json=report,
            headers={"Authorization": f"Bearer {intake_process.ems_key}"},
        )
    assert posted.status_code == 200, posted.text
    assert posted.json()["results"][0]["status"] == "accepted"

    async with httpx.AsyncClient(base_url=outreach_process.http, timeout=30) as api:
        # The lead puts the peer on the team (the peer's work phone is what a deputy sees).
        member = await api.put(
            "/v1/team/members/peer-sam",
            json={"display_name": "Sam P.", "phone": "+13365550999"},
            headers=lead,
        )
        assert member.status_code in (200, 412), member.text

        async def task_of(kind: str, stage: str | None = None) -> dict[str, Any] | None:
            r = await api.get("/v1/tasks", params={"kind": kind, "limit": 200}, headers=peer)
            assert r.status_code == 200, r.text
            return next(
                (
                    t
                    for t in r.json()["items"]
                    if family in (t["person"]["name"] or "") and stage in (None, t["stage"])
                ),
                None,
            )

        # 2. A remote-contact task appears in the queue, due 24 h after the overdose. Its
        # window opened at the overdose, so the scheduler's window timer fires at once and the
        # task moves to "due" (a new version); the peer claims the version after that.
        task = await _eventually(lambda: task_of("remote_contact", "due"), "the remote task", 120)
        assert task["person"]["phones"] == ["336-555-0123"]
        due, expires = (datetime.fromisoformat(task[k]) for k in ("due_at", "expires_at"))
        # 24 h after the overdose, or later where quiet hours move a phone call's due time
        assert incident + timedelta(hours=24) - timedelta(seconds=1) <= due <= expires
        case_id = task["case_id"]

        # 3. The peer claims it and calls three times without reaching anyone.
        claimed = await api.post(
            f"/v1/tasks/{task['id']}/claim", headers=peer | {"If-Match": f'"{task["version"]}"'}
        )
        assert claimed.status_code == 200, claimed.text
        for outcome in ("no_answer", "left_message", "no_answer"):
            r = await api.post(
                f"/v1/tasks/{task['id']}/attempts",
                json={"channel": "phone", "outcome": outcome},
                headers=peer,
            )
            assert r.status_code == 201, r.text

        # 4. The scheduler escalates: an in-person visit task appears.
        visit_task = await _eventually(lambda: task_of("in_person_visit"), "the visit task")
        assert visit_task["case_id"] == case_id

        # 5. The peer schedules the visit and reaches the person.
        start = datetime.now(UTC) + timedelta(minutes=30)
        visit = await api.post(
            "/v1/visits",
            json={
                "task_id": visit_task["id"],
                "window_start": start.isoformat(),
                "window_end": (start + timedelta(hours=1)).isoformat(),
                "meeting_place": "Front porch",
            },
            headers=peer,
        )
        assert visit.status_code == 201, visit.text
        done = await api.post(
            f"/v1/visits/{visit.json()['id']}/outcome",
            json={"outcome": "reached"},
            headers=peer | {"If-Match": visit.headers["ETag"]},
        )
        assert done.status_code == 200, done.text

        # 6. Naloxone and a MOUD referral.
        services = await api.post(
            f"/v1/cases/{case_id}/services",
            json={"items": [{"kind": "naloxone_kit", "count": 2}]},
            headers=peer,
        )
        assert services.status_code == 201, services.text
        referral = await api.post(
            f"/v1/cases/{case_id}/referrals",
            json={"kind": "moud_buprenorphine", "status": "accepted", "warm_handoff": True},
            headers=peer,
        )
        assert referral.status_code == 201, referral.text

        # The scheduler saw the contact: the visit task completes and follow-ups are planned.
        async def followed_up() -> dict[str, Any] | None:
            r = await api.get(f"/v1/cases/{case_id}", headers=lead)
            tasks = r.json()["tasks"]
            kinds = {(t["kind"], t["status"]) for t in tasks}
            ready = ("in_person_visit", "completed") in kinds and ("follow_up", "open") in kinds
            return r if ready else None

        case = await _eventually(followed_up, "the contact to reach the scheduler")

        # 7. The lead concludes outreach as engaged; the scheduler closes the case.
        concluded = await api.post(
            f"/v1/cases/{case_id}/conclusion",
            json={"reason": "engaged"},
            headers=lead | {"If-Match": case.headers["ETag"]},
        )
        assert concluded.status_code == 200, concluded.text

        async def closed_everywhere() -> bool:
            r = await api.get(f"/v1/cases/{case_id}", headers=lead)
            body = r.json()
            return body["status"] == "closed" and all(t["status"] != "open" for t in body["tasks"])

        await _eventually(closed_everywhere, "the case to close")
        final = (await api.get(f"/v1/cases/{case_id}", headers=lead)).json()
        assert final["close_reason"] == "engaged"
        assert final["services"][0]["items"] == [{"kind": "naloxone_kit", "count": 2}]
        assert final["referrals"][0]["kind"] == "moud_buprenorphine"

    async with httpx.AsyncClient(base_url=scheduler_process.http) as scheduler:
        timeline = await scheduler.get(f"/v1/cases/{case_id}/timeline", headers=lead)
    assert timeline.json()["status"] == "closed"
