"""Weighing the evidence: a pair's match weight, its explanation, and the verdict.

:func:`explain` compares two profiles on every comparison (``comparisons.py``) and adds up the
weights of the levels they fall in (``weights.py``): the match weight, in bits. The
:class:`Explanation` keeps each piece of evidence with its level, weight and reason, so a lead
sees why, and the levels stay with the lead's decision for re-estimating the weights later. It
holds no value from the identity.

:func:`verdict` turns a weight into what happens to the pair, by the program's thresholds:

* ``link``: at or above ``auto_link`` with nothing to doubt: the same person, linked.
* ``review``: at or above ``review``, or above ``auto_link`` with a doubt (two different given
  names, a date of birth no typing error explains, a name or a date of birth missing on one
  side where the two reports are not of one overdose, a given name missing where the family
  names agree even at one overdose (twins overdose together), ...): a lead decides.
* ``flag``: below ``review``, but an EMS run that names where it transported the person and an
  ED visit within hours (the event levels ``transported_here`` and, within 3 hours at another
  hospital, ``same_overdose_other_hospital``), whatever the names; or an EMS run that
  transported the person without naming where and an ED visit within 3 hours after it
  (:attr:`Explanation.unnamed_transport`), whatever the names; or the two reports look like
  one overdose otherwise (``same_overdose``, ``same_overdose_other_county``) and weigh at least
  ``flag``: a low-priority item for a lead, so that two peers never chase one person
  unknowingly. A flag is never a link: a lead decides.
* ``none``: two people.

Exceptions::

    ValueError   thresholds out of order (flag <= review < auto_link)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from services.scheduler.matching.comparisons import (
    Found,
    compare_dob,
    compare_event,
    compare_mrn,
    compare_names,
    compare_phone,
    compare_sex,
    compare_suffix,
    compare_zip,
    unnamed_transport,
)
from services.scheduler.matching.profile import Profile
from services.scheduler.matching.weights import (
    DEFAULT_AUTO_LINK_WEIGHT,
    DEFAULT_FLAG_WEIGHT,
    DEFAULT_MODEL,
    DEFAULT_REVIEW_WEIGHT,
    MISSING,
    WeightModel,
)

__all__ = ["Evidence", "Explanation", "Thresholds", "Verdict", "explain", "verdict"]

Verdict = Literal["link", "review", "flag", "none"]

_TRANSPORTED = "transported_here"
_OTHER_HOSPITAL = "same_overdose_other_hospital"
_SAME_OVERDOSE = frozenset({_TRANSPORTED, "same_overdose", "same_overdose_other_county"})


@dataclass(frozen=True, slots=True)
class Evidence:
    """One comparison's level, its weight in bits and the reason it is evidence."""

    comparison: str
    level: str
    weight: float
    reason: str
    detail: str | None = None
    doubt: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "comparison": self.comparison,
            "level": self.level,
            "weight": self.weight,
            "reason": self.reason,
            "detail": self.detail,
            "doubt": self.doubt,
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why two records are (or are not) one person: every piece of evidence and the sum."""

    evidence: tuple[Evidence, ...]
    model: str = DEFAULT_MODEL.version
    """The version of the weights the evidence was weighed by."""
    unnamed_transport: str | None = None
    """An EMS run that transported the person and named no hospital, and an ED visit of the
    other within 3 hours after it (the detail: the gap in minutes); None otherwise. Flags the
    pair whatever it weighs; adds no weight."""

    @property
    def weight(self) -> float:
        """The match weight: the sum of the evidence, in bits."""
        return round(sum(e.weight for e in self.evidence), 2)

    @property
    def doubts(self) -> tuple[str, ...]:
        """The comparisons a careful person would stop at (never an automatic link)."""
        return tuple(e.comparison for e in self.evidence if e.doubt)

    @property
    def same_overdose(self) -> bool:
        """The two records look like reports of one overdose."""
        return any(e.comparison == "event" and e.level in _SAME_OVERDOSE for e in self.evidence)

    @property
    def transported(self) -> bool:
        """An EMS run and an ED visit within hours at the hospital EMS transported to, or
        within 3 hours at another hospital EMS named (a diversion, a slip of the pick list)."""
        return self.level("event") in (_TRANSPORTED, _OTHER_HOSPITAL)

    def level(self, comparison: str) -> str | None:
        """The level this pair fell in for a comparison; None if it did not apply."""
        return next((e.level for e in self.evidence if e.comparison == comparison), None)

    def as_dict(self, thresholds: Thresholds | None = None) -> dict[str, Any]:
        """JSON-ready, as stored with a possible match or a link and shown to a lead."""
        data: dict[str, Any] = {
            "model": self.model,
            "weight": self.weight,
            "doubts": list(self.doubts),
            "evidence": [e.as_dict() for e in self.evidence],
        }
        if self.unnamed_transport is not None:
            data["unnamed_transport"] = self.unnamed_transport
        if thresholds is not None:
            data["thresholds"] = thresholds.as_dict()
        return data


@dataclass(frozen=True, slots=True)
class Thresholds:
    """A program's match-weight thresholds, in bits (policy ``[linking]``)."""

    auto_link: float = DEFAULT_AUTO_LINK_WEIGHT
    review: float = DEFAULT_REVIEW_WEIGHT
    flag: float = DEFAULT_FLAG_WEIGHT

    def __post_init__(self) -> None:
        if not self.flag <= self.review < self.auto_link:
            raise ValueError(
                f"thresholds must satisfy flag <= review < auto_link, got flag={self.flag}, "
                f"review={self.review}, auto_link={self.auto_link}"
            )

    def as_dict(self) -> dict[str, float]:
        return {"auto_link": self.auto_link, "review": self.review, "flag": self.flag}


def _evidence(found: Found, detail: str | None = None) -> Evidence:
    level, own_detail = found
    return Evidence(
        comparison=level.comparison,
        level=level.name,
        weight=level.weight,
        reason=level.reason,
        detail=own_detail if detail is None else detail,
        doubt=level.doubt,
    )


_NAME_MISSING = (
    "missing on one side: without it, a twin or a sibling fits the rest as well, unless the "
    "two reports are of one overdose"
)

_GIVEN_MISSING_TOGETHER = (
    "missing on one side: a twin or a sibling who overdosed together shares the family name "
    "and the rest, and only the given name tells them apart"
)

_DOB_MISSING = (
    "missing on one side: without it, a parent and a child who share a name, a phone and an "
    "address fit the rest as well, unless the two reports are of one overdose or share a "
    "hospital's record number"
)


def explain(a: Profile, b: Profile, model: WeightModel = DEFAULT_MODEL) -> Explanation:
    """Every comparison of the two profiles, with its weight by the model's levels (the pinned
    ones by default; module docs). Symmetric."""
    family, given, _swapped = compare_names(a, b)
    event = compare_event(a, b)
    found: list[Found | None] = [
        family,
        given,
        compare_suffix(a, b),
        compare_dob(a, b),
        compare_sex(a, b),
        compare_phone(a, b),
        compare_mrn(a, b),
        compare_zip(a, b),
        event,
    ]
    evidence = [_evidence(f) for f in found if f is not None]
    if model is not DEFAULT_MODEL:
        evidence = [
            dataclasses.replace(e, weight=model.levels[e.comparison][e.level].weight)
            for e in evidence
        ]
    if event[0].name in _SAME_OVERDOSE and given[0].name == MISSING and family[0].weight > 0:
        # Twins and siblings who overdose together share the family name, the date of birth
        # (twins), the phone, the address and the overdose: only the given name tells them apart.
        evidence = [
            dataclasses.replace(e, doubt=True, reason=_GIVEN_MISSING_TOGETHER)
            if e.comparison == "given_name"
            else e
            for e in evidence
        ]
    elif event[0].name not in _SAME_OVERDOSE:
        # A name missing on one side: family name, date of birth, phone and address are what
        # a household shares, so only the overdose itself can stand in for the name. A date of
        # birth missing on one side: a parent and a child who share a name share the phone and
        # the address too, so only the overdose or the hospital's record number can stand in.
        mrn = any(e.comparison == "mrn" for e in evidence)
        evidence = [
            dataclasses.replace(e, doubt=True, reason=_NAME_MISSING)
            if e.comparison in ("family_name", "given_name") and e.level == MISSING
            else dataclasses.replace(e, doubt=True, reason=_DOB_MISSING)
            if e.comparison == "dob" and e.level == MISSING and not mrn
            else e
            for e in evidence
        ]
    return Explanation(tuple(evidence), model.version, unnamed_transport(a, b))


def verdict(explanation: Explanation, thresholds: Thresholds) -> Verdict:
    """What happens to the pair by the program's thresholds (module docs)."""
    weight = explanation.weight
    if weight >= thresholds.auto_link and not explanation.doubts:
        return "link"
    if weight >= thresholds.review:
        return "review"
    if explanation.transported:
        return "flag"  # whatever the names: a false name given at the scene leaves only this
    if explanation.unnamed_transport is not None:
        return "flag"  # the run went to a hospital it did not name: only the hour is left
    if explanation.same_overdose and weight >= thresholds.flag:
        return "flag"
    return "none"
