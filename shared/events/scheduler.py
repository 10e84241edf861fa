"""Events the scheduler publishes on port.scheduler.cases.v1, keyed by case.

A type's newer version extends its older one (``XV1``) with defaulted fields; readers get the
newest (see ``shared.envelope``).
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.envelope import Event
from shared.topics import SCHEDULER_CASES

__all__ = [
    "CaseClosed",
    "CaseOpened",
    "DeathRecorded",
    "EpisodeOpened",
    "EpisodeOpenedV1",
    "HotSpotTaskScheduled",
    "PersonsMerged",
    "QuietHours",
    "ReportLinked",
    "ReportLinkedV1",
    "TaskCancelled",
    "TaskCompleted",
    "TaskDue",
    "TaskExpired",
    "TaskKind",
    "TaskOverdue",
    "TaskScheduled",
    "TaskScheduledV1",
    "TaskScheduledV2",
]


class TaskKind(StrEnum):
    REMOTE_CONTACT = "remote_contact"
    IN_PERSON_VISIT = "in_person_visit"
    FOLLOW_UP = "follow_up"
    FAMILY_SUPPORT = "family_support"
    """After a fatal overdose, where the program offers it: support for the family or household.
    It never names the person who died as someone to contact."""


class _CaseEvent(Event):
    topic = SCHEDULER_CASES.name

    case_id: uuid.UUID
    program_id: str


class CaseOpened(_CaseEvent):
    event_type = "CaseOpened"

    person_id: uuid.UUID
    opened_at: AwareDatetime


class EpisodeOpenedV1(_CaseEvent):
    event_type = "EpisodeOpened"

    episode_id: uuid.UUID
    person_id: uuid.UUID
    incident_at: AwareDatetime
    repeat: bool = Field(description="A repeat overdose while the case was open.")


class EpisodeOpened(EpisodeOpenedV1):
    """v2: why the episode's times are what they are (late reports, future incident times)."""

    event_type = "EpisodeOpened"
    version = 2

    received_at: AwareDatetime | None = Field(
        default=None, description="When intake received the report that opened the episode."
    )
    windows_from: AwareDatetime | None = Field(
        default=None,
        description="The time the episode's windows count from: the incident, or the receipt "
        "of a late report.",
    )
    late: bool = Field(
        default=False,
        description="Received after its remote window would have closed: windows count from "
        "its receipt.",
    )
    reasons: list[str] = Field(default_factory=list, description="The plan's reason codes.")
    source_kind: str | None = Field(
        default=None,
        description="Who reported the report that opened the episode: ems, ed, "
        "law_enforcement or community.",
    )
    fatal: bool = Field(default=False, description="The person died of this overdose.")
    overdose: bool = Field(
        default=True,
        description="False for a community referral that reported no overdose (a jail release, "
        "say): counted as a referral, not as an overdose.",
    )
    source_org: str | None = Field(
        default=None,
        description="The partner whose report opened the episode (a community referral: the "
        "referrer kind).",
    )
    county: str | None = Field(default=None, description="Where, as the report gave it.")
    state: str | None = None


class ReportLinkedV1(_CaseEvent):
    event_type = "ReportLinked"

    report_id: uuid.UUID
    episode_id: uuid.UUID
    match: Literal["exact", "possible", "new_person"]


class ReportLinked(ReportLinkedV1):
    """v2: who reported, when the report arrived, and whether that was after its remote window
    closed."""

    event_type = "ReportLinked"
    version = 2

    source_kind: str | None = Field(
        default=None, description="ems, ed, law_enforcement or community."
    )
    source_org: str | None = Field(default=None, description="The partner that sent it.")
    incident_at: AwareDatetime | None = Field(
        default=None, description="The overdose time this report gave."
    )
    received_at: AwareDatetime | None = None
    late: bool = Field(
        default=False,
        description="Received after its remote window (counted from the incident) would have "
        "closed.",
    )


class TaskScheduledV1(_CaseEvent):
    event_type = "TaskScheduled"

    task_id: uuid.UUID
    episode_id: uuid.UUID
    kind: TaskKind
    priority: int
    window_opens_at: AwareDatetime
    due_at: AwareDatetime
    expires_at: AwareDatetime
    policy_version: str
    deputy: Literal["never", "always", "on_request"] = Field(
        default="never",
        description="In-person visits: whether a deputy goes (always), may be asked for "
        "(on_request) or never goes. The peer always leads; a deputy stays in the vehicle.",
    )


class TaskScheduledV2(TaskScheduledV1):
    """v2: a task of a late report is marked, its windows counted from the receipt."""

    event_type = "TaskScheduled"
    version = 2

    late: bool = Field(
        default=False,
        description="Planned for a report received after its remote window would have "
        "closed; its times count from the receipt.",
    )


class QuietHours(BaseModel):
    """A program's quiet hours, as its policy set them when a task was planned."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: str = Field(
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
        description="HH:MM on the program's wall clock, inclusive.",
    )
    end: str = Field(
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
        description="HH:MM, exclusive; before start when they cross midnight.",
    )
    timezone: str = Field(description="The program's IANA time zone.")
    channels: list[Literal["phone", "text", "in_person"]] = Field(
        description="The channels they apply to."
    )


class TaskScheduled(TaskScheduledV2):
    """v3: the program's quiet hours, so that a text sent by hand can respect them."""

    event_type = "TaskScheduled"
    version = 3

    quiet_hours: QuietHours | None = Field(
        default=None,
        description="The program's quiet hours when the task was planned (none: not known, "
        "or the policy has none).",
    )


class _TaskTimerEvent(_CaseEvent):
    task_id: uuid.UUID
    fired_at: AwareDatetime
    late: bool = Field(default=False, description="Fired after downtime, past its due time.")


class TaskDue(_TaskTimerEvent):
    event_type = "TaskDue"


class TaskOverdue(_TaskTimerEvent):
    event_type = "TaskOverdue"


class TaskExpired(_TaskTimerEvent):
    event_type = "TaskExpired"


class TaskCompleted(_CaseEvent):
    event_type = "TaskCompleted"

    task_id: uuid.UUID
    outcome: str
    completed_at: AwareDatetime


class TaskCancelled(_CaseEvent):
    event_type = "TaskCancelled"

    task_id: uuid.UUID
    reason: str
    cancelled_at: AwareDatetime


class DeathRecorded(_CaseEvent):
    """A report says the person died. Every open task of the case was cancelled
    (``person_deceased``) in the same commit; no task to reach the person is ever planned
    again. Outreach shows the case as deceased and tells the peers who held its tasks."""

    event_type = "DeathRecorded"

    person_id: uuid.UUID
    episode_id: uuid.UUID
    died_at: AwareDatetime | None = None
    recorded_at: AwareDatetime
    source_kind: str = Field(description="Who said so: ems, ed or law_enforcement.")


class PersonsMerged(Event):
    """A team lead confirmed that two people the scheduler kept apart are one (a possible
    match). The person who stays is ``person_id``; ``merged_person_id`` is no more, and every
    case of theirs is the person's now (``moved_case_ids``). Where both had a case open, the
    merged person's (``folded_case_id``) was closed as a duplicate of ``case_id``, its episodes,
    reports and tasks moved to it. What either person asked for survives: a do-not-contact
    request (final), a decline of the open case, a death. Keyed by ``case_id`` (else the
    person). No identity travels: ids, program and time only."""

    event_type = "PersonsMerged"
    topic = SCHEDULER_CASES.name

    program_id: str
    match_id: uuid.UUID = Field(description="The possible match the lead confirmed.")
    person_id: uuid.UUID = Field(description="The person who stays.")
    merged_person_id: uuid.UUID = Field(description="The person merged into them.")
    case_id: uuid.UUID | None = Field(
        default=None, description="The person's open case after the merge, if any."
    )
    folded_case_ids: list[uuid.UUID] = Field(
        default_factory=list,
        description="Open cases closed as duplicates of case_id (their rows moved to it).",
    )
    moved_case_ids: list[uuid.UUID] = Field(
        default_factory=list, description="The merged person's cases, now the person's."
    )
    do_not_contact: bool = Field(description="Either person asked not to be contacted.")
    declined: bool = Field(description="The open case is declined (by either person).")
    deceased_at: AwareDatetime | None = Field(
        default=None, description="When a death of either person was recorded, if one was."
    )
    merged_at: AwareDatetime


class CaseClosed(_CaseEvent):
    event_type = "CaseClosed"

    reason: str
    closed_at: AwareDatetime


class HotSpotTaskScheduled(Event):
    """Reporting saw a spike in a county's overdoses (``SpikeDetected``) and the program's
    policy (``[hot_spot]``) asks the team to go there: naloxone and test-strip distribution,
    warnings to people who use drugs, checks on recent contacts in that county. The task
    names no person and belongs to no case: it carries the county, the alerts behind it and
    its time box. Keyed by ``task_id``.

    Published when the task opens, and again (same ``task_id``, ``alert_ids`` grown, a later
    ``due_at``) when a later alert for the same county is attached to the open task. Outreach
    shows it in the queue; a team lead concludes it (``HotSpotConcluded``)."""

    event_type = "HotSpotTaskScheduled"
    topic = SCHEDULER_CASES.name

    task_id: uuid.UUID
    program_id: str
    kind: Literal["hot_spot"] = "hot_spot"
    county: str = Field(max_length=64)
    state: str | None = Field(default=None, max_length=16)
    alert_ids: list[uuid.UUID] = Field(
        min_length=1, description="Reporting's alerts behind the task, first to latest."
    )
    detector: Literal["ewma", "odmap"] = Field(description="The latest alert's detector.")
    level: Literal["warning", "alert"] = Field(description="The latest alert's level.")
    observed: float = Field(ge=0, description="Overdoses in the latest alert's window.")
    expected: float | None = Field(
        default=None, description="EWMA: the baseline's mean per day; null for ODMAP."
    )
    window_start: AwareDatetime = Field(description="The latest alert's window.")
    window_end: AwareDatetime
    priority: int
    opened_at: AwareDatetime
    due_at: AwareDatetime = Field(
        description="The time box: [hot_spot] due_hours after the latest attached alert."
    )
    policy_version: str
