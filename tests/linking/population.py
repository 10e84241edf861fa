"""A synthetic population of a program's year, with the errors real EMS and ED feeds carry.

Seeded and deterministic: the same ``Config`` gives the same people, overdoses and reports.
Nothing here is real: names are drawn from the US Census Bureau's 1990 name frequency files
(public domain, as shipped by the ``names`` package), everything else is made up.

The people
    * Sex half and half; a given name from the Census file of that sex, weighted by frequency;
      60 % a middle name; a family name from the Census surname file (88,799 names, weighted,
      so Smith and Johnson collide as often as they do), 5 % double (``Garcia Lopez``) or
      hyphenated.
    * Ages 18 to 75, most between 25 and 45 (the age profile of nonfatal opioid overdoses in
      ED and EMS surveillance); a home in one of three counties (60/30/10 %), eight ZIP codes
      each; 75 % with a phone.
    * Households that share a family name, a phone and an address: twins (2 % of people have
      a twin in the program; same DOB), a parent and a child with one name (Jr./Sr., 1 %; DOB 18
      to 35 years apart, the same phone), siblings (2 %).

The overdoses
    * Over one year, each person overdoses once (70 %), twice (20 %) or three times (10 %).
    * An overdose is reported by EMS and the ED (55 %: the patient was transported), by EMS
      only (30 %: refused transport, released at the scene) or by the ED only (15 %: walked
      in or driven). The ED visit starts 10 to 120 minutes after the EMS run (median about
      35). 5 % of overdoses involve two people together (friends or household), reported at
      the same times and place; household pairs (twins, siblings) overdose together at the
      same rate as friends do.
    * EMS writes the scene's county as a name (``Guilford``), the ED the patient's home county
      as a FIPS code, as the feeds do; the scene is the home county 80 % of the time.
    * Five hospitals: two in each of the larger counties (60/40 % of their visits), one in the
      smallest. EMS transports to a hospital of the scene's county; a walk-in goes to one of
      the home county's. The ED report names its hospital (MSH-4, always right); the EMS
      report names its destination (eDisposition.02) when it transported: missing 10 % of the
      time, another hospital 3 % (a diversion, a slip of the crew's pick list). These rates
      are our own choice; the hospitals draw from a random stream of their own, so the rest of
      the population is the same as without them.

The errors (per report; EMS first, then ED)
    The kinds of error and their order of magnitude come from studies of identifiers in
    registration and prehospital data: typing errors, nicknames, swapped fields and missing
    values (Christen & Pudjijono 2009, the Febrl/GeCo generator's error model; Duvall et al.
    2010, JAMIA), transposed and mistyped dates of birth (McCoy et al. 2013, BMJ Qual Saf;
    Hagger-Johnson et al. 2015, BMJ Open), and the poorer identifiers of ePCRs than of hospital
    registration (Newgard et al. 2006 and Mears et al. 2010, linking EMS and ED records). The
    exact rates below are our own choice within those orders of magnitude, not figures quoted
    from the papers:

    ================================  ======  ======
    error                             EMS     ED
    ================================  ======  ======
    given name typo                   4 %     1.5 %
    given name nickname/short form    8 %     2 %
    given name initial only           1 %     0.5 %
    middle name given as first        1 %     0.5 %
    given name missing                2 %     0.2 %
    family name typo                  4 %     1.5 %
    double surname: one part only     30 %    20 %
    family and given swapped          1.5 %   0.3 %
    placeholder name (Doe, unknown)   0       2 %
    a false name (and DOB) given      1.5 %   0.2 %
    DOB missing                       6 %     0.5 %
    DOB day and month swapped         2 %     0.3 %    (when the day is 12 or less)
    DOB one digit mistyped            2 %     0.5 %
    DOB year off by one               1 %     0.2 %
    DOB year off by ten               0.3 %   0.1 %
    sex missing / wrong               5 % / 0.5 %  1 % / 0.2 %
    phone given                       50 %    80 %     (of those who have one)
    phone wrong or outdated           10 %    5 %
    ZIP missing / different           20 % / 15 %  5 % / 10 %
    ================================  ======  ======

A typing error is one of: a neighbouring key on a QWERTY keyboard, two adjacent letters
swapped, a letter dropped, a letter doubled (the four kinds Christen & Pudjijono weight
most), never on a name of fewer than three letters.
"""

from __future__ import annotations

import bisect
import itertools
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import cache

import names as census_names
from nicknames import NickNamer

__all__ = ["Config", "Overdose", "Person", "Population", "Report", "generate"]

START = datetime(2025, 1, 1, tzinfo=UTC)
COUNTIES = (("Guilford", "37081", 0.6), ("Forsyth", "37067", 0.3), ("Rockingham", "37157", 0.1))
HOSPITALS: tuple[tuple[tuple[str, float], ...], ...] = (
    (("GUILFORD-1", 0.6), ("GUILFORD-2", 0.4)),
    (("FORSYTH-1", 0.6), ("FORSYTH-2", 0.4)),
    (("ROCKINGHAM-1", 1.0),),
)
"""Each county's hospitals (facility keys) and their shares of its visits."""
DESTINATION_MISSING = 0.10
DESTINATION_WRONG = 0.03
_KEYBOARD = [
    "qwertyuiop",
    "asdfghjkl",
    "zxcvbnm",
]


@dataclass(frozen=True)
class Config:
    seed: int = 18
    people: int = 3000
    days: int = 365
    twins: float = 0.02
    juniors: float = 0.01
    siblings: float = 0.02
    together: float = 0.05


@dataclass(frozen=True)
class Person:
    id: int
    sex: str
    given: str
    middle: str | None
    family: str
    dob: date
    phone: str | None
    zip: str
    county: int
    household: int | None = None
    relation: str | None = None
    """``twin``, ``junior``, ``senior`` or ``sibling`` within the household."""


@dataclass(frozen=True)
class Overdose:
    id: int
    people: tuple[int, ...]
    at: datetime
    scene_county: int
    sources: tuple[str, ...]
    """``ems``, ``ed`` or both."""


@dataclass(frozen=True)
class Report:
    """What a feed says about one person at one overdose (with its errors)."""

    id: int
    person: int
    overdose: int
    kind: str
    at: datetime
    county: str | None
    family: str | None
    given: str | None
    middle: str | None
    dob: date | None
    sex: str | None
    phones: tuple[str, ...]
    zip: str | None
    errors: tuple[str, ...] = ()
    hospital: str | None = None
    """EMS: the destination it names (eDisposition.02); ED: the hospital that reports."""
    transported: bool = False
    """EMS: the run transported the person (eDisposition.30 4230001); False for a refusal
    or a release at the scene (4230009, 4230013), and for an ED visit."""


@dataclass
class Population:
    config: Config
    people: list[Person]
    overdoses: list[Overdose]
    reports: list[Report] = field(default_factory=list)


# --------------------------------------------------------------------------- names


@dataclass(frozen=True)
class _Weighted:
    values: tuple[str, ...]
    cumulative: tuple[float, ...]

    def draw(self, rng: random.Random) -> str:
        x = rng.random() * self.cumulative[-1]
        return self.values[bisect.bisect_right(self.cumulative, x)]


@cache
def _census(file: str) -> _Weighted:
    path = os.path.join(os.path.dirname(census_names.__file__), file)
    values, cumulative, total = [], [], 0.0
    with open(path, encoding="ascii") as fh:
        for line in fh:
            name, freq, *_ = line.split()
            total += float(freq)
            values.append(name.capitalize())
            cumulative.append(total)
    return _Weighted(tuple(values), tuple(cumulative))


@cache
def _nicknames() -> NickNamer:
    return NickNamer()


def _given(rng: random.Random, sex: str) -> str:
    return _census("dist.female.first" if sex == "F" else "dist.male.first").draw(rng)


def _family(rng: random.Random) -> str:
    first = _census("dist.all.last").draw(rng)
    if rng.random() < 0.05:
        second = _census("dist.all.last").draw(rng)
        return f"{first}{rng.choice(('-', ' '))}{second}"
    return first


def _neighbour(ch: str, rng: random.Random) -> str:
    for row in _KEYBOARD:
        i = row.find(ch)
        if i >= 0:
            options = [row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)]
            return rng.choice(options)
    return ch


def typo(name: str, rng: random.Random) -> str:
    """One typing error (module docs); the name unchanged if it is shorter than three letters."""
    letters = list(name)
    if len(letters) < 3:
        return name
    for _ in range(10):
        kind = rng.choice(("neighbour", "transpose", "drop", "double"))
        i = rng.randrange(1, len(letters))  # the first letter is rarely the one mistyped
        out = letters[:]
        if kind == "neighbour":
            lower = out[i].lower()
            swapped = _neighbour(lower, rng)
            out[i] = swapped.upper() if out[i].isupper() else swapped
        elif kind == "transpose" and i < len(out) - 1:
            out[i], out[i + 1] = out[i + 1], out[i]
        elif kind == "drop":
            del out[i]
        elif kind == "double":
            out.insert(i, out[i])
        candidate = "".join(out)
        if candidate != name:
            return candidate
    return name


def nickname(given: str, rng: random.Random) -> str | None:
    found = sorted(_nicknames().nicknames_of(given.lower()))
    return rng.choice(found).capitalize() if found else None


# --------------------------------------------------------------------------- people


def _dob(rng: random.Random, at: datetime) -> date:
    age = rng.choice(
        [rng.uniform(18, 25), rng.uniform(25, 45), rng.uniform(25, 45), rng.uniform(45, 75)]
    )
    born = at.date() - timedelta(days=int(age * 365.25))
    return born


def _phone(rng: random.Random) -> str:
    return (
        f"{rng.choice(('336', '743', '984'))}-{rng.randrange(200, 999)}-{rng.randrange(10_000):04d}"
    )


def _home(rng: random.Random) -> tuple[int, str]:
    county = rng.choices(range(len(COUNTIES)), weights=[c[2] for c in COUNTIES])[0]
    return county, f"27{county}{rng.randrange(10):01d}{rng.randrange(8)}"


def _person(rng: random.Random, pid: int) -> Person:
    sex = rng.choice("FM")
    county, zip_code = _home(rng)
    return Person(
        id=pid,
        sex=sex,
        given=_given(rng, sex),
        middle=_given(rng, sex) if rng.random() < 0.6 else None,
        family=_family(rng),
        dob=_dob(rng, START),
        phone=_phone(rng) if rng.random() < 0.75 else None,
        zip=zip_code,
        county=county,
    )


def _people(config: Config, rng: random.Random) -> list[Person]:
    people: list[Person] = []
    household = itertools.count(1)
    # Each household adds two people, so half the share of people is the share of draws.
    twins = config.twins / 2
    juniors = twins + config.juniors / 2
    siblings = juniors + config.siblings / 2
    while len(people) < config.people:
        pid = len(people)
        base = _person(rng, pid)
        roll = rng.random()
        if roll < twins:
            h = next(household)
            twin_sex = rng.choice("FM")
            twin_given = _given(rng, twin_sex)
            while twin_given == base.given:
                twin_given = _given(rng, twin_sex)
            phone = base.phone or _phone(rng)
            people.append(replace(base, phone=phone, household=h, relation="twin"))
            people.append(
                replace(
                    base,
                    id=pid + 1,
                    sex=twin_sex,
                    given=twin_given,
                    middle=_given(rng, twin_sex) if rng.random() < 0.6 else None,
                    phone=phone,
                    household=h,
                    relation="twin",
                )
            )
        elif roll < juniors:
            h = next(household)
            phone = base.phone or _phone(rng)
            senior = replace(base, sex="M", given=_given(rng, "M"), phone=phone, household=h)
            gap = timedelta(days=int(rng.uniform(18, 35) * 365.25))
            people.append(replace(senior, relation="senior"))
            people.append(replace(senior, id=pid + 1, dob=senior.dob + gap, relation="junior"))
        elif roll < siblings:
            h = next(household)
            phone = base.phone or _phone(rng)
            sib_sex = rng.choice("FM")
            sib_given = _given(rng, sib_sex)
            gap = timedelta(days=rng.choice((-1, 1)) * int(rng.uniform(1.2, 8) * 365.25))
            people.append(replace(base, phone=phone, household=h, relation="sibling"))
            people.append(
                replace(
                    base,
                    id=pid + 1,
                    sex=sib_sex,
                    given=sib_given,
                    middle=_given(rng, sib_sex) if rng.random() < 0.6 else None,
                    dob=base.dob + gap,
                    phone=phone,
                    household=h,
                    relation="sibling",
                )
            )
        else:
            people.append(base)
    return people[: config.people]


# --------------------------------------------------------------------------- overdoses


def _sources(rng: random.Random) -> tuple[str, ...]:
    roll = rng.random()
    if roll < 0.55:
        return ("ems", "ed")
    if roll < 0.85:
        return ("ems",)
    return ("ed",)


def _overdoses(config: Config, people: Sequence[Person], rng: random.Random) -> list[Overdose]:
    households: dict[int, list[Person]] = {}
    for p in people:
        if p.household is not None:
            households.setdefault(p.household, []).append(p)
    found: list[Overdose] = []
    for p in people:
        count = rng.choices((1, 2, 3), weights=(70, 20, 10))[0]
        for _ in range(count):
            at = START + timedelta(seconds=rng.uniform(0, config.days * 86_400))
            scene = p.county if rng.random() < 0.8 else rng.randrange(len(COUNTIES))
            together: tuple[int, ...] = (p.id,)
            if rng.random() < config.together:
                mates = [q.id for q in households.get(p.household, []) if q.id != p.id]
                other = mates[0] if mates else rng.randrange(len(people))
                if other != p.id:
                    together = (p.id, other)
            found.append(Overdose(len(found), together, at, scene, _sources(rng)))
    found.sort(key=lambda o: o.at)
    return [replace(o, id=i) for i, o in enumerate(found)]


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class _Rates:
    given_typo: float
    nickname: float
    initial: float
    middle_as_given: float
    given_missing: float
    family_typo: float
    double_part: float
    swapped: float
    placeholder: float
    alias: float
    dob_missing: float
    dob_swap: float
    dob_digit: float
    dob_year: float
    dob_decade: float
    sex_missing: float
    sex_wrong: float
    phone_given: float
    phone_wrong: float
    zip_missing: float
    zip_different: float


EMS = _Rates(0.04, 0.08, 0.01, 0.01, 0.02, 0.04, 0.3, 0.015, 0.0, 0.015, 0.06, 0.02, 0.02, 0.01,
             0.003, 0.05, 0.005, 0.5, 0.10, 0.2, 0.15)  # fmt: skip
ED = _Rates(0.015, 0.02, 0.005, 0.005, 0.002, 0.015, 0.2, 0.003, 0.02, 0.002, 0.005, 0.003, 0.005,
            0.002, 0.001, 0.01, 0.002, 0.8, 0.05, 0.05, 0.10)  # fmt: skip


def _digit_typo(dob: date, rng: random.Random) -> date:
    text = dob.strftime("%Y%m%d")
    for _ in range(20):
        i = rng.choice((3, 5, 6, 7))  # the year's last digit, the month's second, the day
        out = text[:i] + str(rng.randrange(10)) + text[i + 1 :]
        try:
            changed = date(int(out[:4]), int(out[4:6]), int(out[6:]))
        except ValueError:
            continue
        if changed != dob:
            return changed
    return dob


def _report(
    rid: int, person: Person, overdose: Overdose, kind: str, at: datetime, rng: random.Random
) -> Report:
    r = EMS if kind == "ems" else ED
    errors: list[str] = []
    given: str | None = person.given
    family: str | None = person.family
    middle = person.middle
    if rng.random() < r.given_missing:
        given, middle = None, None
        errors.append("given_missing")
    elif rng.random() < r.nickname and (nick := nickname(person.given, rng)):
        given = nick
        errors.append("nickname")
    elif rng.random() < r.initial:
        given = person.given[0]
        errors.append("initial")
    elif rng.random() < r.middle_as_given and person.middle:
        given, middle = person.middle, None
        errors.append("middle_as_given")
    elif rng.random() < r.given_typo:
        given = typo(person.given, rng)
        errors.append("given_typo")
    if family and any(sep in family for sep in "- ") and rng.random() < r.double_part:
        family = rng.choice(family.replace("-", " ").split())
        errors.append("double_part")
    if family and rng.random() < r.family_typo:
        family = typo(family, rng)
        errors.append("family_typo")
    if family and given and rng.random() < r.swapped:
        family, given = given, family
        errors.append("swapped")
    if person.relation == "junior" and family and rng.random() < 0.5:
        family = f"{family} Jr"
    if rng.random() < r.placeholder:
        family, given, middle = "Doe", "John" if person.sex == "M" else "Jane", None
        errors.append("placeholder")
    dob: date | None = person.dob
    alias = rng.random() < r.alias
    if alias:  # a name and date of birth made up at the scene
        family, given, middle = _family(rng), _given(rng, person.sex), None
        dob = _dob(rng, START) if rng.random() < 0.5 else None
        errors.append("alias")
    elif rng.random() < r.dob_missing:
        dob = None
        errors.append("dob_missing")
    elif rng.random() < r.dob_swap and person.dob.day <= 12 and person.dob.day != person.dob.month:
        dob = date(person.dob.year, person.dob.day, person.dob.month)
        errors.append("dob_swap")
    elif rng.random() < r.dob_digit:
        dob = _digit_typo(person.dob, rng)
        errors.append("dob_digit")
    elif rng.random() < r.dob_year:
        dob = _shift_year(person.dob, rng.choice((-1, 1)))
        errors.append("dob_year")
    elif rng.random() < r.dob_decade:
        dob = _shift_year(person.dob, rng.choice((-10, 10)))
        errors.append("dob_decade")
    sex: str | None = person.sex
    if rng.random() < r.sex_missing:
        sex = None
    elif rng.random() < r.sex_wrong:
        sex = "M" if person.sex == "F" else "F"
        errors.append("sex_wrong")
    phones: tuple[str, ...] = ()
    if person.phone and not alias and rng.random() < r.phone_given:
        phones = (person.phone,)
        if rng.random() < r.phone_wrong:
            phones = (_phone(rng),)
            errors.append("phone_wrong")
    zip_code: str | None = person.zip
    if rng.random() < r.zip_missing:
        zip_code = None
    elif rng.random() < r.zip_different:
        zip_code = _home(rng)[1]
        errors.append("zip_different")
    name, fips, _ = COUNTIES[overdose.scene_county if kind == "ems" else person.county]
    return Report(
        id=rid,
        person=person.id,
        overdose=overdose.id,
        kind=kind,
        at=at,
        county=name if kind == "ems" else fips,
        family=family,
        given=given,
        middle=middle,
        dob=dob,
        sex=sex,
        phones=phones,
        zip=zip_code,
        errors=tuple(errors),
    )


def _hospitals(
    reports: list[Report],
    overdoses: Sequence[Overdose],
    people: Sequence[Person],
    rng: random.Random,
) -> list[Report]:
    """Each report's hospital (module docs), from a random stream of its own."""

    def pick(county: int) -> str:
        names, weights = zip(*HOSPITALS[county], strict=True)
        return rng.choices(names, weights=weights)[0]

    everywhere = [h for county in HOSPITALS for h, _ in county]
    went: dict[int, str] = {}
    for od in overdoses:
        if "ed" in od.sources:
            county = od.scene_county if "ems" in od.sources else people[od.people[0]].county
            went[od.id] = pick(county)
    out = []
    for r in reports:
        hospital = went.get(r.overdose)
        errors = r.errors
        if r.kind == "ems" and hospital is not None:
            roll = rng.random()
            if roll < DESTINATION_MISSING:
                hospital, errors = None, (*errors, "destination_missing")
            elif roll < DESTINATION_MISSING + DESTINATION_WRONG:
                hospital = rng.choice([h for h in everywhere if h != hospital])
                errors = (*errors, "destination_wrong")
        transported = r.kind == "ems" and r.overdose in went
        out.append(replace(r, hospital=hospital, errors=errors, transported=transported))
    return out


def _shift_year(dob: date, years: int) -> date:
    try:
        return dob.replace(year=dob.year + years)
    except ValueError:  # the 29th of February
        return dob.replace(year=dob.year + years, day=28)


def generate(config: Config | None = None) -> Population:
    """The population, its overdoses and their reports in the order they arrive."""
    config = config or Config()
    rng = random.Random(config.seed)
    people = _people(config, rng)
    overdoses = _overdoses(config, people, rng)
    reports: list[Report] = []
    for od in overdoses:
        # Friends brought in together reach the ED a few minutes apart.
        ed_at = od.at + timedelta(minutes=min(120.0, max(10.0, rng.lognormvariate(3.55, 0.5))))
        for pid in od.people:
            person = people[pid]
            for kind in od.sources:
                at = od.at if kind == "ems" else ed_at + timedelta(minutes=rng.uniform(0, 6))
                reports.append(_report(len(reports), person, od, kind, at, rng))
    reports = _hospitals(reports, overdoses, people, random.Random(f"hospitals {config.seed}"))
    reports.sort(key=lambda r: (r.at, r.id))
    return Population(config, people, overdoses, reports)
