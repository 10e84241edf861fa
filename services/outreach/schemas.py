"""Request and response bodies of the team API.

The deputy's models are separate on purpose: they hold only a visit's time window, meeting
place and the peer's contact, so nothing clinical can reach a deputy by accident.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Literal

from fastapi import Query
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
)

from shared.edge import Body, Instant, Page, PageQuery
from shared.events.outreach import (
    AttemptOutcome,
    Channel,
    ConclusionReason,
    ReferralKind,
    ReferralStatus,
    Referrer,
    ServiceItem,
)

__all__ = [
    "AssignBody",
    "AttemptBody",
    "AttemptView",
    "AuditEntry",
    "AuditFilter",
    "AuditQuery",
    "CaseView",
    "CommunityPerson",
    "CommunityReferralBody",
    "CommunityReferralView",
    "ConclusionBody",
    "ContactBody",
    "ContactView",
    "DeputyPeer",
    "DeputyStatusBody",
    "DeputyVisit",
    "EpisodeView",
    "HotSpotConclusionBody",
    "HotSpotView",
    "NoteBody",
    "NoteView",
    "NoticeView",
    "OverdoseView",
    "Page",
    "PageQuery",
    "Paging",
    "PersonView",
    "QueueFilter",
    "QueuePage",
    "QueueQuery",
    "ReferralBody",
    "ReferralUpdate",
    "ReferralView",
    "ServiceItemBody",
    "ServicesBody",
    "ServicesView",
    "TaskKind",
    "TaskView",
    "TeamMemberBody",
    "TeamMemberView",
    "TextBody",
    "TextView",
    "VisitBody",
    "VisitFilter",
    "VisitOutcomeBody",
    "VisitQuery",
    "VisitUpdate",
    "VisitView",
]

TaskKind = Literal["remote_contact", "in_person_visit", "follow_up", "family_support"]
SourceKind = Literal["ems", "ed", "law_enforcement", "community"]
FAMILY_SUPPORT_GUIDANCE = (
    "Support for the family or household after a death: grief support, naloxone for the home. "
    "Do not ask for, or address anything to, the person who died."
)

_NOTES = Field(
    default=None,
    max_length=4000,
    description="Free text for the team. Stored sealed; never sent in events.",
)


_Body = Body

MemberId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\w.@|:+-]+$")]
"""A team member's id: their token's subject."""

MAX_SERVICE_COUNT = 1000
"""The most of one kind of service recorded at once (a box of test strips is 100)."""


def _date_text(value: object) -> object:
    if isinstance(value, int | float):
        raise ValueError("a date is ISO 8601 text (YYYY-MM-DD), not a number")
    return value


def _plausible_birth(value: date) -> date:
    if not date(1900, 1, 1) <= value <= date(2100, 1, 1):
        raise ValueError("a date of birth from 1900 on is expected")
    return value


BirthDate = Annotated[date, BeforeValidator(_date_text), AfterValidator(_plausible_birth)]


class PersonView(BaseModel):
    """How to reach the person: no date of birth, record numbers or clinical data."""

    name: str | None
    phones: list[str]
    address: str | None
    language: str | None


class OverdoseView(BaseModel):
    incident_at: datetime | None
    address: str | None = Field(description="Where it happened (street, city), if known.")
    county: str | None
    state: str | None
    source_kind: SourceKind | None
    received_at: datetime | None = Field(
        default=None, description="When the first report of this overdose reached PORTline."
    )


class AttemptView(BaseModel):
    id: uuid.UUID
    task_id: uuid.UUID
    channel: Channel
    outcome: AttemptOutcome
    occurred_at: datetime
    by: str
    notes: str | None


class NoteView(BaseModel):
    at: datetime
    by: str
    text: str


class TaskView(BaseModel):
    id: uuid.UUID
    case_id: uuid.UUID
    kind: TaskKind = Field(
        description="family_support (a program's option after a death) is for the family or "
        "household: its person shows no name or phone, only the household's address."
    )
    status: Literal["open", "completed", "cancelled", "expired"]
    stage: Literal["scheduled", "due", "overdue"] = Field(
        description="scheduled: the window is not open yet; due: act now; overdue: past due_at."
    )
    priority: int = Field(description="Higher is more urgent (a repeat overdose raises it).")
    window_opens_at: datetime
    due_at: datetime
    expires_at: datetime
    deputy: Literal["never", "always", "on_request"]
    late: bool = Field(
        default=False,
        description="The report reached the program after this remote window would have "
        "closed; its times count from the report's receipt, not the overdose.",
    )
    assignee_id: str | None
    guidance: str | None = Field(
        default=None, description="What the team must keep in mind for this kind of task."
    )
    version: int = Field(description="Send as If-Match (the ETag) when you change this task.")
    person: PersonView
    overdose: OverdoseView
    attempts: list[AttemptView]
    notes: list[NoteView]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0f8fad5b-d9cb-469f-a165-70867728950e",
                    "case_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
                    "kind": "remote_contact",
                    "status": "open",
                    "stage": "due",
                    "priority": 2,
                    "window_opens_at": "2026-11-20T03:10:00Z",
                    "due_at": "2026-11-21T03:10:00Z",
                    "expires_at": "2026-11-23T03:10:00Z",
                    "deputy": "never",
                    "late": False,
                    "assignee_id": "peer-ana",
                    "version": 3,
                    "person": {
                        "name": "Jordan Lee",
                        "phones": ["+13365550100"],
                        "address": "12 Elm St, Greensboro, 27401",
                        "language": "en",
                    },
                    "overdose": {
                        "incident_at": "2026-11-20T03:10:00Z",
                        "address": "400 Market St, Greensboro",
                        "county": "Guilford",
                        "state": "NC",
                        "source_kind": "ems",
                        "received_at": "2026-11-20T04:02:00Z",
                    },
                    "attempts": [],
                    "notes": [],
                }
            ]
        }
    )


class AssignBody(_Body):
    assignee_id: MemberId = Field(examples=["peer-ana"])


class AttemptBody(_Body):
    channel: Channel
    outcome: AttemptOutcome
    occurred_at: Instant | None = Field(
        default=None,
        description="Default: now. Not before the overdose, not in the future (5 min of clock "
        "skew are allowed).",
    )
    notes: str | None = _NOTES

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"channel": "phone", "outcome": "no_answer"}]},
    )


class ContactBody(_Body):
    channel: Channel
    task_id: uuid.UUID | None = None
    occurred_at: Instant | None = Field(
        default=None, description="Default: now. Not before the overdose, not in the future."
    )
    notes: str | None = _NOTES


class ContactView(BaseModel):
    id: uuid.UUID
    channel: Channel
    task_id: uuid.UUID | None
    occurred_at: datetime
    by: str
    notes: str | None


class ServiceItemBody(_Body):
    kind: Literal["naloxone_kit", "fentanyl_test_strips", "syringe_services", "education"]
    count: StrictInt = Field(default=1, ge=1, le=MAX_SERVICE_COUNT)


class ServicesBody(_Body):
    items: list[ServiceItemBody] = Field(min_length=1, max_length=10)
    occurred_at: Instant | None = Field(
        default=None, description="Default: now. Not before the overdose, not in the future."
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"kind": "naloxone_kit", "count": 2},
                        {"kind": "fentanyl_test_strips", "count": 10},
                    ]
                }
            ]
        },
    )


class ServicesView(BaseModel):
    items: list[ServiceItem]
    occurred_at: datetime
    by: str


class ReferralBody(_Body):
    kind: ReferralKind
    status: Literal["offered", "accepted"] = "offered"
    warm_handoff: StrictBool = Field(
        default=False, description="The peer introduced the person to the provider in person."
    )
    provider: str | None = Field(default=None, max_length=200, description="Stored sealed.")
    notes: str | None = _NOTES

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"kind": "moud_buprenorphine", "status": "accepted", "warm_handoff": True}]
        },
    )


class ReferralUpdate(_Body):
    status: ReferralStatus
    appointment_at: Instant | None = Field(
        default=None, description="Required when the status is 'appointment'."
    )
    notes: str | None = _NOTES


class ReferralView(BaseModel):
    id: uuid.UUID
    case_id: uuid.UUID
    kind: ReferralKind
    status: ReferralStatus
    warm_handoff: bool
    provider: str | None
    appointment_at: datetime | None
    notes: str | None
    version: int
    created_at: datetime
    updated_at: datetime


class NoteBody(_Body):
    notes: str | None = _NOTES


class ConclusionBody(_Body):
    reason: ConclusionReason
    notes: str | None = _NOTES


class EpisodeView(BaseModel):
    id: uuid.UUID
    incident_at: datetime
    repeat: bool
    fatal: bool = Field(default=False, description="The person died of this overdose.")
    source_kind: SourceKind | None = None
    received_at: datetime | None = None
    late: bool = Field(
        default=False, description="Reported after its remote window would have closed."
    )


class VisitBody(_Body):
    task_id: uuid.UUID = Field(description="An open in_person_visit task.")
    window_start: Instant = Field(
        description="From a day ago to 60 days ahead; the window is at most 8 hours and may "
        "not overlap another visit of the person, the peer or the deputy."
    )
    window_end: Instant
    meeting_place: str = Field(
        min_length=1, max_length=300, description="Where the peer meets the person. Sealed."
    )
    peer_id: MemberId | None = Field(default=None, description="Default: you (a peer).")
    deputy: StrictBool | None = Field(
        default=None,
        description="Ask for a deputy where the program allows it on request; ignored where "
        "the policy always sends one; refused where it never does.",
    )
    deputy_id: MemberId | None = None


class VisitUpdate(_Body):
    window_start: Instant | None = None
    window_end: Instant | None = None
    meeting_place: str | None = Field(default=None, min_length=1, max_length=300)
    peer_id: MemberId | None = None
    deputy_id: MemberId | None = None


class VisitOutcomeBody(_Body):
    outcome: Literal["reached", "not_found", "declined", "unsafe"]
    notes: str | None = _NOTES


class VisitView(BaseModel):
    id: uuid.UUID
    case_id: uuid.UUID
    task_id: uuid.UUID
    window_start: datetime
    window_end: datetime
    meeting_place: str
    peer_id: str
    with_deputy: bool
    deputy_id: str | None
    status: Literal["scheduled", "completed", "cancelled"]
    outcome: str | None
    deputy_status: Literal["arrived", "departed"] | None
    safety_concern: bool
    version: int


class CaseView(BaseModel):
    id: uuid.UUID
    status: Literal["open", "closed"]
    close_reason: str | None
    do_not_contact: bool
    declined: bool
    deceased: bool = Field(
        default=False,
        description="A report said the person died: every task to reach them was cancelled and "
        "none will be planned again. Conclude the case as `deceased` when the team is done.",
    )
    version: int
    person: PersonView
    episodes: list[EpisodeView]
    tasks: list[TaskView]
    contacts: list[ContactView]
    services: list[ServicesView]
    referrals: list[ReferralView]
    visits: list[VisitView]


class DeputyPeer(BaseModel):
    name: str
    phone: str | None


class DeputyVisit(BaseModel):
    """All a deputy sees: when, where, and whom to call. Nothing clinical, no names of the
    person, no notes or history."""

    id: uuid.UUID
    window_start: datetime
    window_end: datetime
    meeting_place: str
    peer: DeputyPeer
    status: Literal["scheduled", "completed", "cancelled"]
    deputy_status: Literal["arrived", "departed"] | None
    safety_concern: bool


class DeputyStatusBody(_Body):
    status: Literal["arrived", "departed", "safety_concern"]
    note: str | None = Field(
        default=None, max_length=1000, description="For a safety concern: what happened."
    )


class TeamMemberBody(_Body):
    display_name: str = Field(min_length=1, max_length=128, examples=["Ana R."])
    phone: str | None = Field(
        default=None, max_length=32, description="Work phone (shown to the deputy on visits)."
    )
    active: StrictBool = True


class TeamMemberView(BaseModel):
    id: str
    display_name: str
    phone: str | None
    active: bool
    version: int


class TextBody(_Body):
    template: str = Field(min_length=1, max_length=64, examples=["first_contact"])
    override_quiet_hours: StrictBool = Field(
        default=False,
        description="Send even in the program's quiet hours, because the person asked to hear "
        "now. Without it, a text in quiet hours is refused (409 quiet_hours, with when they "
        "end). Recorded with the message.",
    )


class TextView(BaseModel):
    id: uuid.UUID
    template: str
    status: str
    attempt_id: uuid.UUID


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor_id: str
    role: str
    action: Literal["read", "create", "update"]
    resource: str
    resource_id: str | None
    case_id: uuid.UUID | None
    purpose: str


class NoticeView(BaseModel):
    """Something a team member must be told in their queue: the person of a task they held
    has died (``person_deceased``). Nothing about the person is in it; open the case to see."""

    id: uuid.UUID
    kind: Literal["person_deceased"]
    case_id: uuid.UUID
    task_id: uuid.UUID | None
    created_at: datetime
    message: str


HOT_SPOT_GUIDANCE = (
    "Overdoses spiked in this county. Go where the spike is: hand out naloxone and fentanyl "
    "test strips, warn people who use drugs, and check on the program's recent contacts in "
    "the county. No one person is named: this task is for the county."
)

MAX_HOT_SPOT_COUNT = 100_000
"""The most of one thing a hot-spot conclusion records (kits, strips, people)."""


class HotSpotView(BaseModel):
    """A hot-spot task: outreach where a county's overdoses spiked (reporting's alert). It
    names no person and has no case."""

    id: uuid.UUID
    kind: Literal["hot_spot"] = "hot_spot"
    status: Literal["open", "concluded"]
    county: str
    state: str | None
    alert_ids: list[uuid.UUID] = Field(
        description="Reporting's alerts behind the task (GET /v1/alerts on reporting), first "
        "to latest: a later alert for the county while the task is open is attached to it."
    )
    detector: Literal["ewma", "odmap"] = Field(description="The latest alert's detector.")
    level: Literal["warning", "alert"]
    observed: float = Field(description="Overdoses in the latest alert's window.")
    expected: float | None = Field(description="EWMA: the baseline's mean per day.")
    window_start: datetime
    window_end: datetime
    priority: int
    opened_at: datetime
    due_at: datetime = Field(description="The policy's time box ([hot_spot] due_hours).")
    guidance: str = HOT_SPOT_GUIDANCE
    naloxone_kits: int | None = Field(description="Concluded: naloxone kits handed out.")
    test_strips: int | None = Field(description="Concluded: fentanyl test strips handed out.")
    warnings_given: int | None
    contacts_checked: int | None
    note: str | None = Field(description="The concluding lead's note (stored sealed).")
    concluded_by: str | None
    concluded_at: datetime | None
    version: int


_HotSpotCount = Annotated[StrictInt, Field(ge=0, le=MAX_HOT_SPOT_COUNT)]


class HotSpotConclusionBody(_Body):
    """What the team did where the spike was. Counts are whole numbers from 0."""

    naloxone_kits: _HotSpotCount = Field(description="Naloxone kits handed out.")
    test_strips: _HotSpotCount = Field(description="Fentanyl test strips handed out.")
    warnings_given: _HotSpotCount = Field(
        description="People who use drugs the team warned about the spike."
    )
    contacts_checked: _HotSpotCount = Field(
        description="Recent contacts in the county the team checked on."
    )
    note: str | None = Field(
        default=None,
        max_length=4000,
        description="Free text for the team. Stored sealed; never sent in events. Name no one.",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "naloxone_kits": 40,
                    "test_strips": 200,
                    "warnings_given": 65,
                    "contacts_checked": 12,
                }
            ]
        },
    )


class QueuePage(Page[TaskView]):
    notices: list[NoticeView] = Field(
        default_factory=list,
        description="Your notices not yet dismissed (POST /v1/notices/{id}/dismiss), newest "
        "first: a task you held was cancelled because its person died.",
    )
    hot_spots: list[HotSpotView] = Field(
        default_factory=list,
        description="The program's open hot-spot tasks (kind `hot_spot`), soonest due first: "
        "go to the county where overdoses spiked. They name no person; a team lead concludes "
        "them (POST /v1/hot-spots/{id}/conclude).",
    )


class CommunityPerson(_Body):
    """Who was referred: only what the person or the referrer gave. Stored sealed."""

    family_name: str | None = Field(default=None, min_length=1, max_length=100)
    given_name: str | None = Field(default=None, min_length=1, max_length=100)
    date_of_birth: BirthDate | None = None
    phones: list[Annotated[str, Field(min_length=1, max_length=32)]] = Field(
        default_factory=list, max_length=4
    )
    street: str | None = Field(default=None, max_length=200)
    city: str | None = Field(default=None, max_length=100)
    postal_code: str | None = Field(default=None, max_length=16)
    county: str | None = Field(default=None, max_length=64)
    state: str | None = Field(default=None, max_length=8)
    language: str | None = Field(default=None, max_length=16)


class CommunityReferralBody(_Body):
    referrer: Referrer = Field(
        description="Who referred: the person themself, family or a friend, a syringe services "
        "program, a jail at release, another community partner, or other."
    )
    person: CommunityPerson
    consent: Literal["accepted", "declined", "unknown"] = Field(
        description="The person's answer to a peer following up, as they gave it. `declined` "
        "is recorded and counted, and plans no outreach."
    )
    overdose: StrictBool = Field(description="Whether the referral is about an overdose.")
    overdose_at: Instant | None = Field(
        default=None,
        description="When the overdose happened, if there was one and it is known. Windows "
        "count from it as for any report; without it, from now.",
    )
    notes: str | None = _NOTES

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "referrer": "syringe_services",
                    "person": {
                        "family_name": "Rivera",
                        "given_name": "Jordan",
                        "phones": ["336-555-0188"],
                        "county": "Guilford",
                        "state": "NC",
                    },
                    "consent": "accepted",
                    "overdose": True,
                    "notes": "Met at the Tuesday outreach van; prefers texts.",
                }
            ]
        },
    )


class CommunityReferralView(BaseModel):
    id: uuid.UUID = Field(description="The referral; the scheduler links it as a report.")
    referrer: Referrer
    consent: Literal["accepted", "declined", "unknown"]
    overdose: bool
    created_at: datetime
    created_by: str


class QueueQuery(PageQuery):
    """Which tasks the queue shows."""

    status: Literal["open", "completed", "cancelled", "expired"] = "open"
    kind: TaskKind | None = None
    stage: Literal["scheduled", "due", "overdue"] | None = None
    assignee: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[\w.@-]+$",
        description="'me', 'unassigned', or a team member id.",
    )
    due_before: Instant | None = None
    report_id: uuid.UUID | None = Field(
        default=None,
        description="Only the tasks of the episode this report belongs to: the `report_id` "
        "intake answered (EMS, ED, law enforcement) or a community referral's id. The report "
        "must have reached the scheduler and been linked first (usually within seconds).",
    )


class VisitQuery(PageQuery):
    status: Literal["scheduled", "completed", "cancelled"] = "scheduled"
    mine: bool = Field(default=False, description="Only visits I lead.")


class AuditQuery(PageQuery):
    limit: int = Field(default=100, ge=1, le=500)
    actor_id: str | None = Field(default=None, max_length=128, pattern=r"^[\w.@|:+-]+$")
    case_id: uuid.UUID | None = None
    resource: str | None = Field(default=None, max_length=32, pattern=r"^[a-z_]+$")
    since: Instant | None = None
    until: Instant | None = None


Paging = Annotated[PageQuery, Query()]
"""A list's paging, from the query string."""
QueueFilter = Annotated[QueueQuery, Query()]
VisitFilter = Annotated[VisitQuery, Query()]
AuditFilter = Annotated[AuditQuery, Query()]
