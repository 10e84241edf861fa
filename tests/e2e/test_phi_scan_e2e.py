"""No plaintext PHI at rest: a made-up person goes in through every input path of the running
system, and then a database dump, every record on the broker and every service log are
searched for their identifiers.

The person (tests/phi_scan.py `Planted`) is random per run: family and given name, date of
birth, phone, street and city, MRN and a free-text note. They go in as

- HL7 v2 ADT over MLLP (an A04 overdose) and over `POST /v1/hl7` (an A08 of another visit);
- an EMS JSON run report and a NEMSIS v3.5 XML run report (tests/fixtures/nemsis/single_pcr.xml
  with the identifiers substituted), each with the note in its narrative;
- two rejected HL7 messages (unsupported trigger A31, over MLLP and HTTP), kept sealed for replay;
- HL7 refused at the edge: a facility nobody registered (AR 103 over MLLP and HTTP, nothing
  stored) and an oversized street (AR 102, kept sealed for replay);
- refused EMS input: a JSON report that fails validation, and a PCR without its number;
- a law-enforcement report (`POST /v1/le/overdose-reports`) with the person and their address;
- outreach, as a peer and a lead: attempt notes, a visit's meeting place (scheduled and moved),
  the visit's outcome notes, a contact note, a referral's provider and notes (made and moved
  along), a decline note and a conclusion note, each carrying the identifiers; two refused
  attempts (an impossible outcome, notes over the limit); a community referral with the
  person, their address and a note; and the free-text `X-Purpose` header the audit log keeps.

Not covered: texts (SMS is not configured in this deployment, so those routes answer 503
before reading anything) and the deputy's safety note (this test asks for no deputy).

Then, for every identifier in every spelling (tests/phi_scan.py), with zero hits allowed:

- `pg_dump` of the whole test database, every schema;
- every record (key, value and headers) of every PORTline topic, read from the beginning with a
  consumer;
- the broker's log segment files of those topics, when the tests run the local broker (as
  `make test` always does; scripts/infra.sh exports where they are): their
  raw bytes, and every record batch in them opened (the producers compress their batches with
  gzip, so the raw bytes alone would prove nothing);
- every service log the fixtures write (intake, scheduler, outreach, reporting; reporting has
  read this run's four reports and its rejections into its own schema before the scan).

The test shows it could fail: the identifiers provably went in (intake published the four
reports and the two rejections, the scheduler linked the reports to one case, outreach shows
that case's task with the person's name and phone to a peer, and the rejected messages open,
with the services' keys, to text holding the name), each place scanned provably holds this
run's data (the report and case ids), and the scanner finds an identifier planted in a file.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer

from shared.db import create_engine
from shared.envelope import Envelope
from shared.sealing import load_keys
from shared.settings import Settings
from shared.topics import ALL_TOPICS, INTAKE_OVERDOSES, INTAKE_REJECTED, SCHEDULER_CASES
from tests.e2e.conftest import IntakeProcess, ServiceProcess
from tests.hl7_builder import ack_fields, adt, framed, hl7_time
from tests.phi_scan import Hit, Planted, scan_bytes, scan_files, segment_batches
from tests.support import read_topic

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PORTLINE = str(Path(sys.executable).parent / "portline")
NEMSIS_FIXTURE = ROOT / "tests" / "fixtures" / "nemsis" / "single_pcr.xml"
# PG_BIN as deploy/local/postgres.sh reads it; pg_dump must be as new as the server.
PG_DUMP = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")) / "pg_dump"
_FIXTURE_TIME = re.compile(r"2026-11-20T(\d\d):(\d\d):(\d\d)-05:00")


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


# -- what goes in ----------------------------------------------------------------------------


def _hl7(
    p: Planted, control: str, *, trigger: str, visit: str, incident: datetime, **changes: str
) -> str:
    fields = {
        "trigger": trigger,
        "visit": visit,
        "family": p.family,
        "given": p.given,
        "dob": p.dob_hl7,
        "phone": f"{p.phone_parens}^PRN^PH^^^{p.phone[:3]}^{p.phone[3:]}",
        "mrn": p.mrn,
        "street": p.street,
        "city": p.city,
        "complaint": f"OD on heroin. {p.note}",
        "admit": hl7_time(incident),
    }
    return adt(control, **{**fields, **changes})


def _ems_json(p: Planted, pcr: str, incident: datetime) -> dict[str, Any]:
    address = {"street": p.street, "city": p.city, "state": "NC", "county": "Guilford"}
    return {
        "pcr_number": pcr,
        "incident_at": incident.isoformat(),
        "patient": {
            "family_name": p.family,
            "given_name": p.given,
            "date_of_birth": p.dob.isoformat(),
            "phones": [p.phone_dashed],
            "address": {**address, "postal_code": "27401"},
        },
        "scene": address,
        "impressions": ["T40.1X1A"],
        "medications": [{"rxnorm": "7242", "response": "improved"}],
        "peer_follow_up": "accepted",
        "narrative": f"Found unresponsive; naloxone given, improved. {p.note}",
    }


def _nemsis(p: Planted, pcr: str, incident: datetime) -> str:
    """The fixture PCR about this person, its times moved to the hour before now."""
    xml = NEMSIS_FIXTURE.read_text()
    fixture_incident = datetime(2026, 11, 20, 22, 14, tzinfo=incident.tzinfo)

    def moved(m: re.Match[str]) -> str:
        at = fixture_incident.replace(hour=int(m[1]), minute=int(m[2]), second=int(m[3]))
        return (incident + (at - fixture_incident)).isoformat()

    for old, new in {
        "2026-000123": pcr,
        "Quackenbush": p.family,
        "Zebulon": p.given,
        "1990-04-02": p.dob.isoformat(),
        "336-555-0100": p.phone_dashed,
        "336-555-0199": p.phone_parens,
        "12 Synthetic Lane": p.street,
        "400 Example Street": p.street,
        "Synthetic narrative:": f"{p.note}.",
    }.items():
        assert old in xml, old
        xml = xml.replace(old, new)
    return _FIXTURE_TIME.sub(moved, xml)


async def _le_key(intake: IntakeProcess) -> str:
    """A law-enforcement partner of the demo program, and its API key."""
    partner = f"pd-{uuid.uuid4().hex[:6]}"
    added = await intake.cli(
        "partners", "add", "--id", partner, "--program", "demo",
        "--kind", "law_enforcement", "--name", "Police",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    issued = await intake.cli("partners", "issue-key", partner)
    assert issued.returncode == 0, issued.stderr
    match = re.search(r"(plk_\S+)", issued.stdout)
    assert match
    return match.group(1)


def _person(p: Planted) -> dict[str, Any]:
    return {
        "family_name": p.family,
        "given_name": p.given,
        "date_of_birth": p.dob.isoformat(),
        "phones": [p.phone_dashed],
    }


def _address(p: Planted) -> dict[str, Any]:
    return {"street": p.street, "city": p.city, "state": "NC", "postal_code": "27401"}


def _note(p: Planted, what: str) -> str:
    """Free text as a peer might write it, naming everything about the person."""
    return (
        f"{what}: {p.note}. {p.given} {p.family}, DOB {p.dob.strftime('%m/%d/%Y')}, "
        f"cell {p.phone_parens}, lives at {p.street}, {p.city}; MRN {p.mrn}."
    )


# -- where it is searched --------------------------------------------------------------------


def _libpq_url(sqlalchemy_url: str) -> str:
    parts = urlsplit(sqlalchemy_url)
    return urlunsplit(parts._replace(scheme=parts.scheme.split("+", 1)[0]))


async def _pg_dump(postgres_url: str, out: Path) -> Path:
    done = await asyncio.to_thread(
        subprocess.run,
        [str(PG_DUMP), "--no-owner", "--file", str(out), _libpq_url(postgres_url)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return out


async def _every_record(bootstrap: str) -> list[tuple[str, bytes]]:
    """(where, key + value + headers) of every record now on PORTline's topics."""
    # No group: the consumer takes every partition of the topics, from the beginning.
    consumer = AIOKafkaConsumer(
        *(spec.name for spec in ALL_TOPICS),
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while {tp.topic for tp in consumer.assignment()} != {s.name for s in ALL_TOPICS}:
            assert time.monotonic() < deadline, "the consumer was never given every topic"
            await asyncio.sleep(0.1)
        partitions = sorted(consumer.assignment())
        end = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[tuple[str, bytes]] = []
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            assert time.monotonic() < deadline, "could not read the topics to their end in time"
            batch = await consumer.getmany(timeout_ms=500)
            for tp, got in batch.items():
                for r in got:
                    headers = b"".join(k.encode() + b"=" + (v or b"") + b"\n" for k, v in r.headers)
                    blob = (r.key or b"") + b"\n" + (r.value or b"") + b"\n" + headers
                    records.append((f"{tp.topic}[{tp.partition}]@{r.offset}", blob))
        return records
    finally:
        await consumer.stop()


def _report(hits: list[Hit], place: str) -> str:
    shown = "\n".join(f"  - {hit}" for hit in hits[:25])
    more = f"\n  … and {len(hits) - 25} more" if len(hits) > 25 else ""
    return f"plaintext PHI in {place} ({len(hits)} hits):\n{shown}{more}"


# -- the test --------------------------------------------------------------------------------


async def test_no_plaintext_phi_in_the_database_the_broker_or_the_logs(
    intake_process: IntakeProcess,
    scheduler_process: ServiceProcess,
    outreach_process: ServiceProcess,
    reporting_process: ServiceProcess,
    postgres_url: str,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    person = Planted.random()
    needles = person.needles()
    run = uuid.uuid4().hex[:10]
    incident = (datetime.now(UTC) - timedelta(hours=1)).replace(second=0, microsecond=0)
    mllp_ref, http_ref = f"PHI-M-{run}", f"PHI-H-{run}"
    rejected_refs = (f"PHI-RM-{run}", f"PHI-RH-{run}")
    json_pcr, xml_pcr = f"PHI-J-{run}", f"PHI-X-{run}"

    # The scanner itself finds an identifier planted in a file, and masks it.
    canary = tmp_path / "canary.log"
    canary.write_text(f'{{"msg": "call {person.phone_dashed} about {person.given.lower()}"}}\n')
    assert {h.label for h in scan_files([canary], needles)} >= {"phone number", "given name"}

    # 1. Hospitals: HL7 over MLLP and HTTP, each with a rejected A31 beside the overdose.
    acks = await intake_process.mllp(
        framed(_hl7(person, mllp_ref, trigger="A04", visit=f"V{run}M", incident=incident)),
        framed(_hl7(person, rejected_refs[0], trigger="A31", visit=f"V{run}R", incident=incident)),
    )
    assert [ack_fields(a)[:2] for a in acks] == [("AA", mllp_ref), ("AR", rejected_refs[0])]
    # Refused at the edge: a facility nobody registered (AR 103, nothing stored) and an
    # oversized street (AR 102, kept sealed for replay), both carrying the person.
    unknown, oversized = f"PHI-UF-{run}", f"PHI-OV-{run}"
    edge = await intake_process.mllp(
        framed(
            _hl7(person, unknown, trigger="A04", visit=f"V{run}U", incident=incident).replace(
                "DEMO_HOSPITAL", "NOBODY_KNOWS_US"
            )
        ),
        framed(
            _hl7(
                person,
                oversized,
                trigger="A04",
                visit=f"V{run}O",
                incident=incident,
                street=f"{person.street} {'9' * 300}",
            )
        ),
    )
    assert [ack_fields(a) for a in edge] == [("AR", unknown, "103"), ("AR", oversized, "102")]
    hospital = {
        "Authorization": f"Bearer {intake_process.hospital_key}",
        "Content-Type": "application/hl7-v2",
    }
    ems = {"Authorization": f"Bearer {intake_process.ems_key}"}
    async with httpx.AsyncClient(base_url=intake_process.http, timeout=30) as intake:
        a08 = await intake.post(
            "/v1/hl7",
            content=_hl7(person, http_ref, trigger="A08", visit=f"V{run}H", incident=incident),
            headers=hospital,
        )
        assert a08.status_code == 200, a08.text
        a31 = await intake.post(
            "/v1/hl7",
            content=_hl7(
                person, rejected_refs[1], trigger="A31", visit=f"V{run}S", incident=incident
            ),
            headers=hospital,
        )
        assert a31.status_code == 422, a31.text
        assert ack_fields(a31.text)[2] == "201", a31.text
        stranger = await intake.post(
            "/v1/hl7",
            content=_hl7(
                person, f"PHI-UH-{run}", trigger="A04", visit=f"V{run}V", incident=incident
            ).replace("DEMO_HOSPITAL", "NOBODY_KNOWS_US"),
            headers=hospital,
        )
        assert stranger.status_code == 422, stranger.text
        assert ack_fields(stranger.text)[2] == "103", stranger.text

        # 2. EMS: a JSON run report and a NEMSIS XML one, both overdoses with consent.
        as_json = await intake.post(
            "/v1/ems/run-reports", json=_ems_json(person, json_pcr, incident), headers=ems
        )
        as_xml = await intake.post(
            "/v1/ems/run-reports",
            content=_nemsis(person, xml_pcr, incident),
            headers={**ems, "Content-Type": "application/xml"},
        )
        # Refused EMS input: a JSON report that fails validation, and a PCR without a number.
        invalid = _ems_json(person, f"PHI-V-{run}", incident)
        invalid["patient"]["date_of_birth"] = f"{person.dob_hl7} {person.phone_dashed}"
        refused = await intake.post("/v1/ems/run-reports", json=invalid, headers=ems)
        assert refused.status_code == 422, refused.text
        unnumbered = await intake.post(
            "/v1/ems/run-reports",
            content=_nemsis(person, "", incident).replace("<eRecord.01></eRecord.01>", ""),
            headers={**ems, "Content-Type": "application/xml"},
        )
        assert unnumbered.status_code == 200, unnumbered.text
        assert unnumbered.json()["results"][0]["status"] == "rejected", unnumbered.text
    for posted in (as_json, as_xml):
        assert posted.status_code == 200, posted.text
        assert posted.json()["results"][0]["status"] == "accepted", posted.text

    # Intake published the four reports; the scheduler linked all four to one case.
    refs = {mllp_ref, http_ref, json_pcr, xml_pcr}
    reported = await read_topic(
        kafka_bootstrap,
        INTAKE_OVERDOSES.name,
        where=lambda r: Envelope.from_bytes(r.value).data.get("source_ref") in refs,
        expect=4,
        settle=0,
    )
    report_ids = {Envelope.from_bytes(r.value).data["report_id"] for r in reported}
    assert {Envelope.from_bytes(r.value).data["source_ref"] for r in reported} == refs
    assert len(report_ids) == 4
    linked = await read_topic(
        kafka_bootstrap,
        SCHEDULER_CASES.name,
        where=lambda r: (
            Envelope.from_bytes(r.value).type == "ReportLinked"
            and Envelope.from_bytes(r.value).data.get("report_id") in report_ids
        ),
        expect=4,
        timeout=60,
        settle=0,
    )
    case_ids = {Envelope.from_bytes(r.value).data["case_id"] for r in linked}
    assert len(case_ids) == 1, "the four reports of one person should share a case"
    (case_id,) = case_ids

    # 3. Outreach: the person's task is in the queue, and the team writes about them.
    env = outreach_process.env
    peer_id = f"peer-{run}"
    peer = await _token(env, "peer", peer_id)
    lead = await _token(env, "team_lead", f"lead-{run}")
    # X-Purpose is free text too: it says why a record is read or changed (the audit log).
    why = {"X-Purpose": f"call back {person.given} {person.family} on {person.phone_dashed}"}
    async with httpx.AsyncClient(base_url=outreach_process.http, timeout=30) as api:
        member = await api.put(
            f"/v1/team/members/{peer_id}", json={"display_name": "Pat P."}, headers=lead
        )
        assert member.status_code == 200, member.text

        async def task_of(kind: str, stage: str | None = None) -> dict[str, Any] | None:
            r = await api.get("/v1/tasks", params={"kind": kind, "limit": 200}, headers=peer)
            assert r.status_code == 200, r.text
            return next(
                (
                    t
                    for t in r.json()["items"]
                    if t["case_id"] == case_id and stage in (None, t["stage"])
                ),
                None,
            )

        task = await _eventually(lambda: task_of("remote_contact", "due"), "the remote task")
        # The API shows the person to a peer of the program: the identifiers really went in.
        assert person.family in (task["person"]["name"] or "")
        assert person.given in (task["person"]["name"] or "")
        assert any(person.phone[6:] in phone for phone in task["person"]["phones"])
        assert person.street_word in (task["person"]["address"] or "")

        claimed = await api.post(
            f"/v1/tasks/{task['id']}/claim", headers=peer | {"If-Match": f'"{task["version"]}"'}
        )
        assert claimed.status_code == 200, claimed.text
        for outcome in ("no_answer", "left_message", "no_answer"):
            r = await api.post(
                f"/v1/tasks/{task['id']}/attempts",
                json={"channel": "phone", "outcome": outcome, "notes": _note(person, outcome)},
                headers=peer,
            )
            assert r.status_code == 201, r.text
        # Refused team input: an outcome the channel cannot have, and notes over the limit.
        for refused_attempt in (
            {"channel": "phone", "outcome": "not_found", "notes": _note(person, "refused")},
            {"channel": "phone", "outcome": "no_answer", "notes": _note(person, "long") * 40},
        ):
            r = await api.post(
                f"/v1/tasks/{task['id']}/attempts", json=refused_attempt, headers=peer
            )
            assert r.status_code == 422, r.text

        visit_task = await _eventually(lambda: task_of("in_person_visit"), "the visit task")
        start = datetime.now(UTC) + timedelta(minutes=30)
        visit = await api.post(
            "/v1/visits",
            json={
                "task_id": visit_task["id"],
                "window_start": start.isoformat(),
                "window_end": (start + timedelta(hours=1)).isoformat(),
                "meeting_place": f"Front steps of {person.street}, {person.city}",
            },
            headers=peer,
        )
        assert visit.status_code == 201, visit.text
        moved = await api.patch(
            f"/v1/visits/{visit.json()['id']}",
            json={"meeting_place": f"Corner store by {person.street}, {person.city}"},
            headers=peer | {"If-Match": visit.headers["ETag"]},
        )
        assert moved.status_code == 200, moved.text
        done = await api.post(
            f"/v1/visits/{visit.json()['id']}/outcome",
            json={"outcome": "reached", "notes": _note(person, "visit")},
            headers=peer | {"If-Match": moved.headers["ETag"]},
        )
        assert done.status_code == 200, done.text
        contact = await api.post(
            f"/v1/cases/{case_id}/contacts",
            json={"channel": "phone", "notes": _note(person, "called in")},
            headers=peer | why,
        )
        assert contact.status_code == 201, contact.text
        referral = await api.post(
            f"/v1/cases/{case_id}/referrals",
            json={
                "kind": "moud_buprenorphine",
                "status": "accepted",
                "warm_handoff": True,
                "provider": f"Clinic on {person.street} for {person.given} {person.family}",
                "notes": _note(person, "referral"),
            },
            headers=peer,
        )
        assert referral.status_code == 201, referral.text
        appointment = await api.patch(
            f"/v1/referrals/{referral.json()['id']}",
            json={
                "status": "appointment",
                "appointment_at": (datetime.now(UTC) + timedelta(days=2)).isoformat(),
                "notes": _note(person, "appointment"),
            },
            headers=peer | {"If-Match": referral.headers["ETag"]},
        )
        assert appointment.status_code == 200, appointment.text
        declined = await api.post(
            f"/v1/cases/{case_id}/decline", json={"notes": _note(person, "decline")}, headers=peer
        )
        assert declined.status_code == 200, declined.text

        case = await api.get(f"/v1/cases/{case_id}", headers=lead | why)
        assert case.status_code == 200, case.text
        concluded = await api.post(
            f"/v1/cases/{case_id}/conclusion",
            json={"reason": "declined", "notes": _note(person, "conclusion")},
            headers=lead | {"If-Match": case.headers["ETag"]},
        )
        assert concluded.status_code == 200, concluded.text

        # Everything the team wrote is there for the team, in the clear.
        body = (await api.get(f"/v1/cases/{case_id}", headers=lead)).json()
        assert any(person.note in (c["notes"] or "") for c in body["contacts"])
        assert person.family in body["referrals"][0]["provider"]
        assert person.street in body["visits"][0]["meeting_place"]

        # The scheduler closed the case: outreach's events went round through the broker.
        async def closed_everywhere() -> bool:
            r = await api.get(f"/v1/cases/{case_id}", headers=lead)
            got = r.json()
            return got["status"] == "closed" and all(t["status"] != "open" for t in got["tasks"])

        await _eventually(closed_everywhere, "the scheduler to close the case")

    # 4. Law enforcement and the community: a police report of an earlier overdose, and a
    # referral a peer enters from a syringe services program, both about the same person.
    le_key = await _le_key(intake_process)
    le_number = f"PHI-LE-{run}"
    earlier = incident - timedelta(days=3)
    async with httpx.AsyncClient(base_url=intake_process.http, timeout=30) as intake:
        le = await intake.post(
            "/v1/le/overdose-reports",
            json={
                "incident_number": le_number,
                "occurred_at": earlier.isoformat(),
                "location": {"address": {**_address(person), "county": "Guilford"}},
                "fatal": False,
                "naloxone": {"given": True, "doses": 2},
                "consent": "accepted",
                "person": {**_person(person), "address": _address(person)},
            },
            headers={"Authorization": f"Bearer {le_key}"},
        )
    assert le.status_code == 202, le.text
    async with httpx.AsyncClient(base_url=outreach_process.http, timeout=30) as api:
        community = await api.post(
            "/v1/community-referrals",
            json={
                "referrer": "syringe_services",
                "person": {**_person(person), **_address(person), "county": "Guilford"},
                "consent": "accepted",
                "overdose": True,
                "overdose_at": (incident - timedelta(days=6)).isoformat(),
                "notes": _note(person, "community referral"),
            },
            headers=peer | why,
        )
    assert community.status_code == 201, community.text
    le_reported = await read_topic(
        kafka_bootstrap,
        INTAKE_OVERDOSES.name,
        where=lambda r: Envelope.from_bytes(r.value).data.get("source_ref") == le_number,
        expect=1,
        settle=0,
    )
    both = {Envelope.from_bytes(le_reported[0].value).data["report_id"], community.json()["id"]}
    linked_too = await read_topic(
        kafka_bootstrap,
        SCHEDULER_CASES.name,
        where=lambda r: (
            Envelope.from_bytes(r.value).type == "ReportLinked"
            and Envelope.from_bytes(r.value).data.get("report_id") in both
        ),
        expect=2,
        timeout=60,
        settle=0,
    )
    assert {Envelope.from_bytes(r.value).data["report_id"] for r in linked_too} == both

    # The rejected messages were published, and are kept sealed with the person inside.
    prefix = intake_process.env["PORTLINE_DB_SCHEMA_PREFIX"]
    engine = create_engine(postgres_url, service="admin", schema=f"{prefix}intake")
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.text(
                        "SELECT id, raw_sealed, ack FROM inbound_message "
                        "WHERE status = 'rejected' AND (ack LIKE :a OR ack LIKE :b OR ack LIKE :c)"
                    ),
                    {
                        "a": f"%|{rejected_refs[0]}|%",
                        "b": f"%|{rejected_refs[1]}|%",
                        "c": f"%|{oversized}|%",
                    },
                )
            ).all()
            # refused at the edge: not stored at all
            strangers = (
                await conn.execute(
                    sa.text(
                        "SELECT count(*) FROM inbound_message WHERE ack LIKE :u OR ack LIKE :h"
                    ),
                    {"u": f"%|{unknown}|%", "h": f"%|PHI-UH-{run}|%"},
                )
            ).scalar()
    finally:
        await engine.dispose()
    assert len(rows) == 3, rows
    assert strangers == 0
    sealer, _ = load_keys(Settings(env="development", var_dir=Path(env["PORTLINE_VAR_DIR"])))
    for row in rows:
        assert person.family in sealer.open(row.raw_sealed, context="inbound")
    inbound_ids = {str(row.id) for row in rows}
    rejections = await read_topic(
        kafka_bootstrap,
        INTAKE_REJECTED.name,
        where=lambda r: Envelope.from_bytes(r.value).data.get("inbound_id") in inbound_ids,
        expect=3,
        settle=0,
    )
    assert len(rejections) == 3

    # Reporting has read this run's reports and rejections into its own schema, so its
    # tables and its log are scanned with this run's data in them.
    reporting = create_engine(postgres_url, service="admin", schema=f"{prefix}reporting")

    async def reporting_has_read_them() -> bool:
        async with reporting.connect() as conn:
            reports = (
                await conn.execute(
                    sa.text(
                        "SELECT count(*) FROM rpt_report WHERE CAST(report_id AS text) = ANY(:ids)"
                    ),
                    {"ids": sorted(report_ids)},
                )
            ).scalar()
            rejected = (
                await conn.execute(
                    sa.text(
                        "SELECT count(*) FROM rpt_rejected "
                        "WHERE CAST(inbound_id AS text) = ANY(:ids)"
                    ),
                    {"ids": sorted(inbound_ids)},
                )
            ).scalar()
        return reports == len(report_ids) and rejected == len(inbound_ids)

    try:
        await _eventually(reporting_has_read_them, "reporting to read this run's events", 90)
    finally:
        await reporting.dispose()

    # 4. The scan. Each place must hold this run's data (else the scan proves nothing) and no
    # identifier in any spelling.
    markers = [case_id.encode(), *(rid.encode() for rid in report_ids)]
    failures: list[str] = []

    dump = (await _pg_dump(postgres_url, tmp_path / "portline_test.sql")).read_bytes()
    assert all(m in dump for m in markers), "the dump does not hold this run's records"
    if hits := scan_bytes(dump, "pg_dump of the test database", needles):
        failures.append(_report(hits, "the database dump"))

    # The records as any reader gets them.
    pieces: Iterable[tuple[str, bytes]] = await _every_record(kafka_bootstrap)
    place = "the records of PORTline's topics"
    unseen, hits = set(markers), []
    for where, data in pieces:  # one at a time: a long-lived broker may hold a lot
        unseen = {m for m in unseen if m not in data}
        hits += scan_bytes(data, where, needles)
    assert not unseen, f"{place}: this run's events are not there"
    if hits:
        failures.append(_report(hits, place))

    # The broker's own log segments, as a copy of its disk would show them: the raw bytes, and
    # every batch opened (tests.phi_scan.segment_batches), since the producers compress.
    # Only where the tests run the local broker: scripts/infra.sh says where its data is, so
    # `make test` always searches them; an external broker's disk is not ours to read.
    if data_dir := os.environ.get("PORTLINE_TEST_KAFKA_DATA_DIR"):
        topics = {spec.name for spec in ALL_TOPICS}
        segments = sorted(
            seg
            for seg in Path(data_dir).glob("*/*.log")
            if seg.parent.name.rsplit("-", 1)[0] in topics
        )
        assert segments, f"no log segments of PORTline's topics in {data_dir}"
        unseen, hits = set(markers), []
        for seg in segments:
            try:
                raw = seg.read_bytes()
            except FileNotFoundError:  # deleted by retention or replaced by a roll meanwhile
                continue
            hits += scan_bytes(raw, str(seg), needles)
            for offset, records in segment_batches(raw):
                unseen = {m for m in unseen if m not in records}
                hits += scan_bytes(records, f"{seg} (batch at offset {offset})", needles)
        assert not unseen, "the broker's log segments do not hold this run's events"
        if hits:
            failures.append(_report(hits, "the broker's log segments"))

    var = Path(env["PORTLINE_VAR_DIR"])
    logs = sorted(var.glob("*.log"))
    assert {p.name for p in logs} >= {
        "intake.log",
        "scheduler.log",
        "outreach.log",
        "reporting.log",
    }
    for log in logs:
        assert b'"service":' in log.read_bytes(), f"{log} holds no service log lines"
    if hits := scan_files(logs, needles):
        failures.append(_report(hits, "the service logs"))

    assert not failures, "\n".join(failures)
