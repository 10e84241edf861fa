"""Person linking and episode merging: which person a report is about, and which overdose.

Intake publishes each report with its identity sealed and with blind keys (HMAC indexes of
name+DOB, phone, facility-scoped MRN and DOB). The scheduler opens the seal, finds candidate
people (by those keys, by keys it derives itself, and by an overdose of theirs near this one:
``batch.py``), and asks :func:`link` who the report is about. It then asks
:func:`episode_for` whether the report belongs to an episode the person already has, so that an
EMS run and the ED visit of the same overdose become one episode, and :func:`is_repeat`
whether a new episode is a repeat overdose on an open case. This module reads no clock,
database or bus; decisions go out as values carrying machine-readable reasons
(:class:`LinkReason`) and, per candidate, the explained match weight
(:mod:`services.scheduler.matching`, docs/linking.md).

Exceptions::

    ValueError   a naive datetime, or a window that is not positive

Decisions taken where the design left a choice (tests pin each one):

Linking (:func:`link`)
    1. *De-identified.* No name and no phone: ``deidentified`` (``no_identity``). Nothing is
       linked, not even by MRN: the episode is counted but nobody can be assigned to reach the
       person. A name is "present" when family or given name keeps a letter after
       :func:`~shared.sealing.normalize_name`, a phone when one keeps at least 7 digits after
       :func:`~shared.sealing.normalize_phone` (or the report carries a phone key), so a
       name of pure punctuation is no name.
    2. *Weighed.* Each candidate gets a match weight with its explanation
       (:func:`~services.scheduler.matching.explain`) and a verdict by the program's
       thresholds (:func:`~services.scheduler.matching.verdict`): ``link``, ``review``,
       ``flag`` or ``none``. Two rows of one person are one candidate.
    3. *Linked.* Exactly one candidate with the verdict ``link``: ``exact``
       (``match_weight_above_auto_link``), naming that person, with its explanation.
    4. *Conflict.* More than one: nothing is certain. ``possible``
       (``conflicting_matches``), listing them and any candidate for review.
    5. *Review.* Otherwise, candidates with the verdict ``review``: ``possible``
       (``possible_match``). The caller creates a new person and records each for a team lead
       to confirm or split, and any flagged candidate after them (level ``flag``). Nothing is
       merged silently.
    6. *Flag.* Otherwise, candidates with the verdict ``flag`` (their report looks like the
       same overdose, but too little else agrees for a review; or an EMS run and the ED visit
       at the hospital it named, or a run that transported without naming where and an ED
       visit within 3 hours after it, whatever the names): ``new``
       (``same_overdose_flagged``), listing them as low-priority items for a lead, so two peers
       never chase one person unknowingly.
    7. Otherwise ``new`` (``no_match``): the caller creates a new person.

    ``possible`` and ``new`` name nobody (``person_id`` is None). Possible matches are in order
    of weight, heaviest first, then the candidates' order.

Episodes (:func:`episode_for`)
    * A report joins the person's episode whose incident is within ``window`` (default 12 h,
      both ends inclusive) of the report's incident, either side: the ED visit usually comes
      after the EMS run, but a late feed may carry the earlier time.
    * Among those, an episode that lacks this report's source kind comes first (an EMS run
      merges with an ED visit), then the nearest incident; ties go to the earlier incident,
      then to the order given. Two reports of the same kind within the window also merge: a
      resent or revised report, or a second hospital after a transfer.
    * Times are compared as instants (in UTC), so a DST change never stretches or shrinks
      the window. Naive datetimes are errors.
    * ``None`` means a new episode.

Merging people (:func:`merge_people`)
    * A team lead confirms a possible match: the report's person (``merged``) is the existing
      person (``kept``). The kept person stays; every case of the merged person becomes theirs.
    * At most one case stays open: the kept person's open case (the earliest opened, if there
      were ever several), else the merged person's. Every other open case is *folded* into it
      (its episodes and tasks move there; it closes as a duplicate). Its priority is the
      highest of the open cases'.
    * Nothing either person asked for is lost: a do-not-contact request of either is the
      person's (final); a decline of either person's open case is the open case's; a death
      recorded of either is the person's (the earliest time). Then the open case's open tasks
      stop, for the strongest reason: ``person_deceased``, ``do_not_contact``, ``declined``.
    * A closed case's decline is history: it holds nothing, as for a single person (a new
      overdose after a closed case opens a new case).

Repeat overdose (:func:`is_repeat`)
    * A new episode is a repeat overdose when the person's case is open and its incident is
      more than ``window`` after the last incident (within the window it would have merged).
      A case open with no incident on record counts as a repeat.
    * A report of an overdose *before* the last one (a late feed) is a new episode but not a
      repeat: restarting the windows from an older incident would shorten them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from services.scheduler.matching import (
    DEFAULT_MODEL,
    EVENT_KINDS,
    Event,
    Explanation,
    Profile,
    Thresholds,
    WeightModel,
    explain,
    profile,
    verdict,
)
from services.scheduler.matching.names import fold
from shared.events.common import BlindKeys
from shared.sealing import normalize_phone

__all__ = [
    "DEFAULT_EPISODE_WINDOW",
    "CaseFacts",
    "EpisodeRef",
    "LinkDecision",
    "LinkKind",
    "LinkReason",
    "Merge",
    "PersonCandidate",
    "PersonFacts",
    "PossibleMatch",
    "ReportIdentity",
    "Thresholds",
    "episode_for",
    "is_repeat",
    "link",
    "merge_people",
]

DEFAULT_EPISODE_WINDOW = timedelta(hours=12)

LinkKind = Literal["exact", "possible", "new", "deidentified"]
MatchLevel = Literal["review", "flag"]


class LinkReason(StrEnum):
    """Stable, machine-readable reasons for a link decision. Values never change once released.

    Possible matches recorded before match weights (scheduler_0010) carry the reasons of the
    earlier rules (``name_dob_key``, ``phone_key_only``, ...) as they were stored.
    """

    MATCH_WEIGHT_ABOVE_AUTO_LINK = "match_weight_above_auto_link"
    CONFLICTING_MATCHES = "conflicting_matches"
    POSSIBLE_MATCH = "possible_match"
    SAME_OVERDOSE_FLAGGED = "same_overdose_flagged"
    NO_IDENTITY = "no_identity"
    NO_MATCH = "no_match"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportIdentity:
    """Who a report is about, opened from its sealed identity, with its blind keys and the
    overdose it reports."""

    family: str | None = None
    given: str | None = None
    middle: str | None = None
    dob: date | None = None
    sex: str | None = None
    postal_code: str | None = None
    phones: tuple[str, ...] = ()
    mrn: str | None = None
    blind: BlindKeys = field(default_factory=BlindKeys)
    derived_keys: tuple[tuple[str, str], ...] = ()
    """Keys the scheduler derived itself (the name key: matching.blocking)."""
    versioned_keys: tuple[tuple[str, str, str], ...] = ()
    """(version, kind, value) of every key above under every blind-index key version the
    report carries or the scheduler holds (a key rotation): a person indexed under any version
    shares one of them. What the person is recorded under when linked."""
    source_kind: str | None = None
    incident_at: datetime | None = None
    county: str | None = None
    hospital: str | None = None
    """EMS: where it transported the person; ED: the hospital that reported the visit."""
    transported: bool = False
    """An EMS run whose disposition says it transported the person (named or not where)."""

    @property
    def deidentified(self) -> bool:
        """No name and no phone (after normalization): counted, never assigned."""
        has_name = bool(fold(self.family or "") or fold(self.given or ""))
        has_phone = self.blind.phone is not None or any(normalize_phone(p) for p in self.phones)
        return not (has_name or has_phone)

    def profile(self) -> Profile:
        keys: dict[str, set[str]] = {}
        for kind in ("name_dob", "phone", "mrn", "dob"):
            if value := getattr(self.blind, kind):
                keys.setdefault(kind, set()).add(value)
        for kind, value in (*self.derived_keys, *((k, v) for _, k, v in self.versioned_keys)):
            keys.setdefault(kind, set()).add(value)
        events: tuple[Event, ...] = ()
        if self.incident_at is not None and self.source_kind in EVENT_KINDS:
            kinds = frozenset({self.source_kind})
            events = (Event(self.incident_at, kinds, self.county, self.hospital, self.transported),)
        return _profile(self, keys, events)


@dataclass(frozen=True, slots=True, kw_only=True)
class PersonCandidate:
    """A known person: their latest identity, the blind keys of every report linked to them,
    and their recent episodes."""

    person_id: uuid.UUID
    family: str | None = None
    given: str | None = None
    middle: str | None = None
    dob: date | None = None
    sex: str | None = None
    postal_code: str | None = None
    phones: tuple[str, ...] = ()
    name_dob_keys: frozenset[str] = frozenset()
    phone_keys: frozenset[str] = frozenset()
    mrn_keys: frozenset[str] = frozenset()
    dob_keys: frozenset[str] = frozenset()
    name_keys: frozenset[str] = frozenset()
    name_sound_keys: frozenset[str] = frozenset()
    episodes: tuple[EpisodeRef, ...] = ()

    def profile(self) -> Profile:
        keys: Mapping[str, frozenset[str]] = {
            "name_dob": self.name_dob_keys,
            "phone": self.phone_keys,
            "mrn": self.mrn_keys,
            "dob": self.dob_keys,
            "name": self.name_keys,
        }
        events = [
            Event(e.incident_at, e.sources & EVENT_KINDS, e.county, e.hospital, e.transported)
            for e in self.episodes
            if e.sources & EVENT_KINDS
        ]
        return _profile(self, keys, events)

    @classmethod
    def holding(
        cls,
        person_id: uuid.UUID,
        pairs: Iterable[tuple[str, str]],
        *,
        episodes: Iterable[EpisodeRef] = (),
        **identity: Any,
    ) -> PersonCandidate:
        """A candidate from its blind keys as ``(kind, value)`` pairs (``person_key`` rows),
        its episodes and its opened identity (``family``, ``given``, ``dob``, ...)."""
        by_kind: dict[str, set[str]] = {}
        for kind, value in pairs:
            by_kind.setdefault(kind, set()).add(value)

        def of(kind: str) -> frozenset[str]:
            return frozenset(by_kind.get(kind, ()))

        return cls(
            person_id=person_id,
            **identity,
            name_dob_keys=of("name_dob"),
            phone_keys=of("phone"),
            mrn_keys=of("mrn"),
            dob_keys=of("dob"),
            name_keys=of("name"),
            name_sound_keys=of("name_sound"),
            episodes=tuple(episodes),
        )


def _profile(
    who: ReportIdentity | PersonCandidate,
    keys: Mapping[str, Iterable[str]],
    events: Iterable[Event],
) -> Profile:
    return profile(
        family=who.family,
        given=who.given,
        middle=who.middle,
        dob=who.dob,
        sex=who.sex,
        postal_code=who.postal_code,
        phones=who.phones,
        keys=keys,
        events=events,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PossibleMatch:
    """A person the report may be about, for a team lead to confirm or split."""

    person_id: uuid.UUID
    reasons: tuple[LinkReason, ...]
    weight: float
    explanation: Explanation
    level: MatchLevel = "review"
    """``review``, or ``flag``: a low-priority item (the same overdose, little else agrees)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkDecision:
    """Who a report is about: an exact person, possible people, a new person, or nobody."""

    kind: LinkKind
    person_id: uuid.UUID | None
    """The matched person for ``exact``; None otherwise (the caller creates the person)."""
    possible: tuple[PossibleMatch, ...] = ()
    reasons: tuple[LinkReason, ...] = ()
    explanation: Explanation | None = None
    """For ``exact``: why the report is that person's."""


# --------------------------------------------------------------------------- linking


def link(
    report: ReportIdentity,
    candidates: Sequence[PersonCandidate],
    thresholds: Thresholds | None = None,
    model: WeightModel = DEFAULT_MODEL,
) -> LinkDecision:
    """Which person a report is about, by the rules in the module docs, with the reasons;
    weighed by the program's model (the pinned weights unless its policy re-estimated them)."""
    if report.deidentified:
        return LinkDecision(kind="deidentified", person_id=None, reasons=(LinkReason.NO_IDENTITY,))
    if not candidates:
        return LinkDecision(kind="new", person_id=None, reasons=(LinkReason.NO_MATCH,))
    limits = thresholds or Thresholds()
    mine = report.profile()
    weighed: dict[uuid.UUID, tuple[Explanation, str, int]] = {}
    for position, candidate in enumerate(candidates):
        explanation = explain(mine, candidate.profile(), model)
        known = weighed.get(candidate.person_id)
        if known is None or explanation.weight > known[0].weight:
            weighed[candidate.person_id] = (explanation, verdict(explanation, limits), position)
    ranked = sorted(weighed.items(), key=lambda item: (-item[1][0].weight, item[1][2]))

    def matches(*verdicts: str, reason: LinkReason) -> tuple[PossibleMatch, ...]:
        return tuple(
            PossibleMatch(
                person_id=person_id,
                reasons=(reason,),
                weight=explanation.weight,
                explanation=explanation,
                level="flag" if found == "flag" else "review",
            )
            for person_id, (explanation, found, _) in ranked
            if found in verdicts
        )

    linked = [(p, e) for p, (e, found, _) in ranked if found == "link"]
    if len(linked) == 1:
        ((person_id, explanation),) = linked
        return LinkDecision(
            kind="exact",
            person_id=person_id,
            reasons=(LinkReason.MATCH_WEIGHT_ABOVE_AUTO_LINK,),
            explanation=explanation,
        )
    if linked:
        return LinkDecision(
            kind="possible",
            person_id=None,
            possible=matches("link", "review", reason=LinkReason.CONFLICTING_MATCHES),
            reasons=(LinkReason.CONFLICTING_MATCHES,),
        )
    review = matches("review", reason=LinkReason.POSSIBLE_MATCH)
    flagged = matches("flag", reason=LinkReason.SAME_OVERDOSE_FLAGGED)
    if review:
        # The flags too: a lead who splits the reviewed pair still sees the same overdose's.
        return LinkDecision(
            kind="possible",
            person_id=None,
            possible=review + flagged,
            reasons=(LinkReason.POSSIBLE_MATCH,),
        )
    if flagged:
        return LinkDecision(
            kind="new",
            person_id=None,
            possible=flagged,
            reasons=(LinkReason.SAME_OVERDOSE_FLAGGED,),
        )
    return LinkDecision(kind="new", person_id=None, reasons=(LinkReason.NO_MATCH,))


# --------------------------------------------------------------------------- episodes


def _utc(name: str, value: datetime) -> datetime:
    """An aware datetime as a UTC instant; subtracting two zoned datetimes that share a tzinfo
    would give wall-clock time, wrong across a DST change."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")
    return value.astimezone(UTC)


def _check_window(window: timedelta) -> None:
    if window <= timedelta(0):
        raise ValueError(f"window must be positive, got {window}")


@dataclass(frozen=True, slots=True, kw_only=True)
class EpisodeRef:
    """One of the person's episodes: its overdose time and the kinds of report it holds."""

    episode_id: uuid.UUID
    incident_at: datetime
    sources: frozenset[str]
    """Source kinds of the reports merged into it, e.g. ``{"ems", "ed"}``."""
    fatal: bool = False
    """A report of it says the person died."""
    county: str | None = None
    """Where the overdose happened, as the first report gave it (evidence for linking)."""
    hospital: str | None = None
    """The hospital of the overdose: EMS's destination or the reporting ED, as the first
    report that named one gave it (evidence for linking)."""
    transported: bool = False
    """An EMS run of it says it transported the person (evidence for linking: with no
    hospital named, the ED visit that follows is flagged)."""

    def __post_init__(self) -> None:
        _utc("incident_at", self.incident_at)


def episode_for(
    incident_at: datetime,
    source_kind: str,
    episodes: Sequence[EpisodeRef],
    *,
    window: timedelta = DEFAULT_EPISODE_WINDOW,
) -> EpisodeRef | None:
    """The person's episode this report belongs to, or None for a new episode (module docs)."""
    at = _utc("incident_at", incident_at)
    _check_window(window)
    best: tuple[bool, timedelta, datetime, int] | None = None
    chosen: EpisodeRef | None = None
    for position, episode in enumerate(episodes):
        episode_at = episode.incident_at.astimezone(UTC)
        distance = abs(episode_at - at)
        if distance > window:
            continue
        # Lacking this source kind first, then nearest, then earlier, then first given.
        rank = (source_kind in episode.sources, distance, episode_at, position)
        if best is None or rank < best:
            best, chosen = rank, episode
    return chosen


def is_repeat(
    new_incident_at: datetime,
    *,
    case_open: bool,
    last_incident_at: datetime | None,
    window: timedelta = DEFAULT_EPISODE_WINDOW,
) -> bool:
    """Whether a new episode is a repeat overdose on the person's open case (module docs)."""
    at = _utc("new_incident_at", new_incident_at)
    last = None if last_incident_at is None else _utc("last_incident_at", last_incident_at)
    _check_window(window)
    if not case_open:
        return False
    return last is None or at - last > window


# --------------------------------------------------------------------------- merging people


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseFacts:
    """What a merge needs to know of one of a person's cases."""

    case_id: uuid.UUID
    open: bool
    declined: bool = False
    priority: int
    opened_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class PersonFacts:
    """What a merge needs to know of a person: what they asked for, and their cases."""

    person_id: uuid.UUID
    do_not_contact: bool = False
    deceased_at: datetime | None = None
    cases: tuple[CaseFacts, ...] = ()


StopReason = Literal["person_deceased", "do_not_contact", "declined"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Merge:
    """Two people as one (module docs): who stays, which case stays open, what holds."""

    person_id: uuid.UUID
    merged_person_id: uuid.UUID
    do_not_contact: bool
    deceased_at: datetime | None
    case_id: uuid.UUID | None
    """The open case after the merge; None when neither person had one."""
    folded_case_ids: tuple[uuid.UUID, ...]
    """Open cases closed as duplicates of ``case_id``, their episodes and tasks moved to it."""
    moved_case_ids: tuple[uuid.UUID, ...]
    """The merged person's cases, now the kept person's."""
    declined: bool
    """Whether the open case is declined."""
    priority: int | None
    """The open case's priority."""

    @property
    def stop(self) -> StopReason | None:
        """Why the open case's open tasks stop now, if they do."""
        if self.case_id is None:
            return None
        if self.deceased_at is not None:
            return "person_deceased"
        if self.do_not_contact:
            return "do_not_contact"
        if self.declined:
            return "declined"
        return None


def _earliest(cases: Sequence[CaseFacts]) -> list[CaseFacts]:
    return sorted(cases, key=lambda c: (c.opened_at, str(c.case_id)))


def merge_people(kept: PersonFacts, merged: PersonFacts) -> Merge:
    """Two people as one, by the rules in the module docs."""
    if kept.person_id == merged.person_id:
        raise ValueError("a person cannot be merged into themself")
    open_cases = [
        *_earliest([c for c in kept.cases if c.open]),
        *_earliest([c for c in merged.cases if c.open]),
    ]
    stays = open_cases[0] if open_cases else None
    deaths = [d for d in (kept.deceased_at, merged.deceased_at) if d is not None]
    return Merge(
        person_id=kept.person_id,
        merged_person_id=merged.person_id,
        do_not_contact=kept.do_not_contact or merged.do_not_contact,
        deceased_at=min(deaths, default=None),
        case_id=stays.case_id if stays else None,
        folded_case_ids=tuple(c.case_id for c in open_cases[1:]),
        moved_case_ids=tuple(c.case_id for c in merged.cases),
        declined=any(c.declined for c in open_cases),
        priority=max((c.priority for c in open_cases), default=None),
    )
