"""Events outreach publishes on port.outreach.activity.v1, keyed by case.

Free-text notes never travel in events: they may hold PHI and stay in outreach's own store.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.envelope import Event
from shared.events.common import BlindKeys, BlindKeyVersions, Consent, SealedToken
from shared.events.intake import Location
from shared.topics import OUTREACH_ACTIVITY

__all__ = [
    "FAILED_OUTCOMES",
    "AttemptLogged",
    "CommunityReferralReceived",
    "CommunityReferralReceivedV1",
    "ContactMade",
    "DoNotContactRequested",
    "HotSpotConcluded",
    "OutreachConcluded",
    "OutreachDeclined",
    "ReferralMade",
    "ReferralStatusChanged",
    "Referrer",
    "ServiceItem",
    "ServicesProvided",
    "TaskAssigned",
    "VisitCompleted",
    "VisitScheduled",
]

Channel = Literal["phone", "text", "in_person", "family_friend"]
AttemptOutcome = Literal[
    "reached", "no_answer", "left_message", "wrong_number", "declined", "unsafe", "not_found"
]
ReferralKind = Literal[
    "moud_buprenorphine",
    "moud_methadone",
    "detox",
    "inpatient",
    "outpatient",
    "mental_health",
    "housing",
    "food",
    "healthcare",
    "disease_testing",
]
FAILED_OUTCOMES: frozenset[AttemptOutcome] = frozenset(
    {"no_answer", "left_message", "wrong_number", "not_found"}
)
"""Attempt outcomes that count as failed towards escalation to an in-person visit (the
scheduler's ladder; outreach shows the same count). "unsafe" is not one of them: the next rung
of the ladder is a visit to the person, and whether a visit is safe after an unsafe contact is
a team lead's decision, not a count's. "reached" and "declined" end the attempt otherwise."""
Referrer = Literal[
    "self", "family_friend", "syringe_services", "jail_release", "community_partner", "other"
]
"""Who referred someone the team entered by hand (not EMS, an ED or law enforcement)."""
ReferralStatus = Literal["offered", "accepted", "appointment", "care_started", "declined", "lost"]
ConclusionReason = Literal[
    "engaged",
    "declined",
    "unreachable",
    "moved",
    "in_treatment",
    "incarcerated",
    "deceased",
    "duplicate",
]


class _ActivityEvent(Event):
    topic = OUTREACH_ACTIVITY.name

    case_id: uuid.UUID
    program_id: str
    occurred_at: AwareDatetime


class TaskAssigned(_ActivityEvent):
    event_type = "TaskAssigned"

    task_id: uuid.UUID
    assignee_id: str


class AttemptLogged(_ActivityEvent):
    event_type = "AttemptLogged"

    attempt_id: uuid.UUID
    task_id: uuid.UUID
    channel: Channel
    outcome: AttemptOutcome


class ContactMade(_ActivityEvent):
    event_type = "ContactMade"

    task_id: uuid.UUID | None = None
    channel: Channel


class ServiceItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["naloxone_kit", "fentanyl_test_strips", "syringe_services", "education"]
    count: int = Field(default=1, ge=1)


class ServicesProvided(_ActivityEvent):
    event_type = "ServicesProvided"

    items: list[ServiceItem]


class ReferralMade(_ActivityEvent):
    event_type = "ReferralMade"

    referral_id: uuid.UUID
    kind: ReferralKind
    status: ReferralStatus = "offered"
    warm_handoff: bool = False


class ReferralStatusChanged(_ActivityEvent):
    event_type = "ReferralStatusChanged"

    referral_id: uuid.UUID
    status: ReferralStatus


class VisitScheduled(_ActivityEvent):
    event_type = "VisitScheduled"

    visit_id: uuid.UUID
    task_id: uuid.UUID | None = None
    window_start: AwareDatetime
    window_end: AwareDatetime
    with_deputy: bool = False


class VisitCompleted(_ActivityEvent):
    event_type = "VisitCompleted"

    visit_id: uuid.UUID
    reached: bool


class OutreachDeclined(_ActivityEvent):
    event_type = "OutreachDeclined"


class DoNotContactRequested(_ActivityEvent):
    event_type = "DoNotContactRequested"


class OutreachConcluded(_ActivityEvent):
    event_type = "OutreachConcluded"

    reason: ConclusionReason


class HotSpotConcluded(Event):
    """A team lead concluded a hot-spot task (the scheduler's ``HotSpotTaskScheduled``): what
    the team distributed in the county and how many people it warned and checked on. No
    person and no note travel (a lead's note stays sealed in outreach). Keyed by
    ``task_id``; reporting counts the kits and strips in the services metrics."""

    event_type = "HotSpotConcluded"
    topic = OUTREACH_ACTIVITY.name

    task_id: uuid.UUID
    program_id: str
    county: str = Field(max_length=64)
    state: str | None = Field(default=None, max_length=16)
    naloxone_kits: int = Field(ge=0, description="Naloxone kits handed out.")
    test_strips: int = Field(ge=0, description="Fentanyl test strips handed out.")
    warnings_given: int = Field(
        ge=0, description="People who use drugs the team warned about the spike."
    )
    contacts_checked: int = Field(
        ge=0, description="Recent contacts in the county the team checked on."
    )
    concluded_at: AwareDatetime


class CommunityReferralReceivedV1(Event):
    """A team member entered a referral from the community: the person themself, family or a
    friend, a syringe services program, a jail at release, another community partner.

    It reaches the scheduler like any report (linking, windows, do-not-contact, repeat
    overdoses) and reporting counts it by its referrer. Keyed by the person's first blind key,
    as intake keys ``OverdoseReported``; it belongs to no case yet.
    """

    event_type = "CommunityReferralReceived"
    topic = OUTREACH_ACTIVITY.name

    referral_id: uuid.UUID = Field(description="Also the report id the scheduler links.")
    program_id: str
    referrer: Referrer
    identity: SealedToken | None = Field(
        default=None, description="Sealed JSON: names, date of birth, phones, address."
    )
    blind_keys: BlindKeys = BlindKeys()
    deidentified: bool = Field(description="No name and no phone: counted, never assigned.")
    location: Location = Location()
    consent: Consent
    overdose: bool = Field(description="Whether the referral is about an overdose.")
    incident_at: AwareDatetime | None = Field(
        default=None, description="When the overdose happened, if there was one and it is known."
    )
    received_at: AwareDatetime
    entered_by: str = Field(description="The team member who entered it.")


class CommunityReferralReceived(CommunityReferralReceivedV1, BlindKeyVersions):
    """v2: the version of the blind keys, and the same keys under the other versions during a
    blind-index key rotation (``BlindKeyVersions``)."""

    event_type = "CommunityReferralReceived"
    version = 2
