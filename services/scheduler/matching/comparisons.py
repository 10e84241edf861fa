"""The comparisons: which level of each comparison two profiles fall in, and why.

Each function takes the two sides and returns the :class:`~.weights.Level` they fall in with a
short detail (a similarity, a gap in minutes: never a value from the identity), or None when the
comparison does not apply to the pair (a suffix only one side has, an MRN neither shares).
Every function gives the same answer with the sides swapped.

Decisions (tests pin each one):

Names
    * Family and given names are compared as written and also crosswise (a feed that put the
      names in the wrong fields); the crosswise reading counts when it weighs more and finds an
      agreement (a name equal, a nickname, a typo, ...), and the evidence says so. Ties keep
      the names as written.
    * A blind key both sides hold overrides a plaintext disagreement: the same name+DOB key
      means the report has the name and date of birth of one of the person's earlier reports
      (the person shows only the latest), the same name key the same name (in either order,
      so the plaintext is read first: it tells names in swapped fields).
    * Family name: the same; one a part of the other (``Garcia`` in ``Garcia Lopez``); a typing
      error (Jaro-Winkler at least 0.90, or one letter inserted, dropped, changed or swapped
      with its neighbour in a name of three letters or more; double names of as many parts
      part by part, so ``Garcia Lopez`` and ``Garcia Perez`` differ); the same metaphone;
      otherwise different (a doubt).
    * Given name: the same; a nickname or short form (``nicknames``); one the other's middle
      name, or a part of a double given name; only an initial that agrees; two different known
      names that are not aliases (a doubt: Jane and Jana may be twins), unless one is the other
      with a letter dropped inside a long name (``names.is_dropped_letter``); a typing error
      (Jaro-Winkler at least 0.88, or one edit as for family names); the same metaphone;
      otherwise different (a doubt).
    * Generational suffixes count only when both sides have one: different ones are a doubt.

Date of birth
    The same (or the same DOB key); day and month swapped; a typing error (one digit of the
    month, the day or the year's last digit, two adjacent digits of one field swapped, or a year
    off by one); ten years off exactly; otherwise different (a doubt).

The overdose (event)
    Every overdose each side records is compared: a report's own, a person's episodes. The best
    pair counts. An EMS run and an ED visit within 4 hours at the hospital EMS transported the
    person to are the strongest evidence of one overdose (``transported_here``). Otherwise,
    reports of different kinds (EMS, ED, law enforcement) within 3 hours are likely one
    overdose (in different counties, less so; when EMS names a destination and the ED is
    another hospital, much less so); within 12 hours, the same day; two reports of one kind
    within 12 hours, a second agency or hospital. Community referrals carry no event (their
    time is often only when the team heard).

An EMS run that transported the person and named no hospital (:func:`unnamed_transport`)
    With an ED visit that began 0 to 3 hours after the run, at any hospital: no level and no
    weight (the event level stays what the hour says), only the detail that makes the pair a
    flag whatever the names (``evidence.verdict``). Not a run that did not transport, not an ED
    visit before the run.
"""

from __future__ import annotations

from datetime import date, timedelta

from services.scheduler.matching.names import (
    NameParts,
    are_aliases,
    damerau_levenshtein,
    is_dropped_letter,
    is_known_given_name,
    jaro_winkler,
    phonetic,
)
from services.scheduler.matching.profile import Event, Profile
from services.scheduler.matching.weights import LEVELS, MISSING, Level

__all__ = [
    "FAMILY_TYPO_JW",
    "GIVEN_TYPO_JW",
    "SAME_DAY_WINDOW",
    "SAME_OVERDOSE_WINDOW",
    "TRANSPORT_WINDOW",
    "UNNAMED_TRANSPORT_WINDOW",
    "Found",
    "compare_dob",
    "compare_event",
    "compare_family",
    "compare_given",
    "compare_mrn",
    "compare_names",
    "compare_phone",
    "compare_sex",
    "compare_suffix",
    "compare_zip",
    "unnamed_transport",
]

FAMILY_TYPO_JW = 0.90
GIVEN_TYPO_JW = 0.88
SAME_OVERDOSE_WINDOW = timedelta(hours=3)
SAME_DAY_WINDOW = timedelta(hours=12)
TRANSPORT_WINDOW = timedelta(hours=4)
"""An ED visit at the EMS destination this long after (or before) the run is of one overdose:
the transport, the wait and a late registration fit in it."""

UNNAMED_TRANSPORT_WINDOW = timedelta(hours=3)
"""An ED visit this long after an EMS run that transported the person and named no hospital
may be where it went: the call, the scene and the transport (the evaluation's ED arrivals
come 10 to 126 minutes after the run), with room for a long rural transport and a late
registration; the window of the hour alone (``SAME_OVERDOSE_WINDOW``)."""

Found = tuple[Level, str | None]
"""A level and its detail."""


def _at(comparison: str, name: str, detail: str | None = None) -> Found:
    return LEVELS[comparison][name], detail


# --------------------------------------------------------------------------- names


def _one_edit(a: str, b: str) -> bool:
    """One letter inserted, dropped, changed, or two adjacent letters swapped, in names of at
    least three letters (Jaro-Winkler undervalues one error in a short name)."""
    return min(len(a), len(b)) >= 3 and damerau_levenshtein(a, b) == 1


def _is_family_typo(a: str, b: str) -> bool:
    return jaro_winkler(a, b) >= FAMILY_TYPO_JW or _one_edit(a, b)


def compare_family(a: NameParts | None, b: NameParts | None) -> Found:
    if a is None or b is None:
        return _at("family_name", MISSING)
    if a.full == b.full:
        return _at("family_name", "exact")
    shorter, longer = sorted((a, b), key=lambda n: (len(n.parts), n.full))
    if len(longer.parts) > 1 and set(shorter.parts) <= set(longer.parts):
        return _at("family_name", "part")
    similarity = jaro_winkler(a.full, b.full)
    if len(a.parts) > 1 and len(a.parts) == len(b.parts):
        # Double names part by part: Garcia Lopez and Garcia Perez are cousins, not a typo.
        differ = [(p, q) for p, q in zip(a.parts, b.parts, strict=True) if p != q]
        if len(differ) > 1 or not _is_family_typo(*differ[0]):
            return _at("family_name", "different", "a part of the double names differs")
        return _at("family_name", "typo", "one part of the double names has a typing error")
    if _is_family_typo(a.full, b.full):
        return _at("family_name", "typo", f"Jaro-Winkler {similarity:.2f}")
    if phonetic(a.full) == phonetic(b.full):
        return _at("family_name", "phonetic", "same metaphone code")
    return _at("family_name", "different", f"Jaro-Winkler {similarity:.2f}")


def compare_given(
    a: NameParts | None, b: NameParts | None, a_middle: str | None, b_middle: str | None
) -> Found:
    if a is None or b is None:
        return _at("given_name", MISSING)
    x, y = a.full, b.full
    if x == y:
        return _at("given_name", "exact")
    if are_aliases(x, y):
        return _at("given_name", "nickname")
    if (b_middle and x == b_middle) or (a_middle and y == a_middle):
        return _at("given_name", "middle", "a given name is the other's middle name")
    shorter, longer = sorted((a, b), key=lambda n: (len(n.parts), n.full))
    if len(longer.parts) > 1 and set(shorter.parts) <= set(longer.parts):
        return _at("given_name", "middle", "part of a double given name")
    if min(len(x), len(y)) == 1:
        if x[0] == y[0]:
            return _at("given_name", "initial")
        return _at("given_name", "different", "initials differ")
    if is_known_given_name(x) and is_known_given_name(y) and not is_dropped_letter(x, y):
        return _at("given_name", "different_names", "both are names on the name list")
    similarity = jaro_winkler(x, y)
    if similarity >= GIVEN_TYPO_JW or _one_edit(x, y):
        return _at("given_name", "typo", f"Jaro-Winkler {similarity:.2f}")
    if phonetic(x) == phonetic(y):
        return _at("given_name", "phonetic", "same metaphone code")
    return _at("given_name", "different", f"Jaro-Winkler {similarity:.2f}")


def compare_names(a: Profile, b: Profile) -> tuple[Found, Found, bool]:
    """Family and given name levels, and whether they count crosswise (swapped fields)."""
    family, given, swapped = _compare_plain_names(a, b)
    if (family[0].name, given[0].name) != ("exact", "exact") and (
        a.has_key("name_dob", b) or a.has_key("name", b)
    ):
        same = "the same name as one of the person's reports (blind key)"
        return _at("family_name", "exact", same), _at("given_name", "exact", same), False
    return family, given, swapped


def _compare_plain_names(a: Profile, b: Profile) -> tuple[Found, Found, bool]:
    straight = (
        compare_family(a.family, b.family),
        compare_given(a.given, b.given, a.middle, b.middle),
    )
    best, swapped = straight, False
    agree = (straight[0][0].name, straight[1][0].name) == ("exact", "exact")
    if not agree and a.family and a.given and b.family and b.given:
        # Both ways round, so that the answer does not depend on which side is the report.
        crosswise = [
            (
                compare_family(a.family, b.given),
                compare_given(a.given, b.family, a.middle, b.middle),
            ),
            (
                compare_family(a.given, b.family),
                compare_given(a.family, b.given, a.middle, b.middle),
            ),
        ]
        top = max(crosswise, key=lambda c: (_total(c), _key(c)))
        # Crosswise only for an agreement it finds: two people's different names are not
        # "less different" read the other way round.
        if _total(top) > _total(straight) and max(f[0].weight for f in top) > 0:
            best, swapped = top, True
    if swapped:
        note = "names in swapped fields"
        (family, f_detail), (given, g_detail) = best
        best = (
            (family, f"{note}; {f_detail}" if f_detail else note),
            (given, f"{note}; {g_detail}" if g_detail else note),
        )
    return best[0], best[1], swapped


def _total(found: tuple[Found, Found]) -> float:
    return found[0][0].weight + found[1][0].weight


def _key(found: tuple[Found, Found]) -> tuple[str, str]:
    return found[0][0].name, found[1][0].name


def compare_suffix(a: Profile, b: Profile) -> Found | None:
    if a.suffix and b.suffix and a.suffix != b.suffix:
        return _at("suffix", "different")
    return None


# --------------------------------------------------------------------------- date of birth


def _one_digit_off(x: str, y: str) -> int | None:
    """The position of the only digit in which two equal-length strings differ, else None."""
    differ = [i for i, (p, q) in enumerate(zip(x, y, strict=True)) if p != q]
    return differ[0] if len(differ) == 1 else None


def _adjacent_swap(x: str, y: str) -> bool:
    differ = [i for i, (p, q) in enumerate(zip(x, y, strict=True)) if p != q]
    return (
        len(differ) == 2
        and differ[1] == differ[0] + 1
        and x[differ[0]] == y[differ[1]]
        and x[differ[1]] == y[differ[0]]
    )


def _dob_level(a: date, b: date) -> str:
    if a == b:
        return "exact"
    if a.year == b.year and a.day == b.month and a.month == b.day:
        return "swapped"
    if (a.month, a.day) == (b.month, b.day) and abs(a.year - b.year) == 1:
        return "typo"
    if (a.month, a.day) == (b.month, b.day) and abs(a.year - b.year) == 10:
        return "decade"
    x, y = a.strftime("%Y%m%d"), b.strftime("%Y%m%d")
    position = _one_digit_off(x, y)
    if position is not None and position >= 3:  # the year's last digit, the month or the day
        return "typo"
    for start, end in ((2, 4), (4, 6), (6, 8)):  # within the year's last two, month, day
        if x[:start] + x[end:] == y[:start] + y[end:] and _adjacent_swap(
            x[start:end], y[start:end]
        ):
            return "typo"
    return "different"


def compare_dob(a: Profile, b: Profile) -> Found:
    if a.has_key("name_dob", b) or a.has_key("dob", b):
        return _at("dob", "exact", "the same date of birth as one of the person's reports")
    if a.dob is None or b.dob is None:
        return _at("dob", MISSING)
    return _at("dob", _dob_level(a.dob, b.dob))


# --------------------------------------------------------------------------- the rest


def compare_sex(a: Profile, b: Profile) -> Found:
    if a.sex is None or b.sex is None:
        return _at("sex", MISSING)
    return _at("sex", "same" if a.sex == b.sex else "different")


def compare_phone(a: Profile, b: Profile) -> Found:
    if a.has_key("phone", b) or not a.phones.isdisjoint(b.phones):
        return _at("phone", "same")
    a_has = bool(a.phones or a.keys.get("phone"))
    b_has = bool(b.phones or b.keys.get("phone"))
    if a_has and b_has:
        return _at("phone", "different")
    return _at("phone", MISSING)


def compare_mrn(a: Profile, b: Profile) -> Found | None:
    return _at("mrn", "same") if a.has_key("mrn", b) else None


def compare_zip(a: Profile, b: Profile) -> Found:
    if a.zip is None or b.zip is None:
        return _at("zip", MISSING)
    return _at("zip", "same" if a.zip == b.zip else "different")


def _counties_differ(a: Event, b: Event) -> bool:
    """Both counties known, written the same way (both FIPS or both names), and different."""
    if a.county is None or b.county is None:
        return False
    return a.county.isdigit() == b.county.isdigit() and a.county != b.county


def _transported(a: Event, b: Event) -> bool | None:
    """Whether EMS took the person to the hospital that reported the other's visit; None when
    one of the two is not an EMS run and an ED visit, or a hospital is not known."""
    ems_ed = ("ems" in a.kinds and "ed" in b.kinds) or ("ed" in a.kinds and "ems" in b.kinds)
    if not ems_ed or a.hospital is None or b.hospital is None:
        return None
    return a.hospital == b.hospital


def _event_level(a: Event, b: Event) -> tuple[str, str] | None:
    gap = abs(a.at - b.at)
    minutes = int(gap.total_seconds() // 60)
    first, second = sorted(("+".join(sorted(a.kinds)), "+".join(sorted(b.kinds))))
    kinds = f"{first} and {second}, {minutes} min apart"
    if a.kinds.isdisjoint(b.kinds):
        transported = _transported(a, b)
        if transported and gap <= TRANSPORT_WINDOW:
            return "transported_here", f"{kinds}, at the hospital EMS transported to"
        if gap <= SAME_OVERDOSE_WINDOW:
            if transported is False:
                return "same_overdose_other_hospital", f"{kinds}, EMS transported elsewhere"
            if _counties_differ(a, b):
                return "same_overdose_other_county", kinds
            return "same_overdose", kinds
        if gap <= SAME_DAY_WINDOW:
            return "same_day", kinds
        return None
    if gap <= SAME_DAY_WINDOW:
        return "same_source_near", kinds
    return None


def _unnamed_transport(run: Event, visit: Event) -> str | None:
    if not run.transported or run.hospital is not None:
        return None
    if "ems" not in run.kinds or "ed" in run.kinds:
        return None
    if "ed" not in visit.kinds or "ems" in visit.kinds:
        return None
    gap = visit.at - run.at
    if not timedelta(0) <= gap <= UNNAMED_TRANSPORT_WINDOW:
        return None
    minutes = int(gap.total_seconds() // 60)
    return f"ems transported and named no hospital; an ed visit {minutes} min later"


def unnamed_transport(a: Profile, b: Profile) -> str | None:
    """Whether one side's EMS run transported the person without naming where, and the other
    side's ED visit began within :data:`UNNAMED_TRANSPORT_WINDOW` after it (at any of the
    program's hospitals): the detail of the nearest such pair, else None. Either side may
    hold the run, so the answer is the same with the sides swapped."""
    found = [
        (run.at, visit.at, detail)
        for x, y in ((a, b), (b, a))
        for run in x.events
        for visit in y.events
        if (detail := _unnamed_transport(run, visit)) is not None
    ]
    if not found:
        return None
    return min(found, key=lambda f: (f[1] - f[0], f[2]))[2]


def compare_event(a: Profile, b: Profile) -> Found:
    if not a.events or not b.events:
        return _at("event", MISSING)
    best: tuple[float, str, str] | None = None
    for x in a.events:
        for y in b.events:
            found = _event_level(x, y)
            if found is None:
                continue
            name, detail = found
            rank = (LEVELS["event"][name].weight, name, detail)
            # Highest weight; ties by name, then detail, so the answer is the same either way.
            if best is None or rank > best:
                best = rank
    if best is None:
        return _at("event", "none")
    return _at("event", best[1], best[2])
