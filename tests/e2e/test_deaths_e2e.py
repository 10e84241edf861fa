"""Over real processes, Kafka and PostgreSQL: a fatal overdose never becomes outreach to the
person, a later record of death cancels what is open and marks the case deceased, and an
oversized field is refused without stopping the next ordinary overdose on its way to a peer."""

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

from shared.envelope import Envelope
from shared.topics import SCHEDULER_CASES
from tests.e2e.conftest import IntakeProcess, ServiceProcess
from tests.hl7_builder import ack_fields, adt, framed, hl7_time
from tests.support import read_topic

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


async def _eventually(probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _case_events(kafka: str, case_id: str, *types: str, expect: int) -> Any:
    return read_topic(
        kafka,
        SCHEDULER_CASES.name,
        where=lambda r: (
            (e := Envelope.from_bytes(r.value)).type in types and e.data["case_id"] == case_id
        ),
        expect=expect,
        timeout=60,
    )


async def test_a_fatal_ems_report_makes_no_task(
    intake_process: IntakeProcess, scheduler_process: ServiceProcess, kafka_bootstrap: str
) -> None:
    async with httpx.AsyncClient(base_url=intake_process.http) as intake:
        posted = await intake.post(
            "/v1/ems/run-reports",
            json={
                "pcr_number": f"DEAD-{uuid.uuid4().hex[:8]}",
                "incident_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
                "patient": {"family_name": f"Fatal{uuid.uuid4().hex[:6]}", "given_name": "Lee",
                            "phones": ["336-555-0155"]},
                "impressions": ["T40.411A"],
                "disposition": {"release_acuity": "4219007"},
                "peer_follow_up": "unknown",
            },
            headers={"Authorization": f"Bearer {intake_process.ems_key}"},
        )  # fmt: skip
    assert posted.status_code == 200, posted.text
    report_id = posted.json()["results"][0]["report_id"]
    (linked,) = await read_topic(
        kafka_bootstrap,
        SCHEDULER_CASES.name,
        where=lambda r: Envelope.from_bytes(r.value).data.get("report_id") == report_id,
        expect=1,
        timeout=120,
    )
    case_id = Envelope.from_bytes(linked.value).data["case_id"]
    found = await _case_events(
        kafka_bootstrap, case_id, "EpisodeOpened", "DeathRecorded", "TaskScheduled", expect=2
    )
    types = sorted(Envelope.from_bytes(r.value).type for r in found)
    assert types == ["DeathRecorded", "EpisodeOpened"]  # and no TaskScheduled, ever


async def test_a_later_a03_expired_cancels_the_task_and_the_case_shows_deceased(
    intake_process: IntakeProcess,
    scheduler_process: ServiceProcess,
    outreach_process: ServiceProcess,
    kafka_bootstrap: str,
) -> None:
    family, visit = f"Expires{uuid.uuid4().hex[:6]}", f"V-{uuid.uuid4().hex[:8]}"
    admit = hl7_time(datetime.now(UTC) - timedelta(hours=3))
    (ack,) = await intake_process.mllp(
        framed(adt(f"A04-{visit}", family=family, visit=visit, admit=admit))
    )
    assert ack_fields(ack)[0] == "AA"
    lead = await _token(outreach_process.env, "team_lead", "lead-ana")
    peer = await _token(outreach_process.env, "peer", "peer-holds")
    async with httpx.AsyncClient(base_url=outreach_process.http, timeout=30) as api:
        member = await api.put(
            "/v1/team/members/peer-holds", json={"display_name": "Holder"}, headers=lead
        )
        assert member.status_code in (200, 201, 412), member.text

        async def task() -> Any:
            r = await api.get("/v1/tasks", params={"limit": 200}, headers=peer)
            return next(
                (t for t in r.json()["items"] if family in (t["person"]["name"] or "")), None
            )

        held = await _eventually(task, "the ED overdose's task")
        claimed = await api.post(
            f"/v1/tasks/{held['id']}/claim", headers=peer | {"If-Match": f'"{held["version"]}"'}
        )
        if claimed.status_code == 412:  # its window timer moved it on meanwhile
            fresh = (await api.get(f"/v1/tasks/{held['id']}", headers=peer)).json()
            claimed = await api.post(
                f"/v1/tasks/{held['id']}/claim",
                headers=peer | {"If-Match": f'"{fresh["version"]}"'},
            )
        assert claimed.status_code == 200, claimed.text

        # The A03 at discharge: the patient expired (PV1-36 = 20), no overdose codes.
        segments = adt(
            f"A03-{visit}", trigger="A03", family=family, visit=visit, admit=admit, dx=None,
            complaint=None,
        ).rstrip("\r").split("\r")  # fmt: skip
        pv1 = next(i for i, s in enumerate(segments) if s.startswith("PV1|"))
        fields = segments[pv1].split("|")
        fields += [""] * (37 - len(fields))
        fields[36] = "20"
        segments[pv1] = "|".join(fields)
        (ack,) = await intake_process.mllp(framed("\r".join(segments) + "\r"))
        assert ack_fields(ack)[0] == "AA"

        async def deceased() -> Any:
            r = await api.get(f"/v1/cases/{held['case_id']}", headers=lead)
            return r.json() if r.status_code == 200 and r.json()["deceased"] else None

        case = await _eventually(deceased, "the case marked deceased")
        (task,) = [t for t in case["tasks"] if t["id"] == held["id"]]
        assert task["status"] == "cancelled"
        queue = (await api.get("/v1/tasks", headers=peer)).json()
        notice = next(n for n in queue["notices"] if n["case_id"] == held["case_id"])
        assert notice["kind"] == "person_deceased"
        assert not [t for t in queue["items"] if t["case_id"] == held["case_id"]]
    cancelled = await _case_events(kafka_bootstrap, held["case_id"], "TaskCancelled", expect=1)
    assert Envelope.from_bytes(cancelled[0].value).data["reason"] == "person_deceased"


async def test_an_oversized_field_is_refused_and_the_next_overdose_still_reaches_the_queue(
    intake_process: IntakeProcess,
    scheduler_process: ServiceProcess,
    outreach_process: ServiceProcess,
) -> None:
    admit = hl7_time(datetime.now(UTC) - timedelta(hours=1))
    (refused,) = await intake_process.mllp(
        framed(adt(f"BIG-{uuid.uuid4().hex[:8]}", family="N" * 40_000, admit=admit))
    )
    assert ack_fields(refused)[0] == "AR"
    assert ack_fields(refused)[2] == "102"
    family = f"After{uuid.uuid4().hex[:6]}"
    (ok,) = await intake_process.mllp(
        framed(adt(f"NEXT-{uuid.uuid4().hex[:8]}", family=family, visit=f"V-{family}", admit=admit))
    )
    assert ack_fields(ok)[0] == "AA"
    peer = await _token(outreach_process.env, "peer", "peer-next")
    async with httpx.AsyncClient(base_url=outreach_process.http, timeout=30) as api:

        async def task() -> Any:
            r = await api.get("/v1/tasks", params={"limit": 200}, headers=peer)
            return next(
                (t for t in r.json()["items"] if family in (t["person"]["name"] or "")), None
            )

        assert await _eventually(task, "the next overdose's task")
