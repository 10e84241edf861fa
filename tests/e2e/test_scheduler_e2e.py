"""From a hospital's MLLP message to an outreach task, across real processes and Kafka."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from shared.envelope import Envelope
from shared.topics import INTAKE_OVERDOSES, SCHEDULER_CASES
from tests.e2e.conftest import IntakeProcess, ServiceProcess
from tests.hl7_builder import ack_fields, adt, framed
from tests.support import read_topic

pytestmark = pytest.mark.e2e

PORTLINE = str(Path(sys.executable).parent / "portline")


async def test_an_mllp_overdose_becomes_a_remote_contact_task_due_24h_after_the_incident(
    intake_process: IntakeProcess, scheduler_process: ServiceProcess, kafka_bootstrap: str
) -> None:
    ref = f"SCH-{uuid.uuid4().hex[:10]}"
    family = f"Kx{uuid.uuid4().hex[:6]}"
    (ack,) = await intake_process.mllp(
        framed(adt(ref, family=family, visit=f"V-{ref}", admit="202611201415-0500"))
    )
    assert ack_fields(ack)[0] == "AA"
    incident = datetime(2026, 11, 20, 19, 15, tzinfo=UTC)

    (reported,) = await read_topic(
        kafka_bootstrap,
        INTAKE_OVERDOSES.name,
        where=lambda r: Envelope.from_bytes(r.value).data.get("source_ref") == ref,
        expect=1,
    )
    report_id = Envelope.from_bytes(reported.value).data["report_id"]
    (linked,) = await read_topic(
        kafka_bootstrap,
        SCHEDULER_CASES.name,
        where=lambda r: Envelope.from_bytes(r.value).data.get("report_id") == report_id,
        expect=1,
        # A broker reused across runs holds old events sealed under other keys; the scheduler
        # dead-letters those first (quickly). A fresh broker (CI) answers in seconds.
        timeout=150,
    )
    case_id = Envelope.from_bytes(linked.value).data["case_id"]
    scheduled = await read_topic(
        kafka_bootstrap,
        SCHEDULER_CASES.name,
        where=lambda r: (
            (e := Envelope.from_bytes(r.value)).type == "TaskScheduled"
            and e.data["case_id"] == case_id
        ),
        expect=1,
    )
    (task,) = [Envelope.from_bytes(r.value).data for r in scheduled]
    assert task["kind"] == "remote_contact"
    assert datetime.fromisoformat(task["due_at"]) == incident + timedelta(hours=24)
    assert datetime.fromisoformat(task["expires_at"]) == incident + timedelta(hours=72)
    assert family.encode() not in linked.value

    # A team lead sees why it is due: the case's timeline, over the scheduler's API.
    token = (
        await asyncio.to_thread(
            subprocess.run,
            [PORTLINE, "dev-token", "--role", "team_lead", "--program", "demo"],
            env=scheduler_process.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    ).stdout.strip()
    async with httpx.AsyncClient(base_url=scheduler_process.http) as client:
        timeline = await client.get(
            f"/v1/cases/{case_id}/timeline", headers={"Authorization": f"Bearer {token}"}
        )
        anonymous = await client.get(f"/v1/cases/{case_id}/timeline")
    assert timeline.status_code == 200, timeline.text
    kinds = [i["kind"] for i in timeline.json()["items"]]
    assert {"episode", "report", "task", "timer"} <= set(kinds)
    assert anonymous.status_code == 401
