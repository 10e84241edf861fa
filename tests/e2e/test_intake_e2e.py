"""Intake end to end: a hospital over MLLP and HTTP, an EMS agency over HTTP, real Kafka."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from shared.envelope import Envelope
from shared.events import OverdoseReported
from shared.topics import INTAKE_OVERDOSES
from tests.e2e.conftest import IntakeProcess
from tests.hl7_builder import ack_fields, adt, framed, hl7_time, routine
from tests.support import read_topic

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CORPUS = Path(
    os.environ.get("PORTLINE_CORPUS_DIR", Path(__file__).resolve().parents[3] / "shared" / "corpus")
)


def control() -> str:
    return f"E2E-{uuid.uuid4().hex[:12]}"


def by_source_ref(ref: str):  # type: ignore[no-untyped-def]
    return lambda r: Envelope.from_bytes(r.value).data.get("source_ref") == ref


async def test_overdose_over_mllp_is_acked_and_published_with_phi_sealed(
    intake_process: IntakeProcess, kafka_bootstrap: str
) -> None:
    ref = control()
    family = f"Qx{uuid.uuid4().hex[:8]}"
    incident = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    (ack,) = await intake_process.mllp(framed(adt(ref, family=family, admit=hl7_time(incident))))
    assert ack_fields(ack) == ("AA", ref, "")

    (record,) = await read_topic(
        kafka_bootstrap, INTAKE_OVERDOSES.name, where=by_source_ref(ref), expect=1
    )
    assert family.encode() not in record.value
    event = Envelope.from_bytes(record.value).event()
    assert isinstance(event, OverdoseReported)
    assert event.incident_at == incident
    assert event.opioid
    assert event.identity is not None
    assert family not in intake_process.log.read_text()


async def test_duplicates_resent_concurrently_produce_one_event(
    intake_process: IntakeProcess, kafka_bootstrap: str
) -> None:
    ref = control()
    message = framed(adt(ref, visit=f"V-{ref}"))
    results = await asyncio.gather(*[intake_process.mllp(message, message) for _ in range(6)])
    acks = [ack for pair in results for ack in pair]
    assert {ack_fields(a)[:2] for a in acks} == {("AA", ref)}
    records = await read_topic(
        kafka_bootstrap, INTAKE_OVERDOSES.name, where=by_source_ref(ref), expect=1, settle=2.0
    )
    # One event. (The outbox is at-least-once on the wire; a copy would carry the same id.)
    assert len({Envelope.from_bytes(r.value).id for r in records}) == 1


async def test_hostile_frames_get_ar_and_never_crash_the_listener(
    intake_process: IntakeProcess,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", intake_process.mllp_port)
    try:
        ref = control()
        writer.write(b"junk before any frame" + framed(routine(ref)))
        await writer.drain()
        junk = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 15)
        good = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 15)
        assert ack_fields(junk.strip(b"\x0b\x1c\r").decode())[0] == "AR"
        assert ack_fields(good.strip(b"\x0b\x1c\r").decode())[:2] == ("AA", ref)
        # cut off mid-frame
        writer.write(b"\x0bMSH|^~\\&|EPIC|DEMO_HOSPITAL|half a message")
        await writer.drain()
    finally:
        writer.close()
    (ack,) = await intake_process.mllp(framed(routine(after := control())))
    assert ack_fields(ack)[:2] == ("AA", after)


async def test_each_hostile_frame_gets_its_own_precise_ar(intake_process: IntakeProcess) -> None:
    cases = {
        "garbage": framed(b"\x00\xff garbage, not HL7 \x00"),
        "oversized": framed(adt(control(), complaint="x" * 70_000)),
        "no control id": framed(adt("", dx=None)),
        "unknown facility": framed(adt(control(), facility="NOT_ALLOWED")),
        "unsupported event": framed(adt(control(), trigger="A31")),
    }
    acks = await intake_process.mllp(*cases.values())
    codes = dict(zip(cases, (ack_fields(a) for a in acks), strict=True))
    assert {name: c[0] for name, c in codes.items()} == dict.fromkeys(cases, "AR")
    assert codes["garbage"][2] == "100"
    assert codes["no control id"][1:] == ("", "101")
    assert codes["unknown facility"][2] == "103"
    assert codes["unsupported event"][2] == "201"


async def test_database_down_answers_ae_and_nothing_is_lost_once_it_returns(
    intake_process: IntakeProcess, kafka_bootstrap: str
) -> None:
    before = control()
    (ack,) = await intake_process.mllp(framed(adt(before, visit=f"V-{before}")))
    assert ack_fields(ack)[0] == "AA"

    await intake_process.proxy.down()
    during = control()
    try:
        (ack,) = await intake_process.mllp(framed(adt(during, visit=f"V-{during}")), timeout=60)
        assert ack_fields(ack)[:2] == ("AE", during)
    finally:
        await intake_process.proxy.up()

    # The sender resends what got AE, as interface engines do.
    async def resend_until_accepted() -> str:
        for _ in range(40):
            (again,) = await intake_process.mllp(framed(adt(during, visit=f"V-{during}")))
            if ack_fields(again)[0] == "AA":
                return again
            await asyncio.sleep(0.5)
        raise AssertionError("never accepted after the database came back")

    await resend_until_accepted()
    for ref in (before, during):
        records = await read_topic(
            kafka_bootstrap, INTAKE_OVERDOSES.name, where=by_source_ref(ref), expect=1
        )
        # Exactly one event each. A relay cut off by the outage between sending and marking
        # sends it again (at-least-once on the wire); the copies share the event id, which
        # is what consumers deduplicate on.
        assert len({Envelope.from_bytes(r.value).id for r in records}) == 1, ref


async def test_hl7_over_http_answers_with_the_ack(intake_process: IntakeProcess) -> None:
    ref = control()
    headers = {"Authorization": f"Bearer {intake_process.hospital_key}"}
    async with httpx.AsyncClient(base_url=intake_process.http, headers=headers) as client:
        ok = await client.post(
            "/v1/hl7", content=adt(ref), headers={"Content-Type": "application/hl7-v2"}
        )
        refused = await client.post(
            "/v1/hl7", content="not hl7", headers={"Content-Type": "application/hl7-v2"}
        )
        unauthenticated = await client.post(
            "/v1/hl7",
            content=adt(control()),
            headers={"Content-Type": "application/hl7-v2", "Authorization": "Bearer nope"},
        )
    assert ok.status_code == 200
    assert ack_fields(ok.text)[:2] == ("AA", ref)
    assert refused.status_code == 422
    assert ack_fields(refused.text)[0] == "AR"
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["code"] == "invalid_api_key"


async def test_ems_run_reports_over_http(
    intake_process: IntakeProcess, kafka_bootstrap: str
) -> None:
    pcr = f"PCR-{uuid.uuid4().hex[:10]}"
    report = {
        "pcr_number": pcr,
        "incident_at": (datetime.now(UTC) - timedelta(hours=3)).isoformat(),
        "patient": {"family_name": "Roe", "given_name": "Sam", "phones": ["336-555-0142"]},
        "impressions": ["T40.1X1A"],
        "medications": [{"rxnorm": "7242", "response": "improved"}],
        "peer_follow_up": "accepted",
        "leave_behind": ["naloxone_kit"],
    }
    headers = {"Authorization": f"Bearer {intake_process.ems_key}"}
    billion_laughs = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><EMSDataSet>&lol2;</EMSDataSet>'
    )
    async with httpx.AsyncClient(base_url=intake_process.http, headers=headers) as client:
        first = await client.post("/v1/ems/run-reports", json=report)
        again = await client.post("/v1/ems/run-reports", json=report)
        xml = await client.post(
            "/v1/ems/run-reports",
            content=(FIXTURES / "nemsis" / "single_pcr.xml").read_bytes(),
            headers={"Content-Type": "application/xml"},
        )
        hostile = await client.post(
            "/v1/ems/run-reports",
            content=billion_laughs,
            headers={"Content-Type": "application/xml"},
        )
    assert first.status_code == 200
    assert first.json()["results"][0]["status"] == "accepted"
    assert again.json()["results"][0]["status"] == "duplicate"
    assert xml.status_code == 200
    assert xml.json()["results"]
    assert hostile.status_code == 400
    assert hostile.json()["error"]["code"] == "xml_forbidden"
    (record,) = await read_topic(
        kafka_bootstrap, INTAKE_OVERDOSES.name, where=by_source_ref(pcr), expect=1
    )
    event = Envelope.from_bytes(record.value).event()
    assert isinstance(event, OverdoseReported)
    assert (event.source_kind, event.consent, event.naloxone_given) == ("ems", "accepted", True)


# --- conformance: the public sample corpus ------------------------------------------------

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS}")


@needs_corpus
async def test_intake_check_explains_every_corpus_message(intake_process: IntakeProcess) -> None:
    files = sorted(str(p) for p in CORPUS.glob("*/*") if p.suffix in (".hl7", ".xml"))
    done = await intake_process.cli("intake", "check", "--json", *files)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert {r["file"] for r in results} == set(files)
    for r in results:
        assert {"file", "index", "overdose", "opioid", "any_drug", "reasons", "event"} <= set(r)
        assert isinstance(r["reasons"], list)
        if r["overdose"]:
            assert r["event"]["identity"] is not None
    opioid = [r for r in results if "Opioid-Release" in r["file"]]
    assert opioid[0]["overdose"]
    assert opioid[0]["opioid"]
    # masked unless --show-phi
    assert all("*" in json.dumps(r["event"]["identity"]) for r in results if r["event"] is not None)


@needs_corpus
async def test_every_corpus_file_gets_an_answer_over_http(intake_process: IntakeProcess) -> None:
    from services.intake.hl7 import normalize, read_header, split_messages

    hl7_files = sorted((CORPUS / "hl7").glob("*.hl7"))
    for path in hl7_files:
        for message in split_messages(normalize(path.read_bytes())):
            facility = read_header(message).sending_facility.split("^")[0]
            if facility:
                await intake_process.cli(
                    "partners", "add-facility", "--id", "demo-hospital", "--facility", facility
                )
    hospital = {"Authorization": f"Bearer {intake_process.hospital_key}"}
    ems = {"Authorization": f"Bearer {intake_process.ems_key}"}
    async with httpx.AsyncClient(base_url=intake_process.http, timeout=30) as client:
        for path in hl7_files:
            r = await client.post(
                "/v1/hl7",
                content=path.read_bytes(),
                headers={**hospital, "Content-Type": "application/hl7-v2"},
            )
            assert r.status_code in (200, 422), (path.name, r.status_code)
            assert "MSA|" in r.text
            if "A31" not in path.name:
                assert ack_fields(r.text)[0] == "AA", (path.name, r.text)
        for path in sorted((CORPUS / "nemsis").glob("*.xml")):
            r = await client.post(
                "/v1/ems/run-reports",
                content=path.read_bytes(),
                headers={**ems, "Content-Type": "application/xml"},
            )
            assert r.status_code == 200, (path.name, r.text)
            assert r.json()["results"], path.name


def _counter(text: str, name: str) -> float:
    """The sum of a counter's samples over all its labels, from a Prometheus exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_metrics_add_up_every_worker(intake_process: IntakeProcess) -> None:
    """Intake runs two workers here; /metrics answers for both, whichever one is asked."""
    name = "portline_intake_messages_total"
    headers = {
        "Authorization": f"Bearer {intake_process.hospital_key}",
        "Content-Type": "application/hl7-v2",
    }

    async def scrape() -> float:
        # a new connection each time, so the kernel may hand it to either worker
        async with httpx.AsyncClient(base_url=intake_process.http) as client:
            response = await client.get("/metrics")
        assert response.status_code == 200
        return _counter(response.text, name)

    before = await scrape()
    messages = 16  # each on a fresh connection: SO_REUSEPORT spreads them over the workers
    for _ in range(messages):
        async with httpx.AsyncClient(base_url=intake_process.http) as client:
            response = await client.post("/v1/hl7", content=routine(control()), headers=headers)
        assert response.status_code == 200
    after = [await scrape() for _ in range(6)]
    assert after == [before + messages] * 6
