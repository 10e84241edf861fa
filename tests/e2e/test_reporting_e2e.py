"""Overdoses posted to intake and worked in outreach, through the public APIs of real
processes, become the right figures in reporting's GET /v1/metrics: exact for a team lead's
internal view, suppressed for an analyst; and `portline reporting rebuild` gives the same
figures as the live read models.

The broker and database are shared with the other e2e tests, so this test's overdoses are in a
county of their own, and the figures compared are that county's.
"""

from __future__ import annotations

import asyncio
import random
import string
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


def _run_report(family: str, county: str, consent: str, incident: datetime) -> dict[str, Any]:
    return {
        "pcr_number": f"PCR-{uuid.uuid4().hex[:10]}",
        "incident_at": incident.isoformat(),
        "patient": {
            "family_name": family,
            "given_name": "Robin",
            "date_of_birth": "1990-04-05",
            "phones": [f"336-555-{random.randint(1000, 9999)}"],
        },
        "scene": {"street": "10 Main St", "city": "Greensboro", "county": county},
        "impressions": ["T40.1X1A"],
        "medications": [{"rxnorm": "7242", "response": "improved"}],
        "peer_follow_up": consent,
    }


async def test_worked_overdoses_become_the_right_figures(
    intake_process: IntakeProcess,
    scheduler_process: ServiceProcess,
    outreach_process: ServiceProcess,
    reporting_process: ServiceProcess,
) -> None:
    env = reporting_process.env
    lead = await _token(env, "team_lead", "lead-ana")
    peer = await _token(env, "peer", "peer-sam")
    analyst = await _token(env, "analyst", "analyst-kai")
    county = "Zz" + "".join(random.choices(string.ascii_lowercase, k=10))
    tag = uuid.uuid4().hex[:6]
    families = {consent: f"Report{consent.title()}{tag}" for consent in ("accepted", "declined")}
    families["waiting"] = f"ReportWaiting{tag}"
    incident = datetime.now(UTC) - timedelta(hours=2)

    # 1. EMS reports three overdoses in the county: two people say yes to a peer, one no.
    async with httpx.AsyncClient(base_url=intake_process.http, timeout=30) as intake:
        for key, consent in (
            ("accepted", "accepted"),
            ("waiting", "accepted"),
            ("declined", "declined"),
        ):
            posted = await intake.post(
                "/v1/ems/run-reports",
                json=_run_report(families[key], county, consent, incident),
                headers={"Authorization": f"Bearer {intake_process.ems_key}"},
            )
            assert posted.status_code == 200, posted.text
            assert posted.json()["results"][0]["status"] == "accepted"

    # 2. A peer reaches the first person, hands over naloxone and makes a referral.
    async with httpx.AsyncClient(base_url=outreach_process.http, timeout=30) as api:

        async def remote_task() -> dict[str, Any] | None:
            r = await api.get(
                "/v1/tasks", params={"kind": "remote_contact", "limit": 200}, headers=peer
            )
            assert r.status_code == 200, r.text
            return next(
                (
                    t
                    for t in r.json()["items"]
                    if families["accepted"] in (t["person"]["name"] or "") and t["stage"] == "due"
                ),
                None,
            )

        task = await _eventually(remote_task, "the remote-contact task")
        case_id = task["case_id"]
        claimed = await api.post(
            f"/v1/tasks/{task['id']}/claim", headers=peer | {"If-Match": f'"{task["version"]}"'}
        )
        assert claimed.status_code == 200, claimed.text
        attempt = await api.post(
            f"/v1/tasks/{task['id']}/attempts",
            json={"channel": "phone", "outcome": "reached"},
            headers=peer,
        )
        assert attempt.status_code == 201, attempt.text
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

    # 3. Reporting counts them, in the team lead's internal view, exactly.
    today = datetime.now(UTC).date()
    params = {
        "from": (today - timedelta(days=2)).isoformat(),
        "to": (today + timedelta(days=1)).isoformat(),
        "by": "county",
    }
    expected = {
        "overdoses_reported": 3,
        "people_referred": 3,
        "consent_declined": 1,
        "people_with_outreach_task": 2,
        "people_attempted": 1,
        "people_reached": 1,
        "people_engaged": 1,
        "naloxone_kits_distributed": 2,
        "referrals_made": 1,
        "referrals_warm_handoff": 1,
        "reports_received": 3,
        "reports_received_late": 0,
        "overdose_deaths_reported": 0,
        "do_not_contact_requests": 0,
    }

    async with httpx.AsyncClient(base_url=reporting_process.http, timeout=30) as reporting:

        async def ours(headers: dict[str, str], view: str | None) -> dict[str, dict[str, Any]]:
            query = dict(params, **({"view": view} if view else {}))
            r = await reporting.get("/v1/metrics", params=query, headers=headers)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["program"] == "demo"
            return {
                row["metric"]: row for row in body["rows"] if row["group"] == {"county": county}
            }

        async def counted() -> dict[str, dict[str, Any]] | None:
            rows = await ours(lead, "internal")
            got = {k: rows[k]["value"] for k in expected if k in rows}
            return rows if got == expected else None

        internal = await _eventually(counted, "the figures of the county")
        assert internal["first_attempt_within_24h"]["numerator"] == 1
        assert internal["reach_rate"]["value"] == 1.0
        assert internal["median_hours_to_first_attempt"]["denominator"] == 1
        assert all(not row["suppressed"] for row in internal.values())

        # The analyst sees the same county suppressed: three overdoses are "<10".
        published = await ours(analyst, None)
        assert published["overdoses_reported"]["value"] is None
        assert published["overdoses_reported"]["suppressed"] is True
        assert published["overdoses_reported"]["display"] == "<10"
        assert published["reach_rate"]["display"] == "*"
        lead_published = await ours(lead, None)
        assert lead_published == published
        denied = await reporting.get(
            "/v1/metrics", params=dict(params, view="internal"), headers=analyst
        )
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "internal_view_forbidden"

        # 4. A rebuild from the topics gives the same figures as the live read models.
        done = await asyncio.to_thread(
            subprocess.run,
            [PORTLINE, "reporting", "rebuild"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "the read models are rebuilt" in done.stdout
        assert "events/s" in done.stderr  # the progress bar
        rebuilt = await _eventually(counted, "the rebuilt figures", timeout=60)
        assert rebuilt == internal
        ready = await reporting.get("/readyz")
        assert ready.json()["checks"]["read_models"] == "ok"
