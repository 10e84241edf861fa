"""Events intake publishes: reported overdoses (with revisions) and rejected inbound messages.

A type's newer version extends its older one (``XV1``) with defaulted fields, or widens a
choice; readers get the newest (see ``shared.envelope``).
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.envelope import Event
from shared.events.common import (
    BlindKeys,
    BlindKeyVersions,
    Consent,
    DecisionReason,
    SealedToken,
)
from shared.topics import INTAKE_OVERDOSES, INTAKE_REJECTED

__all__ = [
    "InboundRejected",
    "Location",
    "OverdoseReported",
    "OverdoseReportedV1",
    "OverdoseReportedV2",
    "SourceKind",
]

SourceKind = Literal["ems", "ed", "law_enforcement"]
"""Who reported an overdose to intake: an EMS agency, a hospital ED, a law-enforcement agency."""


class Location(BaseModel):
    """Where the overdose happened: coarse fields in the clear, the street address sealed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    county: str | None = None
    state: str | None = None
    address: SealedToken | None = None


class OverdoseReportedV1(Event):
    """An EMS run or ED visit that meets an overdose definition (or a revision of one)."""

    event_type = "OverdoseReported"
    topic = INTAKE_OVERDOSES.name

    report_id: uuid.UUID
    revision: int = Field(
        default=1, ge=1, description="Later messages about the same visit revise."
    )
    program_id: str
    source_kind: Literal["ems", "ed"]
    source_org: str
    source_ref: str = Field(description="The partner's own id: PCR number or MSH-10.")
    incident_at: AwareDatetime
    received_at: AwareDatetime
    identity: SealedToken | None = Field(
        default=None, description="Sealed JSON: names, date of birth, phone, address, MRN."
    )
    blind_keys: BlindKeys = BlindKeys()
    deidentified: bool = Field(description="No name and no phone: counted, never assigned.")
    location: Location = Location()
    opioid: bool
    any_drug: bool
    reasons: list[DecisionReason]
    naloxone_given: bool = False
    disposition: str | None = None
    consent: Consent = Consent.UNKNOWN
    leave_behind: list[str] = Field(default_factory=list)


class OverdoseReportedV2(OverdoseReportedV1):
    """v2: law-enforcement reports, and whether the person died."""

    event_type = "OverdoseReported"
    version = 2

    source_kind: SourceKind  # type: ignore[assignment]  # v2 widens v1's choice
    fatal: bool = Field(
        default=False,
        description="The source says the person died (dead at the scene, expired in the ED, a "
        "fatal law-enforcement report). No outreach to the person ever follows.",
    )
    died_at: AwareDatetime | None = Field(default=None, description="When, if the source says.")
    naloxone_doses: int | None = Field(
        default=None, ge=0, le=50, description="Naloxone doses given, where the source counts them."
    )
    suspected_drugs: list[str] = Field(
        default_factory=list, description="Codes of the drugs suspected (law enforcement)."
    )


class OverdoseReported(OverdoseReportedV2, BlindKeyVersions):
    """v3: the version of the blind keys, and the same keys under the other versions during a
    blind-index key rotation (``BlindKeyVersions``); the hospital of the overdose."""

    event_type = "OverdoseReported"
    version = 3

    hospital: str | None = Field(
        default=None,
        max_length=128,
        description="The hospital of the overdose, as a facility key (first component, "
        "trimmed, upper-cased): for EMS where it transported the person (NEMSIS "
        "eDisposition.02, else .01), for an ED the sending facility (MSH-4). Evidence for "
        "linking an EMS run to the ED visit it ended in.",
    )


class InboundRejected(Event):
    """A partner message intake could not accept; the raw message is stored sealed for replay."""

    event_type = "InboundRejected"
    topic = INTAKE_REJECTED.name

    inbound_id: uuid.UUID
    source_kind: Literal["ems", "ed"]
    source_org: str
    reason_code: str
    reason: str
    received_at: AwareDatetime
