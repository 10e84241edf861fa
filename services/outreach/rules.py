"""The team's rules, pure: no I/O, no clock (times are passed in).

Each check raises RuleViolation with a stable code; the API turns it into an HTTP error.

    RuleViolation   - the request is well formed but the rules do not allow it (status 409
                      unless it says otherwise)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.events.outreach import AttemptOutcome, Channel, ReferralStatus

__all__ = [
    "ATTEMPT_OUTCOMES",
    "FAILED_OUTCOMES",
    "MAX_VISIT_WINDOW",
    "REFERRAL_TRANSITIONS",
    "CaseState",
    "PersonCard",
    "RuleViolation",
    "TaskState",
    "check_assign",
    "check_attempt",
    "check_case_workable",
    "check_may_work",
    "check_referral_transition",
    "check_task_workable",
    "check_visit_window",
    "deputy_for_visit",
    "person_card",
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

FAILED_OUTCOMES: frozenset[AttemptOutcome] = frozenset(
    {"no_answer", "left_message", "wrong_number", "not_found", "unsafe"}
)

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


class RuleViolation(Exception):
    def __init__(self, code: str, message: str, *, status: int = 409) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


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
