"""Blocking keys the scheduler derives itself, to find the candidates the new evidence needs.

Intake publishes the blind keys of each report (name+DOB, phone, MRN, DOB). The scheduler holds
the same blind-index key, so it derives two more from the identity it opened, in memory:

* a *name* key (family and given name, in either order) and a *name sound* key (their
  metaphone codes, in either order): recorded for each person, so a report whose date of birth
  is missing or mistyped still finds the person by name, even with a typing error in it; and
* the DOB keys of the usual errors in a date of birth (day and month swapped, the year off by
  one or by ten), looked up but never recorded, so a person whose date of birth was mistyped
  either way is still found.

The third new way to find a candidate, the overdose itself (people with an episode of another
report kind near the report's incident), is a query on the scheduler's own tables (batch.py).
"""

from __future__ import annotations

from datetime import date

from services.scheduler.matching.names import parse_name, phonetic
from shared.sealing import BlindIndexer

__all__ = ["dob_variant_keys", "dob_variants", "lookup_keys", "stored_keys"]


def dob_variants(dob: date) -> list[date]:
    """The dates a mistyped date of birth may have been: day and month swapped, the year off
    by one or by ten. Impossible dates (a swapped 13th, a 29th of February) are left out."""
    candidates: list[tuple[int, int, int]] = [(dob.year, dob.day, dob.month)]
    candidates += [(dob.year + delta, dob.month, dob.day) for delta in (-10, -1, 1, 10)]
    out: list[date] = []
    for year, month, day in candidates:
        try:
            variant = date(year, month, day)
        except ValueError:
            continue
        if variant != dob and variant not in out:
            out.append(variant)
    return out


def stored_keys(
    indexer: BlindIndexer, *, family: str | None, given: str | None
) -> list[tuple[str, str]]:
    """The derived keys a person is recorded under (person_key): the name and name sound keys."""
    keys: list[tuple[str, str]] = []
    if name := indexer.name(family or "", given or ""):
        keys.append(("name", name))
    family_parts, given_parts = parse_name(family), parse_name(given)
    if family_parts and given_parts:
        codes = sorted((phonetic(family_parts.full), phonetic(given_parts.full)))
        if all(codes) and (sound := indexer.derived("name_sound", "|".join(codes))):
            keys.append(("name_sound", sound))
    return keys


def dob_variant_keys(indexer: BlindIndexer, dob: date | None) -> list[tuple[str, str]]:
    """The DOB keys of a date of birth's usual typing errors (:func:`dob_variants`)."""
    if dob is None:
        return []
    return [("dob", k) for v in dob_variants(dob) if (k := indexer.dob(v))]


def lookup_keys(
    indexer: BlindIndexer, *, family: str | None, given: str | None, dob: date | None
) -> list[tuple[str, str]]:
    """Every derived key a report looks candidates up by: its name keys and its DOB variants."""
    return stored_keys(indexer, family=family, given=given) + dob_variant_keys(indexer, dob)
