"""Referrals from law enforcement and from the community, over real processes, Kafka and
PostgreSQL: each makes a task like any report, a law-enforcement report and an EMS report of
one overdose are one episode, and a law-enforcement key reads nothing anywhere."""

from __future__ import annotations

import asyncio
import re
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

from shared.envelope import Envelope
from shared.topics import SCHEDULER_CASES
from tests.e2e.conftest import IntakeProcess, ServiceProcess
from tests.support import read_topic

pytestmark = pytest.mark.e2e

PORTLINE = str(Path(sys.executable).parent / "portline")
PUBLIC = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/openapi.json",
    "/docs/oauth2-redirect",
    "/redoc",
}


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


async def _eventually(probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


async def _le_key(intake: IntakeProcess) -> str:
    partner = f"pd-{uuid.uuid4().hex[:6]}"
    added = await intake.cli(
        "partners", "add", "--id", partner, "--program", "demo",
        "--kind", "law_enforcement", "--name", "Demo Police",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    issued = await intake.cli("partners", "issue-key", partner)
    assert issued.returncode == 0, issued.stderr
    match = re.search(r"(plk_\S+)", issued.stdout)
    assert match
    return match.group(1)


async def _queue_task(api: httpx.AsyncClient, peer: dict[str, str], family: str) -> Any:
    async def probe() -> Any:
        r = await api.get("/v1/tasks", params={"limit": 200}, headers=peer)
        assert r.status_code == 200, r.text
        return next((t for t in r.json()["items"] if family in (t["person"]["name"] or "")), None)

    return await _eventually(probe, f"a task for {family} in outreach's queue")


async def test_a_law_enforcement_report_with_consent_makes_a_task_and_ems_joins_its_episode(
    intake_process: IntakeProcess,
    scheduler_process: ServiceProcess,
    outreach_process: ServiceProcess,
    kafka_bootstrap: str,
) -> None:
    key = await _le_key(intake_process)
    family = f"Police{uuid.uuid4().hex[:6]}"
    when = datetime.now(UTC) - timedelta(hours=1)
    person = {"family_name": family, "given_name": "Casey", "date_of_birth": "1992-07-08",
              "phones": ["336-555-0177"]}  # fmt: skip
    async with httpx.AsyncClient(base_url=intake_process.http) as intake:
        le = await intake.post(
            "/v1/le/overdose-reports",
            json={
                "incident_number": f"GPD-{uuid.uuid4().hex[:8]}",
                "occurred_at": when.isoformat(),
                "location": {"address": {"county": "Guilford", "state": "NC"}},
                "fatal": False,
                "naloxone": {"given": True, "doses": 1},
                "suspected_drugs": ["fentanyl"],
                "consent": "accepted",
                "person": person,
            },
            headers={"Authorization": f"Bearer {key}"},
        )
        assert le.status_code == 202, le.text
        assert set(le.json()) == {"received", "incident_number"}  # nothing else comes back
        peer = await _token(outreach_process.env, "peer", "peer-le")
        async with httpx.AsyncClient(base_url=outreach_process.http, timeout=30) as api:
            task = await _queue_task(api, peer, family)
            assert task["overdose"]["source_kind"] == "law_enforcement"
        # EMS reports the same overdose twenty minutes later: one episode, not a second task
        ems = await intake.post(
            "/v1/ems/run-reports",
            json={
                "pcr_number": f"PCR-{uuid.uuid4().hex[:8]}",
                "incident_at": (when + timedelta(minutes=20)).isoformat(),
                "patient": person,
                "impressions": ["T40.411A"],
                "peer_follow_up": "accepted",
            },
            headers={"Authorization": f"Bearer {intake_process.ems_key}"},
        )
        assert ems.status_code == 200, ems.text
        ems_report = ems.json()["results"][0]["report_id"]

    (linked,) = await read_topic(
        kafka_bootstrap,
        SCHEDULER_CASES.name,
        where=lambda r: Envelope.from_bytes(r.value).data.get("report_id") == ems_report,
        expect=1,
        timeout=60,
    )
    ems_link = Envelope.from_bytes(linked.value).data
    assert ems_link["case_id"] == task["case_id"]
    opened = await read_topic(
        kafka_bootstrap,
        SCHEDULER_CASES.name,
        where=lambda r: (
            (e := Envelope.from_bytes(r.value)).type == "EpisodeOpened"
            and e.data["case_id"] == task["case_id"]
        ),
        expect=1,
    )
    assert len(opened) == 1
    assert Envelope.from_bytes(opened[0].value).data["episode_id"] == ems_link["episode_id"]
    tasks = await read_topic(
        kafka_bootstrap,
        SCHEDULER_CASES.name,
        where=lambda r: (
            (e := Envelope.from_bytes(r.value)).type == "TaskScheduled"
            and e.data["case_id"] == task["case_id"]
        ),
        expect=1,
    )
    assert len(tasks) == 1


async def test_a_law_enforcement_key_gets_nothing_back_from_any_read_endpoint(
    intake_process: IntakeProcess,
    scheduler_process: ServiceProcess,
    outreach_process: ServiceProcess,
) -> None:
    key = await _le_key(intake_process)
    headers = {"Authorization": f"Bearer {key}", "X-API-Key": key}
    checked = 0
    for base in (intake_process.http, scheduler_process.http, outreach_process.http):
        async with httpx.AsyncClient(base_url=base) as client:
            spec = (await client.get("/openapi.json")).json()
            for template, operations in spec["paths"].items():
                if template in PUBLIC or "get" not in operations:
                    continue
                path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), template)
                r = await client.get(path, headers=headers)
                assert r.status_code in (401, 403, 404), f"{base}{template}: {r.status_code}"
                checked += 1
    assert checked >= 10  # the queue, cases, visits, audit, timelines, policy, matches, ...


async def test_a_community_referral_entered_by_a_peer_makes_a_task(
    outreach_process: ServiceProcess,
) -> None:
    family = f"Community{uuid.uuid4().hex[:6]}"
    peer = await _token(outreach_process.env, "peer", "peer-community")
    async with httpx.AsyncClient(base_url=outreach_process.http, timeout=30) as api:
        entered = await api.post(
            "/v1/community-referrals",
            json={
                "referrer": "syringe_services",
                "person": {"family_name": family, "given_name": "Robin",
                           "phones": ["336-555-0166"], "county": "Guilford", "state": "NC"},
                "consent": "accepted",
                "overdose": True,
                "overdose_at": (datetime.now(UTC) - timedelta(hours=5)).isoformat(),
                "notes": "Met at the van; prefers texts after 5 pm.",
            },
            headers=peer,
        )  # fmt: skip
        assert entered.status_code == 201, entered.text
        task = await _queue_task(api, peer, family)
        assert task["kind"] == "remote_contact"
        assert task["overdose"]["source_kind"] == "community"
        assert task["person"]["phones"] == ["336-555-0166"]
