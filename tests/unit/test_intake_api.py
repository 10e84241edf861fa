"""Intake's HTTP edge through the real app: auth, HL7 over HTTP, EMS JSON and NEMSIS XML,
idempotency, size limits, the error shape and the published OpenAPI contract.

Every test runs the whole app (lifespan, batchers, MLLP listener) on a fresh SQLite file with
the development seed; Kafka is unreachable, so every event stays in the outbox for reading.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from services.intake.app import create_app
from services.intake.ems_json import MAX_BATCH, EmsRunReportIn
from services.intake.models import IDEMPOTENCY, INBOUND, REPORT
from services.intake.nemsis import DEFAULT_MAX_RECORDS
from services.intake.partners import create_partner, issue_key
from services.intake.seed import DEMO_EMS, DEMO_HOSPITAL, seed_demo
from shared.clock import SystemClock
from shared.db import create_engine, session_factory
from shared.envelope import Envelope
from shared.events import OverdoseReported
from shared.migrations import upgrade
from shared.outbox import OUTBOX
from shared.settings import Settings
from tests.hl7_builder import ack_fields, adt, framed, routine
from tests.support import wait_for

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nemsis"

HL7 = "application/hl7-v2"
JSON = "application/json"
XML = "application/xml"


# --------------------------------------------------------------------------- the running app


@dataclass
class Intake:
    """A running intake app, an HTTP client for it and the seeded partners' API keys."""

    app: FastAPI
    client: httpx.AsyncClient
    hospital_key: str
    ems_key: str

    @property
    def mllp_port(self) -> int:
        port: int = self.app.state.mllp.port
        return port

    async def events(self, event_type: str | None = None) -> list[Envelope]:
        """The outbox, oldest first (nothing is ever relayed: Kafka is unreachable)."""
        async with self.app.state.runtime.sessions() as session:
            rows = await session.execute(sa.select(OUTBOX.c.payload).order_by(OUTBOX.c.id))
            envelopes = [Envelope.from_bytes(payload) for payload in rows.scalars()]
        return [e for e in envelopes if event_type is None or e.type == event_type]

    async def post_hl7(
        self, body: str | bytes, *, key: str | None = None, content_type: str = HL7
    ) -> httpx.Response:
        return await self.client.post(
            "/v1/hl7",
            content=body.encode() if isinstance(body, str) else body,
            headers={
                "Authorization": f"Bearer {key or self.hospital_key}",
                "Content-Type": content_type,
            },
        )

    async def post_ems(
        self,
        body: Any,
        *,
        content_type: str = JSON,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        if isinstance(body, bytes):
            content = body
        elif isinstance(body, str):
            content = body.encode()
        else:
            content = json.dumps(body).encode()
        return await self.client.post(
            "/v1/ems/run-reports",
            content=content,
            headers={
                "Authorization": f"Bearer {key or self.ems_key}",
                "Content-Type": content_type,
                **(headers or {}),
            },
        )


@asynccontextmanager
async def running_intake(tmp_path: Path, **overrides: Any) -> AsyncIterator[Intake]:
    """The intake app on a migrated, seeded SQLite database in `tmp_path`, lifespan entered.

    The MLLP listener binds an ephemeral port on 127.0.0.1 (`Intake.mllp_port`).
    """
    settings = Settings(
        **{
            "env": "development",
            "database_url": f"sqlite+aiosqlite:///{tmp_path}/{{service}}.db",
            "kafka_bootstrap_servers": "127.0.0.1:9",  # nothing listens: events stay in the outbox
            "var_dir": tmp_path,
            "mllp_port": 0,
            "host": "127.0.0.1",
            **overrides,
        }
    )
    engine = create_engine(settings.db_url, service="intake")
    try:
        await upgrade(engine, service="intake")
        await seed_demo(session_factory(engine), clock=SystemClock(), var_dir=tmp_path)
    finally:
        await engine.dispose()
    keys = json.loads((tmp_path / "demo-keys.json").read_text())
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        # Unexpected exceptions become the 500 a real client would see, not a test crash.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
            yield Intake(
                app=app,
                client=client,
                hospital_key=keys[DEMO_HOSPITAL],
                ems_key=keys[DEMO_EMS],
            )


@pytest.fixture
async def intake(tmp_path: Path) -> AsyncIterator[Intake]:
    async with running_intake(tmp_path) as running:
        yield running


# --------------------------------------------------------------------------- helpers


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """The shared error shape: {"error": {"code", "message", "details"}} and nothing else."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert isinstance(body["error"]["details"], list)


def examples() -> list[dict[str, Any]]:
    """EmsRunReportIn's own documented examples (deep copies: tests may edit them)."""
    extra = EmsRunReportIn.model_config.get("json_schema_extra")
    assert isinstance(extra, dict)
    found = extra["examples"]
    assert isinstance(found, list)
    assert len(found) == 2
    copies: list[dict[str, Any]] = copy.deepcopy(found)  # type: ignore[arg-type]
    return copies


def overdose_example() -> dict[str, Any]:
    (example,) = [e for e in examples() if e["peer_follow_up"] == "accepted"]
    return example


def declined_example() -> dict[str, Any]:
    (example,) = [e for e in examples() if e["peer_follow_up"] == "declined"]
    return example


def fixture_xml(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def minimal_nemsis(pcr: str = "2026-900001") -> bytes:
    """A tiny well-formed EMSDataSet with one PCR."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<EMSDataSet xmlns="http://www.nemsis.org"><Header><PatientCareReport>'
        f"<eRecord><eRecord.01>{pcr}</eRecord.01></eRecord>"
        "<eSituation><eSituation.11>S09.90</eSituation.11></eSituation>"
        "</PatientCareReport></Header></EMSDataSet>"
    ).encode()


async def chunks(data: bytes, size: int = 512) -> AsyncIterator[bytes]:
    """The body streamed without a Content-Length (chunked), to exercise the running count."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


# Distinctive synthetic PHI: long enough that it cannot turn up in base64 ciphertext by chance.
PHI = {
    "family": "Quimbleworth",
    "given": "Zanthia",
    "dob": "19870312",
    "phone": "^PRN^PH^^^336^5557788",
}
PHI_STRINGS = ("Quimbleworth", "Zanthia", "19870312", "1987-03-12", "5557788")


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize("path", ["/v1/hl7", "/v1/ems/run-reports"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"X-API-Key": ""},
    ],
    ids=["no-header", "empty-bearer", "basic-auth", "empty-x-api-key"],
)
async def test_request_without_an_api_key_is_401_missing_api_key(
    intake: Intake, path: str, headers: dict[str, str]
) -> None:
    response = await intake.client.post(
        path, content=b"x", headers={"Content-Type": HL7, **headers}
    )
    assert_error(response, 401, "missing_api_key")


def _wrong_secret(key: str) -> str:
    prefix, key_id, secret = key.split("_")
    return f"{prefix}_{key_id}_{'A' if secret[0] != 'A' else 'B'}{secret[1:]}"


@pytest.mark.parametrize("path", ["/v1/hl7", "/v1/ems/run-reports"])
@pytest.mark.parametrize(
    "make_key",
    [
        lambda _real: "not-a-key",
        lambda _real: "plk_deadbeef00_unknownsecret",
        lambda _real: "plk__",
        _wrong_secret,
    ],
    ids=["malformed", "unknown-key-id", "empty-parts", "wrong-secret"],
)
@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
async def test_unknown_or_malformed_api_key_is_401_invalid_api_key(
    intake: Intake, path: str, make_key: Callable[[str], str], header: str
) -> None:
    key = make_key(intake.hospital_key)
    value = f"Bearer {key}" if header == "Authorization" else key
    response = await intake.client.post(
        path, content=b"x", headers={"Content-Type": HL7, header: value}
    )
    assert_error(response, 401, "invalid_api_key")


@pytest.mark.parametrize(
    "auth",
    [
        lambda key: {"Authorization": f"Bearer {key}"},
        lambda key: {"Authorization": f"bearer   {key}  "},
        lambda key: {"X-API-Key": key},
    ],
    ids=["bearer", "bearer-lowercase-padded", "x-api-key"],
)
async def test_either_auth_header_authenticates_the_partner(
    intake: Intake, auth: Callable[[str], dict[str, str]]
) -> None:
    response = await intake.client.post(
        "/v1/hl7",
        content=routine("AUTH-1").encode(),
        headers={"Content-Type": HL7, **auth(intake.hospital_key)},
    )
    assert response.status_code == 200
    assert ack_fields(response.text)[:2] == ("AA", "AUTH-1")


async def test_ems_partner_may_not_post_hl7(intake: Intake) -> None:
    response = await intake.post_hl7(adt("KIND-1"), key=intake.ems_key)
    assert_error(response, 403, "wrong_partner_kind")
    assert await intake.events() == []


async def test_hospital_partner_may_not_post_run_reports(intake: Intake) -> None:
    response = await intake.post_ems(overdose_example(), key=intake.hospital_key)
    assert_error(response, 403, "wrong_partner_kind")
    assert await intake.events() == []


# --------------------------------------------------------------------------- POST /v1/hl7


async def test_hl7_overdose_is_acked_aa_in_hl7_media_type(intake: Intake) -> None:
    response = await intake.post_hl7(adt("HTTP-OD-1"))
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == HL7
    assert response.text.startswith("MSH|")
    assert ack_fields(response.text) == ("AA", "HTTP-OD-1", "")
    assert "MSA|AA|HTTP-OD-1" in response.text.split("\r")[1]


async def test_hl7_overdose_is_published_with_identity_sealed(intake: Intake) -> None:
    response = await intake.post_hl7(adt("HTTP-OD-2", **PHI))
    assert response.status_code == 200

    (envelope,) = await intake.events()
    assert envelope.type == "OverdoseReported"
    event = envelope.event()
    assert isinstance(event, OverdoseReported)
    assert (event.source_kind, event.source_org, event.program_id) == ("ed", DEMO_HOSPITAL, "demo")
    assert event.identity is not None
    payload = envelope.model_dump_json()
    for phi in PHI_STRINGS:
        assert phi not in payload


async def test_hl7_overdose_names_its_hospital_by_the_sending_facility(intake: Intake) -> None:
    response = await intake.post_hl7(adt("HTTP-OD-H", **PHI))
    assert response.status_code == 200

    (envelope,) = await intake.events("OverdoseReported")
    event = envelope.event()
    assert isinstance(event, OverdoseReported)
    assert event.hospital == "DEMO_HOSPITAL"  # MSH-4, as the facility allow-list keys it


async def test_hl7_routine_visit_is_acked_aa_and_publishes_nothing(intake: Intake) -> None:
    response = await intake.post_hl7(routine("HTTP-RT-1"))
    assert response.status_code == 200
    assert ack_fields(response.text) == ("AA", "HTTP-RT-1", "")
    assert await intake.events() == []


async def test_hl7_from_a_facility_not_the_partners_is_422_ar_with_err(intake: Intake) -> None:
    response = await intake.post_hl7(adt("HTTP-FAC-1", facility="SOMEONE_ELSE"))
    assert response.status_code == 422
    assert response.headers["content-type"].split(";")[0] == HL7
    assert ack_fields(response.text) == ("AR", "HTTP-FAC-1", "103")
    assert any(segment.startswith("ERR|") for segment in response.text.split("\r"))
    assert await intake.events("OverdoseReported") == []


async def test_hl7_with_an_oversized_field_is_422_ar_102_and_the_next_overdose_is_aa(
    intake: Intake,
) -> None:
    response = await intake.post_hl7(adt("HTTP-BIG-1", street="1" * 5000))
    assert response.status_code == 422
    assert ack_fields(response.text) == ("AR", "HTTP-BIG-1", "102")
    assert "1" * 300 not in response.text
    assert await intake.events("OverdoseReported") == []
    after = await intake.post_hl7(adt("HTTP-BIG-2", visit="V-AFTER"))
    assert ack_fields(after.text)[0] == "AA"
    assert len(await intake.events("OverdoseReported")) == 1


@pytest.mark.parametrize(
    "body",
    [b"hello, this is not HL7", b"", b"\x00\xff\xfe garbage \x01", b"PID|1||no header"],
    ids=["text", "empty", "binary", "no-msh"],
)
async def test_hl7_garbage_body_is_422_ar(intake: Intake, body: bytes) -> None:
    response = await intake.post_hl7(body)
    assert response.status_code == 422
    code, control_id, err = ack_fields(response.text)
    assert (code, control_id, err) == ("AR", "", "100")
    assert await intake.events("OverdoseReported") == []


@pytest.mark.parametrize("content_type", [JSON, XML, "text/html", ""])
async def test_hl7_in_another_media_type_is_415(intake: Intake, content_type: str) -> None:
    response = await intake.post_hl7(adt("HTTP-MT-1"), content_type=content_type)
    assert_error(response, 415, "unsupported_media_type")
    assert await intake.events() == []


@pytest.mark.parametrize(
    "content_type", ["application/hl7-v2", "x-application/hl7-v2+er7", "text/plain; charset=utf-8"]
)
async def test_hl7_accepts_each_documented_media_type(intake: Intake, content_type: str) -> None:
    response = await intake.post_hl7(routine("HTTP-MT-2"), content_type=content_type)
    assert response.status_code == 200
    assert ack_fields(response.text)[0] == "AA"


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
async def test_hl7_body_over_the_limit_is_413(tmp_path: Path, streamed: bool) -> None:
    async with running_intake(tmp_path, intake_max_message_bytes=2048) as intake:
        message = adt("HTTP-BIG-1", complaint="OD on heroin " + "x" * 3000).encode()
        assert len(message) > 2048
        response = await intake.client.post(
            "/v1/hl7",
            content=chunks(message) if streamed else message,
            headers={"Authorization": f"Bearer {intake.hospital_key}", "Content-Type": HL7},
        )
        assert_error(response, 413, "payload_too_large")
        assert await intake.events() == []


async def test_hl7_body_at_the_limit_is_accepted(tmp_path: Path) -> None:
    async with running_intake(tmp_path, intake_max_message_bytes=2048) as intake:
        message = routine("HTTP-BIG-2").encode()
        padded = message + b"\r" * (2048 - len(message))  # trailing CRs are ignored
        assert len(padded) == 2048
        response = await intake.post_hl7(padded)
        assert response.status_code == 200
        assert ack_fields(response.text)[:2] == ("AA", "HTTP-BIG-2")


async def test_hl7_resend_gets_the_identical_ack_and_publishes_once(intake: Intake) -> None:
    first = await intake.post_hl7(adt("HTTP-RS-1"))
    again = await intake.post_hl7(adt("HTTP-RS-1"))
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert len(await intake.events("OverdoseReported")) == 1


async def test_hl7_batch_body_gets_one_ack_per_message(intake: Intake) -> None:
    response = await intake.post_hl7(adt("HTTP-B-1") + routine("HTTP-B-2"))
    assert response.status_code == 200
    msa = [s for s in response.text.split("\r") if s.startswith("MSA|")]
    assert [s.split("|")[1:3] for s in msa] == [["AA", "HTTP-B-1"], ["AA", "HTTP-B-2"]]


async def test_hl7_batch_with_one_refused_message_is_422(intake: Intake) -> None:
    response = await intake.post_hl7(adt("HTTP-B-3") + adt("HTTP-B-4", facility="ELSEWHERE"))
    assert response.status_code == 422
    msa = [s for s in response.text.split("\r") if s.startswith("MSA|")]
    assert [s.split("|")[1:3] for s in msa] == [["AA", "HTTP-B-3"], ["AR", "HTTP-B-4"]]
    assert len(await intake.events("OverdoseReported")) == 1


# --------------------------------------------------------------------------- EMS JSON


async def test_json_single_overdose_report_is_accepted(intake: Intake) -> None:
    report = overdose_example()
    response = await intake.post_ems(report)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(JSON)
    (result,) = response.json()["results"]
    assert result["index"] == 0
    assert result["pcr_number"] == report["pcr_number"]
    assert (result["status"], result["overdose"], result["opioid"]) == ("accepted", True, True)
    assert result["report_id"]
    assert result["revision"] == 1
    assert result["error"] is None
    assert result["reasons"]
    assert all(set(r) == {"code", "source", "detail"} for r in result["reasons"])
    (event,) = await intake.events("OverdoseReported")
    assert event.data["report_id"] == result["report_id"]


async def test_json_report_is_published_with_identity_sealed(intake: Intake) -> None:
    report = overdose_example()
    report["patient"].update(
        family_name="Quimbleworth",
        given_name="Zanthia",
        date_of_birth="1987-03-12",
        phones=["336-555-7788"],
    )
    response = await intake.post_ems(report)
    assert response.json()["results"][0]["status"] == "accepted"
    (envelope,) = await intake.events("OverdoseReported")
    payload = envelope.model_dump_json()
    for phi in ("Quimbleworth", "Zanthia", "1987-03-12", "555-7788", "100 Example Ave"):
        assert phi not in payload
        assert phi not in response.text


async def test_json_batch_gets_one_result_per_report_in_order(intake: Intake) -> None:
    reports = examples()
    response = await intake.post_ems({"reports": reports})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [(r["index"], r["pcr_number"]) for r in results] == [
        (i, r["pcr_number"]) for i, r in enumerate(reports)
    ]
    assert [r["status"] for r in results] == ["accepted", "accepted"]
    assert len({r["report_id"] for r in results}) == 2
    assert len(await intake.events("OverdoseReported")) == 2


async def test_json_batch_sent_again_is_duplicate_and_publishes_nothing(intake: Intake) -> None:
    batch = {"reports": examples()}
    first = (await intake.post_ems(batch)).json()["results"]
    again = (await intake.post_ems(batch)).json()["results"]
    assert [r["status"] for r in again] == ["duplicate", "duplicate"]
    assert [r["report_id"] for r in again] == [r["report_id"] for r in first]
    assert len(await intake.events("OverdoseReported")) == 2


async def test_json_changed_report_revises_the_earlier_one(intake: Intake) -> None:
    report = overdose_example()
    first = (await intake.post_ems(report)).json()["results"][0]
    report["narrative"] = "Found unresponsive. Naloxone 4 mg IN, improved; refused transport."
    again = (await intake.post_ems(report)).json()["results"][0]
    assert (again["status"], again["revision"]) == ("revised", 2)
    assert again["report_id"] == first["report_id"]


async def test_json_not_an_overdose_is_counted_not_published(intake: Intake) -> None:
    report = {
        "pcr_number": "2026-NOT-OD",
        "incident_at": "2026-11-21T08:00:00-05:00",
        "impressions": ["S09.90"],
    }
    (result,) = (await intake.post_ems(report)).json()["results"]
    assert (result["status"], result["overdose"], result["report_id"]) == (
        "not_overdose",
        False,
        None,
    )
    assert await intake.events() == []


async def test_json_declined_follow_up_is_accepted_with_consent_declined(intake: Intake) -> None:
    response = await intake.post_ems(declined_example())
    (result,) = response.json()["results"]
    assert result["status"] == "accepted"
    (envelope,) = await intake.events("OverdoseReported")
    event = envelope.event()
    assert isinstance(event, OverdoseReported)
    assert event.consent == "declined"
    assert str(event.report_id) == result["report_id"]


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b'{"pcr_number": "1",', b"\xff\xfe\x00{}", b"NaN-ish ]"],
    ids=["broken", "empty", "truncated", "not-utf8", "nonsense"],
)
async def test_json_that_does_not_parse_is_400_malformed_json(intake: Intake, body: bytes) -> None:
    assert_error(await intake.post_ems(body), 400, "malformed_json")


async def test_deeply_nested_json_is_400_malformed_json(intake: Intake) -> None:
    body = b"[" * 200_000 + b"]" * 200_000  # 400 kB, well under intake_max_ems_bytes
    assert_error(await intake.post_ems(body), 400, "malformed_json")


# PHI of the overdose example that rides along with every invalid report below
EXAMPLE_PHI = ("Jordan", "1990-04-02", "336-555-0100", "100 Example Ave", "400 Example St")

INVALID_REPORTS: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    # (id, changes to the overdose example (None deletes), submitted values that must not return)
    (
        "dob-too-old",
        {"patient": {"family_name": "Zyxwvut", "date_of_birth": "1850-01-01"}},
        ("Zyxwvut", "1850-01-01"),
    ),
    (
        "dob-not-a-date",
        {"patient": {"family_name": "Zyxwvut", "date_of_birth": "Zyxwvut-Date"}},
        ("Zyxwvut",),
    ),
    (
        "phone-letters",
        {"patient": {"family_name": "Zyxwvut", "phones": ["Zyxwvut-PHONE"]}},
        ("Zyxwvut",),
    ),
    ("name-too-long", {"patient": {"family_name": "Zyxwvut" * 20}}, ("Zyxwvut",)),
    ("naive-incident-time", {"incident_at": "2026-11-20T22:14:00"}, ("2026-11-20T22:14",)),
    ("bad-impression", {"impressions": ["Zyxwvut"]}, ("Zyxwvut",)),
    (
        "unknown-field",
        {"patient": {"family_name": "Zyxwvut", "ssn": "123-45-6789"}},
        ("Zyxwvut", "123-45-6789"),
    ),
    ("pcr-missing", {"pcr_number": None}, ()),
    ("bad-consent", {"peer_follow_up": "Zyxwvut"}, ("Zyxwvut",)),
]


@pytest.mark.parametrize(
    ("changes", "submitted"),
    [pytest.param(c, v, id=i) for i, c, v in INVALID_REPORTS],
)
async def test_schema_violation_is_422_and_never_echoes_the_submitted_values(
    intake: Intake, changes: dict[str, Any], submitted: tuple[str, ...]
) -> None:
    report = overdose_example()
    for field, value in changes.items():
        if value is None:
            del report[field]
        elif isinstance(value, dict):
            report[field] = {**report[field], **value}
        else:
            report[field] = value
    response = await intake.post_ems(report)
    assert_error(response, 422, "validation_error")
    details = response.json()["error"]["details"]
    assert details
    assert all(set(d) == {"loc", "type", "msg"} for d in details)
    for value in (*submitted, *EXAMPLE_PHI):
        assert value not in response.text
    assert await intake.events() == []


async def test_schema_violation_in_a_batch_rejects_the_whole_request(intake: Intake) -> None:
    good, bad = examples()
    bad["incident_at"] = "yesterday"
    response = await intake.post_ems({"reports": [good, bad]})
    assert_error(response, 422, "validation_error")
    locs = [d["loc"] for d in response.json()["error"]["details"]]
    assert ["reports", 1, "incident_at"] in locs
    assert await intake.events() == []


@pytest.mark.parametrize("destination", ["", "   ", "A\u0000B", "x" * 129, 42])
async def test_a_destination_that_names_no_hospital_is_422(
    intake: Intake, destination: object
) -> None:
    report = overdose_example()
    report["disposition"]["destination"] = destination
    response = await intake.post_ems(report)
    assert_error(response, 422, "validation_error")
    locs = [d["loc"] for d in response.json()["error"]["details"]]
    assert any(loc[-2:] == ["disposition", "destination"] for loc in locs), locs
    assert await intake.events() == []


@pytest.mark.parametrize(
    "body",
    [b'{"reports": []}', b"[]", b'"a string"', b"42", b"null", b'{"reports": "x"}'],
    ids=["empty-batch", "list", "string", "number", "null", "reports-not-a-list"],
)
async def test_json_that_is_not_a_report_is_422(intake: Intake, body: bytes) -> None:
    assert_error(await intake.post_ems(body), 422, "validation_error")


def minimal_report(pcr: str) -> dict[str, Any]:
    return {"pcr_number": pcr, "incident_at": "2026-11-21T08:00:00-05:00"}


async def test_json_batch_of_more_than_the_maximum_is_422(intake: Intake) -> None:
    reports = [minimal_report(f"P{i}") for i in range(MAX_BATCH + 1)]
    response = await intake.post_ems({"reports": reports})
    assert_error(response, 422, "validation_error")
    assert await intake.events() == []


async def test_json_batch_of_exactly_the_maximum_is_processed(intake: Intake) -> None:
    reports = [minimal_report(f"P{i}") for i in range(MAX_BATCH)]
    results = (await intake.post_ems({"reports": reports})).json()["results"]
    assert [r["index"] for r in results] == list(range(MAX_BATCH))
    assert {r["status"] for r in results} == {"not_overdose"}


@pytest.mark.parametrize("content_type", ["text/plain", HL7, "application/x-www-form-urlencoded"])
async def test_run_reports_in_another_media_type_is_415(intake: Intake, content_type: str) -> None:
    response = await intake.post_ems(overdose_example(), content_type=content_type)
    assert_error(response, 415, "unsupported_media_type")


async def test_json_with_a_charset_parameter_is_accepted(intake: Intake) -> None:
    response = await intake.post_ems(
        overdose_example(), content_type="application/json; charset=utf-8"
    )
    assert response.json()["results"][0]["status"] == "accepted"


# --------------------------------------------------------------------------- EMS NEMSIS XML


async def test_xml_single_pcr_is_accepted(intake: Intake) -> None:
    response = await intake.post_ems(fixture_xml("single_pcr.xml"), content_type=XML)
    assert response.status_code == 200
    (result,) = response.json()["results"]
    assert (result["index"], result["pcr_number"], result["status"]) == (
        0,
        "2026-000123",
        "accepted",
    )
    assert result["report_id"]
    (envelope,) = await intake.events("OverdoseReported")
    event = envelope.event()
    assert isinstance(event, OverdoseReported)
    assert event.source_kind == "ems"
    assert event.consent == "accepted"
    for phi in ("Quackenbush", "Zebulon", "1990-04-02", "336-555-0100", "12 Synthetic Lane"):
        assert phi not in envelope.model_dump_json()


async def test_xml_destination_code_is_the_reports_hospital(intake: Intake) -> None:
    destination = (
        "<eDisposition.DestinationGroup>"
        "<eDisposition.01>Guilford Memorial</eDisposition.01>"
        "<eDisposition.02> guilford-1 </eDisposition.02>"
        "</eDisposition.DestinationGroup>"
    )
    body = fixture_xml("single_pcr.xml").replace(
        b"<eDisposition.IncidentDispositionGroup>",
        destination.encode() + b"<eDisposition.IncidentDispositionGroup>",
    )
    response = await intake.post_ems(body, content_type=XML)
    assert response.json()["results"][0]["status"] == "accepted"
    (envelope,) = await intake.events("OverdoseReported")
    assert envelope.data["hospital"] == "GUILFORD-1"


async def test_json_destination_is_the_reports_hospital_and_optional(intake: Intake) -> None:
    named = overdose_example()
    unnamed = overdose_example()
    unnamed["pcr_number"] = "2026-000999"
    del unnamed["disposition"]["destination"]
    response = await intake.post_ems({"reports": [named, unnamed]})
    assert [r["status"] for r in response.json()["results"]] == ["accepted", "accepted"]
    events = await intake.events("OverdoseReported")
    assert sorted(str(e.data["hospital"]) for e in events) == ["GUILFORD-1", "None"]


@pytest.mark.parametrize("content_type", ["text/xml", "application/xml; charset=utf-8"])
async def test_xml_accepts_text_xml_and_charset(intake: Intake, content_type: str) -> None:
    response = await intake.post_ems(fixture_xml("single_pcr.xml"), content_type=content_type)
    assert response.json()["results"][0]["status"] == "accepted"


async def test_xml_bad_pcr_is_rejected_alone_and_the_rest_processed(intake: Intake) -> None:
    response = await intake.post_ems(fixture_xml("multi_pcr.xml"), content_type=XML)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [(r["index"], r["pcr_number"], r["status"]) for r in results] == [
        (0, "2026-000200", "accepted"),
        (1, None, "rejected"),
        (2, "2026-000202", "not_overdose"),
    ]
    assert results[1]["error"]["code"] == "missing_pcr_number"
    assert results[1]["error"]["message"]
    assert "Marchbanks" not in response.text
    assert [r["error"] for r in (results[0], results[2])] == [None, None]
    (envelope,) = await intake.events("OverdoseReported")
    event = envelope.event()
    assert isinstance(event, OverdoseReported)
    assert event.consent == "declined"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<EMSDataSet xmlns="http://www.nemsis.org"><Header>&lol4;</Header></EMSDataSet>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE EMSDataSet [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<EMSDataSet xmlns="http://www.nemsis.org"><Header><PatientCareReport>
<eRecord><eRecord.01>&xxe;</eRecord.01></eRecord></PatientCareReport></Header></EMSDataSet>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE EMSDataSet SYSTEM "http://127.0.0.1:9/nemsis.dtd">
<EMSDataSet xmlns="http://www.nemsis.org"><Header/></EMSDataSet>"""

INTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE EMSDataSet [<!ELEMENT EMSDataSet ANY>]>
<EMSDataSet xmlns="http://www.nemsis.org"><Header/></EMSDataSet>"""


@pytest.mark.parametrize(
    "body",
    [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD, INTERNAL_DTD],
    ids=["billion-laughs", "external-entity", "external-dtd", "internal-dtd"],
)
async def test_xml_with_dtd_or_entities_is_400_xml_forbidden(intake: Intake, body: bytes) -> None:
    response = await intake.post_ems(body, content_type=XML)
    assert_error(response, 400, "xml_forbidden")
    assert "root:" not in response.text  # nothing of /etc/passwd
    assert "lol" not in response.text
    assert await intake.events() == []


@pytest.mark.parametrize(
    "body",
    [
        b"<EMSDataSet><Header>",
        b"not xml at all",
        b"",
        b'<?xml version="1.0" encoding="nonsense-9"?><EMSDataSet/>',
        b"<EMSDataSet><Header></EMSDataSet></Header>",
    ],
    ids=["unclosed", "text", "empty", "unknown-encoding", "misnested"],
)
async def test_xml_not_well_formed_is_400_xml_malformed(intake: Intake, body: bytes) -> None:
    assert_error(await intake.post_ems(body, content_type=XML), 400, "xml_malformed")


@pytest.mark.parametrize(
    "body",
    [
        b"<Report/>",
        b'<EMSDataSet xmlns="http://example.org/not-nemsis"><Header/></EMSDataSet>',
        b'<DEMDataSet xmlns="http://www.nemsis.org"/>',
    ],
    ids=["other-root", "other-namespace", "dem-dataset"],
)
async def test_xml_whose_root_is_not_an_ems_dataset_is_400_not_nemsis(
    intake: Intake, body: bytes
) -> None:
    assert_error(await intake.post_ems(body, content_type=XML), 400, "not_nemsis")


async def test_xml_with_more_pcrs_than_allowed_is_400_too_many_records(intake: Intake) -> None:
    pcr = "<PatientCareReport><eRecord><eRecord.01>{}</eRecord.01></eRecord></PatientCareReport>"
    body = (
        '<EMSDataSet xmlns="http://www.nemsis.org"><Header>'
        + "".join(pcr.format(i) for i in range(DEFAULT_MAX_RECORDS + 1))
        + "</Header></EMSDataSet>"
    ).encode()
    assert_error(await intake.post_ems(body, content_type=XML), 400, "too_many_records")
    assert await intake.events() == []


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
async def test_run_reports_over_the_ems_limit_are_413(tmp_path: Path, streamed: bool) -> None:
    async with running_intake(tmp_path, intake_max_ems_bytes=2048) as intake:
        body = fixture_xml("single_pcr.xml")
        assert len(body) > 2048
        response = await intake.client.post(
            "/v1/ems/run-reports",
            content=chunks(body) if streamed else body,
            headers={"Authorization": f"Bearer {intake.ems_key}", "Content-Type": XML},
        )
        assert_error(response, 413, "payload_too_large")
        assert await intake.events() == []


async def test_xml_under_the_ems_limit_is_processed(tmp_path: Path) -> None:
    async with running_intake(tmp_path, intake_max_ems_bytes=2048) as intake:
        response = await intake.post_ems(minimal_nemsis(), content_type=XML)
        assert response.status_code == 200
        assert response.json()["results"][0]["status"] == "not_overdose"


# --------------------------------------------------------------------------- Idempotency-Key


async def test_idempotent_retry_replays_the_original_answer_and_publishes_nothing(
    intake: Intake,
) -> None:
    headers = {"Idempotency-Key": "retry-1"}
    first = await intake.post_ems(overdose_example(), headers=headers)
    assert first.status_code == 200
    assert "idempotent-replayed" not in first.headers
    events_before = await intake.events()

    again = await intake.post_ems(overdose_example(), headers=headers)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.json()["results"][0]["status"] == "accepted"  # the original answer
    assert await intake.events() == events_before


async def test_idempotent_retry_of_xml_replays_the_original_answer(intake: Intake) -> None:
    headers = {"Idempotency-Key": "retry-xml"}
    body = fixture_xml("multi_pcr.xml")
    first = await intake.post_ems(body, content_type=XML, headers=headers)
    again = await intake.post_ems(body, content_type=XML, headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content


async def test_idempotency_key_reused_for_a_different_body_is_409(intake: Intake) -> None:
    headers = {"Idempotency-Key": "retry-2"}
    first = await intake.post_ems(overdose_example(), headers=headers)
    assert first.status_code == 200
    events_before = await intake.events()

    other = declined_example()
    response = await intake.post_ems(other, headers=headers)
    assert_error(response, 409, "idempotency_key_reused")
    assert await intake.events() == events_before


async def test_idempotency_key_reused_with_another_media_type_is_409(intake: Intake) -> None:
    headers = {"Idempotency-Key": "retry-3"}
    await intake.post_ems(fixture_xml("single_pcr.xml"), content_type=XML, headers=headers)
    response = await intake.post_ems(
        fixture_xml("single_pcr.xml"), content_type="text/xml", headers=headers
    )
    assert_error(response, 409, "idempotency_key_reused")


async def test_without_an_idempotency_key_a_retry_is_processed_again(intake: Intake) -> None:
    await intake.post_ems(overdose_example())
    again = await intake.post_ems(overdose_example())
    assert "idempotent-replayed" not in again.headers
    assert again.json()["results"][0]["status"] == "duplicate"


async def test_idempotency_keys_are_independent(intake: Intake) -> None:
    await intake.post_ems(overdose_example(), headers={"Idempotency-Key": "a"})
    response = await intake.post_ems(overdose_example(), headers={"Idempotency-Key": "b"})
    assert "idempotent-replayed" not in response.headers
    assert response.json()["results"][0]["status"] == "duplicate"


async def test_failed_request_does_not_consume_its_idempotency_key(intake: Intake) -> None:
    headers = {"Idempotency-Key": "retry-4"}
    assert (await intake.post_ems(b"{broken", headers=headers)).status_code == 400
    response = await intake.post_ems(overdose_example(), headers=headers)
    assert response.status_code == 200
    assert "idempotent-replayed" not in response.headers
    assert response.json()["results"][0]["status"] == "accepted"


async def test_idempotency_keys_are_scoped_to_the_partner(intake: Intake) -> None:
    async with intake.app.state.runtime.sessions() as session, session.begin():
        await create_partner(
            session,
            partner_id="other-ems",
            program_id="demo",
            name="Other County EMS",
            kind="ems",
            now=SystemClock().now(),
        )
        other_key = (
            await issue_key(session, partner_id="other-ems", now=SystemClock().now())
        ).api_key
    headers = {"Idempotency-Key": "shared-key"}
    await intake.post_ems(overdose_example(), headers=headers)
    response = await intake.post_ems(overdose_example(), key=other_key, headers=headers)
    assert response.status_code == 200
    assert "idempotent-replayed" not in response.headers
    assert response.json()["results"][0]["status"] == "accepted"  # its own report
    assert len(await intake.events("OverdoseReported")) == 2


async def test_concurrent_requests_with_one_idempotency_key_get_one_answer(
    intake: Intake,
) -> None:
    headers = {"Idempotency-Key": "in-flight"}
    responses = await asyncio.gather(
        *(intake.post_ems(overdose_example(), headers=headers) for _ in range(5))
    )
    fresh = [
        r for r in responses if r.status_code == 200 and "idempotent-replayed" not in r.headers
    ]
    assert len(fresh) == 1
    assert fresh[0].json()["results"][0]["status"] == "accepted"
    for r in responses:
        if r is fresh[0]:
            continue
        if r.status_code == 200:  # finished first: the stored answer, marked as a replay
            assert r.headers["idempotent-replayed"] == "true"
            assert r.content == fresh[0].content
        else:  # still in flight: retry later
            assert_error(r, 409, "idempotency_request_in_progress")
    assert len(await intake.events("OverdoseReported")) == 1


async def test_idempotency_key_longer_than_200_characters_is_422(intake: Intake) -> None:
    response = await intake.post_ems(overdose_example(), headers={"Idempotency-Key": "k" * 201})
    assert_error(response, 422, "validation_error")
    assert "k" * 201 not in response.text
    assert await intake.events() == []


# --------------------------------------------------------------------------- OpenAPI


@pytest.fixture
async def spec(intake: Intake) -> dict[str, Any]:
    response = await intake.client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def test_openapi_lists_both_intake_operations(spec: dict[str, Any]) -> None:
    assert "post" in spec["paths"]["/v1/hl7"]
    assert "post" in spec["paths"]["/v1/ems/run-reports"]


def test_openapi_documents_hl7_and_ems_request_media_types(spec: dict[str, Any]) -> None:
    hl7 = spec["paths"]["/v1/hl7"]["post"]["requestBody"]["content"]
    ems = spec["paths"]["/v1/ems/run-reports"]["post"]["requestBody"]["content"]
    assert set(hl7) == {"application/hl7-v2", "x-application/hl7-v2+er7", "text/plain"}
    assert set(ems) == {JSON, XML}
    documented = [EmsRunReportIn.model_validate(e["value"]) for e in ems[JSON]["examples"].values()]
    # (FastAPI drops null members from examples; validated, they are the model's own examples)
    assert documented == [EmsRunReportIn.model_validate(e) for e in examples()]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in _refs(item)]
    return []


def test_openapi_has_the_run_report_schemas_with_examples(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert schemas["EmsRunReportIn"]["examples"] == examples()
    assert schemas["EmsRunReportBatch"]["examples"]


def test_openapi_references_all_resolve(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    prefix = "#/components/schemas/"
    dangling = {r for r in _refs(spec) if r.removeprefix(prefix) not in schemas}
    assert dangling == set()


DOCUMENTED_4XX = [
    *(("/v1/hl7", s) for s in (401, 403, 413, 415, 422)),
    *(("/v1/ems/run-reports", s) for s in (400, 401, 403, 409, 413, 415, 422)),
]


@pytest.mark.parametrize(("path", "status"), DOCUMENTED_4XX)
def test_openapi_operation_declares_each_4xx_it_returns(
    spec: dict[str, Any], path: str, status: int
) -> None:
    responses = spec["paths"][path]["post"]["responses"]
    assert str(status) in responses
    assert responses[str(status)].get("description")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/hl7", 401),
        ("/v1/hl7", 415),
        ("/v1/ems/run-reports", 400),
        ("/v1/ems/run-reports", 409),
    ],
)
def test_openapi_json_errors_use_the_error_schema(
    spec: dict[str, Any], path: str, status: int
) -> None:
    content = spec["paths"][path]["post"]["responses"][str(status)]["content"]
    assert content[JSON]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}


# --------------------------------------------------------------------------- error bodies


async def test_unknown_method_on_an_intake_route_uses_the_error_shape(intake: Intake) -> None:
    response = await intake.client.get("/v1/hl7")
    assert_error(response, 405, "method_not_allowed")


BAD_REQUESTS: list[tuple[str, str, dict[str, str], bytes]] = [
    # (id, path, headers beyond the partner's key, body)
    ("hl7-json", "/v1/hl7", {"Content-Type": JSON}, b"{}"),
    ("hl7-garbage", "/v1/hl7", {"Content-Type": HL7}, b"\x00\x01garbage"),
    ("hl7-foreign", "/v1/hl7", {"Content-Type": HL7}, adt("ERR-1", facility="X").encode()),
    ("ems-json-broken", "/v1/ems/run-reports", {"Content-Type": JSON}, b"{"),
    ("ems-json-invalid", "/v1/ems/run-reports", {"Content-Type": JSON}, b'{"pcr_number": 1}'),
    ("ems-xml-broken", "/v1/ems/run-reports", {"Content-Type": XML}, b"<a>"),
    ("ems-xml-forbidden", "/v1/ems/run-reports", {"Content-Type": XML}, BILLION_LAUGHS),
    ("ems-xml-other", "/v1/ems/run-reports", {"Content-Type": XML}, b"<a/>"),
    ("ems-deep-json", "/v1/ems/run-reports", {"Content-Type": JSON}, b"[" * 200_000),
    ("ems-media", "/v1/ems/run-reports", {"Content-Type": "image/png"}, b"\x89PNG"),
]


@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [pytest.param(p, h, b, id=i) for i, p, h, b in BAD_REQUESTS],
)
async def test_error_responses_never_carry_a_stack_trace(
    intake: Intake, path: str, headers: dict[str, str], body: bytes
) -> None:
    key = intake.hospital_key if path == "/v1/hl7" else intake.ems_key
    response = await intake.client.post(
        path, content=body, headers={"Authorization": f"Bearer {key}", **headers}
    )
    assert 400 <= response.status_code < 600
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    assert ".py" not in response.text


def test_openapi_documents_partner_authentication_and_the_idempotency_key(
    spec: dict[str, Any],
) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["partnerBearer"]["scheme"] == "bearer"
    assert (schemes["partnerApiKey"]["in"], schemes["partnerApiKey"]["name"]) == (
        "header",
        "X-API-Key",
    )
    for path in ("/v1/hl7", "/v1/ems/run-reports"):
        security = spec["paths"][path]["post"]["security"]
        assert security == [{"partnerBearer": []}, {"partnerApiKey": []}]
    (parameter,) = spec["paths"]["/v1/ems/run-reports"]["post"]["parameters"]
    assert parameter["name"] == "Idempotency-Key"
    assert parameter["schema"]["maxLength"] == 200


# --------------------------------------------------------------------------- workers


async def test_a_worker_without_the_mllp_listener_is_ready_only_once_mllp_accepts(
    tmp_path: Path,
) -> None:
    """With several workers only the first listens for MLLP, and any worker may answer
    /readyz: the others report the MLLP port's state as one of their checks."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    async with running_intake(tmp_path, worker="intake-1", mllp_port=port) as intake:
        assert intake.app.state.mllp is None  # this worker does not listen itself
        checks = (await intake.client.get("/readyz")).json()["checks"]
        assert checks["mllp"].startswith("unavailable")
        first_worker = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", port)
        try:
            checks = (await intake.client.get("/readyz")).json()["checks"]
            assert checks["mllp"] == "ok"
        finally:
            first_worker.close()
            await first_worker.wait_closed()


async def test_the_worker_with_the_listener_has_no_mllp_check(intake: Intake) -> None:
    assert intake.app.state.mllp is not None
    assert "mllp" not in (await intake.client.get("/readyz")).json()["checks"]


async def test_a_reservation_left_by_a_crash_is_taken_over_once_its_lease_lapses(
    tmp_path: Path,
) -> None:
    """A crash between reserving a key and completing it never refuses that key for ever."""
    async with running_intake(tmp_path, intake_idempotency_lease_seconds=0.5) as intake:
        body = json.dumps(overdose_example()).encode()
        same_request = hashlib.sha256(JSON.encode() + b"\0" + body).hexdigest()
        async with intake.app.state.runtime.sessions() as session, session.begin():
            partner = await intake.app.state.intake.directory.by_api_key(intake.ems_key)
            await session.execute(
                IDEMPOTENCY.insert().values(
                    partner_id=partner.partner_id,
                    key="crashed",
                    request_hash=same_request,
                    status_code=0,
                    response="",
                    created_at=SystemClock().now(),
                )
            )
        headers = {"Idempotency-Key": "crashed"}
        assert_error(
            await intake.post_ems(body, headers=headers), 409, "idempotency_request_in_progress"
        )
        await asyncio.sleep(0.6)
        taken = await intake.post_ems(body, headers=headers)
        assert taken.status_code == 200, taken.text
        assert taken.json()["results"][0]["status"] == "accepted"
        again = await intake.post_ems(body, headers=headers)
        assert again.headers["idempotent-replayed"] == "true"


async def test_a_failure_after_the_records_were_stored_answers_them_not_500(
    intake: Intake, monkeypatch: pytest.MonkeyPatch
) -> None:
    import services.intake.api as api

    async def broken(*_args: Any) -> None:
        raise sa.exc.OperationalError("UPDATE", {}, ConnectionRefusedError("db gone"))

    monkeypatch.setattr(api, "_complete", broken)
    response = await intake.post_ems(overdose_example(), headers={"Idempotency-Key": "late"})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["status"] == "accepted"


async def test_a_full_queue_answers_busy_503_and_ae_at_once(tmp_path: Path) -> None:
    """Backpressure: with the group commit held, a second submission finds the queue full."""
    async with running_intake(tmp_path, intake_queue_max=1, intake_batch_concurrency=1) as intake:
        state = intake.app.state.intake
        batcher = state.ems
        held, entered = asyncio.Event(), asyncio.Event()
        original = batcher._process
        submitted = 0
        submit = batcher.submit

        async def slow(items: Any, reply: Any) -> Any:
            entered.set()
            await held.wait()
            return await original(items, reply)

        async def counted(item: Any) -> Any:
            nonlocal submitted
            submitted += 1
            return await submit(item)

        batcher._process = slow
        batcher.submit = counted
        # the first is in its batch, held; the second waits for a commit slot; the third
        # fills the queue
        states = [
            entered.is_set,
            lambda: submitted == 2 and batcher.pending() == 0,
            lambda: batcher.pending() == 1,
        ]
        waiting = []
        try:
            for reached in states:
                waiting.append(asyncio.create_task(intake.post_ems(overdose_example())))
                await wait_for(reached, timeout=30)  # states, not sleeps: a loaded machine
            busy = await asyncio.wait_for(intake.post_ems(overdose_example()), 10)
        finally:
            held.set()
        assert_error(busy, 503, "intake_busy")
        assert busy.headers["retry-after"]
        assert [(await w).status_code for w in waiting] == [200, 200, 200]


async def test_a_full_hl7_queue_answers_ae_over_mllp_and_503_over_http_at_once(
    tmp_path: Path,
) -> None:
    """Backpressure on the HL7 group commit, which MLLP and HTTP share: with its commit held
    and its queue full, the next message is answered AE ("busy, resend") over MLLP and 503
    with Retry-After over HTTP, at once and storing nothing; the held ones are then stored."""
    async with running_intake(tmp_path, intake_queue_max=1, intake_batch_concurrency=1) as intake:
        batcher = intake.app.state.intake.hl7
        held, entered = asyncio.Event(), asyncio.Event()
        original = batcher._process

        async def slow(items: Any, reply: Any) -> Any:
            entered.set()
            await held.wait()
            return await original(items, reply)

        batcher._process = slow
        submitted = 0
        submit = batcher.submit

        async def counted(item: Any) -> Any:
            nonlocal submitted
            submitted += 1
            return await submit(item)

        batcher.submit = counted

        async def send(control: str) -> str:
            reader, writer = await asyncio.open_connection("127.0.0.1", intake.mllp_port)
            try:
                writer.write(framed(routine(control, visit=control)))
                await writer.drain()
                return (await reader.readuntil(b"\x1c\r"))[1:-2].decode()
            finally:
                writer.close()

        # the first is in its batch, held; the second waits for a commit slot; the third
        # fills the queue
        states = [
            entered.is_set,
            lambda: submitted == 2 and batcher.pending() == 0,
            lambda: batcher.pending() == 1,
        ]
        waiting: list[asyncio.Task[str]] = []
        try:
            for i, reached in enumerate(states):
                waiting.append(asyncio.create_task(send(f"Q-{i}")))
                await wait_for(reached, timeout=30)  # states, not sleeps: a loaded machine
            busy = await asyncio.wait_for(send("Q-BUSY"), 10)
            over_http = await asyncio.wait_for(intake.post_hl7(routine("Q-HTTP")), 10)
            # a flood meanwhile is answered at once and queues nothing: memory stays flat
            flood = await asyncio.wait_for(
                asyncio.gather(*(intake.post_hl7(routine(f"Q-F{i}")) for i in range(50))), 10
            )
            assert {r.status_code for r in flood} == {503}
            assert batcher.pending() == 1
        finally:
            held.set()
        assert ack_fields(busy)[:2] == ("AE", "Q-BUSY")
        assert "busy" in busy
        assert over_http.status_code == 503
        assert over_http.headers["retry-after"]
        assert ack_fields(over_http.text)[:2] == ("AE", "Q-HTTP")
        assert [ack_fields(await w)[:2] for w in waiting] == [
            ("AA", "Q-0"),
            ("AA", "Q-1"),
            ("AA", "Q-2"),
        ]
        async with intake.app.state.runtime.sessions() as session:
            stored = (
                await session.execute(sa.select(sa.func.count()).select_from(INBOUND))
            ).scalar()
        assert stored == 3  # the busy ones left nothing: their senders resend them
        assert (
            ack_fields((await intake.post_hl7(routine("Q-BUSY", visit="Q-BUSY"))).text)[0] == "AA"
        )


# --------------------------------------------------------------------------- law enforcement


async def _le_key(intake: Intake, partner_id: str = "demo-police") -> str:
    async with intake.app.state.runtime.sessions() as session, session.begin():
        await create_partner(
            session,
            partner_id=partner_id,
            program_id="demo",
            name="Demo Police Department",
            kind="law_enforcement",
            now=SystemClock().now(),
        )
        return (await issue_key(session, partner_id=partner_id, now=SystemClock().now())).api_key


def le_report(**changes: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "incident_number": f"GPD-{uuid.uuid4().hex[:8]}",
        "occurred_at": (datetime.now(UTC) - timedelta(hours=2)).isoformat(),
        "location": {
            "address": {"street": "400 Market St", "city": "Greensboro", "county": "Guilford"},
            "latitude": 36.07,
            "longitude": -79.79,
        },
        "fatal": False,
        "naloxone": {"given": True, "doses": 2},
        "suspected_drugs": ["fentanyl", "xylazine"],
        "consent": "accepted",
        "person": {"family_name": "Rivera", "given_name": "Jordan", "phones": ["336-555-0142"]},
    }
    report.update(changes)
    return report


async def post_le(intake: Intake, key: str, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await intake.client.post(
        "/v1/le/overdose-reports",
        content=content,
        headers={"Authorization": f"Bearer {key}", "Content-Type": JSON, **headers},
    )


async def test_a_law_enforcement_report_is_stored_and_answered_with_nothing_but_received(
    intake: Intake,
) -> None:
    key = await _le_key(intake)
    report = le_report()
    response = await post_le(intake, key, report)
    assert response.status_code == 202, response.text
    assert response.json() == {"received": True, "incident_number": report["incident_number"]}
    (envelope,) = await intake.events("OverdoseReported")
    event = envelope.event()
    assert isinstance(event, OverdoseReported)
    assert (event.source_kind, event.source_org, event.source_ref) == (
        "law_enforcement",
        "demo-police",
        report["incident_number"],
    )
    assert (event.opioid, event.fatal, event.naloxone_given, event.naloxone_doses) == (
        True,
        False,
        True,
        2,
    )
    assert event.suspected_drugs == ["fentanyl", "xylazine"]
    assert event.location.county == "Guilford"
    assert event.identity is not None
    assert "Rivera" not in envelope.model_dump_json()  # sealed, with the street and place
    assert "Market" not in envelope.model_dump_json()
    assert "36.07" not in envelope.model_dump_json()
    # the same report again: stored nothing new; the person died: a revision, fatal
    assert (await post_le(intake, key, report)).status_code == 202
    assert len(await intake.events("OverdoseReported")) == 1
    assert (await post_le(intake, key, report | {"fatal": True})).status_code == 202
    first, revised = (e.event() for e in await intake.events("OverdoseReported"))
    assert isinstance(revised, OverdoseReported)
    assert (revised.report_id, revised.revision, revised.fatal) == (first.report_id, 2, True)


async def test_without_consent_a_law_enforcement_report_carries_no_identity(
    intake: Intake,
) -> None:
    key = await _le_key(intake)
    refused = await post_le(intake, key, le_report(consent="declined"))
    assert_error(refused, 422, "identity_without_consent")
    response = await post_le(intake, key, le_report(consent="unknown", person=None))
    assert response.status_code == 202
    (envelope,) = await intake.events("OverdoseReported")
    event = envelope.event()
    assert isinstance(event, OverdoseReported)
    assert event.identity is None
    assert event.deidentified


async def test_law_enforcement_reports_refuse_bad_input_precisely(intake: Intake) -> None:
    key = await _le_key(intake)
    assert_error(await post_le(intake, key, b"{broken"), 400, "malformed_json")
    assert_error(await post_le(intake, key, le_report(fatal="maybe")), 422, "validation_error")
    assert_error(
        await post_le(intake, key, le_report(occurred_at="2026-01-01T00:00:00")),
        422,
        "validation_error",
    )
    too_big = json.dumps(le_report(incident_number="X" * 70_000)).encode()
    assert_error(await post_le(intake, key, too_big), 413, "payload_too_large")
    wrong_type = await intake.client.post(
        "/v1/le/overdose-reports",
        content=b"<report/>",
        headers={"Authorization": f"Bearer {key}", "Content-Type": XML},
    )
    assert_error(wrong_type, 415, "unsupported_media_type")
    assert await intake.events("OverdoseReported") == []


async def test_each_partner_kind_uses_only_its_own_endpoint(intake: Intake) -> None:
    key = await _le_key(intake)
    assert_error(await post_le(intake, intake.ems_key, le_report()), 403, "wrong_partner_kind")
    assert_error(await post_le(intake, intake.hospital_key, le_report()), 403, "wrong_partner_kind")
    assert_error(await intake.post_ems(overdose_example(), key=key), 403, "wrong_partner_kind")
    assert_error(await intake.post_hl7("MSH|^~\\&|X", key=key), 403, "wrong_partner_kind")


# --------------------------------------------------------------------------- event size


async def test_an_event_larger_than_the_broker_takes_is_refused_before_commit_everywhere(
    tmp_path: Path,
) -> None:
    """Nothing intake accepts may be unpublishable. With a 1 KiB event limit, which every
    overdose's event exceeds, each path refuses the overdose with `event_too_large` and keeps
    no report and no event, and the routine message beside it is still accepted."""
    async with running_intake(tmp_path, kafka_max_event_bytes=1024) as intake:
        reader, writer = await asyncio.open_connection("127.0.0.1", intake.mllp_port)
        try:
            writer.write(framed(adt("BIG-EVT-1")) + framed(routine("BIG-EVT-2")))
            await writer.drain()
            acks = [(await reader.readuntil(b"\x1c\r"))[1:-2].decode() for _ in range(2)]
        finally:
            writer.close()
        assert [ack_fields(a) for a in acks] == [
            ("AR", "BIG-EVT-1", "102"),
            ("AA", "BIG-EVT-2", ""),
        ]
        assert "larger than intake can publish" in acks[0]

        over_http = await intake.post_hl7(adt("BIG-EVT-3", visit="V-BIG-3"))
        assert over_http.status_code == 422  # AR, with its ERR segment
        assert ack_fields(over_http.text) == ("AR", "BIG-EVT-3", "102")

        ems = await intake.post_ems(overdose_example())
        assert ems.status_code == 200, ems.text
        (result,) = ems.json()["results"]
        assert (result["status"], result["report_id"]) == ("rejected", None)
        assert result["error"]["code"] == "event_too_large"

        key = await _le_key(intake)
        assert_error(await post_le(intake, key, le_report()), 422, "event_too_large")

        assert await intake.events("OverdoseReported") == []  # no report reached the outbox
        refusals = [e.event() for e in await intake.events("InboundRejected")]
        assert [r.reason_code for r in refusals] == ["event_too_large"] * 2  # feed health
        async with intake.app.state.runtime.sessions() as session:
            rows = (await session.execute(sa.select(INBOUND.c.status, INBOUND.c.reason_code))).all()
            count = sa.select(sa.func.count()).select_from(REPORT)
            reports = (await session.execute(count)).scalar()
        # the two HL7 overdoses are kept sealed for a replay once the limit is raised
        assert sorted(map(tuple, rows)) == [
            ("not_overdose", None),
            ("rejected", "event_too_large"),
            ("rejected", "event_too_large"),
        ]
        assert reports == 0


async def test_the_event_limit_does_not_refuse_an_ordinary_overdose(tmp_path: Path) -> None:
    """The default limit (1,000,000 bytes) is far above an ordinary overdose's event."""
    async with running_intake(tmp_path) as intake:
        response = await intake.post_hl7(adt("SMALL-EVT-1"))
        assert ack_fields(response.text)[0] == "AA"
        (envelope,) = await intake.events()
        assert 1024 < len(envelope.model_dump_json()) < 1_000_000 // 100
