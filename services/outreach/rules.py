"""The team's rules, pure: no I/O, no clock (times are passed in).

Each check raises RuleViolation with a stable code; the API turns it into an HTTP error.

    RuleViolation   - the request is well formed but the rules do not allow it (status 409
                      unless it says otherwise)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.events.outreach import AttemptOutcome, Channel, ReferralStatus
from shared.events.scheduler import QuietHours

__all__ = [
    "ATTEMPT_OUTCOMES",
    "CLOCK_SKEW",
    "MAX_VISIT_WINDOW",
    "REFERRAL_TRANSITIONS",
    "VISIT_HORIZON",
    "CaseState",
    "PersonCard",
    "RuleViolation",
    "TaskState",
    "check_assign",
    "check_attempt",
    "check_case_workable",
    "check_may_work",
    "check_occurred_at",
    "check_quiet_hours",
    "check_referral_transition",
    "check_task_workable",
    "check_visit_timing",
    "check_visit_window",
    "deputy_for_visit",
    "overlapping_visit",
    "person_card",
    "quiet_until",
]

ATTEMPT_OUTCOMES: dict[Channel, frozenset[AttemptOutcome]] = {
    "phone": frozenset(
        {"reached", "no_answer", "left_message", "wrong_number", "declined", "unsafe"}
    ),
    "text": frozenset({"reached", "no_answer", "left_message", "wrong_number", "declined"}),
    "in_person": frozenset({"reached", "not_found", "declined", "unsafe"}),
    "family_friend": frozenset(
        {"reached", "no_answer", "left_message", "wrong_number", "declined", "unsafe", "not_found"}
    ),
}
"""Which outcomes make sense for which channel (a text is never "not found")."""

REFERRAL_TRANSITIONS: dict[ReferralStatus, frozenset[ReferralStatus]] = {
    "offered": frozenset({"accepted", "declined", "lost"}),
    "accepted": frozenset({"appointment", "care_started", "declined", "lost"}),
    "appointment": frozenset({"appointment", "care_started", "declined", "lost"}),
    "care_started": frozenset(),
    "declined": frozenset(),
    "lost": frozenset(),
}
"""offered → accepted → appointment → care started; declined and lost from any open status.
An appointment may be rescheduled (appointment → appointment). Final statuses stay final."""

MAX_VISIT_WINDOW = timedelta(hours=8)
VISIT_HORIZON = timedelta(days=60)
"""How far ahead a visit may be planned; a window may also have begun up to a day ago (a
visit is recorded the day it happened)."""
CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future a reported time may be: a phone's clock runs a little ahead."""


class RuleViolation(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 409,
        details: list[Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details or []


@dataclass(frozen=True, slots=True)
class CaseState:
    status: str
    do_not_contact: bool
    declined: bool


@dataclass(frozen=True, slots=True)
class TaskState:
    status: str
    kind: str
    assignee_id: str | None
    expires_at: datetime
    deputy: str


def check_case_workable(case: CaseState, *, contacting: bool = True) -> None:
    """Work on a case needs it open; reaching out also needs no decline or do-not-contact."""
    if case.do_not_contact:
        raise RuleViolation(
            "do_not_contact", "The person asked not to be contacted; that request is final."
        )
    if case.status == "closed":
        raise RuleViolation("case_closed", "The case is closed.")
    if contacting and case.declined:
        raise RuleViolation("outreach_declined", "The person declined outreach.")


def check_task_workable(task: TaskState) -> None:
    if task.status != "open":
        raise RuleViolation("task_closed", f"The task is {task.status}; it takes no more work.")


def check_may_work(task: TaskState, *, actor: str, actor_is_lead: bool) -> None:
    """Peers work unassigned tasks and their own; leads work any."""
    if task.assignee_id not in (None, actor) and not actor_is_lead:
        raise RuleViolation("assigned_to_other", "This task is assigned to someone else.")


def check_attempt(channel: Channel, outcome: AttemptOutcome) -> None:
    if outcome not in ATTEMPT_OUTCOMES[channel]:
        allowed = ", ".join(sorted(ATTEMPT_OUTCOMES[channel]))
        raise RuleViolation(
            "invalid_outcome",
            f"A {channel} attempt cannot end '{outcome}'; use one of: {allowed}.",
            status=422,
        )


def check_assign(
    task: TaskState,
    *,
    actor: str,
    actor_is_lead: bool,
    claim: bool,
) -> None:
    """Claims take unassigned tasks; a handover passes one's own task on; leads assign any."""
    check_task_workable(task)
    if actor_is_lead:
        return
    if claim:
        if task.assignee_id not in (None, actor):
            raise RuleViolation("already_assigned", "Someone else has this task.")
        return
    if task.assignee_id != actor:
        raise RuleViolation(
            "not_your_task", "Only the task's assignee or a team lead may hand it over.", status=403
        )


def check_referral_transition(current: ReferralStatus, new: ReferralStatus) -> None:
    if new not in REFERRAL_TRANSITIONS[current]:
        allowed = ", ".join(sorted(REFERRAL_TRANSITIONS[current])) or "none (final)"
        raise RuleViolation(
            "invalid_transition",
            f"A referral cannot go from {current} to {new}; allowed: {allowed}.",
        )


def check_visit_window(start: datetime, end: datetime) -> None:
    if end <= start:
        raise RuleViolation("invalid_window", "window_end must be after window_start.", status=422)
    if end - start > MAX_VISIT_WINDOW:
        raise RuleViolation(
            "invalid_window",
            f"A visit window is at most {MAX_VISIT_WINDOW.total_seconds() / 3600:g} hours.",
            status=422,
        )


def check_visit_timing(start: datetime, end: datetime, *, now: datetime) -> None:
    """A visit is planned from a day ago (recorded the day it happened) to VISIT_HORIZON."""
    if end < now - timedelta(days=1):
        raise RuleViolation(
            "invalid_window", "The visit window ended more than a day ago.", status=422
        )
    if start > now + VISIT_HORIZON:
        raise RuleViolation(
            "invalid_window",
            f"A visit is planned at most {VISIT_HORIZON.days} days ahead.",
            status=422,
        )


@dataclass(frozen=True, slots=True)
class PlannedVisit:
    """A scheduled visit, as far as overlaps go: its window and who goes."""

    id: uuid.UUID
    case_id: uuid.UUID
    peer_id: str
    deputy_id: str | None
    start: datetime
    end: datetime


def overlapping_visit(visit: PlannedVisit, others: Iterable[PlannedVisit]) -> uuid.UUID | None:
    """Another scheduled visit whose window overlaps this one and that shares its person, its
    peer or its deputy (nobody is in two places at once); windows that only touch do not."""
    for other in others:
        if other.id == visit.id or not (other.start < visit.end and visit.start < other.end):
            continue
        people = {visit.peer_id, visit.deputy_id} - {None}
        if other.case_id == visit.case_id or people & {other.peer_id, other.deputy_id}:
            return other.id
    return None


def check_occurred_at(
    at: datetime, *, now: datetime, overdose_at: datetime | None, field: str = "occurred_at"
) -> None:
    """Work is done after the overdose and not in the future (beyond CLOCK_SKEW)."""
    if at > now + CLOCK_SKEW:
        raise RuleViolation("time_in_future", f"{field} is in the future.", status=422)
    if overdose_at is not None and at < overdose_at:
        raise RuleViolation(
            "time_before_overdose",
            f"{field} is before the overdose it follows up.",
            status=422,
            details=[{"overdose_at": overdose_at.isoformat()}],
        )


def _clock(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def quiet_until(now: datetime, quiet: QuietHours | None, channel: str) -> datetime | None:
    """When the program's quiet hours for a channel end, if `now` falls in them; else None.
    Start is inclusive, end exclusive, on the program's wall clock; they may cross midnight."""
    if quiet is None or channel not in quiet.channels:
        return None
    try:
        zone = ZoneInfo(quiet.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    start, end = _clock(quiet.start), _clock(quiet.end)
    local = now.astimezone(zone)
    at = local.time().replace(tzinfo=None)
    inside = start <= at < end if start < end else (at >= start or at < end)
    if start == end or not inside:
        return None
    day = local.date() if at < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, zone)


def check_quiet_hours(
    now: datetime, quiet: QuietHours | None, channel: str, *, override: bool
) -> None:
    """A text sent by hand in quiet hours needs the sender to say so (the person may have
    asked to hear at night): without the override it is refused, with when they end."""
    ends = quiet_until(now, quiet, channel)
    if ends is not None and not override:
        raise RuleViolation(
            "quiet_hours",
            "It is the program's quiet hours; send later, or send with "
            "override_quiet_hours = true if the person asked to hear now.",
            details=[{"quiet_hours_end": ends.isoformat()}],
        )


def deputy_for_visit(rule: str, requested: bool | None) -> bool:
    """Whether a deputy goes: the program's rule decides; the peer may ask where it allows."""
    if rule == "always":
        return True
    if rule == "on_request":
        return bool(requested)
    if requested:
        raise RuleViolation(
            "deputy_not_allowed",
            "This program's policy sends no deputy on in-person visits.",
            status=422,
        )
    return False


@dataclass(frozen=True, slots=True)
class PersonCard:
    """What a peer needs to reach someone, and nothing more (no DOB, MRN or clinical data)."""

    name: str | None
    phones: tuple[str, ...]
    address: str | None
    language: str | None


def person_card(identity: dict[str, Any] | None, address: dict[str, Any] | None) -> PersonCard:
    identity = identity or {}
    parts = [identity.get(k) for k in ("given", "middle", "family")]
    name = " ".join(p for p in parts if p) or None
    street = None
    if address:
        line = ", ".join(
            str(address[k]) for k in ("street", "city", "postal_code") if address.get(k)
        )
        street = line or None
    language = identity.get("language")
    return PersonCard(
        name=name,
        phones=tuple(identity.get("phones") or ()),
        address=street,
        language=str(language) if language else None,
    )
