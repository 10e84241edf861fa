"""The match weights: for every comparison, its levels with m and u probabilities.

This is the Fellegi-Sunter model as splink writes it. For each comparison of two records
(given names, date of birth, the overdose itself, ...) the pair falls in exactly one *level*.
A level has

* ``m``, the probability of that level when the two records are the same person, and
* ``u``, the probability of that level when they are two different people,

and adds the *weight* ``log2(m / u)`` bits to the pair's match weight: positive when the level
is likelier for one person, negative when it is likelier for two. A missing value on either
side adds nothing (``missing``). The sum over the comparisons is the match weight, which the
program's thresholds turn into a decision (``evidence.py``).

Where the numbers come from (docs/linking.md has the table and the figures):

* ``m`` — how often each kind of error happens in the same person's two records: the error
  rates of the evaluation's error model (``tests/linking/population.py``), which come from
  published studies of registration and ePCR data, rounded. Re-estimated by
  ``python -m tests.linking.eval --estimate`` and compared before pinning.
* ``u`` — how often two different people of one program fall in the level by chance: name
  agreement from the US Census 1990 name frequencies (the chance that two people drawn at
  random share a name), dates of birth from an age spread of about 40 years, the event from
  about 1.3 overdoses a year per person in a program's population, checked against the
  synthetic population's random pairs.
* Nothing is fitted at run time. A lead's confirm and split decisions are kept with the levels
  of each pair (``possible_match.explanation``); ``portline linking estimate``
  (``estimate.py``) re-estimates m from the pairs held for one person and u from random pairs
  of the program's people, and writes ``[linking.weights]`` tables
  that a program's policy puts in place of the pinned ones (:class:`WeightModel`, whose
  version every explanation names). Change ``MODEL_VERSION`` when the pinned ones change.

``doubt`` marks the levels a careful person would stop at: two different given names, two
different family names, dates of birth that no typing error explains, different sexes, or
different generational suffixes. Such a pair is never linked automatically, whatever its
weight (``evidence.py``): twins and a parent and child share everything else.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_AUTO_LINK_WEIGHT",
    "DEFAULT_FLAG_WEIGHT",
    "DEFAULT_MODEL",
    "DEFAULT_REVIEW_WEIGHT",
    "LEVELS",
    "MISSING",
    "MODEL_VERSION",
    "Level",
    "WeightModel",
    "level",
]

MODEL_VERSION = "fs-2026.2"
"""Names the weights below; stored with every explanation, so later re-estimation knows which
weights a kept decision was made under."""

DEFAULT_AUTO_LINK_WEIGHT: float = 24
"""At or above this match weight, and with nothing to doubt, the report is linked to the
person automatically."""
DEFAULT_REVIEW_WEIGHT: float = 16
"""At or above this (and below the automatic link, or with a doubt), a lead reviews the pair."""
DEFAULT_FLAG_WEIGHT: float = -1
"""Below review, a pair whose reports look like one overdose (the event) and that weighs at
least this much is flagged for a lead at low priority, so that two peers never chase one
person unknowingly."""

MISSING = "missing"


@dataclass(frozen=True, slots=True)
class Level:
    """One level of one comparison: its m and u probabilities and the reason it is evidence."""

    comparison: str
    name: str
    m: float
    u: float
    reason: str
    doubt: bool = False
    """A conflict a careful person would stop at: never an automatic link."""
    weight: float = field(init=False)
    """``log2(m / u)``, in bits, rounded to a hundredth (as the explanation shows it)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", round(math.log2(self.m / self.u), 2))


# fmt: off
# comparison, level, m, u, reason, doubt
_TABLE: tuple[tuple[str, str, float, float, str, bool], ...] = (
    ("family_name", "exact", 0.90, 0.0015, "the family names are the same", False),
    ("family_name", "part", 0.02, 0.0003,
     "one family name is a part of the other (a double or hyphenated name)", False),
    ("family_name", "typo", 0.05, 0.0018, "the family names differ by a typing error", False),
    ("family_name", "phonetic", 0.005, 0.001, "the family names sound alike", False),
    ("family_name", "different", 0.025, 0.996, "the family names are different", True),
    ("given_name", "exact", 0.85, 0.003, "the given names are the same", False),
    ("given_name", "nickname", 0.065, 0.004,
     "one given name is a nickname or short form of the other", False),
    ("given_name", "middle", 0.01, 0.0035,
     "one given name is the other's middle name, or part of a double given name", False),
    ("given_name", "typo", 0.04, 0.0012, "the given names differ by a typing error", False),
    ("given_name", "phonetic", 0.003, 0.0009, "the given names sound alike", False),
    ("given_name", "initial", 0.012, 0.0014, "one given name is only the other's initial", False),
    ("given_name", "different_names", 0.015, 0.92,
     "the given names are two different names (twins and siblings differ here)", True),
    ("given_name", "different", 0.005, 0.068, "the given names are different", True),
    ("suffix", "different", 0.0005, 0.002,
     "the generational suffixes differ (Jr. and Sr.)", True),
    ("dob", "exact", 0.92, 0.00008, "the dates of birth are the same", False),
    ("dob", "swapped", 0.012, 0.00004,
     "the dates of birth differ by day and month swapped", False),
    ("dob", "typo", 0.035, 0.0015,
     "the dates of birth differ by one digit, two adjacent digits swapped, or a year", False),
    ("dob", "decade", 0.005, 0.00008, "the dates of birth differ by ten years exactly", False),
    ("dob", "different", 0.028, 0.998, "the dates of birth are different", True),
    ("sex", "same", 0.985, 0.5, "the recorded sexes are the same", False),
    ("sex", "different", 0.015, 0.5, "the recorded sexes differ", True),
    ("phone", "same", 0.7, 0.00005, "they share a phone number", False),
    ("phone", "different", 0.3, 0.99995, "their phone numbers differ", False),
    ("mrn", "same", 0.95, 0.000001, "the same hospital's medical record number", False),
    ("zip", "same", 0.75, 0.03, "their home ZIP codes are the same", False),
    ("zip", "different", 0.25, 0.97, "their home ZIP codes differ", False),
    ("event", "transported_here", 0.32, 0.00005,
     "an EMS run and an ED visit within 4 hours, at the hospital EMS transported to: one "
     "overdose", False),
    ("event", "same_overdose", 0.07, 0.00005,
     "reports of another kind within 3 hours of each other, in the same county or where the "
     "county is not known: likely one overdose", False),
    ("event", "same_overdose_other_hospital", 0.01, 0.0002,
     "an EMS run and an ED visit within 3 hours, but EMS transported to another hospital",
     False),
    ("event", "same_overdose_other_county", 0.03, 0.0002,
     "reports of another kind within 3 hours of each other, in different counties", False),
    ("event", "same_day", 0.02, 0.001, "reports of another kind between 3 and 12 hours apart",
     False),
    ("event", "same_source_near", 0.02, 0.0014,
     "two reports of the same kind within 12 hours (a second agency or hospital)", False),
    ("event", "none", 0.53, 0.9975, "no overdose of the other within 12 hours", False),
)
# fmt: on


def _levels() -> dict[str, dict[str, Level]]:
    table: dict[str, dict[str, Level]] = {}
    for comparison, name, m, u, reason, doubt in _TABLE:
        table.setdefault(comparison, {})[name] = Level(comparison, name, m, u, reason, doubt)
    for comparison, levels in table.items():
        levels[MISSING] = Level(comparison, MISSING, 1.0, 1.0, "missing on one side: no evidence")
    return table


LEVELS: dict[str, dict[str, Level]] = _levels()
"""Every comparison's levels by name, in order from the strongest agreement down."""


def level(comparison: str, name: str) -> Level:
    """The level of a comparison by name; KeyError for one that does not exist."""
    return LEVELS[comparison][name]


@dataclass(frozen=True, slots=True)
class WeightModel:
    """The levels a program weighs by, under a version stored with every explanation: the
    pinned ones, or the pinned ones with a program's re-estimated m and u in place
    (``[linking.weights]`` in the policy, written by ``portline linking estimate``)."""

    version: str
    levels: Mapping[str, Mapping[str, Level]]

    @classmethod
    def overriding(cls, overrides: Mapping[str, Mapping[str, tuple[float, float]]]) -> WeightModel:
        """The pinned levels with these ``(m, u)`` in place. ValueError names an unknown
        comparison or level, or a probability outside (0, 1]."""
        if not overrides:
            return DEFAULT_MODEL
        table = {comparison: dict(levels) for comparison, levels in LEVELS.items()}
        for comparison, levels in overrides.items():
            if comparison not in table:
                raise ValueError(f"no comparison {comparison!r} (known: {', '.join(LEVELS)})")
            for name, (m, u) in levels.items():
                known = table[comparison].get(name)
                if known is None or name == MISSING:
                    raise ValueError(f"no level {name!r} of {comparison!r} to weigh")
                if not (0 < m <= 1 and 0 < u <= 1):
                    raise ValueError(f"{comparison}.{name}: m and u must be in (0, 1]")
                table[comparison][name] = Level(comparison, name, m, u, known.reason, known.doubt)
        canonical = json.dumps(
            {
                c: {n: list(mu) for n, mu in sorted(ls.items())}
                for c, ls in sorted(overrides.items())
            },
            separators=(",", ":"),
        )
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
        return cls(f"{MODEL_VERSION}+{digest}", table)


DEFAULT_MODEL = WeightModel(MODEL_VERSION, LEVELS)
