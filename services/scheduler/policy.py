"""The outreach policy: one TOML file per program, and the pure decisions taken from it.

A program's policy says how an overdose *episode* becomes time-boxed outreach tasks: a remote
contact first, an in-person visit when that fails, follow-ups after contact. This module
parses and validates the policy files and makes those decisions as plain functions. It reads
no clock, database or bus: times come in as arguments (``now`` from the injected clock), and
plans go out as values carrying machine-readable reasons (:class:`PlanReason`).

Exceptions::

    ValueError
    └── PolicyError   a policy file that cannot be read or is invalid; names the file and key

Building a :class:`Policy` directly raises pydantic's ``ValidationError`` (also a
``ValueError``). The decision functions raise ``ValueError`` for impossible inputs (a naive
datetime, ``now`` before the task opened, a negative attempt count).

Decisions taken where the design left a choice (tests pin each one):

Policy files
    * One file per program, ``<program_id>.toml``, with ``program_id`` inside matching the
      file name. Unknown sections and keys are errors, so a misspelt key never falls back to
      a default silently. Omitted keys take the defaults, which ``policy.default.toml``
      spells out (the tests hold the file and the model defaults equal).
    * Numbers are whole hours (follow-up days are whole days) and strictly typed: ``"24"``
      and ``24.5`` are errors. Times of day are ``"HH:MM"`` strings on a 24-hour clock.
    * ``version`` is the file's own ``version`` string when it has one (whoever sets it must
      bump it on every change); otherwise ``sha256:`` and 12 hex digits of a hash of the
      *effective* rules: defaults filled in, ``program_id`` left out. So comments and key
      order do not change it, and programs on the same rules share it.
    * A change applies to tasks scheduled after it, not retroactively: every
      :class:`PlannedTask` records the version that set its times.

Episodes (:func:`plan_episode`)
    * Do-not-contact, consent declined at the scene and a de-identified report each plan no
      tasks. Every one that applies is listed in the reasons: do-not-contact first, then
      declined (with ``leave_behind_recorded``: the caller records the leave-behind), then
      de-identified (counted, but there is nobody to assign a task for).
    * Unknown consent gets a remote contact, because the design says "otherwise a remote
      contact task", and the plan says so (``consent_unknown_outreach_offered``).
    * Times count from the incident: the remote window opens at the overdose. A report that
      arrives late but while its remote window is still open keeps those times (its due time
      may have passed; the due timer then fires at once).
    * Late reports (``[late_reports]``). A report received at or after the moment its remote
      window would have closed is *late*: its windows count from its receipt instead, with
      the same durations, and the plan says so (``late_report_windows_from_receipt``). A
      report received more than ``max_age_days`` after the overdose is recorded and counted
      but planned no task (``too_old_for_outreach``). A late repeat overdose follows the same
      rule.
    * An incident time after the receipt (a local time read without its offset, a skewed
      clock) is taken as the receipt and marked (``incident_time_after_receipt``).
    * No task is born expired: should the scheduler apply a report only after even those
      windows have closed (it was down for days), they count from when it applies it
      (``windows_from_when_applied``), also marked late.
    * A repeat overdose while the case is open raises the priority by ``priority_step`` up to
      ``priorities.max`` (never lowering one already above it) and, with
      ``restart_windows``, plans a fresh remote contact from the new incident. Without it the
      plan holds no tasks but still carries the raised priority for the open ones.
      ``current_priority`` is ignored for a first episode, which takes the default priority.

Deaths (:func:`family_support`)
    * A fatal overdose, and any report of a person known to have died, plans no task to reach
      the person (``fatal_overdose_no_outreach`` / ``person_deceased``).
    * ``[fatal] family_support`` (off by default) plans one *family support* task when a death
      is recorded: its window opens then, it is due ``family_support_due_hours`` later and closes
      ``family_support_window_close_hours`` later; the phone and text quiet hours apply. It is
      for the family or household and never names the person who died as someone to contact.

Hot spots (``[hot_spot]``, :func:`hot_spot_due`)
    * Reporting's ``SpikeDetected`` of a level listed in ``levels`` (``alert`` by default;
      add ``warning`` to act on warnings too) opens one *hot-spot task* for the program and
      county, due ``due_hours`` after the alert was detected. It names no person.
    * While it is open, a later alert for the same county opens no second task: it is
      attached to the open one, whose due time moves to the later alert's due time (never
      earlier). The same alert published again (a warning upgraded) changes nothing twice.
    * ``enabled = false`` opens none.

Linking (``[linking]``)
    * The thresholds, in bits of match weight, that decide what happens to a report and a
      known person (docs/linking.md): at or above ``auto_link_weight`` with nothing to doubt,
      one person; at or above ``review_weight``, a possible match for a lead; below it, a flag
      at low priority when the two look like one overdose and weigh at least ``flag_weight``.
      They must be in that order. Whole or decimal numbers.
    * ``[linking.weights.<comparison>]`` (optional): ``<level> = { m = ..., u = ... }`` puts a
      program's re-estimated probabilities in place of the pinned ones (``portline linking
      estimate`` writes the section). An unknown comparison or level fails the load.

Quiet hours (:func:`shift_out_of_quiet_hours`)
    * Quiet hours run from ``start`` (inclusive) to ``end`` (exclusive) on the program's wall
      clock and may cross midnight. They move a *due time* to the next end of quiet hours;
      a window still opens on time. A task is held to quiet hours only when every one of
      its channels is (with only phone quiet, a text can still go out).
    * A due time shifted past the window's expiry is clamped to the expiry and marked
      (``due_clamped_at_expiry``): quiet hours never lengthen a window.
    * Across DST the end of quiet hours is read the way Python reads wall times: an ambiguous
      end is its first occurrence unless that is not later than the due time; an end that
      falls in the spring-forward gap is read with the offset before the gap (02:30 becomes
      03:30 daylight time).
    * Hours are durations (72 h is 72 real hours even across a DST change). Follow-up days
      are calendar days on the program's wall clock. Times may come in any zone and always
      go out in UTC.

Escalation (:func:`escalation_due`)
    * It is due at the earlier of the rules that hold: the failed-attempt count reached
      (known at ``now``) or ``hours_without_contact`` after the remote task opened. It is
      never earlier than a rule allows, and may be in the future, which is when the caller's
      timer should fire. Contact made means no escalation.
    * Escalation counts from the time the episode's windows count from (``windows_from``:
      the overdose, or the receipt of a late report), as does the visit's deadline.
    * The in-person visit opens at the escalation, is due ``in_person_due_hours`` after
      ``windows_from`` and closes at the later of that and the remote window's close.
      Escalated after its due time (say, a remote window longer than the in-person
      deadline), it is due at once and marked ``in_person_due_passed``. After its window has
      closed there is no escalation (``None``).
    * The peer always leads. A deputy goes only with ``deputy = "always"``; with
      ``"on_request"`` the task goes out without one and the plan says a lead may ask.

Follow-ups (:func:`follow_ups`)
    * Each follow-up window opens on its day after contact (same wall-clock time), is due
      ``due_hours`` later and closes ``window_close_hours`` later. Follow-ups reach the
      person the way the remote contact does, so the remote channels' quiet hours apply.
    * None after a decline or a do-not-contact request.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from services.scheduler.matching import Thresholds, WeightModel
from services.scheduler.matching.weights import (
    DEFAULT_AUTO_LINK_WEIGHT,
    DEFAULT_FLAG_WEIGHT,
    DEFAULT_REVIEW_WEIGHT,
)
from shared.events.scheduler import TaskKind

__all__ = [
    "CHANGE_NOTE",
    "DEFAULT_POLICY_RESOURCE",
    "MAX_FOLLOW_UP_DAYS",
    "MAX_WINDOW_HOURS",
    "Channel",
    "Consent",
    "DeputyRule",
    "EpisodePlan",
    "Escalation",
    "EscalationRules",
    "EscalationTrigger",
    "FatalRules",
    "FollowUpRules",
    "HotSpotRules",
    "LateReportRules",
    "LinkingRules",
    "PlanReason",
    "PlannedTask",
    "Policy",
    "PolicyError",
    "PriorityRules",
    "QuietHoursRules",
    "RemoteChannel",
    "RemoteContactRules",
    "RepeatOverdoseRules",
    "apply_repeat",
    "default_policy",
    "effective_incident",
    "escalation_due",
    "family_support",
    "follow_ups",
    "hot_spot_due",
    "is_late",
    "load_policies",
    "load_policy",
    "parse_policy",
    "plan_episode",
    "shift_out_of_quiet_hours",
]

DEFAULT_POLICY_RESOURCE = "policy.default.toml"
CHANGE_NOTE = (
    "Policy changes apply to tasks scheduled after the change, not retroactively: "
    "each task records the version of the policy that set its times."
)
MAX_WINDOW_HOURS = 14 * 24
"""No window, due time or escalation delay may exceed two weeks: tasks are time-boxed."""
MAX_FOLLOW_UP_DAYS = 365
MAX_LATE_REPORT_DAYS = 365

RemoteChannel = Literal["phone", "text"]
Channel = Literal["phone", "text", "in_person"]
Consent = Literal["accepted", "declined", "unknown"]
DeputyRule = Literal["never", "always", "on_request"]
EscalationTrigger = Literal["failed_attempts", "no_contact"]

_CHANNELS: frozenset[str] = frozenset(get_args(Channel))
_CONSENTS: frozenset[str] = frozenset(get_args(Consent))
_IN_PERSON: tuple[Channel, ...] = ("in_person",)
_CLOCK_TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_PROGRAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}")


# --------------------------------------------------------------------------- the policy file


class PolicyError(ValueError):
    """A policy file that cannot be read or is invalid. ``problems`` name the offending keys."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


def _parse_clock_time(value: object) -> time:
    if isinstance(value, time) and value.tzinfo is None and value.second == value.microsecond == 0:
        return value
    if isinstance(value, str) and (m := _CLOCK_TIME.fullmatch(value)):
        return time(int(m[1]), int(m[2]))
    raise ValueError(f'expected a time of day as "HH:MM" on a 24-hour clock, got {value!r}')


def _format_clock_time(value: time) -> str:
    return value.strftime("%H:%M")


_ClockTime = Annotated[
    time,
    BeforeValidator(_parse_clock_time),
    PlainSerializer(_format_clock_time, return_type=str),
]
_Hours = Annotated[StrictInt, Field(gt=0, le=MAX_WINDOW_HOURS)]
_Days = Annotated[StrictInt, Field(gt=0, le=MAX_FOLLOW_UP_DAYS)]


def _unique(values: tuple[str, ...], *, allow_empty: bool) -> tuple[str, ...]:
    if not values and not allow_empty:
        raise ValueError("must name at least one channel")
    if len(set(values)) != len(values):
        raise ValueError(f"must not repeat a channel, got {list(values)}")
    return values


class _Rules(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RemoteContactRules(_Rules):
    """The first rung: phone or text contact after the overdose. Hours count from the overdose."""

    first_attempt_due_hours: _Hours = 24
    window_close_hours: _Hours = 72
    channels: tuple[RemoteChannel, ...] = ("phone", "text")

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: tuple[RemoteChannel, ...]) -> tuple[RemoteChannel, ...]:
        _unique(value, allow_empty=False)
        return value


class EscalationRules(_Rules):
    """When a remote contact escalates to an in-person visit, and who goes."""

    failed_attempts: Annotated[StrictInt, Field(ge=1, le=20)] = 3
    hours_without_contact: _Hours = 48
    in_person_due_hours: _Hours = 72
    deputy: DeputyRule = "never"


class FollowUpRules(_Rules):
    """Follow-ups after contact: one per day listed, counted from the contact."""

    days: tuple[_Days, ...] = (7, 30)
    due_hours: _Hours = 24
    window_close_hours: _Hours = 72

    @field_validator("days")
    @classmethod
    def _ascending(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(later <= earlier for earlier, later in pairwise(value)):
            raise ValueError(f"must be strictly ascending with no repeats, got {list(value)}")
        return value


class QuietHoursRules(_Rules):
    """Hours of the program's wall clock when the listed channels are not due."""

    start: _ClockTime = time(21, 0)
    end: _ClockTime = time(8, 0)
    applies_to: tuple[Channel, ...] = ("phone", "text")

    @field_validator("applies_to")
    @classmethod
    def _channels(cls, value: tuple[Channel, ...]) -> tuple[Channel, ...]:
        _unique(value, allow_empty=True)
        return value

    def contains(self, wall_time: time) -> bool:
        """Whether a wall-clock time falls in quiet hours (start inclusive, end exclusive)."""
        if self.start < self.end:
            return self.start <= wall_time < self.end
        return wall_time >= self.start or wall_time < self.end


class RepeatOverdoseRules(_Rules):
    """A repeat overdose while the case is open."""

    priority_step: Annotated[StrictInt, Field(ge=1, le=10)] = 1
    restart_windows: StrictBool = True


class LateReportRules(_Rules):
    """Reports received after their remote window would have closed (see the module docs)."""

    max_age_days: Annotated[StrictInt, Field(gt=0, le=MAX_LATE_REPORT_DAYS)] = 30


class FatalRules(_Rules):
    """After a fatal overdose: no outreach to the person, ever; support for the family only
    where the program chooses it."""

    family_support: StrictBool = False
    family_support_due_hours: _Hours = 72
    family_support_window_close_hours: _Hours = 168


_Weight = Annotated[StrictInt | StrictFloat, Field(ge=-64, le=128)]


HotSpotLevel = Literal["warning", "alert"]


class HotSpotRules(_Rules):
    """Spike alerts that become work: which levels of reporting's ``SpikeDetected`` open a
    hot-spot task for the county, and its time box (see :func:`hot_spot_due`)."""

    enabled: StrictBool = True
    levels: tuple[HotSpotLevel, ...] = ("alert",)
    due_hours: _Hours = 48

    @field_validator("levels")
    @classmethod
    def _levels(cls, value: tuple[HotSpotLevel, ...]) -> tuple[HotSpotLevel, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"must not repeat a level, got {list(value)}")
        return value

    def opens_for(self, level: str) -> bool:
        """Whether an alert of this level opens (or extends) a hot-spot task."""
        return self.enabled and level in self.levels


_Probability = Annotated[StrictInt | StrictFloat, Field(gt=0, le=1)]


class LevelWeights(_Rules):
    """A level's re-estimated probabilities: ``m`` among one person's pairs, ``u`` among two
    people's (``portline linking estimate`` writes them)."""

    m: _Probability
    u: _Probability


class LinkingRules(_Rules):
    """Match-weight thresholds, in bits, for linking a report to a person, and any level's
    re-estimated m and u in place of the pinned ones (docs/linking.md)."""

    auto_link_weight: _Weight = DEFAULT_AUTO_LINK_WEIGHT
    review_weight: _Weight = DEFAULT_REVIEW_WEIGHT
    flag_weight: _Weight = DEFAULT_FLAG_WEIGHT
    weights: dict[str, dict[str, LevelWeights]] = Field(default_factory=dict)
    """``[linking.weights.<comparison>]``: ``<level> = { m = ..., u = ... }``."""

    @model_validator(mode="after")
    def _known_levels(self) -> LinkingRules:
        self.model  # noqa: B018  # raises ValueError naming an unknown comparison or level
        return self

    @property
    def model(self) -> WeightModel:
        """The weights this program links by: the pinned ones, with its overrides in place."""
        return WeightModel.overriding(
            {
                comparison: {name: (float(w.m), float(w.u)) for name, w in levels.items()}
                for comparison, levels in self.weights.items()
            }
        )

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(
            auto_link=float(self.auto_link_weight),
            review=float(self.review_weight),
            flag=float(self.flag_weight),
        )


class PriorityRules(_Rules):
    """Queue priorities: a higher number is more urgent."""

    default: Annotated[StrictInt, Field(ge=1, le=100)] = 2
    max: Annotated[StrictInt, Field(ge=1, le=100)] = 5


def _content_version(data: dict[str, Any]) -> str:
    """``sha256:`` and 12 hex digits of the effective rules (everything but the program id)."""
    content = {
        key: value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        for key, value in data.items()
        if key != "program_id"
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


class Policy(BaseModel):
    """One program's outreach policy, validated. Build variants with ``model_validate``.

    ``version`` is computed when not given (see the module docstring), so it is the last
    field; ``model_copy(update=...)`` would keep a stale version and is not how to vary one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    program_id: StrictStr
    timezone: StrictStr
    remote_contact: RemoteContactRules = RemoteContactRules()
    escalation: EscalationRules = EscalationRules()
    follow_ups: FollowUpRules = FollowUpRules()
    quiet_hours: QuietHoursRules = QuietHoursRules()
    repeat_overdose: RepeatOverdoseRules = RepeatOverdoseRules()
    priorities: PriorityRules = PriorityRules()
    late_reports: LateReportRules = LateReportRules()
    fatal: FatalRules = FatalRules()
    linking: LinkingRules = LinkingRules()
    hot_spot: HotSpotRules = HotSpotRules()
    version: StrictStr = Field(default_factory=_content_version)

    @field_validator("program_id")
    @classmethod
    def _program_id(cls, value: str) -> str:
        if not _PROGRAM_ID.fullmatch(value):
            raise ValueError(
                "must be 1-64 letters, digits, '-' or '_', starting with a letter or digit, "
                f"got {value!r}"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as 'America/New_York'"
            ) from None
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _VERSION.fullmatch(value):
            raise ValueError(
                "must be 1-64 letters, digits or . _ : + -, starting with a letter or digit, "
                f"got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Policy:
        problems = list(_incoherences(self))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def zone(self) -> ZoneInfo:
        """The program's time zone, in which quiet hours and follow-up days are read."""
        return ZoneInfo(self.timezone)

    def describe(self) -> dict[str, Any]:
        """The policy as JSON-ready data for ``GET /v1/policy``, with the change note."""
        rules = self.model_dump(mode="json", exclude={"program_id", "timezone", "version"})
        return {
            "program_id": self.program_id,
            "version": self.version,
            "timezone": self.timezone,
            "note": CHANGE_NOTE,
            **rules,
        }


def _incoherences(policy: Policy) -> Iterable[str]:
    """The rules that relate one key to another, each message naming both keys."""
    remote, escalation = policy.remote_contact, policy.escalation
    if remote.window_close_hours <= remote.first_attempt_due_hours:
        yield (
            f"remote_contact.window_close_hours ({remote.window_close_hours}) must be greater "
            f"than remote_contact.first_attempt_due_hours ({remote.first_attempt_due_hours})"
        )
    if escalation.hours_without_contact <= remote.first_attempt_due_hours:
        yield (
            f"escalation.hours_without_contact ({escalation.hours_without_contact}) must be "
            "greater than remote_contact.first_attempt_due_hours "
            f"({remote.first_attempt_due_hours}): no contact cannot be judged before the "
            "first attempt is due"
        )
    if escalation.hours_without_contact >= remote.window_close_hours:
        yield (
            f"escalation.hours_without_contact ({escalation.hours_without_contact}) must be "
            f"less than remote_contact.window_close_hours ({remote.window_close_hours}), so "
            "that escalation is reachable before the remote window closes"
        )
    if escalation.in_person_due_hours <= escalation.hours_without_contact:
        yield (
            f"escalation.in_person_due_hours ({escalation.in_person_due_hours}) must be "
            f"greater than escalation.hours_without_contact ({escalation.hours_without_contact})"
            ", so that a visit escalated for lack of contact is not already overdue"
        )
    linking = policy.linking
    if not linking.flag_weight <= linking.review_weight < linking.auto_link_weight:
        yield (
            f"linking.flag_weight ({linking.flag_weight}) <= linking.review_weight "
            f"({linking.review_weight}) < linking.auto_link_weight ({linking.auto_link_weight}) "
            "must hold"
        )
    follow = policy.follow_ups
    if follow.window_close_hours <= follow.due_hours:
        yield (
            f"follow_ups.window_close_hours ({follow.window_close_hours}) must be greater than "
            f"follow_ups.due_hours ({follow.due_hours})"
        )
    quiet = policy.quiet_hours
    if quiet.start == quiet.end:
        yield (
            f"quiet_hours.start and quiet_hours.end are both {_format_clock_time(quiet.start)}; "
            "quiet hours need a length (use applies_to = [] to turn them off)"
        )
    late = policy.late_reports
    if late.max_age_days * 24 < remote.window_close_hours:
        yield (
            f"late_reports.max_age_days ({late.max_age_days}, so {late.max_age_days * 24} h) "
            f"must not be shorter than remote_contact.window_close_hours "
            f"({remote.window_close_hours}): a report still inside its window is never too old"
        )
    fatal = policy.fatal
    if fatal.family_support_window_close_hours <= fatal.family_support_due_hours:
        yield (
            f"fatal.family_support_window_close_hours ({fatal.family_support_window_close_hours})"
            f" must be greater than fatal.family_support_due_hours "
            f"({fatal.family_support_due_hours})"
        )
    link = policy.linking
    if not link.flag_weight <= link.review_weight < link.auto_link_weight:
        yield (
            f"linking.flag_weight ({link.flag_weight}) must not exceed linking.review_weight "
            f"({link.review_weight}), which must be less than linking.auto_link_weight "
            f"({link.auto_link_weight})"
        )
    if policy.priorities.default > policy.priorities.max:
        yield (
            f"priorities.default ({policy.priorities.default}) must not exceed "
            f"priorities.max ({policy.priorities.max})"
        )


def _problems(error: ValidationError) -> list[str]:
    """One ``key: message`` line per pydantic error, keyed by the dotted TOML path."""
    problems = []
    for detail in error.errors(include_url=False):
        if detail["type"] == "default_factory_not_called":
            continue  # the version hash waits for valid rules: not a problem of its own
        key = ".".join(str(part) for part in detail["loc"])
        if detail["type"] == "value_error":
            message = str(detail["ctx"]["error"])
        elif detail["type"] == "extra_forbidden":
            message = "unknown key (not part of the policy; check the spelling)"
        else:
            message = detail["msg"]
            if detail["type"] != "missing" and isinstance(detail["input"], str | int | float):
                message += f", got {detail['input']!r}"
        problems.append(f"{key}: {message}" if key else message)
    return problems


def _validate(document: Mapping[str, Any], *, source: str) -> Policy:
    try:
        return Policy.model_validate(document)
    except ValidationError as error:
        raise PolicyError(source, _problems(error)) from None


def parse_policy(document: str, *, source: str = "<policy>") -> Policy:
    """Parse and validate the text of a policy file; ``source`` names it in errors."""
    try:
        data = tomllib.loads(document)
    except tomllib.TOMLDecodeError as error:
        raise PolicyError(source, [f"not valid TOML: {error}"]) from None
    return _validate(data, source=source)


def load_policy(path: Path) -> Policy:
    """Load and validate one policy file."""
    try:
        document = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyError(str(path), [f"cannot read: {error}"]) from None
    return parse_policy(document, source=str(path))


def load_policies(directory: Path) -> dict[str, Policy]:
    """Load every ``<program_id>.toml`` in a directory, keyed by program id.

    Every file is checked before anything is returned; one error lists every bad file.
    """
    if not directory.is_dir():
        raise PolicyError(str(directory), ["not a directory"])
    policies: dict[str, Policy] = {}
    problems: list[str] = []
    for path in sorted(directory.glob("*.toml")):
        try:
            policy = load_policy(path)
        except PolicyError as error:
            problems.extend(f"{path.name}: {problem}" for problem in error.problems)
            continue
        if policy.program_id != path.stem:
            problems.append(
                f"{path.name}: program_id {policy.program_id!r} does not match the file "
                f"name; expected {path.stem!r}"
            )
            continue
        policies[policy.program_id] = policy
    if problems:
        raise PolicyError(str(directory), problems)
    return policies


@functools.cache
def _default_document() -> str:
    return resources.files(__package__).joinpath(DEFAULT_POLICY_RESOURCE).read_text("utf-8")


def default_policy(program_id: str, timezone: str = "America/New_York") -> Policy:
    """The defaults of ``policy.default.toml`` for one program in its time zone."""
    document = tomllib.loads(_default_document())
    document.update(program_id=program_id, timezone=timezone)
    return _validate(document, source=DEFAULT_POLICY_RESOURCE)


# --------------------------------------------------------------------------- decisions


class PlanReason(StrEnum):
    """Stable, machine-readable reasons for a plan. Values never change once released."""

    DO_NOT_CONTACT = "do_not_contact"
    CONSENT_DECLINED = "consent_declined_no_tasks"
    LEAVE_BEHIND_RECORDED = "leave_behind_recorded"
    DEIDENTIFIED = "deidentified_cannot_assign"
    CONSENT_UNKNOWN = "consent_unknown_outreach_offered"
    REMOTE_CONTACT_SCHEDULED = "remote_contact_scheduled"
    REPEAT_PRIORITY_RAISED = "repeat_overdose_priority_raised"
    REPEAT_PRIORITY_AT_MAX = "repeat_overdose_priority_at_max"
    REPEAT_WINDOWS_RESTARTED = "repeat_overdose_windows_restarted"
    REPEAT_WINDOWS_KEPT = "repeat_overdose_windows_kept"
    DUE_SHIFTED = "due_shifted_out_of_quiet_hours"
    DUE_CLAMPED = "due_clamped_at_expiry"
    ESCALATION_FAILED_ATTEMPTS = "escalation_failed_attempts"
    ESCALATION_NO_CONTACT = "escalation_no_contact"
    IN_PERSON_VISIT_SCHEDULED = "in_person_visit_scheduled"
    IN_PERSON_DUE_PASSED = "in_person_due_passed"
    DEPUTY_BY_POLICY = "deputy_by_policy"
    DEPUTY_ON_REQUEST = "deputy_on_request"
    LATE_REPORT = "late_report_windows_from_receipt"
    APPLIED_LATE = "windows_from_when_applied"
    TOO_OLD = "too_old_for_outreach"
    INCIDENT_AFTER_RECEIPT = "incident_time_after_receipt"
    FATAL = "fatal_overdose_no_outreach"
    PERSON_DECEASED = "person_deceased"
    FAMILY_SUPPORT = "family_support_offered"


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedTask:
    """A task the scheduler should schedule. Times are UTC; opens <= due <= expires."""

    kind: TaskKind
    priority: int
    window_opens_at: datetime
    due_at: datetime
    expires_at: datetime
    policy_version: str
    quiet_hours_shifted: bool = False
    due_clamped_at_expiry: bool = False
    late: bool = False
    """Planned for a late report: its times count from the receipt, not the overdose."""
    with_deputy: bool = False
    deputy: DeputyRule = "never"
    """The program's deputy rule for an in-person visit ("never" for other tasks)."""

    def __post_init__(self) -> None:
        for name in ("window_opens_at", "due_at", "expires_at"):
            _require_aware(name, getattr(self, name))
        if not self.window_opens_at <= self.due_at <= self.expires_at:
            raise ValueError("a task needs window_opens_at <= due_at <= expires_at")
        if self.priority < 1:
            raise ValueError(f"priority must be at least 1, got {self.priority}")


@dataclass(frozen=True, slots=True, kw_only=True)
class EpisodePlan:
    """What an episode gets: its tasks (maybe none), the case priority, and why.

    ``incident_at`` is the overdose's time as the episode keeps it (never after the receipt);
    ``windows_from`` is the time its windows and escalation count from; ``late`` says the
    report came after its remote window would have closed.
    """

    tasks: tuple[PlannedTask, ...]
    reason: tuple[PlanReason, ...]
    priority: int | None
    policy_version: str
    incident_at: datetime
    received_at: datetime
    windows_from: datetime
    late: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Escalation:
    """An in-person visit to schedule, and when the escalation is (or becomes) due."""

    escalate_at: datetime
    trigger: EscalationTrigger
    task: PlannedTask
    reason: tuple[PlanReason, ...]

    def is_due(self, now: datetime) -> bool:
        return self.escalate_at <= now


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")


def _utc(name: str, value: datetime) -> datetime:
    """An aware input in UTC, where adding hours adds real hours (a zoned one adds wall hours)."""
    _require_aware(name, value)
    return value.astimezone(UTC)


def _check_channel(channel: str) -> None:
    if channel not in _CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {sorted(_CHANNELS)}")


def _end_of_quiet_hours(policy: Policy, when: datetime) -> tuple[datetime, bool]:
    zone, quiet = policy.zone, policy.quiet_hours
    when = when.astimezone(UTC)
    local = when.astimezone(zone)
    if not quiet.contains(local.time()):
        return when, False
    # The next wall-clock end after `when`; both folds cover DST's repeated and missing hours.
    candidates = (
        datetime.combine(local.date() + timedelta(days=days), quiet.end, zone)
        .replace(fold=fold)
        .astimezone(UTC)
        for days in (0, 1, 2)
        for fold in (0, 1)
    )
    return min(
        c for c in candidates if c > when and not quiet.contains(c.astimezone(zone).time())
    ), True


def shift_out_of_quiet_hours(policy: Policy, when: datetime, channel: str) -> tuple[datetime, bool]:
    """Move a due time in quiet hours to the end of quiet hours: ``(UTC time, shifted?)``."""
    _require_aware("when", when)
    _check_channel(channel)
    if channel not in policy.quiet_hours.applies_to:
        return when.astimezone(UTC), False
    return _end_of_quiet_hours(policy, when)


def _task(
    policy: Policy,
    *,
    kind: TaskKind,
    priority: int,
    opens: datetime,
    due: datetime,
    expires: datetime,
    channels: Sequence[Channel],
    with_deputy: bool = False,
    deputy: DeputyRule = "never",
    late: bool = False,
) -> tuple[PlannedTask, tuple[PlanReason, ...]]:
    """A task whose due time keeps out of quiet hours, clamped at its expiry."""
    shifted = clamped = False
    if all(channel in policy.quiet_hours.applies_to for channel in channels):
        due, shifted = _end_of_quiet_hours(policy, due)
        if due > expires:
            due, clamped = expires, True
    task = PlannedTask(
        kind=kind,
        priority=priority,
        window_opens_at=opens.astimezone(UTC),
        due_at=due.astimezone(UTC),
        expires_at=expires.astimezone(UTC),
        policy_version=policy.version,
        quiet_hours_shifted=shifted,
        due_clamped_at_expiry=clamped,
        late=late,
        with_deputy=with_deputy,
        deputy=deputy,
    )
    reasons: list[PlanReason] = []
    if shifted:
        reasons.append(PlanReason.DUE_SHIFTED)
    if clamped:
        reasons.append(PlanReason.DUE_CLAMPED)
    return task, tuple(reasons)


def apply_repeat(current_priority: int, policy: Policy) -> int:
    """The priority after a repeat overdose: one step up, bounded by the policy's max.

    A priority already above the max (set under an earlier policy) is kept, never lowered.
    """
    if current_priority < 1:
        raise ValueError(f"priority must be at least 1, got {current_priority}")
    raised = min(current_priority + policy.repeat_overdose.priority_step, policy.priorities.max)
    return max(current_priority, raised)


def effective_incident(incident_at: datetime, received_at: datetime) -> tuple[datetime, bool]:
    """The incident time an episode keeps: never after the receipt. ``(UTC time, clamped?)``."""
    incident_at = _utc("incident_at", incident_at)
    received_at = _utc("received_at", received_at)
    if incident_at > received_at:
        return received_at, True
    return incident_at, False


def is_late(policy: Policy, *, incident_at: datetime, received_at: datetime) -> bool:
    """Whether a report came at or after the moment its remote window would have closed."""
    incident, _ = effective_incident(incident_at, received_at)
    close = incident + timedelta(hours=policy.remote_contact.window_close_hours)
    return _utc("received_at", received_at) >= close


def plan_episode(
    policy: Policy,
    *,
    incident_at: datetime,
    received_at: datetime,
    now: datetime,
    consent: Consent,
    do_not_contact: bool,
    deidentified: bool,
    repeat: bool,
    current_priority: int | None,
    fatal: bool = False,
    deceased: bool = False,
) -> EpisodePlan:
    """The tasks a new overdose episode gets under the policy, with the reasons why.

    ``fatal``: the report says the person died of this overdose; ``deceased``: a death was
    recorded for the person before. Either way nothing is planned to reach the person.

    ``received_at`` is when intake received the report; ``now`` is when the scheduler applies
    it (from the injected clock). See the module docs for late and future-dated reports.
    """
    received_at = _utc("received_at", received_at)
    now = _utc("now", now)
    incident_at, clamped = effective_incident(incident_at, received_at)
    if consent not in _CONSENTS:
        raise ValueError(f"unknown consent {consent!r}; expected one of {sorted(_CONSENTS)}")
    clamp = [PlanReason.INCIDENT_AFTER_RECEIPT] if clamped else []
    remote = policy.remote_contact
    close = timedelta(hours=remote.window_close_hours)
    windows_from, late, timing = incident_at, False, list(clamp)
    if received_at >= incident_at + close:
        windows_from, late = received_at, True
        timing.append(PlanReason.LATE_REPORT)
    too_old = received_at - incident_at > timedelta(days=policy.late_reports.max_age_days)

    def done(
        tasks: tuple[PlannedTask, ...], reasons: Sequence[PlanReason], priority: int | None
    ) -> EpisodePlan:
        return EpisodePlan(
            tasks=tasks,
            reason=tuple(reasons),
            priority=priority,
            policy_version=policy.version,
            incident_at=incident_at,
            received_at=received_at,
            windows_from=windows_from,
            late=late,
        )

    blocked: list[PlanReason] = []
    if fatal:
        blocked.append(PlanReason.FATAL)
    elif deceased:
        blocked.append(PlanReason.PERSON_DECEASED)
    if do_not_contact:
        blocked.append(PlanReason.DO_NOT_CONTACT)
    if consent == "declined":
        blocked += [PlanReason.CONSENT_DECLINED, PlanReason.LEAVE_BEHIND_RECORDED]
    if deidentified:
        blocked.append(PlanReason.DEIDENTIFIED)
    if too_old:
        blocked.append(PlanReason.TOO_OLD)
    if blocked:
        return done((), [*blocked, *clamp], None)

    if windows_from + close <= now:  # applied after even these windows closed: never born expired
        windows_from, late = now, True
        timing.append(PlanReason.APPLIED_LATE)

    reasons: list[PlanReason] = []
    if consent == "unknown":
        reasons.append(PlanReason.CONSENT_UNKNOWN)
    priority = policy.priorities.default
    if repeat:
        before = policy.priorities.default if current_priority is None else current_priority
        priority = apply_repeat(before, policy)
        reasons.append(
            PlanReason.REPEAT_PRIORITY_RAISED
            if priority > before
            else PlanReason.REPEAT_PRIORITY_AT_MAX
        )
        if not policy.repeat_overdose.restart_windows:
            reasons.append(PlanReason.REPEAT_WINDOWS_KEPT)
            return done((), [*reasons, *timing], priority)
        reasons.append(PlanReason.REPEAT_WINDOWS_RESTARTED)

    task, shifts = _task(
        policy,
        kind=TaskKind.REMOTE_CONTACT,
        priority=priority,
        opens=windows_from,
        due=windows_from + timedelta(hours=remote.first_attempt_due_hours),
        expires=windows_from + close,
        channels=remote.channels,
        late=late,
    )
    reasons += [*timing, PlanReason.REMOTE_CONTACT_SCHEDULED, *shifts]
    return done((task,), reasons, priority)


def family_support(
    policy: Policy, *, recorded_at: datetime, priority: int | None = None
) -> PlannedTask | None:
    """The family support task a recorded death opens, if the program offers it (module docs)."""
    rules = policy.fatal
    if not rules.family_support:
        return None
    opens = _utc("recorded_at", recorded_at)
    task, _ = _task(
        policy,
        kind=TaskKind.FAMILY_SUPPORT,
        priority=policy.priorities.default if priority is None else priority,
        opens=opens,
        due=opens + timedelta(hours=rules.family_support_due_hours),
        expires=opens + timedelta(hours=rules.family_support_window_close_hours),
        channels=policy.remote_contact.channels,
    )
    return task


def escalation_due(
    policy: Policy,
    *,
    windows_from: datetime,
    task_opened_at: datetime,
    failed_attempts: int,
    contact_made: bool,
    now: datetime,
    priority: int | None = None,
    late: bool = False,
) -> Escalation | None:
    """When the remote contact escalates to an in-person visit, and that visit's task.

    ``windows_from`` is the time the episode's windows count from (the overdose, or the
    receipt of a late report; see :class:`EpisodePlan`), and ``late`` marks the visit as the
    remote task was marked. ``None`` when contact was made or the visit's window has already
    closed. The escalation may lie in the future (``escalate_at > now``): that is when the
    caller's timer fires, to ask again with the attempts and contact known by then.
    ``priority`` defaults to the policy's default.
    """
    windows_from = _utc("windows_from", windows_from)
    task_opened_at = _utc("task_opened_at", task_opened_at)
    now = _utc("now", now)
    if failed_attempts < 0:
        raise ValueError(f"failed_attempts cannot be negative, got {failed_attempts}")
    if task_opened_at < windows_from:
        raise ValueError("task_opened_at is before the episode's windows open (windows_from)")
    if now < task_opened_at:
        raise ValueError("now is before the remote task opened (task_opened_at)")
    if contact_made:
        return None

    rules = policy.escalation
    no_contact_at = task_opened_at + timedelta(hours=rules.hours_without_contact)
    attempts_reached = failed_attempts >= rules.failed_attempts
    reasons: list[PlanReason] = []
    if attempts_reached:
        reasons.append(PlanReason.ESCALATION_FAILED_ATTEMPTS)
    if no_contact_at <= now or not attempts_reached:
        reasons.append(PlanReason.ESCALATION_NO_CONTACT)
    trigger: EscalationTrigger
    if attempts_reached and now < no_contact_at:
        escalate_at, trigger = now, "failed_attempts"
    else:
        escalate_at, trigger = no_contact_at, "no_contact"

    due = windows_from + timedelta(hours=rules.in_person_due_hours)
    expires = windows_from + timedelta(
        hours=max(rules.in_person_due_hours, policy.remote_contact.window_close_hours)
    )
    if escalate_at >= expires:
        return None
    reasons.append(PlanReason.IN_PERSON_VISIT_SCHEDULED)
    if due < escalate_at:
        due = escalate_at
        reasons.append(PlanReason.IN_PERSON_DUE_PASSED)
    if rules.deputy == "always":
        reasons.append(PlanReason.DEPUTY_BY_POLICY)
    elif rules.deputy == "on_request":
        reasons.append(PlanReason.DEPUTY_ON_REQUEST)

    task, timing = _task(
        policy,
        kind=TaskKind.IN_PERSON_VISIT,
        priority=policy.priorities.default if priority is None else priority,
        opens=escalate_at,
        due=due,
        expires=expires,
        channels=_IN_PERSON,
        with_deputy=rules.deputy == "always",
        deputy=rules.deputy,
        late=late,
    )
    return Escalation(
        escalate_at=escalate_at.astimezone(UTC),
        trigger=trigger,
        task=task,
        reason=(*reasons, *timing),
    )


def follow_ups(
    policy: Policy,
    *,
    contact_at: datetime,
    declined: bool,
    do_not_contact: bool,
    priority: int | None = None,
) -> list[PlannedTask]:
    """The follow-up tasks after contact: one per policy day, none if declined or DNC."""
    _require_aware("contact_at", contact_at)
    if declined or do_not_contact:
        return []
    rules, zone = policy.follow_ups, policy.zone
    local_contact = contact_at.astimezone(zone)
    tasks = []
    for day in rules.days:
        # Calendar days on the program's wall clock: adding to a zoned datetime keeps its time.
        opens = (local_contact + timedelta(days=day)).astimezone(UTC)
        task, _ = _task(
            policy,
            kind=TaskKind.FOLLOW_UP,
            priority=policy.priorities.default if priority is None else priority,
            opens=opens,
            due=opens + timedelta(hours=rules.due_hours),
            expires=opens + timedelta(hours=rules.window_close_hours),
            channels=policy.remote_contact.channels,
        )
        tasks.append(task)
    return tasks


def hot_spot_due(
    policy: Policy, *, detected_at: datetime, current_due: datetime | None = None
) -> datetime:
    """When a hot-spot task is due: ``[hot_spot] due_hours`` after the alert that opened it.
    A later alert for the same county while it is open extends it to its own due time, never
    shortens it (module docs)."""
    due = _utc("detected_at", detected_at) + timedelta(hours=policy.hot_spot.due_hours)
    if current_due is None:
        return due
    return max(due, _utc("current_due", current_due))
