"""One side of a comparison: what is known of a report or of a person, folded for comparing.

A :class:`Profile` exists only in memory, built from an identity the scheduler opened from its
seal. It holds plaintext PHI and never leaves the process: explanations name levels and
reasons, never values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from services.scheduler.matching.names import NameParts, fold, is_placeholder, parse_name
from shared.sealing import normalize_phone

__all__ = [
    "EVENT_KINDS",
    "Event",
    "Profile",
    "normalize_county",
    "normalize_hospital",
    "normalize_sex",
    "profile",
]

EVENT_KINDS = frozenset({"ems", "ed", "law_enforcement"})
"""Report kinds whose incident time is the overdose's. A community referral's is often only
when the team heard of it, so it is no evidence of one event."""

_SEX = {
    "f": "F",
    "female": "F",
    "9919001": "F",  # NEMSIS v3.5 ePatient.25
    "9906001": "F",  # NEMSIS v3.4 ePatient.13
    "m": "M",
    "male": "M",
    "9919003": "M",
    "9906003": "M",
}


def normalize_sex(raw: str | None) -> str | None:
    """F or M as recorded (HL7 PID-8, NEMSIS codes, words); None for anything else."""
    if not raw:
        return None
    return _SEX.get(raw.strip().casefold())


def normalize_county(raw: str | None) -> str | None:
    """A county name or FIPS code folded for comparing (``Guilford County`` -> ``guilford``)."""
    if not raw:
        return None
    text = raw.strip().casefold()
    if text.isdigit():
        return text
    folded = fold(text)
    for tail in ("county", "parish", "borough"):
        if folded.endswith(tail) and len(folded) > len(tail):
            folded = folded[: -len(tail)]
    return folded or None


def normalize_hospital(raw: str | None) -> str | None:
    """A hospital's facility key folded for comparing: case and spacing do not count."""
    if not raw:
        return None
    return " ".join(raw.split()).upper() or None


@dataclass(frozen=True, slots=True)
class Event:
    """An overdose a report or a person's episode records: when, which kinds of report, where."""

    at: datetime
    kinds: frozenset[str]
    county: str | None = None
    hospital: str | None = None
    """The hospital of the overdose: where EMS transported the person (an EMS run), the
    hospital that reported the visit (an ED visit)."""
    transported: bool = False
    """An EMS run whose disposition says it transported the person (NEMSIS eDisposition.30),
    whether or not it names where."""

    def __post_init__(self) -> None:
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise ValueError(f"at must be timezone-aware, got {self.at!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """A report or a person, folded for comparing. Built with :func:`profile`."""

    family: NameParts | None = None
    given: NameParts | None = None
    middle: str | None = None
    dob: date | None = None
    sex: str | None = None
    zip: str | None = None
    phones: frozenset[str] = frozenset()
    keys: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Blind keys by kind (``name_dob``, ``phone``, ``mrn``, ``dob``, ``name``)."""
    events: tuple[Event, ...] = ()

    def has_key(self, kind: str, other: Profile) -> bool:
        """Whether both sides hold one blind key of this kind."""
        mine = self.keys.get(kind)
        theirs = other.keys.get(kind)
        return bool(mine and theirs and not mine.isdisjoint(theirs))

    @property
    def suffix(self) -> str | None:
        return (self.family.suffix if self.family else None) or (
            self.given.suffix if self.given else None
        )


def profile(
    *,
    family: str | None = None,
    given: str | None = None,
    middle: str | None = None,
    dob: date | None = None,
    sex: str | None = None,
    postal_code: str | None = None,
    phones: Iterable[str] = (),
    keys: Mapping[str, Iterable[str]] | None = None,
    events: Iterable[Event] = (),
) -> Profile:
    """A profile from an opened identity; placeholders and unusable values count as missing."""
    family_parts, given_parts = parse_name(family), parse_name(given)
    if is_placeholder(family_parts, given_parts):
        family_parts = given_parts = None
    zip_code = "".join(ch for ch in (postal_code or "") if ch.isdigit())[:5]
    return Profile(
        family=family_parts,
        given=given_parts,
        middle=fold(middle or "") or None,
        dob=dob,
        sex=normalize_sex(sex),
        zip=zip_code if len(zip_code) == 5 else None,
        phones=frozenset(p for p in (normalize_phone(raw) for raw in phones) if p),
        keys={kind: frozenset(v for v in values if v) for kind, values in (keys or {}).items()},
        events=tuple(
            Event(
                e.at.astimezone(UTC),
                e.kinds,
                normalize_county(e.county),
                normalize_hospital(e.hospital),
                e.transported,
            )
            for e in events
        ),
    )
