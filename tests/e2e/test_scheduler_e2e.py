"""From a partner's report to an outreach task, across real processes and Kafka: on time over
MLLP, and late (10 days, 40 days) over the EMS API. Every time is relative to now."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.envelope import Envelope
from shared.topics import INTAKE_OVERDOSES, SCHEDULER_CASES
from tests.e2e.conftest import IntakeProcess, ServiceProcess
from tests.hl7_builder import ack_fields, adt, framed, hl7_time
from tests.support import read_topic

pytestmark = pytest.mark.e2e

PORTLINE = str(Path(sys.executable).parent / "portline")


async def _token(env: dict[str, str], role: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run,
        [PORTLINE, "dev-token", "--role", role, "--program", "demo"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


async def _case_events(kafka_bootstrap: str, report_id: str, *types: str) -> list[dict[str, Any]]:
    """The scheduler's events of the case the report was linked to, of the given types."""
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
    found = await read_topic(
        kafka_bootstrap,
        SCHEDULER_CASES.name,
        where=lambda r: (
            (e := Envelope.from_bytes(r.value)).type in types and e.data["case_id"] == case_id
        ),
        expect=len(types),
    )
    return [{"type": (e := Envelope.from_bytes(r.value)).type, **e.data} for r in found]


def _nobody_else() -> dict[str, str]:
    """A person no other test sends: every identifier the linker weighs is drawn at random.

    The builder's defaults (Jane, born 1990-01-01, 12 Elm St, 336-555-0100) are shared by
    reports of many tests in the same run, and the scheduler reads them all. With only the
    family name random, two of them can agree phonetically ("Kx4a0e21" and "Qx9e0a3712" have
    the same metaphone code, as 5 % of such pairs do), the linker may make them one person,
    and this report then joins the other's case, whose window opened minutes earlier."""
    n = uuid.uuid4().int
    return {
        "family": f"Kx{uuid.uuid4().hex[:6]}",
        "given": f"Sg{uuid.uuid4().hex[:6]}",
        "dob": (date(1950, 1, 1) + timedelta(days=n % 18_000)).strftime("%Y%m%d"),
        "phone": f"^PRN^PH^^^336^{200 + n % 800}{(n >> 20) % 10_000:04d}",
        "street": f"{100 + (n >> 40) % 9_000} Sycamore St",
    }


async def test_an_mllp_overdose_becomes_a_remote_contact_task_due_24h_after_the_incident(
    intake_process: IntakeProcess, scheduler_process: ServiceProcess, kafka_bootstrap: str
) -> None:
    ref = f"SCH-{uuid.uuid4().hex[:10]}"
    person = _nobody_else()
    family = person["family"]
    # Two hours ago, to the minute: 14:00 or 16:00 local, say, so quiet hours may move the due
    # time (never the window).
    incident = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    (ack,) = await intake_process.mllp(
        framed(adt(ref, visit=f"V-{ref}", admit=hl7_time(incident), **person))
    )
    assert ack_fields(ack)[0] == "AA"

    (reported,) = await read_topic(
        kafka_bootstrap,
        INTAKE_OVERDOSES.name,
        where=lambda r: Envelope.from_bytes(r.value).data.get("source_ref") == ref,
        expect=1,
    )
    assert family.encode() not in reported.value
    report_id = Envelope.from_bytes(reported.value).data["report_id"]
    episode, task = await _case_events(kafka_bootstrap, report_id, "EpisodeOpened", "TaskScheduled")
    assert task["kind"] == "remote_contact"
    assert task["late"] is False
    assert episode["late"] is False
    assert datetime.fromisoformat(task["window_opens_at"]) == incident
    due = datetime.fromisoformat(task["due_at"])
    assert incident + timedelta(hours=24) <= due <= incident + timedelta(hours=72)
    assert datetime.fromisoformat(task["expires_at"]) == incident + timedelta(hours=72)

    # A team lead sees why it is due: the case's timeline, over the scheduler's API.
    token = await _token(scheduler_process.env, "team_lead")
    async with httpx.AsyncClient(base_url=scheduler_process.http) as client:
        timeline = await client.get(
            f"/v1/cases/{task['case_id']}/timeline", headers={"Authorization": f"Bearer {token}"}
        )
        anonymous = await client.get(f"/v1/cases/{task['case_id']}/timeline")
    assert timeline.status_code == 200, timeline.text
    items = timeline.json()["items"]
    assert {"episode", "report", "task", "timer"} <= {i["kind"] for i in items}
    (episode_item,) = [i for i in items if i["kind"] == "episode"]
    assert episode_item["detail"]["timing"] == "Times count from the overdose."
    assert anonymous.status_code == 401


async def _eventually(probe: Callable[[], Awaitable[Any]], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_report_10_days_late_gets_a_live_task_and_one_40_days_late_is_counted_only(
    intake_process: IntakeProcess,
    scheduler_process: ServiceProcess,
    outreach_process: ServiceProcess,
    kafka_bootstrap: str,
) -> None:
    now = datetime.now(UTC)
    tag = uuid.uuid4().hex[:6]
    reports = {
        "ten": (f"Tenlate{tag}", now - timedelta(days=10)),
        "forty": (f"Fortylate{tag}", now - timedelta(days=40)),
    }
    ids: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=intake_process.http) as intake:
        for name, (family, incident) in reports.items():
            posted = await intake.post(
                "/v1/ems/run-reports",
                json={
                    "pcr_number": f"LATE-{name}-{tag}",
                    "incident_at": incident.isoformat(),
                    "patient": {
                        "family_name": family,
                        "given_name": "Robin",
                        "date_of_birth": "1988-02-03",
                        "phones": [f"336-555-{1000 + len(name) * 7:04d}"],
                    },
                    "impressions": ["T40.1X1A"],
                    "peer_follow_up": "accepted",
                },
                headers={"Authorization": f"Bearer {intake_process.ems_key}"},
            )
            assert posted.status_code == 200, posted.text
            (result,) = posted.json()["results"]
            assert result["status"] == "accepted"
            ids[name] = result["report_id"]

    # Ten days late: a late remote contact, its windows counted from the receipt.
    episode, scheduled = await _case_events(
        kafka_bootstrap, ids["ten"], "EpisodeOpened", "TaskScheduled"
    )
    assert episode["late"] is True
    assert "late_report_windows_from_receipt" in episode["reasons"]
    received = datetime.fromisoformat(episode["received_at"])
    assert received >= now - timedelta(seconds=5)
    assert scheduled["late"] is True
    assert datetime.fromisoformat(scheduled["window_opens_at"]) == received
    assert datetime.fromisoformat(scheduled["expires_at"]) == received + timedelta(hours=72)

    # Forty days late: the episode is recorded and counted, and no task is planned.
    (old,) = await _case_events(kafka_bootstrap, ids["forty"], "EpisodeOpened")
    assert old["reasons"] == ["too_old_for_outreach"]
    assert old["late"] is True

    # In outreach's queue: the ten-days-late task is open, unexpired and marked late; the
    # forty-days-late person has no task at all.
    peer = {"Authorization": f"Bearer {await _token(outreach_process.env, 'peer')}"}
    async with httpx.AsyncClient(base_url=outreach_process.http, timeout=30) as api:

        async def queue() -> list[dict[str, Any]]:
            r = await api.get("/v1/tasks", params={"limit": 200}, headers=peer)
            assert r.status_code == 200, r.text
            items: list[dict[str, Any]] = r.json()["items"]
            return items

        async def ten_days_task() -> dict[str, Any] | None:
            family = reports["ten"][0]
            return next((t for t in await queue() if family in (t["person"]["name"] or "")), None)

        task = await _eventually(ten_days_task, "the late task in outreach's queue", 120)
        assert task["status"] == "open"
        assert task["late"] is True
        assert datetime.fromisoformat(task["expires_at"]) > datetime.now(UTC)
        assert datetime.fromisoformat(task["overdose"]["incident_at"]) < now - timedelta(days=9)
        forty = reports["forty"][0]
        assert not [t for t in await queue() if forty in (t["person"]["name"] or "")]
    assert scheduled["case_id"] != old["case_id"]


async def _linked(kafka_bootstrap: str, report_id: str) -> dict[str, Any]:
    (linked,) = await read_topic(
        kafka_bootstrap,
        SCHEDULER_CASES.name,
        where=lambda r: (
            (e := Envelope.from_bytes(r.value)).type == "ReportLinked"
            and e.data.get("report_id") == report_id
        ),
        expect=1,
        timeout=150,
    )
    data: dict[str, Any] = Envelope.from_bytes(linked.value).data
    return data


async def _ems(
    intake_process: IntakeProcess,
    pcr: str,
    incident: datetime,
    patient: dict[str, Any],
    destination: str | None = None,
    transport: str | None = None,
) -> str:
    disposition = {
        **({"destination": destination} if destination else {}),
        **({"transport": transport} if transport else {}),
    }
    async with httpx.AsyncClient(base_url=intake_process.http) as intake:
        posted = await intake.post(
            "/v1/ems/run-reports",
            json={
                "pcr_number": pcr,
                "incident_at": incident.isoformat(),
                "patient": patient,
                "scene": {"city": "Greensboro", "state": "NC", "county": "Guilford"},
                "impressions": ["T40.1X1A"],
                "peer_follow_up": "accepted",
                **({"disposition": disposition} if disposition else {}),
            },
            headers={"Authorization": f"Bearer {intake_process.ems_key}"},
        )
    assert posted.status_code == 200, posted.text
    (result,) = posted.json()["results"]
    assert result["status"] == "accepted"
    report_id: str = result["report_id"]
    return report_id


async def _ed(
    intake_process: IntakeProcess, kafka_bootstrap: str, ref: str, **adt_fields: str
) -> str:
    (ack,) = await intake_process.mllp(framed(adt(ref, visit=f"V-{ref}", **adt_fields)))
    assert ack_fields(ack)[0] == "AA"
    (reported,) = await read_topic(
        kafka_bootstrap,
        INTAKE_OVERDOSES.name,
        where=lambda r: Envelope.from_bytes(r.value).data.get("source_ref") == ref,
        expect=1,
    )
    report_id: str = Envelope.from_bytes(reported.value).data["report_id"]
    return report_id


async def test_the_ed_visit_then_the_ems_run_of_one_overdose_are_one_case(
    intake_process: IntakeProcess, scheduler_process: ServiceProcess, kafka_bootstrap: str
) -> None:
    """The ED's ADT comes first; the ePCR hours later calls her by a nickname, with day and
    month of her birth swapped and no phone. Before issue 18 that was two people."""
    family = f"Linkb{uuid.uuid4().hex[:6]}"
    run = (datetime.now(UTC) - timedelta(hours=3)).replace(second=0, microsecond=0)
    ref = f"LNK-{uuid.uuid4().hex[:10]}"
    ed_id = await _ed(
        intake_process,
        kafka_bootstrap,
        ref,
        family=family,
        given="Elizabeth",
        dob="19870311",
        admit=hl7_time(run + timedelta(minutes=40)),
    )
    ed = await _linked(kafka_bootstrap, ed_id)
    assert ed["match"] == "new_person"

    ems_id = await _ems(
        intake_process,
        f"LNK-{uuid.uuid4().hex[:8]}",
        run,
        {"family_name": family, "given_name": "Liz", "date_of_birth": "1987-11-03", "sex": "F"},
    )
    ems = await _linked(kafka_bootstrap, ems_id)
    assert ems["match"] == "exact"
    assert (ems["case_id"], ems["episode_id"]) == (ed["case_id"], ed["episode_id"])


async def test_the_ems_run_then_the_ed_visit_of_one_overdose_are_one_case(
    intake_process: IntakeProcess, scheduler_process: ServiceProcess, kafka_bootstrap: str
) -> None:
    """The ePCR comes first with the names in swapped fields; the ED's ADT, 40 minutes after
    the run and without a phone, has them right."""
    family = f"Linka{uuid.uuid4().hex[:6]}"
    run = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    ems_id = await _ems(
        intake_process,
        f"LNK-{uuid.uuid4().hex[:8]}",
        run,
        {"family_name": "Jordan", "given_name": family, "date_of_birth": "1991-06-24"},
    )
    ems = await _linked(kafka_bootstrap, ems_id)
    assert ems["match"] == "new_person"

    ed_id = await _ed(
        intake_process,
        kafka_bootstrap,
        f"LNK-{uuid.uuid4().hex[:10]}",
        family=family,
        given="Jordan",
        dob="19910624",
        phone="",
        admit=hl7_time(run + timedelta(minutes=40)),
    )
    ed = await _linked(kafka_bootstrap, ed_id)
    assert ed["match"] == "exact"
    assert (ed["case_id"], ed["episode_id"]) == (ems["case_id"], ems["episode_id"])


async def test_the_ems_run_then_the_ed_visit_at_its_destination_are_one_case(
    intake_process: IntakeProcess, scheduler_process: ServiceProcess, kafka_bootstrap: str
) -> None:
    """The crew wrote only her initial and no date of birth, and where they took her: the
    hospital whose ADT comes 40 minutes later. The hour alone would leave the pair to a lead;
    the hospital EMS transported to makes it one overdose (issue 18, ADR 0027)."""
    # A name, birth date and phone of her own: the other tests' people must not look like her.
    family = f"Mtransport{uuid.uuid4().hex[:6]}"
    run = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    ems_id = await _ems(
        intake_process,
        f"LNK-{uuid.uuid4().hex[:8]}",
        run,
        {"family_name": family, "given_name": "E"},
        destination="demo_hospital",  # the MLLP partner's MSH-4, as the crew's list writes it
    )
    ems = await _linked(kafka_bootstrap, ems_id)
    assert ems["match"] == "new_person"

    ed_id = await _ed(
        intake_process,
        kafka_bootstrap,
        f"LNK-{uuid.uuid4().hex[:10]}",
        family=family,
        given="Elizabeth",
        dob="19930517",
        phone="^PRN^PH^^^336^5550177",
        admit=hl7_time(run + timedelta(minutes=40)),
    )
    ed = await _linked(kafka_bootstrap, ed_id)
    assert ed["match"] == "exact"
    assert (ed["case_id"], ed["episode_id"]) == (ems["case_id"], ems["episode_id"])


async def test_a_run_that_transported_and_named_no_hospital_is_flagged_with_the_ed_visit(
    intake_process: IntakeProcess, scheduler_process: ServiceProcess, kafka_bootstrap: str
) -> None:
    """The crew wrote a false name and date of birth, and that they transported her
    (eDisposition.30 4230001) but not where. Nothing but the hour is left: the ED visit 50
    minutes later is flagged for a lead whatever the names (ADR 0027 addendum), never linked.
    Hours away from the other tests' overdoses, so that none of theirs is in the window."""
    run = (datetime.now(UTC) - timedelta(hours=9)).replace(second=0, microsecond=0)
    alias = f"Falsename{uuid.uuid4().hex[:6]}"
    ems_id = await _ems(
        intake_process,
        f"LNK-{uuid.uuid4().hex[:8]}",
        run,
        {"family_name": alias, "given_name": "Kevin", "date_of_birth": "1979-02-22", "sex": "M"},
        transport="4230001",
    )
    ems = await _linked(kafka_bootstrap, ems_id)
    assert ems["match"] == "new_person"

    family = f"Realname{uuid.uuid4().hex[:6]}"
    ed_id = await _ed(
        intake_process,
        kafka_bootstrap,
        f"LNK-{uuid.uuid4().hex[:10]}",
        family=family,
        given="Roberta",
        dob="19880914",
        phone="",
        admit=hl7_time(run + timedelta(minutes=50)),
    )
    ed = await _linked(kafka_bootstrap, ed_id)
    assert ed["match"] == "new_person"
    assert ed["case_id"] != ems["case_id"]

    lead = await _token(scheduler_process.env, "team_lead")
    async with httpx.AsyncClient(base_url=scheduler_process.http, timeout=10) as api:
        r = await api.get(
            "/v1/possible-matches",
            params={"limit": 200},
            headers={"Authorization": f"Bearer {lead}"},
        )
    assert r.status_code == 200, r.text
    # Only this test's run says it transported: any other item is another test's overdose.
    (flag,) = [
        m
        for m in r.json()["items"]
        if m["report_id"] == ed_id and "unnamed_transport" in (m["explanation"] or {})
    ]
    assert flag["level"] == "flag"
    assert flag["reasons"] == ["same_overdose_flagged"]
    assert "50 min later" in flag["explanation"]["unnamed_transport"]
    assert flag["weight"] < flag["explanation"]["thresholds"]["flag"]
