"""Intake's HTTP edge: partners post HL7 v2 messages and EMS run reports.

Routes only authenticate, read the body and hand it to the handlers; the answer for HL7 is
the HL7 ACK itself, for EMS a per-record account of what happened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field, ValidationError

from services.intake.batching import MicroBatcher, Overloaded
from services.intake.ems_json import EmsRunReportBatch, EmsRunReportIn, to_record
from services.intake.le_json import LeOverdoseReportIn, to_le_report
from services.intake.models import IDEMPOTENCY, Channel
from services.intake.nemsis import EmsInputError, parse_ems_dataset
from services.intake.partners import PartnerContext, PartnerDirectory
from services.intake.pipeline import EmsOutcome, EmsSubmission, HL7Submission, PreparedSubmission
from services.intake.pipeline.law_enforcement import LawEnforcementIntake
from shared.clock import Clock
from shared.http import ApiError, ErrorResponse

__all__ = ["PARTNER_SECURITY_SCHEMES", "IntakeState", "router"]

router = APIRouter(prefix="/v1", tags=["intake"])
log = logging.getLogger(__name__)

HL7_MEDIA_TYPES = ("application/hl7-v2", "x-application/hl7-v2+er7", "text/plain")
XML_MEDIA_TYPES = ("application/xml", "text/xml")


@dataclass
class IntakeState:
    """What the routes need, built in the app's lifespan."""

    directory: PartnerDirectory
    submit_hl7: Callable[[HL7Submission], Awaitable[str]]
    """Prepares an HL7 submission and waits for its group commit: its ACK text."""
    hl7: MicroBatcher[PreparedSubmission, str]
    """The HL7 group commit that `submit_hl7` queues on (MLLP and HTTP share it)."""
    ems: MicroBatcher[list[EmsSubmission], list[EmsOutcome]]
    le: LawEnforcementIntake
    uow: Any
    clock: Clock
    max_message_bytes: int
    max_ems_bytes: int
    consent_element: str
    leave_behind_element: str
    idempotency_lease_seconds: float = 120.0


# The two partner routes read their headers themselves instead of through FastAPI
# dependencies: these are the hottest routes, and dependency resolution cost about 80 us of a
# request's CPU (a tenth of an EMS report's). The OpenAPI says the same as before, through
# security schemes and the parameters below.
PARTNER_SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "partnerBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "The partner API key: `Authorization: Bearer <API key>`.",
    },
    "partnerApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The partner API key (alternative to the bearer token).",
    },
}
_PARTNER_SECURITY: list[dict[str, list[str]]] = [{"partnerBearer": []}, {"partnerApiKey": []}]
IDEMPOTENCY_KEY_MAX = 200
_IDEMPOTENCY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Retries with this key replay the answer.",
    "schema": {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX},
}


async def _partner(request: Request) -> tuple[IntakeState, PartnerContext]:
    """The service state and the partner whose API key the request carries (401 without)."""
    state: IntakeState = request.app.state.intake
    headers = request.headers
    key = headers.get("x-api-key")
    authorization = headers.get("authorization")
    if key is None and authorization and authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    if not key:
        raise ApiError(401, "missing_api_key", "Send the partner API key as a bearer token.")
    partner = await state.directory.by_api_key(key)
    if partner is None:
        raise ApiError(401, "invalid_api_key", "The API key is unknown or revoked.")
    return state, partner


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and len(key) > IDEMPOTENCY_KEY_MAX:
        raise ApiError(
            422,
            "validation_error",
            "The request does not match the schema.",
            details=[
                {
                    "loc": ["header", "Idempotency-Key"],
                    "type": "string_too_long",
                    "msg": f"String should have at most {IDEMPOTENCY_KEY_MAX} characters",
                }
            ],
        )
    return key


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"The body exceeds {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"The body exceeds {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


_ACK_STATUS = {"AA": 200, "AE": 503, "AR": 422}


def _worst_code(acks: str) -> str:
    """AE if any message must be resent, else AR if any was refused, else AA."""
    codes = {segment[4:6] for segment in acks.split("\r") if segment.startswith("MSA")}
    return next((c for c in ("AE", "AR") if c in codes), "AA")


@router.post(
    "/hl7",
    summary="Submit one HL7 v2 message (or an HL7 batch); the answer is the HL7 ACK",
    description=(
        "The body is the message in ER7 (pipe-delimited) form. The response body is the "
        "original-mode ACK: `AA` once the message is durably stored (HTTP 200), `AE` when it "
        "could not be stored and should be resent (HTTP 503), `AR` when it can never be "
        "accepted as sent (HTTP 422; ERR says why). A resent message (same MSH-3, MSH-4, "
        "MSH-10) gets its original ACK again. MSH-4 must be one of the partner's facilities."
    ),
    response_class=Response,
    responses={
        200: {
            "content": {
                "application/hl7-v2": {"example": "MSH|^~\\&|PORTLINE|...\rMSA|AA|MSG0001"}
            },
            "description": "AA",
        },
        401: {"model": ErrorResponse},
        403: {"model": ErrorResponse, "description": "The partner is not a hospital."},
        413: {"model": ErrorResponse},
        415: {"model": ErrorResponse},
        422: {"description": "AR, with an ERR segment"},
        503: {"description": "AE: resend later"},
    },
    openapi_extra={
        "security": _PARTNER_SECURITY,
        "requestBody": {
            "required": True,
            "content": {
                t: {"schema": {"type": "string"}, "example": "MSH|^~\\&|EPIC|DEMO_HOSPITAL|..."}
                for t in HL7_MEDIA_TYPES
            },
        },
    },
)
async def post_hl7(request: Request) -> Response:
    state, partner = await _partner(request)
    if partner.kind != "hospital":
        raise ApiError(403, "wrong_partner_kind", "Only hospital partners send HL7 messages.")
    if _media_type(request) not in HL7_MEDIA_TYPES:
        raise ApiError(
            415, "unsupported_media_type", f"Send HL7 as one of: {', '.join(HL7_MEDIA_TYPES)}."
        )
    body = await _body(request, state.max_message_bytes)
    sender = frozenset({partner.partner_id})
    ack = await state.submit_hl7(HL7Submission(body, Channel.HTTP_HL7, sender))
    code = _worst_code(ack)
    headers = {"Retry-After": "5"} if code == "AE" else {}
    return Response(
        ack,
        status_code=_ACK_STATUS.get(code, 200),
        media_type="application/hl7-v2",
        headers=headers,
    )


class RecordError(BaseModel):
    code: str
    message: str


class RecordReason(BaseModel):
    code: str = Field(description="Stable reason code, e.g. ems_naloxone_improved.")
    source: str
    detail: str


class RecordResult(BaseModel):
    index: int = Field(description="Position of the record in the submission (0-based).")
    pcr_number: str | None
    status: Literal["accepted", "revised", "unchanged", "duplicate", "not_overdose", "rejected"] = (
        Field(
            description="accepted: a new overdose report; revised: an update of an earlier one; "
            "duplicate: already received as is; unchanged: no longer meets the definition, the "
            "earlier report stands; not_overdose: counted, nothing kept; rejected: see error."
        )
    )
    overdose: bool
    opioid: bool
    any_drug: bool
    report_id: uuid.UUID | None
    revision: int | None
    reasons: list[RecordReason]
    error: RecordError | None = None


class RunReportsResponse(BaseModel):
    results: list[RecordResult]


def _result(o: EmsOutcome) -> RecordResult:
    return RecordResult(
        index=o.index,
        pcr_number=o.pcr_number,
        status=o.status,
        overdose=o.overdose,
        opioid=o.opioid,
        any_drug=o.any_drug,
        report_id=o.report_id,
        revision=o.revision,
        reasons=[RecordReason(code=c, source=s, detail=d) for c, s, d in o.reasons],
        error=RecordError(code=o.error_code, message=o.error_message or "")
        if o.error_code
        else None,
    )


def _json_submissions(body: bytes, partner: PartnerContext) -> list[EmsSubmission]:
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "malformed_json", "The body is not valid JSON.") from None
    try:
        if isinstance(raw, dict) and "reports" in raw:
            reports = EmsRunReportBatch.model_validate(raw).reports
        else:
            reports = [EmsRunReportIn.model_validate(raw)]
    except ValidationError as exc:
        details = [
            {"loc": list(e.get("loc", ())), "type": e.get("type"), "msg": e.get("msg")}
            for e in exc.errors(include_input=False, include_url=False)
        ]
        raise ApiError(
            422, "validation_error", "The run report does not match the schema.", details=details
        ) from None
    return [EmsSubmission(partner, i, to_record(r)) for i, r in enumerate(reports)]


def _xml_submissions(
    body: bytes, partner: PartnerContext, state: IntakeState
) -> list[EmsSubmission]:
    try:
        results = parse_ems_dataset(
            body,
            consent_element=state.consent_element,
            leave_behind_element=state.leave_behind_element,
            max_bytes=state.max_ems_bytes,
            default_tz=ZoneInfo(partner.timezone),  # NEMSIS times without an offset
        )
    except EmsInputError as exc:
        status = 413 if exc.code == "xml_too_large" else 400
        raise ApiError(status, exc.code, exc.message) from None
    return [
        EmsSubmission(
            partner,
            r.index,
            r.report,
            error_code=r.error.code if r.error else None,
            error_message=r.error.message if r.error else None,
        )
        for r in results
    ]


def _examples() -> list[Any]:
    extra = EmsRunReportIn.model_config.get("json_schema_extra")
    examples = extra.get("examples") if isinstance(extra, dict) else None
    return list(examples) if isinstance(examples, list) else []


@router.post(
    "/ems/run-reports",
    summary="Submit EMS run reports: NEMSIS v3.5 EMSDataSet XML or the JSON run report",
    description=(
        "`application/xml`: a NEMSIS v3.5 EMSDataSet with one or many PatientCareReports. "
        '`application/json`: one run report, or `{"reports": [...]}` (schema '
        "`EmsRunReportIn`). Records are idempotent per agency and PCR number (eRecord.01); a "
        "changed resubmission revises the earlier report. With an `Idempotency-Key` header a "
        "retried request gets the original response. The response says, per record, what "
        "happened. XML is parsed without DTDs or entities."
    ),
    response_model=RunReportsResponse,
    responses={
        400: {"model": ErrorResponse},
        401: {"model": ErrorResponse},
        403: {"model": ErrorResponse, "description": "The partner is not an EMS agency."},
        409: {
            "model": ErrorResponse,
            "description": "The Idempotency-Key was used for another body, or its first "
            "request is still being processed.",
        },
        413: {"model": ErrorResponse},
        415: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        503: {"model": ErrorResponse, "description": "Not stored; resend (Retry-After)."},
    },
    openapi_extra={
        "security": _PARTNER_SECURITY,
        "parameters": [_IDEMPOTENCY_PARAMETER],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/EmsRunReportIn"},
                            {"$ref": "#/components/schemas/EmsRunReportBatch"},
                        ]
                    },
                    "examples": {f"example{i}": {"value": v} for i, v in enumerate(_examples())},
                },
                "application/xml": {
                    "schema": {"type": "string", "format": "NEMSIS v3.5 EMSDataSet"}
                },
            },
        },
    },
)
async def post_run_reports(request: Request) -> Response:
    state, partner = await _partner(request)
    idempotency_key = _idempotency_key(request)
    if partner.kind != "ems":
        raise ApiError(403, "wrong_partner_kind", "Only EMS partners send run reports.")
    media = _media_type(request)
    if media not in (*XML_MEDIA_TYPES, "application/json"):
        raise ApiError(
            415, "unsupported_media_type", "Send application/xml (NEMSIS) or application/json."
        )
    body = await _body(request, state.max_ems_bytes)
    request_hash = hashlib.sha256(media.encode() + b"\0" + body).hexdigest()
    if media == "application/json":
        submissions = _json_submissions(body, partner)
    else:
        submissions = _xml_submissions(body, partner, state)
    if not idempotency_key:
        return _run_reports_response(await _store_ems(state, submissions))
    try:
        replay = await _reserve(state, partner, idempotency_key, request_hash)
    except ApiError:
        raise
    except Exception as exc:
        raise _unavailable(exc) from None
    if replay is not None:
        return replay
    try:
        outcomes = await _store_ems(state, submissions)
    except BaseException:
        with contextlib.suppress(Exception):
            await _release(state, partner, idempotency_key)
        raise
    response = _run_reports_response(outcomes)
    try:
        await _complete(state, partner, idempotency_key, bytes(response.body).decode())
    except Exception as exc:
        # The records are stored: answer them. The reservation's lease lets a retry with this
        # key in, which finds them stored (duplicate) and stores nothing twice.
        log.warning(
            "idempotency answer not saved; the lease frees the key",
            extra={"error": type(exc).__name__},
        )
    return response


async def _store_ems(state: IntakeState, submissions: list[EmsSubmission]) -> list[EmsOutcome]:
    try:
        return await state.ems.submit(submissions)
    except Overloaded:
        raise ApiError(
            503,
            "intake_busy",
            "Intake has too many run reports waiting to be stored; nothing was kept. Resend later.",
            headers={"Retry-After": "2"},
        ) from None
    except Exception as exc:
        raise _unavailable(exc) from None


def _unavailable(exc: Exception) -> ApiError:
    """The request was not stored, or not all of it: the partner should resend it. A batch's
    routine and overdose records commit separately, so a resend may find some of them
    already stored; those come back as `duplicate`, and nothing is stored twice."""
    log.warning("run reports not stored; answering 503", extra={"error": type(exc).__name__})
    return ApiError(
        503,
        "storage_unavailable",
        "The run reports could not be stored right now; nothing was kept. Resend later.",
        headers={"Retry-After": "5"},
    )


def _run_reports_response(outcomes: list[EmsOutcome]) -> Response:
    payload = RunReportsResponse(results=[_result(o) for o in outcomes]).model_dump_json()
    return Response(payload, media_type="application/json")


_IN_PROGRESS = 0


def _key_filter(partner: PartnerContext, key: str) -> sa.ColumnElement[bool]:
    return sa.and_(IDEMPOTENCY.c.partner_id == partner.partner_id, IDEMPOTENCY.c.key == key)


async def _reserve(
    state: IntakeState, partner: PartnerContext, key: str, request_hash: str
) -> Response | None:
    """Claim the key for this request, or answer with what its first use answered.

    The claim is a row committed before any work, so concurrent requests with one key (on
    any replica) see it: they get the stored answer, or 409 while the first is in flight. A
    claim is a lease: one older than ``idempotency_lease_seconds`` that never completed (its
    request crashed or was cut off) is taken over, so a crash never refuses a key for ever.
    """
    for _ in range(2):
        async with state.uow() as uow:
            row = (
                await uow.session.execute(IDEMPOTENCY.select().where(_key_filter(partner, key)))
            ).first()
            now = state.clock.now()
            lapsed = (
                row is not None
                and row.status_code == _IN_PROGRESS
                and (now - row.created_at) >= timedelta(seconds=state.idempotency_lease_seconds)
            )
            if lapsed:
                taken = await uow.session.execute(
                    IDEMPOTENCY.update()
                    .where(
                        _key_filter(partner, key),
                        IDEMPOTENCY.c.status_code == _IN_PROGRESS,
                        IDEMPOTENCY.c.created_at == row.created_at,
                    )
                    .values(request_hash=request_hash, created_at=now)
                )
                await uow.commit()
                if taken.rowcount == 1:
                    return None
                continue  # another request took it over first: read what it holds
            if row is None:
                try:
                    await uow.session.execute(
                        IDEMPOTENCY.insert().values(
                            partner_id=partner.partner_id,
                            key=key,
                            request_hash=request_hash,
                            status_code=_IN_PROGRESS,
                            response="",
                            created_at=state.clock.now(),
                        )
                    )
                    await uow.commit()
                except sa.exc.IntegrityError:
                    continue  # claimed concurrently: read what the winner stored
                return None
        if row.request_hash != request_hash:
            raise ApiError(
                409,
                "idempotency_key_reused",
                "This Idempotency-Key was used for a different request body.",
            )
        if row.status_code == _IN_PROGRESS:
            raise ApiError(
                409,
                "idempotency_request_in_progress",
                "A request with this Idempotency-Key is still being processed; retry shortly.",
            )
        return Response(
            row.response,
            status_code=row.status_code,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )
    raise ApiError(409, "idempotency_request_in_progress", "Retry shortly.")


async def _complete(state: IntakeState, partner: PartnerContext, key: str, payload: str) -> None:
    async with state.uow() as uow:
        await uow.session.execute(
            IDEMPOTENCY.update()
            .where(_key_filter(partner, key))
            .values(status_code=200, response=payload)
        )
        await uow.commit()


async def _release(state: IntakeState, partner: PartnerContext, key: str) -> None:
    """A request that failed does not use up its key."""
    async with state.uow() as uow:
        await uow.session.execute(
            IDEMPOTENCY.delete().where(
                _key_filter(partner, key), IDEMPOTENCY.c.status_code == _IN_PROGRESS
            )
        )
        await uow.commit()


# -- law enforcement ----------------------------------------------------------------------


def _le_examples() -> list[Any]:
    extra = LeOverdoseReportIn.model_config.get("json_schema_extra")
    assert isinstance(extra, dict)
    examples = extra["examples"]
    assert isinstance(examples, list)
    return examples


LE_MAX_BYTES = 65_536
"""The largest law-enforcement report body (one report is a few hundred bytes)."""


class LeReceived(BaseModel):
    """All a law-enforcement agency hears back: the report is stored. Nothing about the person,
    the outreach or the outcome, ever."""

    received: Literal[True] = True
    incident_number: str


@router.post(
    "/le/overdose-reports",
    summary="A law-enforcement agency reports an overdose (one way: nothing is read back)",
    description=(
        "ODMAP's data points as JSON (`LeOverdoseReportIn`): when, where, fatal or not, "
        "naloxone and doses, suspected drugs, the agency's incident number, and the person's "
        "identity and phone only when they agreed to be contacted (`consent` = `accepted`; "
        "a person sent otherwise is refused with `identity_without_consent`). Idempotent per "
        "agency and incident number: sending it again stores nothing new, and a changed report "
        "revises it. The answer says only that it was stored: law enforcement receives no "
        "status, outcome or lookup of any kind."
    ),
    status_code=202,
    response_model=LeReceived,
    responses={
        401: {"model": ErrorResponse},
        403: {"model": ErrorResponse, "description": "The key is not a law-enforcement agency's."},
        413: {"model": ErrorResponse},
        415: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        503: {"model": ErrorResponse, "description": "Not stored; resend (Retry-After)."},
    },
    openapi_extra={
        "security": _PARTNER_SECURITY,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/LeOverdoseReportIn"},
                    "examples": {f"example{i}": {"value": v} for i, v in enumerate(_le_examples())},
                }
            },
        },
    },
)
async def post_le_report(request: Request) -> Response:
    state, partner = await _partner(request)
    if partner.kind != "law_enforcement":
        raise ApiError(
            403, "wrong_partner_kind", "Only law-enforcement agencies send these reports."
        )
    if _media_type(request) != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send application/json.")
    body = await _body(request, LE_MAX_BYTES)
    try:
        model = LeOverdoseReportIn.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        if any("identity_without_consent" in str(e.get("msg")) for e in errors):
            raise ApiError(
                422,
                "identity_without_consent",
                "Send the person only when they agreed to be contacted (consent = accepted).",
            ) from None
        details = [
            {"loc": list(e.get("loc", ())), "type": e.get("type"), "msg": e.get("msg")}
            for e in errors
        ]
        code = "malformed_json" if any(e.get("type") == "json_invalid" for e in errors) else None
        if code:
            raise ApiError(400, code, "The body is not valid JSON.") from None
        raise ApiError(
            422, "validation_error", "The report does not match the schema.", details=details
        ) from None
    try:
        outcome = await state.le.receive(partner, to_le_report(model))
    except Exception as exc:
        raise _unavailable(exc) from None
    if outcome.status == "rejected":
        raise ApiError(422, outcome.error_code or "rejected", outcome.error_message or "")
    payload = LeReceived(incident_number=model.incident_number).model_dump_json()
    return Response(payload, status_code=202, media_type="application/json")
