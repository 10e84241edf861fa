"""Person linking and episode merging: which person a report is about, and which overdose.

Intake publishes each report with its identity sealed and with blind keys (HMAC indexes of
name+DOB, phone and facility-scoped MRN). The scheduler opens the seal, finds candidate people
by those keys (and by the DOB-only key, for blocking), and asks :func:`link` who the report is
about. It then asks :func:`episode_for` whether the report belongs to an episode the person
already has, so that an EMS run and the ED visit of the same overdose become one episode, and
:func:`is_repeat` whether a new episode is a repeat overdose on an open case. This module reads
no clock, database or bus; decisions go out as values carrying machine-readable reasons
(:class:`LinkReason`).

Exceptions::

    ValueError   a naive datetime, or a window that is not positive

Decisions taken where the design left a choice (tests pin each one):

Linking (:func:`link`), rules in order
    1. *De-identified.* No name and no phone: ``deidentified`` (``no_identity``). Nothing is
       linked, not even by MRN: the episode is counted but nobody can be assigned to reach the
       person. A name is "present" when family or given name keeps a letter after
       :func:`~shared.sealing.normalize_name`, a phone when one keeps at least 7 digits after
       :func:`~shared.sealing.normalize_phone` (or the report carries a phone key), so a
       name of pure punctuation is no name.
    2. *Exact.* A candidate is an exact match when it holds the report's name+DOB key
       (``name_dob_key``) or MRN key (``mrn_key``), or holds its phone key and has a similar
       name (below) with date of birth equal or unknown on either side
       (``phone_key_and_similar_name``). An MRN key is exact on its own, as the design says,
       even against a different DOB on file: it is the facility's own id for the patient.
    3. *Conflict.* Exact matches on more than one distinct person are not certain: the result
       is ``possible`` (``conflicting_exact_matches``) listing those people first, then any
       possible matches (rule 4). Candidates are told apart by ``person_id``; two rows of the
       same person are one candidate, their reasons combined.
    4. *Possible.* Without an exact match, a candidate is a possible match when both dates of
       birth are known and equal and the names are similar (``dob_and_similar_name``), or it
       holds the phone key but is not an exact match: a dissimilar or partly missing name
       (``phone_key_only``: households share phones) or a similar name with a different date
       of birth (``phone_key_similar_name_dob_differs``: a parent and child who share a name
       and a phone). The result is ``possible`` listing them; the caller creates a new person
       and records the list for a team lead to confirm or split. Nothing is merged silently.
    5. Otherwise ``new`` (``no_match``): the caller creates a new person.

    An ``exact`` decision names the person and lists no possible matches. ``possible`` and
    ``new`` name nobody (``person_id`` is None). Possible matches keep the candidates' order.
    A report's name+DOB key already proves an equal name and DOB, so the similarity rule
    only matters for reports that carry a typo.

Name similarity (:func:`names_similar`)
    * Both names are folded with :func:`~shared.sealing.normalize_name` (case, accents,
      spaces and punctuation do not count). Family *and* given name are needed on both sides.
    * Each part is equal, or, when both are at least 4 letters long, within optimal string
      alignment distance 1 (:func:`osa_distance`: one letter inserted, deleted, substituted,
      or two adjacent letters transposed). Shorter names must be equal: one letter is too
      much of "Ann" or "Li". Each part may carry its own typo.
    * The same comparison with family and given swapped also counts (a feed that put the
      names in the wrong fields).
    * Nicknames are out of scope: "Bob" is not "Robert". Date of birth is compared by the
      rules above, never here; the caller blocks candidates by the DOB key.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Literal

from shared.events.common import BlindKeys
from shared.sealing import normalize_name, normalize_phone

__all__ = [
    "DEFAULT_EPISODE_WINDOW",
    "SIMILAR_MIN_LENGTH",
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
    "episode_for",
    "is_repeat",
    "link",
    "merge_people",
    "names_similar",
    "osa_distance",
]

DEFAULT_EPISODE_WINDOW = timedelta(hours=12)
SIMILAR_MIN_LENGTH = 4
"""Names shorter than this must be equal to count as similar."""

LinkKind = Literal["exact", "possible", "new", "deidentified"]


class LinkReason(StrEnum):
    """Stable, machine-readable reasons for a link decision. Values never change once released."""

    NAME_DOB_KEY = "name_dob_key"
    MRN_KEY = "mrn_key"
    PHONE_KEY_AND_SIMILAR_NAME = "phone_key_and_similar_name"
    DOB_AND_SIMILAR_NAME = "dob_and_similar_name"
    PHONE_KEY_ONLY = "phone_key_only"
    PHONE_KEY_SIMILAR_NAME_DOB_DIFFERS = "phone_key_similar_name_dob_differs"
    CONFLICTING_EXACT_MATCHES = "conflicting_exact_matches"
    NO_IDENTITY = "no_identity"
    NO_MATCH = "no_match"


_EXACT_REASONS = frozenset(
    {LinkReason.NAME_DOB_KEY, LinkReason.MRN_KEY, LinkReason.PHONE_KEY_AND_SIMILAR_NAME}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportIdentity:
    """Who a report is about, opened from its sealed identity, with its blind keys."""

    family: str | None = None
    given: str | None = None
    dob: date | None = None
    phones: tuple[str, ...] = ()
    mrn: str | None = None
    blind: BlindKeys = field(default_factory=BlindKeys)

    @property
    def deidentified(self) -> bool:
        """No name and no phone (after normalization): counted, never assigned."""
        has_name = bool(normalize_name(self.family or "") or normalize_name(self.given or ""))
        has_phone = self.blind.phone is not None or any(normalize_phone(p) for p in self.phones)
        return not (has_name or has_phone)


@dataclass(frozen=True, slots=True, kw_only=True)
class PersonCandidate:
    """A known person, with the blind keys of every report linked to them."""

    person_id: uuid.UUID
    family: str | None = None
    given: str | None = None
    dob: date | None = None
    name_dob_keys: frozenset[str] = frozenset()
    phone_keys: frozenset[str] = frozenset()
    mrn_keys: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class PossibleMatch:
    """A person the report may be about, for a team lead to confirm or split."""

    person_id: uuid.UUID
    reasons: tuple[LinkReason, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkDecision:
    """Who a report is about: an exact person, possible people, a new person, or nobody."""

    kind: LinkKind
    person_id: uuid.UUID | None
    """The matched person for ``exact``; None otherwise (the caller creates the person)."""
    possible: tuple[PossibleMatch, ...] = ()
    reasons: tuple[LinkReason, ...] = ()


# --------------------------------------------------------------------------- name similarity


def osa_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: Damerau-Levenshtein where no substring is edited twice.

    Insertions, deletions, substitutions and transpositions of two adjacent letters each cost
    1, so ``osa_distance("jnae", "jane") == 1``.
    """
    if a == b:
        return 0
    if not a or not b:
        return len(a) or len(b)
    # Three rolling rows: the row two back is needed for transpositions.
    before = list(range(len(b) + 1))
    previous = before
    for i in range(1, len(a) + 1):
        current = [i, *([0] * len(b))]
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(
                previous[j] + 1,  # deletion
                current[j - 1] + 1,  # insertion
                previous[j - 1] + cost,  # substitution
            )
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], before[j - 2] + 1)  # transposition
        before, previous = previous, current
    return previous[len(b)]


def _part_similar(a: str, b: str) -> bool:
    if not a or not b:
        return False
    if a == b:
        return True
    if min(len(a), len(b)) < SIMILAR_MIN_LENGTH:
        return False
    return osa_distance(a, b) <= 1


def names_similar(
    family: str | None, given: str | None, other_family: str | None, other_given: str | None
) -> bool:
    """Whether two names are the same but for a typo each, or swapped fields (module docs)."""
    fam, giv = normalize_name(family or ""), normalize_name(given or "")
    ofam, ogiv = normalize_name(other_family or ""), normalize_name(other_given or "")
    if not (fam and giv and ofam and ogiv):
        return False
    straight = _part_similar(fam, ofam) and _part_similar(giv, ogiv)
    return straight or (_part_similar(fam, ogiv) and _part_similar(giv, ofam))


# --------------------------------------------------------------------------- linking


def _match_reasons(report: ReportIdentity, candidate: PersonCandidate) -> list[LinkReason]:
    """Every exact or possible reason this candidate matches the report for (rules 2 and 4)."""
    keys = report.blind
    reasons: list[LinkReason] = []
    if keys.name_dob is not None and keys.name_dob in candidate.name_dob_keys:
        reasons.append(LinkReason.NAME_DOB_KEY)
    if keys.mrn is not None and keys.mrn in candidate.mrn_keys:
        reasons.append(LinkReason.MRN_KEY)
    similar = names_similar(report.family, report.given, candidate.family, candidate.given)
    dobs_known = report.dob is not None and candidate.dob is not None
    dob_conflict = dobs_known and report.dob != candidate.dob
    if keys.phone is not None and keys.phone in candidate.phone_keys:
        if not similar:
            reasons.append(LinkReason.PHONE_KEY_ONLY)
        elif dob_conflict:
            reasons.append(LinkReason.PHONE_KEY_SIMILAR_NAME_DOB_DIFFERS)
        else:
            reasons.append(LinkReason.PHONE_KEY_AND_SIMILAR_NAME)
    if similar and dobs_known and not dob_conflict:
        reasons.append(LinkReason.DOB_AND_SIMILAR_NAME)
    return reasons


def _unique(reasons: Sequence[LinkReason]) -> tuple[LinkReason, ...]:
    return tuple(dict.fromkeys(reasons))


def link(report: ReportIdentity, candidates: Sequence[PersonCandidate]) -> LinkDecision:
    """Which person a report is about, by the rules in the module docs, with the reasons."""
    if report.deidentified:
        return LinkDecision(kind="deidentified", person_id=None, reasons=(LinkReason.NO_IDENTITY,))

    by_person: dict[uuid.UUID, list[LinkReason]] = {}
    for candidate in candidates:
        reasons = _match_reasons(report, candidate)
        if reasons:
            by_person.setdefault(candidate.person_id, []).extend(reasons)
    exact: list[PossibleMatch] = []
    possible: list[PossibleMatch] = []
    for person_id, found in by_person.items():
        unique = _unique(found)
        if _EXACT_REASONS.intersection(unique):
            # Only the reasons that made it exact: "dob_and_similar_name" adds nothing.
            strong = tuple(r for r in unique if r in _EXACT_REASONS)
            exact.append(PossibleMatch(person_id=person_id, reasons=strong))
        else:
            possible.append(PossibleMatch(person_id=person_id, reasons=unique))

    if len(exact) == 1:
        (match,) = exact
        return LinkDecision(kind="exact", person_id=match.person_id, reasons=match.reasons)
    if exact:
        return LinkDecision(
            kind="possible",
            person_id=None,
            possible=(*exact, *possible),
            reasons=(LinkReason.CONFLICTING_EXACT_MATCHES,),
        )
    if possible:
        return LinkDecision(
            kind="possible",
            person_id=None,
            possible=tuple(possible),
            reasons=_unique([r for match in possible for r in match.reasons]),
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
