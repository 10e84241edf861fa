"""The team's rules as pure functions: tables and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.outreach.rules import (
    ATTEMPT_OUTCOMES,
    REFERRAL_TRANSITIONS,
    CaseState,
    RuleViolation,
    TaskState,
    check_assign,
    check_attempt,
    check_case_workable,
    check_referral_transition,
    check_visit_window,
    deputy_for_visit,
    person_card,
)

NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)
STATUSES = list(REFERRAL_TRANSITIONS)


def _task(assignee: str | None = None, status: str = "open") -> TaskState:
    return TaskState(
        status=status, kind="remote_contact", assignee_id=assignee, expires_at=NOW, deputy="never"
    )


def _code(call: object, *args: object, **kwargs: object) -> str | None:
    try:
        call(*args, **kwargs)  # type: ignore[operator]
    except RuleViolation as exc:
        return exc.code
    return None


@pytest.mark.parametrize(
    ("case", "contacting", "code"),
    [
        (CaseState("open", False, False), True, None),
        (CaseState("open", True, False), True, "do_not_contact"),
        (CaseState("open", True, False), False, "do_not_contact"),
        (CaseState("closed", False, False), False, "case_closed"),
        (CaseState("open", False, True), True, "outreach_declined"),
        (CaseState("open", False, True), False, None),  # services may still be recorded
    ],
)
def test_case_workable(case: CaseState, contacting: bool, code: str | None) -> None:
    assert _code(check_case_workable, case, contacting=contacting) == code


@pytest.mark.parametrize(
    ("assignee", "actor", "lead", "claim", "code"),
    [
        (None, "a", False, True, None),
        ("a", "a", False, True, None),
        ("b", "a", False, True, "already_assigned"),
        ("b", "a", True, True, None),
        ("a", "a", False, False, None),
        ("b", "a", False, False, "not_your_task"),
        (None, "a", False, False, "not_your_task"),
        ("b", "lead", True, False, None),
    ],
)
def test_assignment(
    assignee: str | None, actor: str, lead: bool, claim: bool, code: str | None
) -> None:
    task = _task(assignee)
    assert _code(check_assign, task, actor=actor, actor_is_lead=lead, claim=claim) == code


def test_closed_tasks_take_no_assignment() -> None:
    task = _task(status="expired")
    assert _code(check_assign, task, actor="a", actor_is_lead=True, claim=True) == "task_closed"


@given(
    st.sampled_from(list(ATTEMPT_OUTCOMES)),
    st.sampled_from(sorted({o for outcomes in ATTEMPT_OUTCOMES.values() for o in outcomes})),
)
def test_an_outcome_is_accepted_exactly_when_its_channel_allows_it(
    channel: str, outcome: str
) -> None:
    expected = None if outcome in ATTEMPT_OUTCOMES[channel] else "invalid_outcome"  # type: ignore[index]
    assert _code(check_attempt, channel, outcome) == expected


@given(st.sampled_from(STATUSES), st.sampled_from(STATUSES))
def test_final_referral_statuses_stay_final(current: str, new: str) -> None:
    code = _code(check_referral_transition, current, new)
    if current in ("care_started", "declined", "lost"):
        assert code == "invalid_transition"
    if new in ("declined", "lost") and current in ("offered", "accepted", "appointment"):
        assert code is None


def test_referrals_move_forward_only() -> None:
    assert _code(check_referral_transition, "offered", "care_started") == "invalid_transition"
    assert _code(check_referral_transition, "appointment", "accepted") == "invalid_transition"
    assert _code(check_referral_transition, "appointment", "appointment") is None


@given(st.integers(min_value=-600, max_value=24 * 60))
def test_visit_windows_are_positive_and_at_most_8_hours(minutes: int) -> None:
    code = _code(check_visit_window, NOW, NOW + timedelta(minutes=minutes))
    assert (code is None) == (0 < minutes <= 8 * 60)


@pytest.mark.parametrize(
    ("rule", "requested", "expected"),
    [
        ("always", None, True),
        ("always", False, True),
        ("on_request", None, False),
        ("on_request", True, True),
        ("never", None, False),
        ("never", False, False),
        ("never", True, "deputy_not_allowed"),
    ],
)
def test_the_policy_decides_whether_a_deputy_goes(
    rule: str, requested: bool | None, expected: bool | str
) -> None:
    if isinstance(expected, str):
        assert _code(deputy_for_visit, rule, requested) == expected
    else:
        assert deputy_for_visit(rule, requested) is expected


def test_the_person_card_holds_contact_details_only() -> None:
    card = person_card(
        {
            "given": "Alex",
            "family": "Doe",
            "dob": "1990-01-01",
            "mrn": "M1",
            "phones": ["336-555-0100"],
            "language": "es",
        },
        {"street": "1 Main St", "city": "Greensboro", "postal_code": "27401"},
    )
    assert card.name == "Alex Doe"
    assert card.phones == ("336-555-0100",)
    assert card.address == "1 Main St, Greensboro, 27401"
    assert card.language == "es"
    assert "1990" not in repr(card)
    assert "M1" not in repr(card)
    empty = person_card(None, None)
    assert (empty.name, empty.phones, empty.address, empty.language) == (None, (), None, None)
