"""Names as people write them: parts, suffixes, placeholders, nicknames and phonetic codes.

Everything here works on one name at a time and returns plain values; the comparisons that
weigh two names against each other are in :mod:`~services.scheduler.matching.comparisons`.

Decisions (tests pin each one):

* A name is folded like a blind key (:func:`~shared.sealing.normalize_name`: case, accents,
  spaces and punctuation do not count), but first split into its *parts* at spaces and hyphens,
  so ``"Garcia-Lopez"`` is ``garcialopez`` with the parts ``garcia`` and ``lopez``.
* A trailing generational suffix (Jr, Sr, II, III, IV, 2nd, 3rd) is taken off the name and kept
  apart: a parent and a child who share a name differ only there.
* Placeholders that registration staff type for a patient they cannot name yet ("Unknown",
  "Unk", "Doe, John", "Doe, Jane", "Patient", "Trauma") are no name: they compare as missing,
  never as an agreement.
* Nicknames and short forms come from the ``nicknames`` package (a maintained, hand-curated
  list of English given names and their nicknames). Two given names are *aliases* when one is a
  listed nickname of the other, or both are listed nicknames of one name (Bill and Will, both
  William's). Names that merely share a nickname (Stephen and Steven, both "Steve") are not.
* A given name is *known* when the nickname list holds it (as a name or a nickname) or the US
  Census Bureau's 1990 given-name files do (``given_names.txt``, 5,163 names, public domain):
  two different known names that are not aliases are two names, not a typo (Jane and Jana,
  Michael and Matthew), as a person who reads names would take them; except a letter dropped
  inside a name of seven letters or more (the list holds some misspellings, ``elizbeth``).
* The phonetic code is metaphone (``jellyfish``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

import jellyfish
from nicknames import name_triplets

from shared.sealing import normalize_name

__all__ = [
    "NameParts",
    "are_aliases",
    "damerau_levenshtein",
    "fold",
    "is_dropped_letter",
    "is_known_given_name",
    "is_placeholder",
    "jaro_winkler",
    "parse_name",
    "phonetic",
]

_SPLIT = re.compile(r"[\s\-\u2010-\u2015/]+")  # spaces, hyphens and dashes, slashes
_SUFFIXES = {
    "jr": "jr",
    "junior": "jr",
    "sr": "sr",
    "senior": "sr",
    "ii": "ii",
    "2nd": "ii",
    "iii": "iii",
    "3rd": "iii",
    "iv": "iv",
    "4th": "iv",
}
_PLACEHOLDER_PARTS = frozenset({"unknown", "unk", "unkn", "patient", "trauma", "noname", "none"})
_PLACEHOLDER_GIVEN_WITH_DOE = frozenset({"john", "jane", "baby"})


@dataclass(frozen=True, slots=True)
class NameParts:
    """One name (a family or a given name), folded: the whole, its parts, its suffix."""

    full: str
    """All parts run together, as a blind key folds it (``garcialopez``)."""
    parts: tuple[str, ...]
    suffix: str | None = None
    """A generational suffix taken off the end (``jr``, ``sr``, ``ii``, ...)."""


@functools.lru_cache(maxsize=65536)
def fold(text: str) -> str:
    """:func:`~shared.sealing.normalize_name`, memoized: linking folds the same names over and
    over (a person's name for every report that finds them)."""
    return normalize_name(text)


_fold_part = fold


@functools.lru_cache(maxsize=65536)
def parse_name(raw: str | None) -> NameParts | None:
    """The name folded into parts with its suffix; None when nothing of a name is left."""
    if not raw:
        return None
    raw_tokens = [p for p in _SPLIT.split(raw.replace(",", " ")) if _fold_part(p)]
    suffix = None
    # Read before folding: folding keeps letters only, and "3rd" would become "rd".
    if len(raw_tokens) > 1 and (last := raw_tokens[-1].casefold().strip(".")) in _SUFFIXES:
        suffix = _SUFFIXES[last]
        raw_tokens.pop()
    tokens = [_fold_part(p) for p in raw_tokens]
    if not tokens:
        return None
    return NameParts(full="".join(tokens), parts=tuple(tokens), suffix=suffix)


def is_placeholder(family: NameParts | None, given: NameParts | None) -> bool:
    """Whether a name is one registration staff type for a patient not yet named."""
    parts = {*(family.parts if family else ()), *(given.parts if given else ())}
    if parts & _PLACEHOLDER_PARTS:
        return True
    return (
        family is not None
        and family.full == "doe"
        and (given is None or given.full in _PLACEHOLDER_GIVEN_WITH_DOE)
    )


@functools.cache
def _nickname_tables() -> tuple[dict[str, frozenset[str]], frozenset[str]]:
    """For each listed name, the names it is an alias of; and every listed name."""
    nicknames_of: dict[str, set[str]] = {}
    canonicals_of: dict[str, set[str]] = {}
    for canonical, relationship, nickname in name_triplets():
        if relationship != "has_nickname":
            continue
        a, b = normalize_name(canonical), normalize_name(nickname)
        if not a or not b or a == b:
            continue
        nicknames_of.setdefault(a, set()).add(b)
        canonicals_of.setdefault(b, set()).add(a)
    aliases: dict[str, set[str]] = {}
    for canonical, nicks in nicknames_of.items():
        for nick in nicks:
            aliases.setdefault(canonical, set()).add(nick)
            aliases.setdefault(nick, set()).add(canonical)
            # Two nicknames of one name: Bill and Will (William).
            aliases[nick].update(n for n in nicks if n != nick)
    census = resources.files("services.scheduler.matching").joinpath("given_names.txt")
    listed = (line.strip() for line in census.read_text(encoding="utf-8").splitlines())
    known = (
        frozenset(nicknames_of)
        | frozenset(canonicals_of)
        | frozenset(n for n in listed if n and not n.startswith("#"))
    )
    return {k: frozenset(v) for k, v in aliases.items()}, known


def are_aliases(a: str, b: str) -> bool:
    """Whether two folded given names are a name and its nickname (either way), or two
    nicknames of one name."""
    aliases, _ = _nickname_tables()
    return b in aliases.get(a, ()) or a in aliases.get(b, ())


def is_known_given_name(name: str) -> bool:
    """Whether this folded given name is a known name (the nickname list or the Census list)."""
    _, known = _nickname_tables()
    return name in known


def jaro_winkler(a: str, b: str) -> float:
    """Jaro-Winkler similarity of two folded names (1.0 equal, 0.0 nothing in common); the
    pair is put in order first, so the answer never depends on which side is which."""
    first, second = sorted((a, b))
    return float(jellyfish.jaro_winkler_similarity(first, second))


@functools.lru_cache(maxsize=65536)
def phonetic(name: str) -> str:
    """The metaphone code of a folded name."""
    return str(jellyfish.metaphone(name))


def is_dropped_letter(a: str, b: str) -> bool:
    """Whether one folded name is the other with one letter dropped inside it (not the first
    or the last letter), in a name of at least 7 letters: a typing error even between two
    listed names (the Census list holds a few misspellings, such as ``elizbeth``), while
    ``daniel`` and ``daniela`` (a last letter) stay two names."""
    shorter, longer = sorted((a, b), key=lambda n: (len(n), n))
    if len(longer) < 7 or len(longer) != len(shorter) + 1:
        return False
    return any(longer[:i] + longer[i + 1 :] == shorter for i in range(1, len(longer) - 1))


def damerau_levenshtein(a: str, b: str) -> int:
    """Edits (insert, drop, change, swap two neighbours) from one folded name to the other."""
    return int(jellyfish.damerau_levenshtein_distance(a, b))
