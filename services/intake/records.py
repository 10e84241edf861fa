"""What intake's parsers extract from partner messages: plain, typed, and still in plaintext.

These records live only in memory inside intake. Before anything is stored or published,
the identity is sealed and blind-indexed (see handlers), and only what the program needs
is kept (minimum necessary).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from shared.identity import Address, Identity

__all__ = [
    "Address",
    "AdtMessage",
    "EmsMedication",
    "EmsRunReport",
    "HL7Header",
    "Identity",
    "LeOverdoseReport",
]


@dataclass(frozen=True, slots=True)
class HL7Header:
    """MSH fields read without a full parse (enough to ACK and deduplicate)."""

    field_separator: str
    encoding_characters: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_time: str
    message_code: str
    """MSH-9.1, e.g. ADT."""
    trigger_event: str
    """MSH-9.2, e.g. A04."""
    message_structure: str
    """MSH-9.3 as sent (may be non-standard, e.g. ADT_A04)."""
    control_id: str
    """MSH-10; MSA-2 of the ACK echoes it."""
    processing_id: str
    version: str


@dataclass(frozen=True, slots=True)
class AdtMessage:
    """An ED visit notification, fully parsed (only done for overdose candidates)."""

    header: HL7Header
    identity: Identity
    visit_number: str | None
    patient_class: str | None
    """PV1-2: E for emergency."""
    admit_at: datetime | None
    """PV1-44, or EVN-2/EVN-6 when absent; timezone-aware (naive times are read in the
    facility's zone by the caller)."""
    discharge_disposition: str | None
    diagnosis_codes: tuple[str, ...]
    chief_complaints: tuple[tuple[str, str], ...]
    """(source, text) pairs: ("pv2_3", ...), ("obx_8661_1", ...)."""
    death_indicator: str | None = None
    """PID-30, patient death indicator: Y when the patient died."""
    died_at: datetime | None = None
    """PID-29, patient death date and time."""


@dataclass(frozen=True, slots=True)
class EmsMedication:
    rxnorm: str
    response: str | None
    given_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class EmsRunReport:
    """One EMS patient care report, from NEMSIS v3.5 XML or the JSON run report."""

    pcr_number: str
    """eRecord.01, unique per agency."""
    agency_id: str | None
    """dAgency.02 / eResponse.01 as sent."""
    identity: Identity
    incident_at: datetime | None
    """Earliest of PSAP call, unit notified, arrived on scene (eTimes.01/.03/.06)."""
    scene: Address | None
    impressions: tuple[str, ...]
    """eSituation.11 (primary) first, then eSituation.12 (secondary)."""
    medications: tuple[EmsMedication, ...]
    drug_use_indicators: tuple[str, ...]
    """eHistory.17 codes."""
    unit_disposition: str | None = None
    """eDisposition.27."""
    patient_evaluation_care: str | None = None
    """eDisposition.28 (e.g. 4228003 refused care)."""
    crew_disposition: str | None = None
    """eDisposition.29/.30."""
    transport_disposition: str | None = None
    """eDisposition.30/.31."""
    destination: str | None = None
    """Where EMS transported the person: eDisposition.02 (Destination/Transferred To, Code),
    else eDisposition.01 (its name)."""
    consent: str = "unknown"
    """The answer to "may a peer follow up?": accepted, declined or unknown."""
    narrative: str | None = None
    leave_behind: tuple[str, ...] = field(default=())
    """What EMS left with the person: naloxone kit, resource information."""
    initial_acuity: str | None = None
    """eSituation.13: 2813007 dead without resuscitation efforts."""
    release_acuity: str | None = None
    """eDisposition.19: 4219007/4219009 dead (without / with resuscitation efforts)."""
    arrest_end: str | None = None
    """eArrest.18, end of the cardiac arrest event: 3018003 expired in the field, 3018001
    expired in the ED."""
    outcomes: tuple[str, ...] = field(default=())
    """eOutcome.01/.02 (ED and hospital disposition): 20 expired."""
    fatal: bool = False
    """The JSON run report's own statement that the patient died."""
    died_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class LeOverdoseReport:
    """A law-enforcement agency's overdose report (services.intake.le_json)."""

    incident_number: str
    occurred_at: datetime
    scene: Address | None
    latitude: float | None
    longitude: float | None
    fatal: bool
    naloxone_given: bool
    naloxone_doses: int | None
    suspected_drugs: tuple[str, ...]
    consent: str
    identity: Identity
