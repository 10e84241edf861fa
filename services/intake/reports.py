"""From a parsed message and its overdose decision to an `OverdoseReported` event.

Pure: the sealer, the indexer, the ids and the times are handed in. Identity leaves this
module only sealed, plus blind indexes for matching; the county and state stay in the clear
because reporting needs them and they identify nobody on their own.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime

from services.intake.classify import NALOXONE_RXNORM, Decision, ReasonCode
from services.intake.death import death_of_adt, death_of_run
from services.intake.partners import facility_key
from services.intake.records import AdtMessage, EmsRunReport, LeOverdoseReport
from shared.events import Consent, DecisionReason, Location, OverdoseReported
from shared.identity import Identity, Protector, person_key

__all__ = [
    "LE_OPIOIDS",
    "Protector",
    "content_hash",
    "ed_report",
    "ems_report",
    "le_report",
    "person_key",
    "reasons_of",
]

LE_OPIOIDS = frozenset({"fentanyl", "heroin", "prescription_opioid", "other_opioid"})


def reasons_of(decision: Decision) -> list[DecisionReason]:
    return [
        DecisionReason(code=str(r.code), source=r.source, detail=r.detail) for r in decision.reasons
    ]


def content_hash(salt: uuid.UUID, *parts: object) -> str:
    """A salted digest of what a report says, to tell a real revision from a resend."""
    canonical = json.dumps(parts, default=str, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(salt.bytes + canonical.encode()).hexdigest()


def ed_report(
    adt: AdtMessage,
    decision: Decision,
    *,
    program_id: str,
    partner_id: str,
    report_id: uuid.UUID,
    revision: int,
    received_at: datetime,
    protector: Protector,
    kept: tuple[bool, bool] | None = None,
) -> OverdoseReported:
    """``kept``: the report's (opioid, any_drug) when this message revises it without being an
    overdose by itself (an A03 that only says the patient expired)."""
    facility = adt.header.sending_facility
    blind = protector.blind_fields(adt.identity, facility=facility)
    naloxone = any(r.code == ReasonCode.TEXT_NALOXONE_TERM for r in decision.reasons)
    death = death_of_adt(adt)
    opioid, any_drug = decision.opioid, decision.any_drug
    if kept is not None:
        opioid, any_drug = opioid or kept[0], any_drug or kept[1]
    return OverdoseReported(
        report_id=report_id,
        revision=revision,
        program_id=program_id,
        source_kind="ed",
        source_org=partner_id,
        source_ref=adt.header.control_id,
        incident_at=adt.admit_at or received_at,
        received_at=received_at,
        identity=protector.seal_identity(adt.identity),
        **blind,
        deidentified=adt.identity.deidentified,
        location=protector.location(adt.identity.address),
        opioid=opioid,
        any_drug=any_drug,
        reasons=[*reasons_of(decision), *death.reasons],
        naloxone_given=naloxone,
        disposition=adt.discharge_disposition,
        consent=Consent.UNKNOWN,
        fatal=death.fatal,
        died_at=death.died_at,
        hospital=_hospital(facility),
    )


def _hospital(raw: str | None) -> str | None:
    """A facility key as partners' allow-lists write it (MSH-4's first component, upper-cased),
    so an EMS destination code and a hospital's MSH-4 compare; None when empty or too long."""
    key = facility_key(raw) if raw else ""
    return key if key and len(key) <= 128 else None


def ems_report(
    run: EmsRunReport,
    decision: Decision,
    *,
    program_id: str,
    partner_id: str,
    report_id: uuid.UUID,
    revision: int,
    received_at: datetime,
    protector: Protector,
    kept: tuple[bool, bool] | None = None,
) -> OverdoseReported:
    """``kept``: the report's (opioid, any_drug) when this record revises it without being an
    overdose by itself (a later version that only says the patient died)."""
    blind = protector.blind_fields(run.identity, facility=None)
    death = death_of_run(run)
    opioid, any_drug = decision.opioid, decision.any_drug
    if kept is not None:
        opioid, any_drug = opioid or kept[0], any_drug or kept[1]
    return OverdoseReported(
        report_id=report_id,
        revision=revision,
        program_id=program_id,
        source_kind="ems",
        source_org=partner_id,
        source_ref=run.pcr_number,
        incident_at=run.incident_at or received_at,
        received_at=received_at,
        identity=protector.seal_identity(run.identity),
        **blind,
        deidentified=run.identity.deidentified,
        location=protector.location(run.scene or run.identity.address),
        opioid=opioid,
        any_drug=any_drug,
        reasons=[*reasons_of(decision), *death.reasons],
        naloxone_given=any(m.rxnorm in NALOXONE_RXNORM for m in run.medications),
        disposition=run.transport_disposition or run.patient_evaluation_care,
        consent=Consent(run.consent),
        leave_behind=list(run.leave_behind),
        fatal=death.fatal,
        died_at=death.died_at,
        hospital=_hospital(run.destination),
    )


def le_report(
    report: LeOverdoseReport,
    *,
    program_id: str,
    partner_id: str,
    report_id: uuid.UUID,
    revision: int,
    received_at: datetime,
    protector: Protector,
) -> OverdoseReported:
    """A law-enforcement report of an overdose. The agency reports an overdose, so it is one
    under either definition; ``opioid`` says whether an opioid is suspected. Identity travels
    (sealed) only when the person agreed to be contacted."""
    identity = report.identity if report.consent == "accepted" else Identity()
    drugs = list(report.suspected_drugs)
    reasons = [
        DecisionReason(
            code="le_reported_overdose",
            source="law_enforcement",
            detail="fatal" if report.fatal else "non_fatal",
        ),
        *(
            DecisionReason(code="le_suspected_drug", source="suspected_drugs", detail=d)
            for d in drugs
        ),
    ]
    if report.naloxone_given:
        reasons.append(DecisionReason(code="le_naloxone_given", source="naloxone", detail="given"))
    return OverdoseReported(
        report_id=report_id,
        revision=revision,
        program_id=program_id,
        source_kind="law_enforcement",
        source_org=partner_id,
        source_ref=report.incident_number,
        incident_at=report.occurred_at,
        received_at=received_at,
        identity=protector.seal_identity(identity),
        **protector.blind_fields(identity, facility=None),
        deidentified=identity.deidentified,
        location=_scene(report, protector),
        opioid=bool(LE_OPIOIDS.intersection(drugs)),
        any_drug=True,
        reasons=reasons,
        naloxone_given=report.naloxone_given,
        naloxone_doses=report.naloxone_doses,
        consent=Consent(report.consent),
        fatal=report.fatal,
        died_at=report.occurred_at if report.fatal else None,
        suspected_drugs=drugs,
    )


def _scene(report: LeOverdoseReport, protector: Protector) -> Location:
    """County and state in the clear; the street and coordinates sealed."""
    scene = report.scene
    place = {
        k: v
        for k, v in {
            "street": scene.street if scene else None,
            "city": scene.city if scene else None,
            "postal_code": scene.postal_code if scene else None,
            "latitude": report.latitude,
            "longitude": report.longitude,
        }.items()
        if v is not None
    }
    sealed = protector.sealer.seal_json(place, context="address") if place else None
    return Location(
        county=scene.county if scene else None,
        state=scene.state if scene else None,
        address=sealed,
    )
