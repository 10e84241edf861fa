"""From a parsed message and its overdose decision to an `OverdoseReported` event.

Pure: the sealer, the indexer, the ids and the times are handed in. Identity leaves this
module only sealed, plus blind indexes for matching; the county and state stay in the clear
because reporting needs them and they identify nobody on their own.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from services.intake.classify import NALOXONE_RXNORM, Decision, ReasonCode
from services.intake.records import Address, AdtMessage, EmsRunReport, Identity
from shared.events import BlindKeys, Consent, DecisionReason, Location, OverdoseReported
from shared.sealing import BlindIndexer, Sealer

__all__ = ["Protector", "content_hash", "ed_report", "ems_report", "person_key", "reasons_of"]


@dataclass(frozen=True, slots=True)
class Protector:
    """Seals identity and computes blind indexes: the only way PHI leaves intake."""

    sealer: Sealer
    indexer: BlindIndexer

    def seal_identity(self, identity: Identity) -> str | None:
        if identity.deidentified and identity.mrn is None and identity.dob is None:
            return None
        return self.sealer.seal_json(_identity_dict(identity), context="identity")

    def blind_keys(self, identity: Identity, *, facility: str | None) -> BlindKeys:
        name_dob = None
        if identity.family and identity.given and identity.dob:
            name_dob = self.indexer.name_dob(identity.family, identity.given, identity.dob)
        phone = next(
            (k for k in (self.indexer.phone(p) for p in identity.phones) if k is not None), None
        )
        mrn = None
        if identity.mrn and facility:
            mrn = self.indexer.mrn(facility, identity.mrn)
        dob = self.indexer.dob(identity.dob) if identity.dob else None
        return BlindKeys(name_dob=name_dob, phone=phone, mrn=mrn, dob=dob)

    def location(self, address: Address | None) -> Location:
        if address is None:
            return Location()
        sealed = None
        if address.street:
            sealed = self.sealer.seal_json(
                {
                    "street": address.street,
                    "city": address.city,
                    "postal_code": address.postal_code,
                },
                context="address",
            )
        return Location(county=address.county, state=address.state, address=sealed)


def _identity_dict(identity: Identity) -> dict[str, Any]:
    data = asdict(identity)
    data["dob"] = identity.dob.isoformat() if identity.dob else None
    data["phones"] = list(identity.phones)
    return data


def person_key(blind: BlindKeys, report_id: uuid.UUID) -> str:
    """The Kafka key: one person's reports stay in order on one partition."""
    for value in (blind.name_dob, blind.phone, blind.mrn):
        if value:
            return value
    return f"report:{report_id}"


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
) -> OverdoseReported:
    facility = adt.header.sending_facility
    blind = protector.blind_keys(adt.identity, facility=facility)
    naloxone = any(r.code == ReasonCode.TEXT_NALOXONE_TERM for r in decision.reasons)
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
        blind_keys=blind,
        deidentified=adt.identity.deidentified,
        location=protector.location(adt.identity.address),
        opioid=decision.opioid,
        any_drug=decision.any_drug,
        reasons=reasons_of(decision),
        naloxone_given=naloxone,
        disposition=adt.discharge_disposition,
        consent=Consent.UNKNOWN,
    )


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
) -> OverdoseReported:
    blind = protector.blind_keys(run.identity, facility=None)
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
        blind_keys=blind,
        deidentified=run.identity.deidentified,
        location=protector.location(run.scene or run.identity.address),
        opioid=decision.opioid,
        any_drug=decision.any_drug,
        reasons=reasons_of(decision),
        naloxone_given=any(m.rxnorm in NALOXONE_RXNORM for m in run.medications),
        disposition=run.transport_disposition or run.patient_evaluation_care,
        consent=Consent(run.consent),
        leave_behind=list(run.leave_behind),
    )
