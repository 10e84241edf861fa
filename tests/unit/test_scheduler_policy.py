"""Tests for the outreach policy (services/scheduler/policy.py).

Every time is passed in: nothing here reads the clock. Examples are written on the New York
wall clock (the default program zone); the properties also run in zones with unusual DST.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler import policy as policy_module
from services.scheduler.policy import (
    CHANGE_NOTE,
    MAX_WINDOW_HOURS,
    Consent,
    EpisodePlan,
    Escalation,
    PlannedTask,
    PlanReason,
    Policy,
    PolicyError,
    apply_repeat,
    default_policy,
    escalation_due,
    follow_ups,
    load_policies,
    load_policy,
    parse_policy,
    plan_episode,
    shift_out_of_quiet_hours,
)
from shared.events.scheduler import TaskKind

R = PlanReason
DEFAULT_FILE = Path(policy_module.__file__).with_name("policy.default.toml")
POLICY = default_policy("demo")
NEW_YORK = POLICY.zone


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0, fold: int = 0) -> datetime:
    """A New York wall-clock time."""
    return datetime(year, month, day, hour, minute, tzinfo=NEW_YORK, fold=fold)


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


INCIDENT = ny(2024, 6, 3, 10)  # a Monday morning in June: no quiet hours, no DST change near


def policy_with(**sections: Any) -> Policy:
    """Program "demo" in New York on the defaults, except for the sections given."""
    return Policy.model_validate({"program_id": "demo", "timezone": "America/New_York", **sections})


def plan(
    policy: Policy = POLICY,
    *,
    incident_at: datetime = INCIDENT,
    consent: Consent = "accepted",
    do_not_contact: bool = False,
    deidentified: bool = False,
    repeat: bool = False,
    current_priority: int | None = None,
    received_at: datetime | None = None,
    now: datetime | None = None,
) -> EpisodePlan:
    """A plan for a report received at the overdose and applied then, unless told otherwise."""
    received_at = received_at or incident_at
    return plan_episode(
        policy,
        incident_at=incident_at,
        received_at=received_at,
        now=now or received_at,
        consent=consent,
        do_not_contact=do_not_contact,
        deidentified=deidentified,
        repeat=repeat,
        current_priority=current_priority,
    )


def escalate(
    policy: Policy = POLICY,
    *,
    incident_at: datetime = INCIDENT,
    opened_at: datetime | None = None,
    failed_attempts: int = 0,
    contact_made: bool = False,
    now: datetime | None = None,
) -> Escalation | None:
    """Escalation for a remote task opened at the overdose and asked then, unless told otherwise
    (``incident_at`` is the time the episode's windows count from)."""
    return escalation_due(
        policy,
        windows_from=incident_at,
        task_opened_at=opened_at or incident_at,
        failed_attempts=failed_attempts,
        contact_made=contact_made,
        now=now or opened_at or incident_at,
    )


def escalated(policy: Policy = POLICY, **given: Any) -> Escalation:
    escalation = escalate(policy, **given)
    assert escalation is not None
    return escalation


def utc(instant: datetime) -> datetime:
    """Expectations are computed in UTC: adding hours to a zoned time adds wall-clock hours,
    and ``==`` between zones is always False for a time in a repeated hour (PEP 495)."""
    return instant.astimezone(UTC)


def in_quiet_hours(policy: Policy, instant: datetime) -> bool:
    """The test's own reading of quiet hours: start inclusive, end exclusive, on the wall clock."""
    wall = instant.astimezone(policy.zone).time()
    start, end = policy.quiet_hours.start, policy.quiet_hours.end
    if start < end:
        return start <= wall < end
    return not end <= wall < start


def quiet_length(policy: Policy) -> timedelta:
    day = datetime(2000, 1, 1)
    length = datetime.combine(day, policy.quiet_hours.end) - datetime.combine(
        day, policy.quiet_hours.start
    )
    return length % timedelta(days=1)


# --------------------------------------------------------------------------- strategies

ZONES = [
    "America/New_York",
    "America/Los_Angeles",
    "America/St_Johns",  # DST at 02:00 on a half-hour offset
    "Europe/London",
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "Asia/Kolkata",
    "UTC",
]
NEW_YORK_DST_CHANGES = [  # the instants the New York clocks jump
    datetime(2024, 3, 10, 7, tzinfo=UTC),
    datetime(2024, 11, 3, 6, tzinfo=UTC),
    datetime(2025, 3, 9, 7, tzinfo=UTC),
    datetime(2025, 11, 2, 6, tzinfo=UTC),
]

near_dst_changes = st.builds(
    lambda change, minutes: change + timedelta(minutes=minutes),
    st.sampled_from(NEW_YORK_DST_CHANGES),
    st.integers(-4 * 24 * 60, 4 * 24 * 60),
)
# An instant, written in any of the zones: a zoned input must add real hours, not wall hours.
instants = st.builds(
    lambda instant, zone: instant.astimezone(ZoneInfo(zone)),
    st.one_of(
        near_dst_changes,
        st.datetimes(
            min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
        ),
    ),
    st.sampled_from(ZONES),
)
clock_times = st.builds(time, st.integers(0, 23), st.integers(0, 59))


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    """Any valid policy: the numbers drawn inside the ranges the validation allows."""
    first_due = draw(st.integers(1, 100))
    window_close = draw(st.integers(first_due + 2, MAX_WINDOW_HOURS))
    without_contact = draw(st.integers(first_due + 1, window_close - 1))
    start, end = draw(st.lists(clock_times, min_size=2, max_size=2, unique=True))
    follow_due = draw(st.integers(1, 48))
    max_priority = draw(st.integers(1, 10))
    return Policy.model_validate(
        {
            "program_id": "drawn",
            "timezone": draw(st.sampled_from(ZONES)),
            "remote_contact": {
                "first_attempt_due_hours": first_due,
                "window_close_hours": window_close,
                "channels": draw(st.sampled_from([["phone", "text"], ["phone"], ["text"]])),
            },
            "escalation": {
                "failed_attempts": draw(st.integers(1, 6)),
                "hours_without_contact": without_contact,
                "in_person_due_hours": draw(st.integers(without_contact + 1, MAX_WINDOW_HOURS)),
                "deputy": draw(st.sampled_from(["never", "always", "on_request"])),
            },
            "follow_ups": {
                "days": draw(st.lists(st.integers(1, 90), max_size=4, unique=True).map(sorted)),
                "due_hours": follow_due,
                "window_close_hours": draw(st.integers(follow_due + 1, 96)),
            },
            "quiet_hours": {
                "start": start.strftime("%H:%M"),
                "end": end.strftime("%H:%M"),
                "applies_to": draw(
                    st.sampled_from(
                        [["phone", "text"], ["phone"], [], ["phone", "text", "in_person"]]
                    )
                ),
            },
            "repeat_overdose": {
                "priority_step": draw(st.integers(1, 3)),
                "restart_windows": draw(st.booleans()),
            },
            "priorities": {"default": draw(st.integers(1, max_priority)), "max": max_priority},
            "late_reports": {"max_age_days": draw(st.integers(-(-window_close // 24), 120))},
        }
    )


def assert_due_keeps_out_of_quiet_hours(policy: Policy, task: PlannedTask, due: datetime) -> None:
    """Where quiet hours hold the task, its due time moved on from ``due`` to outside them."""
    assert task.due_at >= due
    if task.due_clamped_at_expiry:
        assert task.due_at == task.expires_at
        assert task.quiet_hours_shifted
    elif task.quiet_hours_shifted:
        assert not in_quiet_hours(policy, task.due_at)
    else:
        assert task.due_at == due


# --------------------------------------------------------------------------- the default file


def test_the_default_file_ships_with_the_package() -> None:
    resource = importlib.resources.files("services.scheduler").joinpath("policy.default.toml")
    assert resource.is_file()


def test_the_default_file_spells_out_the_model_defaults() -> None:
    from_file = load_policy(DEFAULT_FILE)

    assert from_file == Policy(program_id="default", timezone="America/New_York")


def test_default_policy_is_the_default_file_for_a_program() -> None:
    from_file = load_policy(DEFAULT_FILE)

    assert default_policy("default") == from_file
    assert default_policy("demo").model_dump(exclude={"program_id"}) == from_file.model_dump(
        exclude={"program_id"}
    )


def test_default_policy_takes_the_program_time_zone() -> None:
    assert default_policy("west", "America/Los_Angeles").timezone == "America/Los_Angeles"


def test_the_defaults_are_the_port_model() -> None:
    assert POLICY.remote_contact.first_attempt_due_hours == 24
    assert POLICY.remote_contact.window_close_hours == 72
    assert POLICY.remote_contact.channels == ("phone", "text")
    assert POLICY.escalation.failed_attempts == 3
    assert POLICY.escalation.hours_without_contact == 48
    assert POLICY.escalation.in_person_due_hours == 72
    assert POLICY.escalation.deputy == "never"
    assert POLICY.follow_ups.days == (7, 30)
    assert (POLICY.quiet_hours.start, POLICY.quiet_hours.end) == (time(21), time(8))
    assert POLICY.quiet_hours.applies_to == ("phone", "text")
    assert POLICY.repeat_overdose.priority_step == 1
    assert POLICY.repeat_overdose.restart_windows is True
    assert (POLICY.priorities.default, POLICY.priorities.max) == (2, 5)


# --------------------------------------------------------------------------- version


MINIMAL = 'program_id = "demo"\ntimezone = "America/New_York"\n'


def test_without_a_version_key_the_version_hashes_the_rules() -> None:
    assert re.fullmatch(r"sha256:[0-9a-f]{12}", POLICY.version)


def test_the_hash_is_of_the_effective_rules_not_the_text() -> None:
    spelt_out = DEFAULT_FILE.read_text().replace('"default"', '"demo"')
    reordered = '# comments do not count\ntimezone = "America/New_York"\nprogram_id = "demo"\n'

    assert parse_policy(MINIMAL).version == POLICY.version
    assert parse_policy(spelt_out).version == POLICY.version
    assert parse_policy(reordered).version == POLICY.version


def test_programs_on_the_same_rules_share_a_version() -> None:
    assert default_policy("north").version == default_policy("south").version
    assert default_policy("west", "America/Los_Angeles").version != POLICY.version


def test_changing_a_number_changes_the_version() -> None:
    changed = parse_policy(MINIMAL + "[follow_ups]\ndays = [7, 14, 30]\n")

    assert changed.version != POLICY.version


def test_an_explicit_version_is_kept() -> None:
    assert parse_policy('version = "2025-01-15"\n' + MINIMAL).version == "2025-01-15"


def test_tasks_record_the_version_that_set_their_times() -> None:
    explicit = parse_policy('version = "v7"\n' + MINIMAL)

    (remote,) = plan(explicit).tasks
    visit = escalated(explicit).task
    later = follow_ups(explicit, contact_at=INCIDENT, declined=False, do_not_contact=False)

    assert plan(explicit).policy_version == "v7"
    assert {task.policy_version for task in (remote, visit, *later)} == {"v7"}


# --------------------------------------------------------------------------- describe


def test_describe_is_json_with_the_version_and_the_change_note() -> None:
    described = POLICY.describe()

    assert json.loads(json.dumps(described)) == described
    assert described["program_id"] == "demo"
    assert described["version"] == POLICY.version
    assert described["timezone"] == "America/New_York"
    assert described["note"] == CHANGE_NOTE
    assert "not retroactively" in described["note"]
    assert described["quiet_hours"] == {
        "start": "21:00",
        "end": "08:00",
        "applies_to": ["phone", "text"],
    }
    assert described["remote_contact"]["window_close_hours"] == 72


# --------------------------------------------------------------------------- invalid files


@pytest.mark.parametrize(
    ("snippet", "fragment"),
    [
        pytest.param("program_id = ", "not valid TOML", id="toml-syntax"),
        pytest.param(
            'timezone = "America/New_York"', "program_id: Field required", id="missing-program"
        ),
        pytest.param(
            'program_id = "demo"\ntimezone = "Mars/Olympus"',
            "timezone: unknown time zone 'Mars/Olympus'",
            id="unknown-zone",
        ),
        pytest.param(
            'program_id = "de mo"\ntimezone = "UTC"', "program_id: must be 1-64 letters", id="id"
        ),
        pytest.param(
            MINIMAL + 'version = "has spaces"', "version: must be 1-64 letters", id="version"
        ),
        pytest.param(
            MINIMAL + "[remote_contact]\nfirst_atempt_due_hours = 24",
            "remote_contact.first_atempt_due_hours: unknown key",
            id="misspelt-key",
        ),
        pytest.param(MINIMAL + "[outreach]\nx = 1", "outreach: unknown key", id="unknown-section"),
        pytest.param(
            MINIMAL + '[remote_contact]\nfirst_attempt_due_hours = "24"',
            "remote_contact.first_attempt_due_hours: Input should be a valid integer, got '24'",
            id="hours-as-text",
        ),
        pytest.param(
            MINIMAL + "[remote_contact]\nfirst_attempt_due_hours = 24.5",
            "remote_contact.first_attempt_due_hours: Input should be a valid integer, got 24.5",
            id="fractional-hours",
        ),
        pytest.param(
            MINIMAL + "[remote_contact]\nfirst_attempt_due_hours = 0",
            "remote_contact.first_attempt_due_hours: Input should be greater than 0, got 0",
            id="zero-hours",
        ),
        pytest.param(
            MINIMAL + "[remote_contact]\nwindow_close_hours = 24",
            "remote_contact.window_close_hours (24) must be greater than "
            "remote_contact.first_attempt_due_hours (24)",
            id="window-closes-at-due",
        ),
        pytest.param(
            MINIMAL + "[remote_contact]\nchannels = []",
            "remote_contact.channels: must name at least one channel",
            id="no-channel",
        ),
        pytest.param(
            MINIMAL + '[remote_contact]\nchannels = ["phone", "email"]',
            "remote_contact.channels.1: Input should be 'phone' or 'text', got 'email'",
            id="unknown-channel",
        ),
        pytest.param(
            MINIMAL + '[remote_contact]\nchannels = ["text", "text"]',
            "remote_contact.channels: must not repeat a channel",
            id="repeated-channel",
        ),
        pytest.param(
            MINIMAL + "[escalation]\nhours_without_contact = 72",
            "escalation.hours_without_contact (72) must be less than "
            "remote_contact.window_close_hours (72), so that escalation is reachable",
            id="escalation-unreachable",
        ),
        pytest.param(
            MINIMAL + "[escalation]\nhours_without_contact = 12",
            "escalation.hours_without_contact (12) must be greater than "
            "remote_contact.first_attempt_due_hours (24)",
            id="escalation-before-first-attempt",
        ),
        pytest.param(
            MINIMAL + "[escalation]\nin_person_due_hours = 48",
            "escalation.in_person_due_hours (48) must be greater than "
            "escalation.hours_without_contact (48)",
            id="visit-born-overdue",
        ),
        pytest.param(
            MINIMAL + "[escalation]\nin_person_due_hours = 1000",
            "escalation.in_person_due_hours: Input should be less than or equal to 336",
            id="visit-too-late",
        ),
        pytest.param(
            MINIMAL + "[escalation]\nfailed_attempts = 0",
            "escalation.failed_attempts: Input should be greater than or equal to 1",
            id="no-attempts",
        ),
        pytest.param(
            MINIMAL + '[escalation]\ndeputy = "sometimes"',
            "escalation.deputy: Input should be 'never', 'always' or 'on_request'",
            id="deputy",
        ),
        pytest.param(
            MINIMAL + "[follow_ups]\ndays = [30, 7]",
            "follow_ups.days: must be strictly ascending with no repeats, got [30, 7]",
            id="days-descending",
        ),
        pytest.param(
            MINIMAL + "[follow_ups]\ndays = [7, 7]",
            "follow_ups.days: must be strictly ascending with no repeats, got [7, 7]",
            id="days-repeated",
        ),
        pytest.param(
            MINIMAL + "[follow_ups]\ndays = [0, 7]",
            "follow_ups.days.0: Input should be greater than 0, got 0",
            id="day-zero",
        ),
        pytest.param(
            MINIMAL + "[follow_ups]\ndue_hours = 72",
            "follow_ups.window_close_hours (72) must be greater than follow_ups.due_hours (72)",
            id="follow-up-window",
        ),
        pytest.param(
            MINIMAL + '[quiet_hours]\nstart = "9pm"',
            "quiet_hours.start: expected a time of day as \"HH:MM\" on a 24-hour clock, got '9pm'",
            id="time-format",
        ),
        pytest.param(
            MINIMAL + '[quiet_hours]\nend = "24:00"',
            "quiet_hours.end: expected a time of day",
            id="time-out-of-range",
        ),
        pytest.param(
            MINIMAL + '[quiet_hours]\nstart = "08:00"',
            "quiet_hours.start and quiet_hours.end are both 08:00",
            id="quiet-without-length",
        ),
        pytest.param(
            MINIMAL + '[quiet_hours]\napplies_to = ["fax"]',
            "quiet_hours.applies_to.0: Input should be 'phone', 'text' or 'in_person'",
            id="quiet-channel",
        ),
        pytest.param(
            MINIMAL + '[repeat_overdose]\nrestart_windows = "yes"',
            "repeat_overdose.restart_windows: Input should be a valid boolean",
            id="bool-as-text",
        ),
        pytest.param(
            MINIMAL + "[repeat_overdose]\npriority_step = 0",
            "repeat_overdose.priority_step: Input should be greater than or equal to 1",
            id="no-raise",
        ),
        pytest.param(
            MINIMAL + "[linking]\nauto_link_weight = 12\nreview_weight = 16",
            "linking.flag_weight (-1) <= linking.review_weight (16) < "
            "linking.auto_link_weight (12) must hold",
            id="review-above-auto-link",
        ),
        pytest.param(
            MINIMAL + "[linking]\nflag_weight = 20",
            "linking.flag_weight (20) <= linking.review_weight (16)",
            id="flag-above-review",
        ),
        pytest.param(
            MINIMAL + "[priorities]\ndefault = 6",
            "priorities.default (6) must not exceed priorities.max (5)",
            id="default-above-max",
        ),
    ],
)
def test_invalid_policy_files_name_the_key(snippet: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy(snippet, source="demo.toml")

    assert str(raised.value).startswith("demo.toml: ")
    assert fragment in str(raised.value)


def test_every_problem_is_reported_at_once() -> None:
    snippet = MINIMAL + '[remote_contact]\nchannels = []\n[quiet_hours]\nstart = "9pm"\n'

    with pytest.raises(PolicyError) as raised:
        parse_policy(snippet, source="demo.toml")

    assert [problem.split(":")[0] for problem in raised.value.problems] == [
        "remote_contact.channels",
        "quiet_hours.start",
    ]


# --------------------------------------------------------------------------- loading


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_policies_keys_each_file_by_its_program(tmp_path: Path) -> None:
    write(tmp_path, "north.toml", 'program_id = "north"\ntimezone = "America/Chicago"\n')
    write(tmp_path, "south.toml", 'program_id = "south"\ntimezone = "America/New_York"\n')
    write(tmp_path, "README.md", "Not a policy.")

    policies = load_policies(tmp_path)

    assert sorted(policies) == ["north", "south"]
    assert policies["north"].timezone == "America/Chicago"


def test_load_policies_rejects_a_program_id_that_does_not_match_the_file(tmp_path: Path) -> None:
    write(tmp_path, "north.toml", 'program_id = "south"\ntimezone = "America/New_York"\n')

    with pytest.raises(PolicyError, match=r"north\.toml: program_id 'south' does not match"):
        load_policies(tmp_path)


def test_load_policies_reports_every_bad_file(tmp_path: Path) -> None:
    write(tmp_path, "east.toml", 'program_id = "east"\ntimezone = "Nowhere/Special"\n')
    write(tmp_path, "north.toml", 'program_id = "south"\ntimezone = "America/New_York"\n')
    write(tmp_path, "west.toml", 'program_id = "west"\ntimezone = "America/Los_Angeles"\n')

    with pytest.raises(PolicyError) as raised:
        load_policies(tmp_path)

    assert [problem.split(":")[0] for problem in raised.value.problems] == [
        "east.toml",
        "north.toml",
    ]


def test_load_policies_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not a directory"):
        load_policies(tmp_path / "missing")


def test_load_policy_names_a_file_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"absent\.toml: cannot read"):
        load_policy(tmp_path / "absent.toml")


# --------------------------------------------------------------------------- plan_episode


@pytest.mark.parametrize(
    ("consent", "do_not_contact", "deidentified", "reasons"),
    [
        ("declined", False, False, (R.CONSENT_DECLINED, R.LEAVE_BEHIND_RECORDED)),
        ("accepted", True, False, (R.DO_NOT_CONTACT,)),
        ("unknown", True, False, (R.DO_NOT_CONTACT,)),
        ("accepted", False, True, (R.DEIDENTIFIED,)),
        (
            "declined",
            True,
            True,
            (R.DO_NOT_CONTACT, R.CONSENT_DECLINED, R.LEAVE_BEHIND_RECORDED, R.DEIDENTIFIED),
        ),
    ],
)
def test_episodes_that_get_no_tasks_say_why(
    consent: Consent, do_not_contact: bool, deidentified: bool, reasons: tuple[PlanReason, ...]
) -> None:
    result = plan(consent=consent, do_not_contact=do_not_contact, deidentified=deidentified)

    assert result.tasks == ()
    assert result.reason == reasons
    assert result.priority is None


def test_an_accepted_episode_gets_a_remote_contact() -> None:
    result = plan(incident_at=INCIDENT)

    (task,) = result.tasks
    assert task.kind is TaskKind.REMOTE_CONTACT
    assert task.window_opens_at == ny(2024, 6, 3, 10)
    assert task.due_at == ny(2024, 6, 4, 10)
    assert task.expires_at == ny(2024, 6, 6, 10)
    assert task.due_at.tzinfo is UTC
    assert (task.priority, task.with_deputy, task.quiet_hours_shifted) == (2, False, False)
    assert result.reason == (R.REMOTE_CONTACT_SCHEDULED,)
    assert result.priority == 2


def test_unknown_consent_is_offered_outreach_and_says_so() -> None:
    result = plan(consent="unknown")

    assert [task.kind for task in result.tasks] == [TaskKind.REMOTE_CONTACT]
    assert result.reason == (R.CONSENT_UNKNOWN, R.REMOTE_CONTACT_SCHEDULED)


def test_a_due_time_in_quiet_hours_moves_to_their_end() -> None:
    result = plan(incident_at=ny(2024, 6, 3, 22, 30))

    (task,) = result.tasks
    assert task.due_at == ny(2024, 6, 5, 8)
    assert task.quiet_hours_shifted
    assert task.expires_at == ny(2024, 6, 6, 22, 30)
    assert result.reason == (R.REMOTE_CONTACT_SCHEDULED, R.DUE_SHIFTED)


def test_a_shift_past_the_expiry_is_clamped_and_marked() -> None:
    short = policy_with(
        remote_contact={"first_attempt_due_hours": 25, "window_close_hours": 30},
        escalation={"hours_without_contact": 27, "in_person_due_hours": 30},
    )

    result = plan(short, incident_at=ny(2024, 6, 3, 20))

    (task,) = result.tasks
    assert task.due_at == task.expires_at == ny(2024, 6, 5, 2)
    assert task.quiet_hours_shifted
    assert task.due_clamped_at_expiry
    assert result.reason == (R.REMOTE_CONTACT_SCHEDULED, R.DUE_SHIFTED, R.DUE_CLAMPED)


def test_windows_are_real_hours_across_a_dst_change() -> None:
    (task,) = plan(incident_at=ny(2024, 3, 9, 12)).tasks

    assert task.expires_at - task.window_opens_at == hours(72)
    assert task.expires_at == ny(2024, 3, 12, 13)  # 13:00 daylight time: the clocks went forward


def test_a_planned_task_cannot_be_due_outside_its_window() -> None:
    with pytest.raises(ValueError, match="window_opens_at <= due_at <= expires_at"):
        PlannedTask(
            kind=TaskKind.REMOTE_CONTACT,
            priority=2,
            window_opens_at=INCIDENT,
            due_at=INCIDENT + hours(80),
            expires_at=INCIDENT + hours(72),
            policy_version=POLICY.version,
        )


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="incident_at must be timezone-aware"):
        plan(incident_at=datetime(2024, 6, 3, 10), received_at=INCIDENT)
    with pytest.raises(ValueError, match="received_at must be timezone-aware"):
        plan(received_at=datetime(2024, 6, 3, 10))


@given(policy=policies(), incident_at=instants)
def test_no_remote_window_is_longer_than_the_policy(policy: Policy, incident_at: datetime) -> None:
    (task,) = plan(policy, incident_at=incident_at).tasks
    remote, incident = policy.remote_contact, utc(incident_at)

    assert task.window_opens_at == incident
    assert task.expires_at - incident == hours(remote.window_close_hours)
    assert task.window_opens_at <= task.due_at <= task.expires_at
    assert_due_keeps_out_of_quiet_hours(
        policy, task, incident + hours(remote.first_attempt_due_hours)
    )


@settings(max_examples=300)
@given(incident_at=near_dst_changes)
def test_the_default_windows_hold_across_new_york_dst_changes(incident_at: datetime) -> None:
    (task,) = plan(incident_at=incident_at).tasks

    assert task.expires_at - incident_at == hours(72)
    assert incident_at + hours(24) <= task.due_at <= task.expires_at
    assert_due_keeps_out_of_quiet_hours(POLICY, task, incident_at + hours(24))


@given(
    policy=policies(),
    incident_at=instants,
    consent=st.sampled_from(["accepted", "declined", "unknown"]),
    do_not_contact=st.booleans(),
    deidentified=st.booleans(),
    repeat=st.booleans(),
    current_priority=st.none() | st.integers(1, 10),
)
def test_no_task_for_declined_do_not_contact_or_deidentified(
    policy: Policy,
    incident_at: datetime,
    consent: Consent,
    do_not_contact: bool,
    deidentified: bool,
    repeat: bool,
    current_priority: int | None,
) -> None:
    result = plan(
        policy,
        incident_at=incident_at,
        consent=consent,
        do_not_contact=do_not_contact,
        deidentified=deidentified,
        repeat=repeat,
        current_priority=current_priority,
    )

    if consent == "declined" or do_not_contact or deidentified:
        assert result.tasks == ()
        assert result.priority is None
    elif repeat and not policy.repeat_overdose.restart_windows:
        assert result.tasks == ()
        assert result.priority is not None
    else:
        assert [task.kind for task in result.tasks] == [TaskKind.REMOTE_CONTACT]
    assert (R.DO_NOT_CONTACT in result.reason) == do_not_contact
    assert (R.CONSENT_DECLINED in result.reason) == (consent == "declined")
    assert (R.DEIDENTIFIED in result.reason) == deidentified


# --------------------------------------------------------------------------- repeat overdoses


@pytest.mark.parametrize(
    ("current", "expected"),
    [(1, 2), (2, 3), (4, 5), (5, 5), (7, 7)],
    ids=["low", "default", "to-max", "at-max", "above-max-kept"],
)
def test_a_repeat_raises_priority_up_to_the_max(current: int, expected: int) -> None:
    assert apply_repeat(current, POLICY) == expected


def test_a_repeat_restarts_the_windows_at_a_higher_priority() -> None:
    result = plan(incident_at=ny(2024, 6, 10, 9), repeat=True, current_priority=3)

    (task,) = result.tasks
    assert task.priority == result.priority == 4
    assert task.window_opens_at == ny(2024, 6, 10, 9)
    assert result.reason == (
        R.REPEAT_PRIORITY_RAISED,
        R.REPEAT_WINDOWS_RESTARTED,
        R.REMOTE_CONTACT_SCHEDULED,
    )


def test_a_repeat_without_a_known_priority_raises_the_default() -> None:
    assert plan(repeat=True, current_priority=None).priority == 3


def test_a_repeat_at_the_max_says_so() -> None:
    result = plan(repeat=True, current_priority=5)

    assert result.priority == 5
    assert result.reason[0] is R.REPEAT_PRIORITY_AT_MAX


def test_a_repeat_can_keep_the_open_windows() -> None:
    keep = policy_with(repeat_overdose={"restart_windows": False})

    result = plan(keep, repeat=True, current_priority=2)

    assert result.tasks == ()
    assert result.priority == 3
    assert result.reason == (R.REPEAT_PRIORITY_RAISED, R.REPEAT_WINDOWS_KEPT)


def test_a_first_episode_ignores_a_current_priority() -> None:
    assert plan(repeat=False, current_priority=5).priority == POLICY.priorities.default


@given(policy=policies(), current=st.integers(1, 20))
def test_repeat_priority_rises_by_the_step_bounded_by_the_max(policy: Policy, current: int) -> None:
    raised = apply_repeat(current, policy)
    ceiling = policy.priorities.max

    assert raised >= current
    if current < ceiling:
        assert raised == min(current + policy.repeat_overdose.priority_step, ceiling)
    else:
        assert raised == current


# --------------------------------------------------------------------------- quiet hours


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        pytest.param(ny(2024, 6, 3, 20, 59), ny(2024, 6, 3, 20, 59), id="before-start"),
        pytest.param(ny(2024, 6, 3, 21), ny(2024, 6, 4, 8), id="start-is-quiet"),
        pytest.param(ny(2024, 6, 3, 23, 30), ny(2024, 6, 4, 8), id="late-evening"),
        pytest.param(ny(2024, 6, 4, 3), ny(2024, 6, 4, 8), id="small-hours"),
        pytest.param(ny(2024, 6, 4, 8), ny(2024, 6, 4, 8), id="end-is-not-quiet"),
        pytest.param(ny(2024, 3, 9, 23), ny(2024, 3, 10, 8), id="spring-forward-night"),
        pytest.param(ny(2024, 11, 2, 23), ny(2024, 11, 3, 8), id="fall-back-night"),
        pytest.param(ny(2024, 11, 3, 1, 15, fold=1), ny(2024, 11, 3, 8), id="repeated-hour"),
    ],
)
def test_phone_due_times_leave_quiet_hours(when: datetime, expected: datetime) -> None:
    shifted, moved = shift_out_of_quiet_hours(POLICY, when, "phone")

    assert shifted == expected
    assert shifted.tzinfo is UTC
    assert moved == (expected != when)


def test_quiet_hours_apply_only_to_their_channels() -> None:
    at_night = ny(2024, 6, 3, 23)

    assert shift_out_of_quiet_hours(POLICY, at_night, "in_person") == (at_night, False)
    assert shift_out_of_quiet_hours(POLICY, at_night, "text") == (ny(2024, 6, 4, 8), True)


def test_an_unknown_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown channel 'fax'"):
        shift_out_of_quiet_hours(POLICY, ny(2024, 6, 3, 23), "fax")


def test_quiet_hours_may_sit_within_one_day() -> None:
    lunch = policy_with(quiet_hours={"start": "12:00", "end": "13:30"})

    assert shift_out_of_quiet_hours(lunch, ny(2024, 6, 3, 12, 10), "phone") == (
        ny(2024, 6, 3, 13, 30),
        True,
    )
    assert shift_out_of_quiet_hours(lunch, ny(2024, 6, 3, 23), "phone")[1] is False


def test_an_end_in_the_spring_forward_gap_is_read_before_the_gap() -> None:
    early = policy_with(quiet_hours={"start": "21:00", "end": "02:30"})

    shifted, _ = shift_out_of_quiet_hours(early, ny(2024, 3, 10, 1), "phone")

    assert shifted == ny(2024, 3, 10, 3, 30)  # 02:30 standard time, as the clocks read it


def test_an_end_in_the_repeated_hour_is_the_next_one_on_the_clock() -> None:
    early = policy_with(quiet_hours={"start": "21:00", "end": "01:30"})

    first, _ = shift_out_of_quiet_hours(early, ny(2024, 11, 3, 1, 15), "phone")
    second, _ = shift_out_of_quiet_hours(early, ny(2024, 11, 3, 1, 15, fold=1), "phone")

    assert first == utc(ny(2024, 11, 3, 1, 30))  # daylight time
    assert second == utc(ny(2024, 11, 3, 1, 30, fold=1))  # standard time, an hour later


def test_a_task_keeps_its_due_time_when_one_of_its_channels_is_free() -> None:
    phone_only_quiet = policy_with(quiet_hours={"applies_to": ["phone"]})

    (task,) = plan(phone_only_quiet, incident_at=ny(2024, 6, 3, 22, 30)).tasks

    assert task.due_at == ny(2024, 6, 4, 22, 30)  # a text can still go out
    assert not task.quiet_hours_shifted


@given(policy=policies(), when=instants, channel=st.sampled_from(["phone", "text", "in_person"]))
def test_shifting_lands_outside_quiet_hours_and_never_earlier(
    policy: Policy, when: datetime, channel: str
) -> None:
    shifted, moved = shift_out_of_quiet_hours(policy, when, channel)

    assert shifted >= utc(when)
    assert moved == (shifted != utc(when))
    if channel in policy.quiet_hours.applies_to:
        assert not in_quiet_hours(policy, shifted)
        assert moved == in_quiet_hours(policy, when)
        assert shifted - utc(when) <= quiet_length(policy) + hours(1)  # to the end, no further
    else:
        assert not moved


# --------------------------------------------------------------------------- escalation


@pytest.mark.parametrize(
    ("failed_attempts", "now", "escalate_at", "trigger", "reasons"),
    [
        pytest.param(
            0,
            INCIDENT + hours(1),
            INCIDENT + hours(48),
            "no_contact",
            (R.ESCALATION_NO_CONTACT, R.IN_PERSON_VISIT_SCHEDULED),
            id="timer-for-no-contact",
        ),
        pytest.param(
            2,
            INCIDENT + hours(50),
            INCIDENT + hours(48),
            "no_contact",
            (R.ESCALATION_NO_CONTACT, R.IN_PERSON_VISIT_SCHEDULED),
            id="48h-without-contact",
        ),
        pytest.param(
            3,
            INCIDENT + hours(5),
            INCIDENT + hours(5),
            "failed_attempts",
            (R.ESCALATION_FAILED_ATTEMPTS, R.IN_PERSON_VISIT_SCHEDULED),
            id="third-failed-attempt",
        ),
        pytest.param(
            4,
            INCIDENT + hours(50),
            INCIDENT + hours(48),
            "no_contact",
            (R.ESCALATION_FAILED_ATTEMPTS, R.ESCALATION_NO_CONTACT, R.IN_PERSON_VISIT_SCHEDULED),
            id="both-rules-the-earlier-wins",
        ),
    ],
)
def test_escalation_is_due_at_the_earlier_rule(
    failed_attempts: int,
    now: datetime,
    escalate_at: datetime,
    trigger: str,
    reasons: tuple[PlanReason, ...],
) -> None:
    escalation = escalated(failed_attempts=failed_attempts, now=now)

    assert escalation.escalate_at == escalate_at
    assert escalation.trigger == trigger
    assert escalation.reason == reasons
    assert escalation.is_due(now) == (escalate_at <= now)


def test_the_visit_opens_at_the_escalation_and_is_due_72h_after_the_overdose() -> None:
    task = escalated(failed_attempts=3, now=INCIDENT + hours(5)).task

    assert task.kind is TaskKind.IN_PERSON_VISIT
    assert task.window_opens_at == INCIDENT + hours(5)
    assert task.due_at == task.expires_at == INCIDENT + hours(72)
    assert task.priority == POLICY.priorities.default


def test_no_escalation_after_contact() -> None:
    assert escalate(failed_attempts=5, now=INCIDENT + hours(60), contact_made=True) is None


def test_no_escalation_once_the_visit_window_has_closed() -> None:
    assert escalate(opened_at=INCIDENT + hours(30), now=INCIDENT + hours(30)) is None


LONG_REMOTE = policy_with(remote_contact={"window_close_hours": 96})  # visit due at 72 h


def test_the_visit_stays_open_while_a_longer_remote_window_does() -> None:
    task = escalated(LONG_REMOTE).task

    assert task.due_at == INCIDENT + hours(72)
    assert task.expires_at == INCIDENT + hours(96)


def test_a_visit_escalated_after_its_due_time_is_due_at_once() -> None:
    escalation = escalated(
        LONG_REMOTE, opened_at=INCIDENT + hours(30), failed_attempts=3, now=INCIDENT + hours(80)
    )

    assert escalation.escalate_at == INCIDENT + hours(78)  # 48 h after the task opened
    assert escalation.task.window_opens_at == escalation.task.due_at == INCIDENT + hours(78)
    assert R.IN_PERSON_DUE_PASSED in escalation.reason


@pytest.mark.parametrize(
    ("deputy", "with_deputy", "reason"),
    [
        ("never", False, None),
        ("always", True, R.DEPUTY_BY_POLICY),
        ("on_request", False, R.DEPUTY_ON_REQUEST),
    ],
)
def test_a_deputy_goes_only_where_the_program_says_so(
    deputy: str, with_deputy: bool, reason: PlanReason | None
) -> None:
    escalation = escalated(policy_with(escalation={"deputy": deputy}))

    assert escalation.task.with_deputy is with_deputy
    deputy_reasons = {R.DEPUTY_BY_POLICY, R.DEPUTY_ON_REQUEST} & set(escalation.reason)
    assert deputy_reasons == ({reason} if reason else set())


def test_quiet_hours_hold_visits_only_when_the_program_says_so() -> None:
    late_evening = ny(2024, 6, 3, 23)
    quiet_visits = policy_with(quiet_hours={"applies_to": ["phone", "text", "in_person"]})

    usual = escalated(incident_at=late_evening).task
    held = escalated(quiet_visits, incident_at=late_evening).task

    assert usual.due_at == ny(2024, 6, 6, 23)
    assert not usual.quiet_hours_shifted
    assert held.due_at == held.expires_at == ny(2024, 6, 6, 23)  # 08:00 would be past expiry
    assert held.due_clamped_at_expiry


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"failed_attempts": -1}, "failed_attempts cannot be negative"),
        ({"now": INCIDENT - hours(1)}, "now is before the remote task opened"),
        ({"opened_at": INCIDENT - hours(1)}, "task_opened_at is before the episode's windows open"),
        ({"now": datetime(2024, 6, 3, 12)}, "now must be timezone-aware"),
    ],
)
def test_impossible_escalation_inputs_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        escalate(**change)


@given(
    policy=policies(),
    incident_at=instants,
    opened_after=st.integers(0, 24 * 60),
    since_opened=st.integers(0, (MAX_WINDOW_HOURS + 24) * 60),
    failed_attempts=st.integers(0, 8),
)
def test_escalation_never_comes_before_its_rule_allows(
    policy: Policy,
    incident_at: datetime,
    opened_after: int,
    since_opened: int,
    failed_attempts: int,
) -> None:
    incident = utc(incident_at)
    opened_at = incident + timedelta(minutes=opened_after)
    now = opened_at + timedelta(minutes=since_opened)
    rules = policy.escalation

    escalation = escalate(
        policy,
        incident_at=incident_at,
        opened_at=opened_at,
        failed_attempts=failed_attempts,
        now=now,
    )

    no_contact_at = opened_at + hours(rules.hours_without_contact)
    attempts_rule_at = now if failed_attempts >= rules.failed_attempts else no_contact_at
    visit_closes_at = incident + hours(
        max(rules.in_person_due_hours, policy.remote_contact.window_close_hours)
    )
    if escalation is None:
        assert min(no_contact_at, attempts_rule_at) >= visit_closes_at
        return
    assert escalation.escalate_at >= opened_at
    if escalation.escalate_at < no_contact_at:
        assert failed_attempts >= rules.failed_attempts
        assert escalation.escalate_at == now
    elif failed_attempts < rules.failed_attempts:
        assert escalation.escalate_at == no_contact_at
    task = escalation.task
    assert task.window_opens_at == escalation.escalate_at
    assert task.due_at >= incident + hours(rules.in_person_due_hours) or (
        R.IN_PERSON_DUE_PASSED in escalation.reason
    )
    assert task.with_deputy == (rules.deputy == "always")


# --------------------------------------------------------------------------- follow-ups


def test_follow_ups_come_on_their_days_after_contact() -> None:
    tasks = follow_ups(POLICY, contact_at=ny(2024, 5, 1, 10), declined=False, do_not_contact=False)

    assert [task.kind for task in tasks] == [TaskKind.FOLLOW_UP, TaskKind.FOLLOW_UP]
    assert [(task.window_opens_at, task.due_at, task.expires_at) for task in tasks] == [
        (ny(2024, 5, 8, 10), ny(2024, 5, 9, 10), ny(2024, 5, 11, 10)),
        (ny(2024, 5, 31, 10), ny(2024, 6, 1, 10), ny(2024, 6, 3, 10)),
    ]


def test_follow_up_days_are_calendar_days_and_keep_out_of_quiet_hours() -> None:
    # Contact late on 5 March; day 7 falls after the clocks go forward on 10 March.
    week, _ = follow_ups(
        POLICY, contact_at=ny(2024, 3, 5, 23), declined=False, do_not_contact=False
    )

    assert week.window_opens_at == ny(2024, 3, 12, 23)
    assert week.due_at == ny(2024, 3, 14, 8)
    assert week.quiet_hours_shifted


@pytest.mark.parametrize(
    ("declined", "do_not_contact"), [(True, False), (False, True), (True, True)]
)
def test_no_follow_ups_after_a_decline_or_do_not_contact(
    declined: bool, do_not_contact: bool
) -> None:
    contact_at = ny(2024, 5, 1, 10)

    assert (
        follow_ups(POLICY, contact_at=contact_at, declined=declined, do_not_contact=do_not_contact)
        == []
    )


def test_follow_ups_carry_the_case_priority() -> None:
    tasks = follow_ups(
        POLICY, contact_at=ny(2024, 5, 1, 10), declined=False, do_not_contact=False, priority=4
    )

    assert {task.priority for task in tasks} == {4}


@given(policy=policies(), contact_at=instants)
def test_follow_ups_only_after_contact(policy: Policy, contact_at: datetime) -> None:
    tasks = follow_ups(policy, contact_at=contact_at, declined=False, do_not_contact=False)
    rules, contact = policy.follow_ups, utc(contact_at)

    assert len(tasks) == len(rules.days)
    for day, task in zip(rules.days, tasks, strict=True):
        assert task.window_opens_at > contact
        assert abs(task.window_opens_at - contact - timedelta(days=day)) <= hours(1)
        assert task.expires_at - task.window_opens_at == hours(rules.window_close_hours)
        assert_due_keeps_out_of_quiet_hours(
            policy, task, task.window_opens_at + hours(rules.due_hours)
        )


# --------------------------------------------------------------------------- late reports


def test_a_late_report_counts_its_windows_from_its_receipt() -> None:
    received = INCIDENT + timedelta(days=10)
    result = plan(received_at=received)
    (task,) = result.tasks
    assert (task.window_opens_at, task.due_at, task.expires_at) == (
        utc(received),
        utc(received) + hours(24),
        utc(received) + hours(72),
    )
    assert task.late
    assert result.late
    assert result.windows_from == utc(received)
    assert result.incident_at == utc(INCIDENT)
    assert result.reason == (R.LATE_REPORT, R.REMOTE_CONTACT_SCHEDULED)


def test_a_report_late_but_inside_its_window_keeps_the_incident_times() -> None:
    result = plan(received_at=INCIDENT + hours(50))
    (task,) = result.tasks
    assert task.window_opens_at == utc(INCIDENT)
    assert task.expires_at == utc(INCIDENT) + hours(72)
    assert not task.late
    assert not result.late
    assert result.reason == (R.REMOTE_CONTACT_SCHEDULED,)


def test_a_report_received_as_its_window_closes_is_late() -> None:
    (task,) = plan(received_at=INCIDENT + hours(72)).tasks
    assert task.late
    assert task.window_opens_at == utc(INCIDENT) + hours(72)


@pytest.mark.parametrize(
    ("age", "planned"),
    [(timedelta(days=30), True), (timedelta(days=30, seconds=1), False)],
    ids=["30-days-gets-a-task", "just-over-30-days-is-too-old"],
)
def test_a_report_older_than_max_age_days_is_counted_without_a_task(
    age: timedelta, planned: bool
) -> None:
    result = plan(received_at=INCIDENT + age)
    assert bool(result.tasks) is planned
    assert (R.TOO_OLD in result.reason) is not planned
    assert result.late


def test_max_age_days_is_the_program_s_choice() -> None:
    strict = policy_with(late_reports={"max_age_days": 7})
    assert plan(strict, received_at=INCIDENT + timedelta(days=8)).reason == (R.TOO_OLD,)
    assert plan(strict, received_at=INCIDENT + timedelta(days=6)).tasks


def test_an_incident_time_after_the_receipt_is_taken_as_the_receipt() -> None:
    received = INCIDENT
    result = plan(incident_at=INCIDENT + hours(5), received_at=received)
    (task,) = result.tasks
    assert result.incident_at == utc(received)
    assert task.window_opens_at == utc(received)
    assert not task.late
    assert result.reason == (R.INCIDENT_AFTER_RECEIPT, R.REMOTE_CONTACT_SCHEDULED)


def test_a_report_applied_after_even_its_late_windows_closed_is_never_born_expired() -> None:
    received = INCIDENT + hours(1)
    now = INCIDENT + timedelta(days=4)  # the scheduler was down for days
    result = plan(received_at=received, now=now)
    (task,) = result.tasks
    assert task.window_opens_at == utc(now)
    assert task.expires_at == utc(now) + hours(72)
    assert task.late
    assert R.APPLIED_LATE in result.reason


def test_a_late_repeat_overdose_follows_the_same_rule() -> None:
    received = INCIDENT + timedelta(days=5)
    result = plan(received_at=received, repeat=True, current_priority=2)
    (task,) = result.tasks
    assert task.window_opens_at == utc(received)
    assert task.late
    assert task.priority == 3
    assert R.LATE_REPORT in result.reason
    assert R.REPEAT_WINDOWS_RESTARTED in result.reason


def test_a_declined_late_report_plans_nothing_and_is_still_marked_late() -> None:
    result = plan(received_at=INCIDENT + timedelta(days=5), consent="declined")
    assert result.tasks == ()
    assert result.late
    assert R.CONSENT_DECLINED in result.reason


def test_escalation_of_a_late_report_counts_from_its_receipt() -> None:
    received = utc(INCIDENT + timedelta(days=10))
    (remote,) = plan(received_at=received).tasks
    escalation = escalation_due(
        POLICY,
        windows_from=received,
        task_opened_at=remote.window_opens_at,
        failed_attempts=0,
        contact_made=False,
        now=received,
        late=remote.late,
    )
    assert escalation is not None
    assert escalation.escalate_at == received + hours(48)
    assert escalation.task.due_at == received + hours(72)
    assert escalation.task.expires_at == received + hours(72)
    assert escalation.task.late


def test_max_age_days_cannot_be_shorter_than_the_remote_window() -> None:
    with pytest.raises(PolicyError, match=r"late_reports\.max_age_days \(2"):
        parse_policy('program_id = "p"\ntimezone = "UTC"\n[late_reports]\nmax_age_days = 2\n')
    with pytest.raises(PolicyError, match=r"late_reports\.max_age_days"):
        parse_policy('program_id = "p"\ntimezone = "UTC"\n[late_reports]\nmax_age_days = 0\n')
    with pytest.raises(PolicyError, match=r"late_reports\.grace"):
        parse_policy('program_id = "p"\ntimezone = "UTC"\n[late_reports]\ngrace = 1\n')


report_ages = st.integers(1, 60 * 24 * 60).map(lambda minutes: timedelta(minutes=minutes))
apply_lags = st.sampled_from([timedelta(0), timedelta(seconds=2), hours(3), timedelta(days=4)])


@settings(max_examples=300)
@given(
    policy=policies(),
    incident_at=instants,
    age=report_ages,
    lag=apply_lags,
    repeat=st.booleans(),
)
def test_late_reports_plan_nothing_born_expired_and_mark_what_is_late(
    policy: Policy, incident_at: datetime, age: timedelta, lag: timedelta, repeat: bool
) -> None:
    """Over report age (minutes to 60 days) x time of day x quiet hours x DST x zone."""
    received = utc(incident_at) + age
    now = received + lag
    result = plan(policy, incident_at=incident_at, received_at=received, now=now, repeat=repeat)
    window = hours(policy.remote_contact.window_close_hours)
    too_old = age > timedelta(days=policy.late_reports.max_age_days)
    assert result.late == (age >= window or (not too_old and result.windows_from > received))
    if too_old:
        assert result.tasks == ()
        assert R.TOO_OLD in result.reason
        return
    for task in result.tasks:
        assert task.expires_at > received
        assert task.expires_at > now
        assert task.window_opens_at <= task.due_at <= task.expires_at
        assert task.late == result.late
        assert task.expires_at - task.window_opens_at <= window
    if age >= window:
        assert R.LATE_REPORT in result.reason
        assert result.windows_from >= received


@settings(max_examples=300)
@given(
    policy=policies(),
    incident_at=instants,
    age=report_ages,
    since=st.integers(0, (MAX_WINDOW_HOURS + 24) * 60).map(lambda m: timedelta(minutes=m)),
    failed_attempts=st.integers(0, 8),
)
def test_escalation_of_any_report_is_never_born_expired(
    policy: Policy, incident_at: datetime, age: timedelta, since: timedelta, failed_attempts: int
) -> None:
    received = utc(incident_at) + age
    result = plan(policy, incident_at=incident_at, received_at=received)
    if not result.tasks:
        return
    (remote,) = result.tasks
    now = remote.window_opens_at + since
    escalation = escalation_due(
        policy,
        windows_from=result.windows_from,
        task_opened_at=remote.window_opens_at,
        failed_attempts=failed_attempts,
        contact_made=False,
        now=now,
        late=remote.late,
    )
    if escalation is None:
        return
    visit = escalation.task
    assert escalation.escalate_at >= received or not result.late
    assert visit.expires_at > escalation.escalate_at
    assert visit.window_opens_at <= visit.due_at <= visit.expires_at
    assert visit.late == remote.late
