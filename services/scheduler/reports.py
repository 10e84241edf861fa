"""What the scheduler takes a report to be, whoever sent it.

Reports come from intake (``OverdoseReported``: EMS, EDs, law enforcement) and from outreach
(``CommunityReferralReceived``: the team entering a referral from the community). Both become
one :class:`Report`, so linking, windows, repeat overdoses, do-not-contact and death are
decided the same way for every source.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from shared.envelope import Event
from shared.events import BlindKeys, CommunityReferralReceived, Consent, OverdoseReported
from shared.sealing import LEGACY_BLIND_VERSION

__all__ = ["TRANSPORTED_DISPOSITIONS", "Report", "report_of"]

TRANSPORTED_DISPOSITIONS = frozenset({"4230001", "4230003", "4230005", "4230007"})
"""NEMSIS v3.5 eDisposition.30 (Transport Disposition) codes of a run that took the person to
a hospital: by this unit (with or without a member of another crew), or by another unit or
agency (with or without a member of this crew). Not 4230009 (the patient refused transport),
4230011 (a non-patient transport) or 4230013 (no transport). Intake publishes eDisposition.30
as ``OverdoseReported.disposition`` (else .28, the patient evaluation/care, which never says
transported)."""


@dataclass(frozen=True, slots=True)
class Report:
    report_id: uuid.UUID
    revision: int
    program_id: str
    source_kind: str
    """ems, ed, law_enforcement or community."""
    incident_at: datetime
    """When the overdose happened (a community referral without one: when it was received)."""
    received_at: datetime
    identity: str | None
    blind_keys: BlindKeys
    deidentified: bool
    consent: Consent
    fatal: bool = False
    died_at: datetime | None = None
    overdose: bool = True
    """False for a community referral that reported no overdose."""
    source_org: str | None = None
    """The partner that sent it (for a community referral: the referrer kind)."""
    county: str | None = None
    state: str | None = None
    blind_keys_version: str = LEGACY_BLIND_VERSION
    """The blind-index key version of ``blind_keys``."""
    other_blind_keys: Mapping[str, BlindKeys] = field(default_factory=dict)
    """The same keys under the other versions the sender held (a key rotation)."""
    hospital: str | None = None
    """EMS's destination or the reporting ED (a facility key)."""
    transported: bool = False
    """An EMS run whose disposition says it transported the person
    (:data:`TRANSPORTED_DISPOSITIONS`), whether or not it names where."""

    def blind_sets(self) -> tuple[tuple[str, BlindKeys], ...]:
        """Every (version, blind keys) the report carries, ``blind_keys`` first."""
        return ((self.blind_keys_version, self.blind_keys), *self.other_blind_keys.items())


def report_of(event: Event) -> Report | None:
    """The report an event carries; None for any other event."""
    if isinstance(event, OverdoseReported):
        return Report(
            report_id=event.report_id,
            revision=event.revision,
            program_id=event.program_id,
            source_kind=event.source_kind,
            incident_at=event.incident_at,
            received_at=event.received_at,
            identity=event.identity,
            blind_keys=event.blind_keys,
            deidentified=event.deidentified,
            consent=event.consent,
            fatal=event.fatal,
            died_at=event.died_at,
            source_org=event.source_org,
            county=event.location.county,
            state=event.location.state,
            blind_keys_version=event.blind_keys_version,
            other_blind_keys=dict(event.other_blind_keys),
            hospital=event.hospital,
            transported=event.source_kind == "ems"
            and (event.disposition or "").strip() in TRANSPORTED_DISPOSITIONS,
        )
    if isinstance(event, CommunityReferralReceived):
        return Report(
            report_id=event.referral_id,
            revision=1,
            program_id=event.program_id,
            source_kind="community",
            incident_at=event.incident_at or event.received_at,
            received_at=event.received_at,
            identity=event.identity,
            blind_keys=event.blind_keys,
            deidentified=event.deidentified,
            consent=event.consent,
            overdose=event.overdose,
            source_org=event.referrer,
            county=event.location.county,
            state=event.location.state,
            blind_keys_version=event.blind_keys_version,
            other_blind_keys=dict(event.other_blind_keys),
        )
    return None
