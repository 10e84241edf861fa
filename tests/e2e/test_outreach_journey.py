"""The journey docs/outreach.md walks a newcomer through, step by step as written there, over
the public APIs of real processes:

EMS reports an overdose with consent → its task is found in outreach's queue by the report id
intake answered → three failed phone attempts → an in-person visit task → the visit, with a
deputy (the demo policy of the doc lets a peer ask for one), reaches the person → naloxone and
a MOUD referral are recorded → the lead concludes outreach as engaged → the scheduler's
timeline shows the case closed, with the conclusion in it.
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
    deputy = await _token(env, "deputy", "deputy-dee")
    family = f"Journey{uuid.uuid4().hex[:6]}"
    incident = datetime.now(UTC) - timedelta(hours=1)

    # 1. EMS reports an overdose an hour ago; the person said yes. Keep the report id.
    report = {
        "pcr_number": f"PCR-{uuid.uuid4().hex[:10]}",
        "incident_at": incident.isoformat(),
        "patient": {"family_name": family, "given_name": "Alex", "phones": ["336-555-0123"]},
        "impressions": ["T40.1X1A"],
        "peer_follow_up": "accepted",
    }
    async with httpx.AsyncClient(base_url=intake_process.http) as intake:
        posted = await intake.post(
            "/v1/ems/run-reports",
            json=report,
            headers={"Authorization": f"Bearer {intake_process.ems_key}"},
        )
    assert posted.status_code == 200, posted.text
    (result,) = posted.json()["results"]
    assert result["status"] == "accepted"
    report_id = result["report_id"]

    async with httpx.AsyncClient(base_url=outreach_process.http, timeout=30) as api:
        # 2. The lead puts the peer and the deputy on the team.
        for member, body in (
            ("peer-sam", {"display_name": "Sam P.", "phone": "+13365550999"}),
            ("deputy-dee", {"display_name": "Dee D."}),
        ):
            put = await api.put(f"/v1/team/members/{member}", json=body, headers=lead)
            assert put.status_code in (200, 412), put.text  # 412: already on the team

        async def tasks_of_report(kind: str | None = None) -> list[dict[str, Any]]:
            params = {"report_id": report_id} | ({"kind": kind} if kind else {})
            r = await api.get("/v1/tasks", params=params, headers=peer)
            assert r.status_code == 200, r.text
            items: list[dict[str, Any]] = r.json()["items"]
            return items

        async def etag(path: str) -> str:
            r = await api.get(path, headers=peer)
            assert r.status_code == 200, r.text
            return r.headers["ETag"]

        # 3. The report's task, found by its report id, claimed with its ETag.
        (task,) = await _eventually(tasks_of_report, "the report's task", 120)
        assert task["kind"] == "remote_contact"
        assert task["person"]["name"] == f"Alex {family}"
        due, expires = (datetime.fromisoformat(task[k]) for k in ("due_at", "expires_at"))
        # 24 h after the overdose, or later where quiet hours move a phone call's due time
        assert incident + timedelta(hours=24) - timedelta(seconds=1) <= due <= expires
        case_id = task["case_id"]
        # A task may change between the read and the claim (the scheduler's own follow-up
        # events land on it): a client reads it again and retries, as the 412 says.
        for _ in range(5):
            claimed = await api.post(
                f"/v1/tasks/{task['id']}/claim",
                headers=peer | {"If-Match": await etag(f"/v1/tasks/{task['id']}")},
            )
            if claimed.status_code != 412:
                break
            assert claimed.json()["error"]["code"] == "version_mismatch", claimed.text
        assert claimed.status_code == 200, claimed.text

        # 4. Three calls without reaching anyone: an in-person visit task, for the same report.
        for outcome in ("no_answer", "left_message", "no_answer"):
            r = await api.post(
                f"/v1/tasks/{task['id']}/attempts",
                json={"channel": "phone", "outcome": outcome},
                headers=peer,
            )
            assert r.status_code == 201, r.text
        (visit_task,) = await _eventually(
            lambda: tasks_of_report("in_person_visit"), "the visit task"
        )
        assert visit_task["case_id"] == case_id
        assert visit_task["deputy"] == "on_request"  # the demo policy of the journey

        # 5. The peer schedules the visit with a deputy, who sees when, where and whom to call.
        start = datetime.now(UTC) + timedelta(hours=1)
        visit = await api.post(
            "/v1/visits",
            json={
                "task_id": visit_task["id"],
                "meeting_place": "Front porch",
                "window_start": start.isoformat(),
                "window_end": (start + timedelta(hours=1)).isoformat(),
                "deputy": True,
                "deputy_id": "deputy-dee",
            },
            headers=peer,
        )
        assert visit.status_code == 201, visit.text
        visit_id = visit.json()["id"]
        seen = await api.get("/v1/deputy/visits", headers=deputy)
        assert seen.status_code == 200, seen.text
        (shown,) = [v for v in seen.json()["items"] if v["id"] == visit_id]
        assert shown["meeting_place"] == "Front porch"
        assert shown["peer"] == {"name": "Sam P.", "phone": "+13365550999"}
        assert family not in seen.text
        arrived = await api.post(
            f"/v1/deputy/visits/{visit_id}/status", json={"status": "arrived"}, headers=deputy
        )
        assert arrived.status_code == 200, arrived.text

        # 6. The visit reaches the person.
        done = await api.post(
            f"/v1/visits/{visit_id}/outcome",
            json={"outcome": "reached"},
            headers=peer | {"If-Match": await etag(f"/v1/visits/{visit_id}")},
        )
        assert done.status_code == 200, done.text

        # 7. Naloxone and a MOUD referral.
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
        async def followed_up() -> bool:
            r = await api.get(f"/v1/cases/{case_id}", headers=lead)
            kinds = {(t["kind"], t["status"]) for t in r.json()["tasks"]}
            return ("in_person_visit", "completed") in kinds and ("follow_up", "open") in kinds

        await _eventually(followed_up, "the contact to reach the scheduler")

        # 8. The lead concludes outreach as engaged, with the case's ETag.
        concluded = await api.post(
            f"/v1/cases/{case_id}/conclusion",
            json={"reason": "engaged"},
            headers=lead | {"If-Match": await etag(f"/v1/cases/{case_id}")},
        )
        assert concluded.status_code == 200, concluded.text

        async def closed_everywhere() -> bool:
            body = (await api.get(f"/v1/cases/{case_id}", headers=lead)).json()
            return body["status"] == "closed" and all(t["status"] != "open" for t in body["tasks"])

        await _eventually(closed_everywhere, "the case to close")
        final = (await api.get(f"/v1/cases/{case_id}", headers=lead)).json()
        assert final["close_reason"] == "engaged"
        assert final["services"][0]["items"] == [{"kind": "naloxone_kit", "count": 2}]
        assert final["referrals"][0]["kind"] == "moud_buprenorphine"

    # 9. The scheduler's timeline, from the report to the conclusion.
    async with httpx.AsyncClient(base_url=scheduler_process.http) as scheduler:

        async def concluded_timeline() -> dict[str, Any] | None:
            r = await scheduler.get(f"/v1/cases/{case_id}/timeline", headers=lead)
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body if body["status"] == "closed" else None

        timeline = await _eventually(concluded_timeline, "the scheduler to close the case")
    assert timeline["close_reason"] == "engaged"
    case_items = [i["detail"] for i in timeline["items"] if i["kind"] == "case"]
    assert case_items == [{"event": "opened"}, {"event": "closed", "reason": "engaged"}]
    kinds = [i["kind"] for i in timeline["items"]]
    assert {"case", "report", "episode", "task", "timer"} <= set(kinds)
    tasks = {
        i["detail"]["task_kind"]: i["detail"] for i in timeline["items"] if i["kind"] == "task"
    }
    assert tasks["remote_contact"]["outcome"] == "escalated_to_in_person"
    assert tasks["in_person_visit"]["outcome"] == "contact_made"
    assert tasks["follow_up"]["outcome"] == "outreach_concluded"
