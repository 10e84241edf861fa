"""Events outreach publishes on port.outreach.activity.v1, keyed by case.

Free-text notes never travel in events: they may hold PHI and stay in outreach's own store.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.envelope import Event
from shared.topics import OUTREACH_ACTIVITY

__all__ = [
    "AttemptLogged",
    "ContactMade",
    "DoNotContactRequested",
    "OutreachConcluded",
    "OutreachDeclined",
    "ReferralMade",
    "ReferralStatusChanged",
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
