"""Tests for person linking and episode merging (services/scheduler/linking.py) and the match
weights behind it (services/scheduler/matching/).

Blind keys are made by the real indexer under a fixed test key, so a report and a person match
by key exactly when intake would have given them equal keys.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta, tzinfo
from random import Random
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from services.scheduler.linking import (
    DEFAULT_EPISODE_WINDOW,
    EpisodeRef,
    LinkReason,
    PersonCandidate,
    ReportIdentity,
    Thresholds,
    episode_for,
    is_repeat,
    link,
)
from services.scheduler.matching import Event, explain, profile, verdict
from services.scheduler.matching.blocking import dob_variants, lookup_keys, stored_keys
from services.scheduler.matching.comparisons import (
    compare_dob,
    compare_event,
    compare_family,
    compare_given,
    compare_names,
)
from services.scheduler.matching.names import are_aliases, is_placeholder, parse_name
from services.scheduler.matching.weights import LEVELS, MISSING
from shared.events import BlindKeys
from shared.sealing import BlindIndexer

R = LinkReason
INDEXER = BlindIndexer(bytes(range(32)))
NEW_YORK = ZoneInfo("America/New_York")
DOB = date(1990, 4, 12)
OTHER_DOB = date(1971, 9, 30)
PHONE = "(617) 555-0100"
OTHER_PHONE = "617-555-0199"
FACILITY = "MERCY_ED"
RUN = datetime(2026, 3, 14, 21, 5, tzinfo=UTC)
"""An EMS run; the ED visit of the same overdose starts 40 minutes later."""
VISIT = RUN + timedelta(minutes=40)


def report(
    family: str | None = None,
    given: str | None = None,
    dob: date | None = None,
    phone: str | None = None,
    mrn: str | None = None,
    facility: str = FACILITY,
    *,
    sex: str | None = None,
    middle: str | None = None,
    postal_code: str | None = None,
    kind: str | None = None,
    at: datetime | None = None,
    county: str | None = None,
    hospital: str | None = None,
    transported: bool = False,
) -> ReportIdentity:
    """A report's identity with the blind keys intake (and the scheduler) would give it."""
    return ReportIdentity(
        family=family,
        given=given,
        middle=middle,
        dob=dob,
        sex=sex,
        postal_code=postal_code,
        phones=(phone,) if phone else (),
        mrn=mrn,
        blind=BlindKeys(
            name_dob=INDEXER.name_dob(family, given, dob) if family and given and dob else None,
            phone=INDEXER.phone(phone) if phone else None,
            mrn=INDEXER.mrn(facility, mrn) if mrn else None,
            dob=INDEXER.dob(dob) if dob else None,
        ),
        derived_keys=tuple(stored_keys(INDEXER, family=family, given=given)),
        source_kind=kind,
        incident_at=at,
        county=county,
        hospital=hospital,
        transported=transported,
    )


def person(
    family: str | None = None,
    given: str | None = None,
    dob: date | None = None,
    phone: str | None = None,
    mrn: str | None = None,
    *,
    sex: str | None = None,
    middle: str | None = None,
    postal_code: str | None = None,
    kind: str | None = None,
    at: datetime | None = None,
    county: str | None = None,
    hospital: str | None = None,
    transported: bool = False,
    person_id: uuid.UUID | None = None,
    also: tuple[ReportIdentity, ...] = (),
) -> PersonCandidate:
    """A known person holding the keys of a report like this one (and of ``also``), with an
    episode of ``kind`` at ``at`` if given."""
    mine = report(family, given, dob, phone, mrn, sex=sex, middle=middle)
    reports = (mine, *also)
    derived = [pair for r in reports for pair in r.derived_keys]
    episodes: tuple[EpisodeRef, ...] = ()
    if kind and at:
        episodes = (
            EpisodeRef(
                episode_id=uuid.uuid4(),
                incident_at=at,
                sources=frozenset({kind}),
                county=county,
                hospital=hospital,
                transported=transported,
            ),
        )
    return PersonCandidate(
        person_id=person_id or uuid.uuid4(),
        family=family,
        given=given,
        middle=middle,
        dob=dob,
        sex=sex,
        postal_code=postal_code,
        phones=(phone,) if phone else (),
        name_dob_keys=frozenset(r.blind.name_dob for r in reports if r.blind.name_dob),
        phone_keys=frozenset(r.blind.phone for r in reports if r.blind.phone),
        mrn_keys=frozenset(r.blind.mrn for r in reports if r.blind.mrn),
        dob_keys=frozenset(r.blind.dob for r in reports if r.blind.dob),
        name_keys=frozenset(v for k, v in derived if k == "name"),
        episodes=episodes,
    )


JANE = person("Doyle", "Jane", DOB, PHONE, "A123", sex="F")


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0, fold: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NEW_YORK, fold=fold)


def episode(at: datetime, *sources: str) -> EpisodeRef:
    return EpisodeRef(episode_id=uuid.uuid4(), incident_at=at, sources=frozenset(sources))


def levels(a: ReportIdentity, b: PersonCandidate) -> dict[str, str]:
    return {e.comparison: e.level for e in explain(a.profile(), b.profile()).evidence}


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [
        pytest.param("Jane", "Jane", "exact", id="same"),
        pytest.param("JANE", "jane.", "exact", id="case-and-punctuation"),
        pytest.param("William", "Bill", "nickname", id="nickname"),
        pytest.param("Bill", "Will", "nickname", id="two-nicknames-of-one-name"),
        pytest.param("Robert", "Bob", "nickname", id="short-form"),
        pytest.param("Jane", "Jnae", "typo", id="transposed"),
        pytest.param("Elizabeth", "Elizbeth", "typo", id="dropped-letter"),
        pytest.param("Kimberly", "Kimberlt", "typo", id="neighbouring-key"),
        pytest.param("J", "Jane", "initial", id="initial"),
        pytest.param("Mary Ann", "Mary", "middle", id="double-given-name"),
        pytest.param("Jane", "Jana", "different_names", id="two-real-names-one-letter-apart"),
        pytest.param("Michael", "Matthew", "different_names", id="two-real-names"),
        pytest.param("Stephen", "Steven", "different_names", id="variants-are-two-names"),
        pytest.param("Jane", "Xqzv", "different", id="different"),
        pytest.param("K", "Jane", "different", id="initial-differs"),
        pytest.param(None, "Jane", MISSING, id="missing"),
    ],
)
def test_given_name_levels(a: str | None, b: str | None, level: str) -> None:
    found, _ = compare_given(parse_name(a), parse_name(b), None, None)
    assert found.name == level
    again, _ = compare_given(parse_name(b), parse_name(a), None, None)
    assert again.name == level


def test_a_given_name_that_is_the_others_middle_name() -> None:
    found, _ = compare_given(parse_name("Robert"), parse_name("James"), None, "robert")
    assert found.name == "middle"


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [
        pytest.param("Smith", "Smith", "exact", id="same"),
        pytest.param("O'Brien", "OBRIEN", "exact", id="punctuation"),
        pytest.param("Garcia Lopez", "Garcia", "part", id="double-surname"),
        pytest.param("Smith-Jones", "Jones", "part", id="hyphenated"),
        pytest.param("Smith", "Smtih", "typo", id="transposed"),
        pytest.param("Gray", "Grsy", "typo", id="one-letter-in-a-short-name"),
        pytest.param("Smith", "Jones", "different", id="different"),
        pytest.param("Garcia Lopez", "Garcia Perez", "different", id="cousins-share-a-part"),
    ],
)
def test_family_name_levels(a: str, b: str, level: str) -> None:
    found, _ = compare_family(parse_name(a), parse_name(b))
    assert found.name == level


def test_a_generational_suffix_is_kept_apart_from_the_name() -> None:
    junior = parse_name("Smith Jr.")
    assert junior is not None
    assert (junior.full, junior.suffix) == ("smith", "jr")
    assert parse_name("Smith III") == parse_name("smith 3rd")


@pytest.mark.parametrize(
    ("family", "given_name"),
    [("Doe", "John"), ("DOE", "Jane"), ("Unknown", "Male"), ("Trauma", "Alpha"), ("Unk", None)],
)
def test_placeholder_names_are_no_name(family: str, given_name: str | None) -> None:
    assert is_placeholder(parse_name(family), parse_name(given_name))
    folded = profile(family=family, given=given_name)
    assert folded.family is None
    assert folded.given is None


def test_doe_with_a_real_given_name_is_a_name() -> None:
    assert not is_placeholder(parse_name("Doe"), parse_name("Samantha"))


def test_aliases_come_from_the_nickname_list_both_ways() -> None:
    assert are_aliases("william", "bill")
    assert are_aliases("bill", "william")
    assert not are_aliases("stephen", "steven")  # they only share "steve"


def test_names_in_swapped_fields_count_crosswise() -> None:
    a = report("Doyle", "Jane", DOB).profile()
    b = report("Jane", "Doyle", DOB).profile()
    family, given_name, swapped = compare_names(a, b)
    assert swapped
    assert (family[0].name, given_name[0].name) == ("exact", "exact")
    assert family[1] is not None
    assert "swapped" in family[1]


def test_two_peoples_different_names_are_not_read_crosswise() -> None:
    a = report("Smith", "Mary", DOB).profile()
    b = report("Jones", "Linda", DOB).profile()
    _family, given_name, swapped = compare_names(a, b)
    assert not swapped
    assert given_name[0].name == "different_names"


# --------------------------------------------------------------------------- dates of birth


@pytest.mark.parametrize(
    ("other", "level"),
    [
        pytest.param(DOB, "exact", id="same"),
        pytest.param(date(1990, 12, 4), "swapped", id="day-and-month-swapped"),
        pytest.param(date(1990, 4, 13), "typo", id="day-one-digit"),
        pytest.param(date(1990, 4, 21), "typo", id="day-digits-swapped"),
        pytest.param(date(1990, 5, 12), "typo", id="month-one-digit"),
        pytest.param(date(1991, 4, 12), "typo", id="year-off-by-one"),
        pytest.param(date(1989, 4, 12), "typo", id="year-off-by-one-across-a-decade"),
        pytest.param(date(1980, 4, 12), "decade", id="year-off-by-ten"),
        pytest.param(date(1960, 4, 12), "different", id="thirty-years-a-parent"),
        pytest.param(date(1990, 7, 30), "different", id="different"),
    ],
)
def test_dob_levels(other: date, level: str) -> None:
    a, b = report("Doyle", "Jane", DOB).profile(), profile(dob=other)
    assert compare_dob(a, b)[0].name == level
    assert compare_dob(b, a)[0].name == level


def test_a_shared_dob_key_is_the_same_dob_even_if_the_latest_identity_differs() -> None:
    earlier = report("Doyle", "Jane", DOB)
    known = person("Doyle", "Jane", date(1990, 4, 21), also=(earlier,))
    assert levels(report("Doyle", "Jane", DOB), known)["dob"] == "exact"


def test_dob_variants_are_the_usual_typing_errors() -> None:
    assert dob_variants(DOB) == [
        date(1990, 12, 4),
        date(1980, 4, 12),
        date(1989, 4, 12),
        date(1991, 4, 12),
        date(2000, 4, 12),
    ]
    assert dob_variants(date(2000, 2, 29)) == []  # no 29th of February in those years


# --------------------------------------------------------------------------- the overdose


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [
        pytest.param(
            ("ems", RUN, "Guilford"),
            ("ed", VISIT, "37081"),
            "same_overdose",
            id="ems-then-ed-counties-written-differently",
        ),
        pytest.param(
            ("ems", RUN, "Guilford County"),
            ("ed", VISIT, "guilford"),
            "same_overdose",
            id="same-county",
        ),
        pytest.param(
            ("ems", RUN, "Guilford"),
            ("ed", VISIT, "Forsyth"),
            "same_overdose_other_county",
            id="other-county",
        ),
        pytest.param(
            ("ems", RUN, None), ("ed", RUN + timedelta(hours=5), None), "same_day", id="five-hours"
        ),
        pytest.param(
            ("ems", RUN, None),
            ("ems", RUN + timedelta(hours=1), None),
            "same_source_near",
            id="second-agency",
        ),
        pytest.param(
            ("ems", RUN, None), ("ed", RUN + timedelta(days=2), None), "none", id="two-days"
        ),
        pytest.param(
            ("law_enforcement", RUN, None),
            ("ems", RUN, None),
            "same_overdose",
            id="law-enforcement-and-ems",
        ),
    ],
)
def test_event_levels(
    a: tuple[str, datetime, str | None], b: tuple[str, datetime, str | None], level: str
) -> None:
    x = profile(events=[Event(a[1], frozenset({a[0]}), a[2])])
    y = profile(events=[Event(b[1], frozenset({b[0]}), b[2])])
    assert compare_event(x, y)[0].name == level
    assert compare_event(y, x)[0].name == level


HOSPITAL = "GUILFORD-1"


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [
        pytest.param(
            ("ems", RUN, HOSPITAL), ("ed", VISIT, HOSPITAL), "transported_here", id="transported"
        ),
        pytest.param(
            ("ems", RUN, " guilford-1"),
            ("ed", VISIT, HOSPITAL),
            "transported_here",
            id="case-and-spaces-do-not-count",
        ),
        pytest.param(
            ("ems", RUN, HOSPITAL),
            ("ed", RUN + timedelta(hours=3, minutes=50), HOSPITAL),
            "transported_here",
            id="a-late-registration-within-four-hours",
        ),
        pytest.param(
            ("ems", RUN, HOSPITAL),
            ("ed", RUN + timedelta(hours=5), HOSPITAL),
            "same_day",
            id="five-hours-is-not-the-transport",
        ),
        pytest.param(
            ("ems", RUN, HOSPITAL),
            ("ed", VISIT, "FORSYTH-1"),
            "same_overdose_other_hospital",
            id="another-hospital",
        ),
        pytest.param(
            ("ems", RUN, None), ("ed", VISIT, HOSPITAL), "same_overdose", id="no-destination"
        ),
        pytest.param(
            ("ems", RUN, HOSPITAL),
            ("ems", RUN + timedelta(hours=1), HOSPITAL),
            "same_source_near",
            id="two-runs-to-one-hospital",
        ),
        pytest.param(
            ("law_enforcement", RUN, HOSPITAL),
            ("ed", VISIT, HOSPITAL),
            "same_overdose",
            id="only-ems-transports",
        ),
    ],
)
def test_event_levels_with_the_hospital(
    a: tuple[str, datetime, str | None], b: tuple[str, datetime, str | None], level: str
) -> None:
    x = profile(events=[Event(a[1], frozenset({a[0]}), None, a[2])])
    y = profile(events=[Event(b[1], frozenset({b[0]}), None, b[2])])
    assert compare_event(x, y)[0].name == level
    assert compare_event(y, x)[0].name == level


def test_an_episode_of_both_kinds_at_the_hospital_is_the_transport_for_a_late_epcr() -> None:
    ed_first = PersonCandidate(
        person_id=uuid.uuid4(),
        family="Doyle",
        given="Jane",
        episodes=(
            EpisodeRef(
                episode_id=uuid.uuid4(),
                incident_at=VISIT,
                sources=frozenset({"ed", "law_enforcement"}),
                hospital=HOSPITAL,
            ),
        ),
    )
    run = report("Doyle", "Jane", kind="ems", at=RUN, hospital=HOSPITAL)
    assert levels(run, ed_first)["event"] == "transported_here"


def test_a_community_referral_carries_no_event() -> None:
    referral = report("Doyle", "Jane", kind="community", at=RUN)
    assert referral.profile().events == ()
    assert levels(referral, person("Doyle", "Jane", kind="ems", at=RUN))["event"] == MISSING


# --------------------------------------------------------------------------- linking

NEW = "new"


class TestDeidentified:
    @pytest.mark.parametrize(
        "identity",
        [
            pytest.param(report(), id="nothing"),
            pytest.param(report(dob=DOB), id="dob-only"),
            pytest.param(report(dob=DOB, mrn="A123"), id="mrn-matching-someone"),
            pytest.param(report("--", "?", DOB), id="punctuation-names"),
            pytest.param(ReportIdentity(phones=("unknown", "911")), id="phones-too-short"),
        ],
    )
    def test_no_name_and_no_phone_links_nobody(self, identity: ReportIdentity) -> None:
        assert identity.deidentified
        decision = link(identity, [JANE])
        assert (decision.kind, decision.reasons) == ("deidentified", (R.NO_IDENTITY,))

    @pytest.mark.parametrize(
        "identity",
        [
            pytest.param(report(given="Jane"), id="given-only"),
            pytest.param(report(family="Doyle"), id="family-only"),
            pytest.param(report(phone=PHONE), id="phone-only"),
            pytest.param(ReportIdentity(blind=BlindKeys(phone="k")), id="phone-key-only"),
        ],
    )
    def test_a_name_or_a_phone_is_enough_to_link(self, identity: ReportIdentity) -> None:
        assert not identity.deidentified
        assert link(identity, []).kind == NEW


class TestTheIssuesPairs:
    """An ED visit 40 minutes after the EMS run of the same overdose, with the variations real
    feeds carry: each is the same person, linked automatically (issue 18)."""

    @pytest.mark.parametrize(
        ("ems", "ed"),
        [
            pytest.param(
                report("Doyle", "Jane", DOB, sex="F", kind="ems", at=RUN),
                person("Doyle", "Jnae", DOB, sex="F", kind="ed", at=VISIT),
                id="one-letter-typo-without-a-phone",
            ),
            pytest.param(
                report("Bates", "Bill", DOB, PHONE, sex="M", kind="ems", at=RUN),
                person("Bates", "William", DOB, PHONE, sex="M", kind="ed", at=VISIT),
                id="nickname-at-the-scene-with-the-same-phone",
            ),
            pytest.param(
                report("Jane", "Doyle", DOB, kind="ems", at=RUN),
                person("Doyle", "Jane", DOB, kind="ed", at=VISIT),
                id="names-in-swapped-fields",
            ),
            pytest.param(
                report("Doyle", "Jane", date(1990, 12, 4), kind="ems", at=RUN),
                person("Doyle", "Jane", DOB, kind="ed", at=VISIT),
                id="day-and-month-swapped",
            ),
            pytest.param(
                report("Garcia", "Maria", DOB, kind="ems", at=RUN, county="Guilford"),
                person("Garcia Lopez", "Maria", DOB, kind="ed", at=VISIT, county="37081"),
                id="one-part-of-a-double-surname",
            ),
            pytest.param(
                report("Doyle", "J", DOB, PHONE, kind="ems", at=RUN),
                person("Doyle", "Jane", DOB, PHONE, kind="ed", at=VISIT),
                id="initial-only",
            ),
        ],
    )
    def test_linked_automatically(self, ems: ReportIdentity, ed: PersonCandidate) -> None:
        decision = link(ems, [ed])
        assert decision.kind == "exact", decision
        assert decision.person_id == ed.person_id
        assert decision.reasons == (R.MATCH_WEIGHT_ABOVE_AUTO_LINK,)
        assert decision.explanation is not None
        assert decision.explanation.weight >= Thresholds().auto_link
        assert not decision.explanation.doubts

    def test_the_same_pair_weeks_apart_with_a_typo_and_no_phone_is_still_linked(self) -> None:
        later = report("Doyle", "Jnae", DOB, sex="F", kind="ems", at=RUN + timedelta(days=40))
        assert link(later, [person("Doyle", "Jane", DOB, sex="F", kind="ed", at=VISIT)]).kind == (
            "exact"
        )


class TestHardCasesNeverLink:
    """Pairs that are two people however much else they share. None is ever linked
    automatically; a careful person would look at each, so some go to review."""

    HOUSE = {"dob": DOB, "phone": PHONE, "postal_code": "27401"}

    @pytest.mark.parametrize(
        ("a", "b"),
        [
            pytest.param(
                report("Doyle", "Michael", sex="M", **HOUSE),
                person("Doyle", "Matthew", sex="M", **HOUSE),
                id="twins",
            ),
            pytest.param(
                report("Doyle", "Jana", sex="F", **HOUSE),
                person("Doyle", "Jane", sex="F", **HOUSE),
                id="twins-one-letter-apart",
            ),
            pytest.param(
                report("Doyle", "Danielle", sex="F", **HOUSE),
                person("Doyle", "Daniel", sex="M", **HOUSE),
                id="twins-of-either-sex",
            ),
            pytest.param(
                report("Doyle", "Michael", sex="M", kind="ems", at=RUN, **HOUSE),
                person("Doyle", "Matthew", sex="M", kind="ed", at=VISIT, **HOUSE),
                id="twins-who-overdosed-together",
            ),
            pytest.param(
                report("Doyle", None, sex="M", **HOUSE),
                person("Doyle", "Matthew", sex="M", **HOUSE),
                id="twin-whose-given-name-is-missing",
            ),
            pytest.param(
                report("Bates Jr", "Robert", date(1994, 6, 2), PHONE, sex="M"),
                person("Bates Sr", "Robert", date(1966, 6, 2), PHONE, sex="M"),
                id="father-and-son-jr-sr",
            ),
            pytest.param(
                report("Bates", "Robert", date(1994, 6, 2), PHONE, sex="M"),
                person("Bates", "Robert", date(1961, 1, 19), PHONE, sex="M"),
                id="father-and-son-one-name-one-phone",
            ),
            pytest.param(
                report("Bates", "Robert", None, PHONE, sex="M", postal_code="27401"),
                person("Bates", "Robert", date(1961, 1, 19), PHONE, sex="M", postal_code="27401"),
                id="father-and-son-one-name-one-phone-one-dob-missing",
            ),
            pytest.param(
                report("Smith", "John", date(1985, 3, 3), sex="M"),
                person("Smith", "John", date(1979, 11, 20), sex="M"),
                id="common-name-different-dob",
            ),
            pytest.param(
                report("Smith", "John", date(1985, 3, 3), sex="M", kind="ems", at=RUN),
                person("Smith", "John", date(1979, 11, 20), sex="M", kind="ed", at=VISIT),
                id="common-name-different-dob-same-hour",
            ),
        ],
    )
    def test_never_linked(self, a: ReportIdentity, b: PersonCandidate) -> None:
        decision = link(a, [b])
        assert decision.kind != "exact", decision
        assert decision.person_id is None
        again = explain(b.profile(), a.profile())
        assert verdict(again, Thresholds()) != "link"

    @pytest.mark.parametrize(
        ("a", "b"),
        [
            pytest.param(
                report("Doyle", "Michael", sex="M", kind="ems", at=RUN, hospital=HOSPITAL,
                       **HOUSE),
                person("Doyle", "Matthew", sex="M", kind="ed", at=VISIT, hospital=HOSPITAL,
                       **HOUSE),
                id="twins-transported-together",
            ),
            pytest.param(
                report("Doyle", None, sex="M", kind="ems", at=RUN, hospital=HOSPITAL,
                       **HOUSE),
                person("Doyle", "Matthew", sex="M", kind="ed", at=VISIT, hospital=HOSPITAL,
                       **HOUSE),
                id="twin-without-a-given-name-transported-together",
            ),
            pytest.param(
                report("Bates", "Robert", date(1994, 6, 2), PHONE, sex="M", kind="ems", at=RUN,
                       hospital=HOSPITAL),
                person("Bates", "Robert", date(1961, 1, 19), PHONE, sex="M", kind="ed", at=VISIT,
                       hospital=HOSPITAL),
                id="father-and-son-one-name-one-phone-one-hospital",
            ),
            pytest.param(
                report("Smith", "John", date(1985, 3, 3), sex="M", kind="ems", at=RUN,
                       hospital=HOSPITAL),
                person("Smith", "John", date(1979, 11, 20), sex="M", kind="ed", at=VISIT,
                       hospital=HOSPITAL),
                id="common-name-different-dob-same-hour-same-hospital",
            ),
        ],
    )  # fmt: skip
    def test_never_linked_at_the_hospital_ems_transported_to(
        self, a: ReportIdentity, b: PersonCandidate
    ) -> None:
        decision = link(a, [b])
        assert decision.kind != "exact", decision
        assert decision.person_id is None
        assert [p.person_id for p in decision.possible] == [b.person_id]  # a lead looks
        assert verdict(explain(b.profile(), a.profile()), Thresholds()) != "link"

    def test_a_common_name_with_another_dob_and_nothing_else_is_two_people(self) -> None:
        decision = link(
            report("Smith", "John", date(1985, 3, 3), sex="M"),
            [person("Smith", "John", date(1979, 11, 20), sex="M")],
        )
        assert (decision.kind, decision.possible) == ("new", ())

    def test_a_twin_whose_sibling_is_known_is_linked_to_themself_not_the_sibling(self) -> None:
        michael = person("Doyle", "Michael", sex="M", kind="ems", at=RUN, **self.HOUSE)
        matthew = person("Doyle", "Matthew", sex="M", kind="ems", at=RUN, **self.HOUSE)
        ed = report("Doyle", "Matthew", sex="M", kind="ed", at=VISIT, **self.HOUSE)
        decision = link(ed, [michael, matthew])
        assert (decision.kind, decision.person_id) == ("exact", matthew.person_id)


class TestDecisions:
    def test_two_people_above_the_automatic_link_are_a_conflict_for_review(self) -> None:
        one, two = person("Doyle", "Jane", DOB, PHONE), person("Doyle", "Jane", DOB, PHONE)
        decision = link(report("Doyle", "Jane", DOB, PHONE), [one, two])
        assert decision.kind == "possible"
        assert decision.reasons == (R.CONFLICTING_MATCHES,)
        assert {m.person_id for m in decision.possible} == {one.person_id, two.person_id}

    def test_a_name_missing_away_from_an_overdose_is_a_doubt_for_review(self) -> None:
        decision = link(report("Doyle", None, DOB, PHONE), [JANE])
        assert decision.kind == "possible"
        (match,) = decision.possible
        assert match.level == "review"
        assert "given_name" in match.explanation.doubts

    def test_one_overdose_with_nothing_else_agreeing_is_flagged_not_missed(self) -> None:
        # A made-up name and no date of birth at the scene; the ED has the real ones.
        scene = report("Smith", "Linda", sex="F", kind="ems", at=RUN, postal_code="27401")
        ed = person("Doyle", "Jane", DOB, sex="F", kind="ed", at=VISIT, postal_code="27401")
        decision = link(scene, [ed])
        assert decision.kind == "new"
        assert decision.reasons == (R.SAME_OVERDOSE_FLAGGED,)
        (flag,) = decision.possible
        assert (flag.person_id, flag.level) == (ed.person_id, "flag")
        assert flag.explanation.same_overdose

    def test_a_stranger_treated_the_same_hour_is_not_flagged(self) -> None:
        scene = report("Smith", "Linda", date(1962, 8, 1), sex="F", kind="ems", at=RUN)
        ed = person("Doyle", "Jane", DOB, sex="F", kind="ed", at=VISIT)
        assert (link(scene, [ed]).kind, link(scene, [ed]).possible) == ("new", ())

    def test_a_program_with_higher_thresholds_reviews_what_the_default_links(self) -> None:
        typo = report("Doyle", "Jnae", DOB)
        known = person("Doyle", "Jane", DOB)
        assert link(typo, [known]).kind == "exact"
        strict = Thresholds(auto_link=60, review=16, flag=-1)
        assert link(typo, [known], strict).kind == "possible"

    def test_possible_matches_come_heaviest_first(self) -> None:
        light = person("Doyle", "Jane", None, OTHER_PHONE)
        heavy = person("Doyle", None, DOB, PHONE)
        decision = link(report("Doyle", "Jane", DOB, PHONE), [light, heavy])
        assert next(m.person_id for m in decision.possible) == heavy.person_id
        weights = [m.weight for m in decision.possible]
        assert weights == sorted(weights, reverse=True)

    def test_thresholds_must_be_in_order(self) -> None:
        with pytest.raises(ValueError, match="flag <= review < auto_link"):
            Thresholds(auto_link=10, review=12, flag=0)


def test_the_explanation_names_levels_and_reasons_never_values() -> None:
    a = report("Quorthwick", "Zebulon", DOB, PHONE, "MRN-77", kind="ems", at=RUN, county="X")
    b = person("Quorthwick", "Zebulonn", DOB, PHONE, kind="ed", at=VISIT, postal_code="27401")
    decision = link(a, [b])
    assert decision.explanation is not None
    text = json.dumps(decision.explanation.as_dict(Thresholds()))
    for value in ("uorthwick", "ebulon", "1990", "555", "MRN", "27401"):
        assert value.lower() not in text.lower()
    data = json.loads(text)
    assert data["weight"] == pytest.approx(sum(e["weight"] for e in data["evidence"]), abs=0.05)
    assert {e["comparison"] for e in data["evidence"]} >= {"family_name", "dob", "event"}
    assert all(e["reason"] for e in data["evidence"])
    assert data["thresholds"] == {"auto_link": 24.0, "review": 16.0, "flag": -1.0}


def test_every_level_weighs_log2_m_over_u_and_each_comparisons_m_sum_to_one() -> None:
    for comparison, found in LEVELS.items():
        listed = [level for name, level in found.items() if name != MISSING]
        if comparison not in ("suffix", "mrn"):  # levels only seen when they apply
            assert sum(level.m for level in listed) == pytest.approx(1.0, abs=1e-6)
        assert found[MISSING].weight == 0
        for level in listed:
            assert 0 < level.m <= 1
            assert 0 < level.u <= 1
            assert (level.weight > 0) is (level.m > level.u)


def test_lookup_keys_find_a_name_either_way_round_and_dob_variants() -> None:
    straight = dict(stored_keys(INDEXER, family="Doyle", given="Jane"))
    crossed = dict(stored_keys(INDEXER, family="Jane", given="Doyle"))
    assert straight == crossed
    typo = dict(stored_keys(INDEXER, family="Doyle", given="Jnae"))
    assert typo["name"] != straight["name"]
    assert typo["name_sound"] == straight["name_sound"]
    keys = lookup_keys(INDEXER, family="Doyle", given="Jane", dob=date(1990, 12, 4))
    assert ("dob", INDEXER.dob(DOB)) in keys


def test_the_transport_to_the_hospital_links_what_the_hour_alone_would_send_to_review() -> None:
    """The crew wrote only her initial and no date of birth; the ED has her in full. The same
    hour sends the pair to a lead; the ED at the hospital the crew took her to links it (the
    e2e test in tests/e2e/test_scheduler_e2e.py runs this pair through the services)."""
    ed = person("Doyle", "Elizabeth", DOB, PHONE, sex="F", kind="ed", at=VISIT, hospital=HOSPITAL)
    taken = link(report("Doyle", "E", kind="ems", at=RUN, hospital=HOSPITAL), [ed])
    assert (taken.kind, taken.person_id) == ("exact", ed.person_id)
    unnamed = link(report("Doyle", "E", kind="ems", at=RUN), [ed])
    assert [p.level for p in unnamed.possible] == ["review"]


def test_a_given_name_missing_at_the_same_overdose_is_a_leads_to_decide() -> None:
    """A twin who overdosed with their twin fits the rest as well: family name, date of birth,
    the overdose and its hospital. Only the given name tells them apart."""
    for hospital in (None, HOSPITAL):
        run = report("Doyle", None, DOB, kind="ems", at=RUN, hospital=hospital)
        decision = link(run, [person("Doyle", "Jane", DOB, kind="ed", at=VISIT, hospital=hospital)])
        assert decision.kind == "possible"
        (review,) = decision.possible
        assert review.level == "review"
        assert review.explanation.doubts == ("given_name",)


class TestFlaggedNeverMissedSilently:
    """An EMS run that names its destination and an ED visit there within hours are flagged for
    a lead whatever the names (a false name given at the scene), and never linked."""

    ED_VISIT = person(
        "Bates", "Robert", DOB, PHONE, sex="M", kind="ed", at=VISIT, hospital=HOSPITAL
    )

    def alias(self, hospital: str | None) -> ReportIdentity:
        return report("Miller", "Kevin", OTHER_DOB, sex="M", kind="ems", at=RUN, hospital=hospital)

    def test_a_false_name_at_the_scene_is_flagged_by_the_transport(self) -> None:
        decision = link(self.alias(HOSPITAL), [self.ED_VISIT])
        assert (decision.kind, decision.person_id) == ("new", None)
        assert decision.reasons == (R.SAME_OVERDOSE_FLAGGED,)
        (flag,) = decision.possible
        assert (flag.person_id, flag.level) == (self.ED_VISIT.person_id, "flag")
        assert flag.weight < Thresholds().flag  # whatever the names
        assert flag.explanation.level("event") == "transported_here"

    def test_another_hospital_named_by_ems_is_flagged_too(self) -> None:
        decision = link(self.alias("FORSYTH-1"), [self.ED_VISIT])
        assert [p.level for p in decision.possible] == ["flag"]
        assert decision.possible[0].explanation.level("event") == "same_overdose_other_hospital"

    def test_without_a_destination_the_false_name_is_weighed_as_before(self) -> None:
        decision = link(self.alias(None), [self.ED_VISIT])
        assert (decision.kind, decision.possible) == ("new", ())

    def test_an_ed_visit_at_the_hospital_hours_later_is_not_the_transport(self) -> None:
        later = person(
            "Bates", "Robert", DOB, PHONE, sex="M", kind="ed", at=RUN + timedelta(hours=6),
            hospital=HOSPITAL,
        )  # fmt: skip
        assert link(self.alias(HOSPITAL), [later]).possible == ()

    def test_a_flag_is_listed_after_the_reviews_not_dropped(self) -> None:
        twin = person("Doyle", "Jane", sex="F", **TestHardCasesNeverLink.HOUSE)
        jana = report(
            "Doyle", "Jana", sex="F", kind="ems", at=RUN, hospital=HOSPITAL,
            **TestHardCasesNeverLink.HOUSE,
        )  # fmt: skip
        stranger = person("Bates", "Roberta", OTHER_DOB, sex="F", kind="ed", at=VISIT,
                          hospital=HOSPITAL)  # fmt: skip
        assert verdict(explain(jana.profile(), twin.profile()), Thresholds()) == "review"
        decision = link(jana, [stranger, twin])
        assert decision.reasons == (R.POSSIBLE_MATCH,)
        assert [(p.person_id, p.level) for p in decision.possible] == [
            (twin.person_id, "review"),
            (stranger.person_id, "flag"),
        ]


class TestUnnamedTransportFlagged:
    """An EMS run that transported the person but named no hospital, and an ED overdose visit
    at any hospital within 3 hours after it, are flagged whatever the names (a false name given
    at the scene leaves only the hour); never linked by it; not for a run that did not
    transport, nor outside the window."""

    def ed_visit(self, at: datetime = VISIT, hospital: str | None = HOSPITAL) -> PersonCandidate:
        return person("Bates", "Robert", DOB, PHONE, sex="M", kind="ed", at=at, hospital=hospital)

    def alias_run(self, *, transported: bool = True, at: datetime = RUN) -> ReportIdentity:
        return report(
            "Miller", "Kevin", OTHER_DOB, sex="M", kind="ems", at=at, transported=transported
        )

    def test_the_ed_visit_after_an_unnamed_transport_is_flagged(self) -> None:
        ed = self.ed_visit()
        decision = link(self.alias_run(), [ed])
        assert (decision.kind, decision.person_id) == ("new", None)
        assert decision.reasons == (R.SAME_OVERDOSE_FLAGGED,)
        (flag,) = decision.possible
        assert (flag.person_id, flag.level) == (ed.person_id, "flag")
        assert flag.weight < Thresholds().flag  # whatever the names
        assert flag.explanation.unnamed_transport is not None
        assert "40 min later" in flag.explanation.unnamed_transport
        assert flag.explanation.as_dict()["unnamed_transport"] == (
            flag.explanation.unnamed_transport
        )

    def test_ed_first_then_the_run_is_flagged_too(self) -> None:
        """The ED visit is known first (an ePCR arrives hours after the run); the run is the
        report."""
        run = person("Miller", "Kevin", OTHER_DOB, sex="M", kind="ems", at=RUN, transported=True)
        visit = report("Bates", "Robert", DOB, PHONE, sex="M", kind="ed", at=VISIT,
                       hospital=HOSPITAL)  # fmt: skip
        decision = link(visit, [run])
        assert [(p.person_id, p.level) for p in decision.possible] == [(run.person_id, "flag")]

    def test_any_of_the_programs_hospitals(self) -> None:
        for hospital in (HOSPITAL, "FORSYTH-2", None):
            decision = link(self.alias_run(), [self.ed_visit(hospital=hospital)])
            assert [p.level for p in decision.possible] == ["flag"], hospital

    def test_a_run_that_did_not_transport_is_not_flagged(self) -> None:
        """Refused, treated and released, dead at the scene: no destination for a reason."""
        decision = link(self.alias_run(transported=False), [self.ed_visit()])
        assert (decision.kind, decision.possible) == ("new", ())

    @pytest.mark.parametrize(
        ("gap", "flagged"),
        [
            (timedelta(0), True),
            (timedelta(hours=3), True),
            (timedelta(hours=3, minutes=1), False),
            (timedelta(hours=6), False),
            (-timedelta(minutes=1), False),
            (-timedelta(hours=1), False),
        ],
    )
    def test_only_within_three_hours_after_the_run(self, gap: timedelta, flagged: bool) -> None:
        decision = link(self.alias_run(), [self.ed_visit(at=RUN + gap)])
        assert bool(decision.possible) is flagged
        assert all(p.level == "flag" for p in decision.possible)

    def test_a_named_destination_keeps_its_own_rules(self) -> None:
        run = report("Miller", "Kevin", OTHER_DOB, sex="M", kind="ems", at=RUN,
                     hospital=HOSPITAL, transported=True)  # fmt: skip
        (flag,) = link(run, [self.ed_visit()]).possible
        assert flag.explanation.level("event") == "transported_here"
        assert flag.explanation.unnamed_transport is None

    def test_the_flag_adds_no_weight_and_never_links(self) -> None:
        """Twins transported together, one run naming no hospital: at most a review."""
        house = TestHardCasesNeverLink.HOUSE
        twin = person("Doyle", "Jane", sex="F", kind="ed", at=VISIT, hospital=HOSPITAL,
                      **house)  # fmt: skip
        jana = report("Doyle", "Jana", sex="F", kind="ems", at=RUN, transported=True,
                      **house)  # fmt: skip
        plain = report("Doyle", "Jana", sex="F", kind="ems", at=RUN,
                       **house)  # fmt: skip
        with_flag = explain(jana.profile(), twin.profile())
        assert with_flag.weight == explain(plain.profile(), twin.profile()).weight
        assert verdict(with_flag, Thresholds()) in ("review", "flag")
        assert link(jana, [twin]).kind != "exact"

    def test_swapping_the_records_never_changes_the_decision(self) -> None:
        run = self.alias_run().profile()
        visit = self.ed_visit().profile()
        forward, backward = explain(run, visit), explain(visit, run)
        assert forward.unnamed_transport == backward.unnamed_transport is not None
        assert verdict(forward, Thresholds()) == verdict(backward, Thresholds()) == "flag"


# --------------------------------------------------------------------------- properties

POOL_FAMILY = st.sampled_from([None, "Doyle", "Doyel", "Garcia Lopez", "Garcia", "Jane", "Li"])
POOL_GIVEN = st.sampled_from([None, "Jane", "Jnae", "Jana", "William", "Bill", "J", "Doyle"])
POOL_DOBS = st.sampled_from([None, DOB, date(1990, 12, 4), date(1991, 4, 12), OTHER_DOB])
POOL_PHONES = st.sampled_from([None, PHONE, OTHER_PHONE])
POOL_SEX = st.sampled_from([None, "F", "M"])
POOL_ZIP = st.sampled_from([None, "27401", "27105"])
POOL_EVENTS = st.sampled_from(
    [(None, None), ("ems", RUN), ("ed", VISIT), ("ed", RUN + timedelta(hours=7))]
)
POOL_HOSPITALS = st.sampled_from([None, HOSPITAL, "FORSYTH-1"])
POOL_TRANSPORTED = st.booleans()


@st.composite
def identities(draw: st.DrawFn) -> dict[str, object]:
    kind, at = draw(POOL_EVENTS)
    return {
        "family": draw(POOL_FAMILY),
        "given": draw(POOL_GIVEN),
        "dob": draw(POOL_DOBS),
        "phone": draw(POOL_PHONES),
        "sex": draw(POOL_SEX),
        "postal_code": draw(POOL_ZIP),
        "kind": kind,
        "at": at,
        "hospital": draw(POOL_HOSPITALS),
        "transported": draw(POOL_TRANSPORTED),
    }


@given(identities(), identities())
def test_swapping_the_two_records_never_changes_the_weight_or_the_decision(
    x: dict[str, object], y: dict[str, object]
) -> None:
    a = report(**x).profile()  # type: ignore[arg-type]
    b = report(**y).profile()  # type: ignore[arg-type]
    forward, backward = explain(a, b), explain(b, a)
    assert forward.weight == backward.weight
    assert verdict(forward, Thresholds()) == verdict(backward, Thresholds())
    assert [(e.comparison, e.level) for e in forward.evidence] == [
        (e.comparison, e.level) for e in backward.evidence
    ]
    assert forward.unnamed_transport == backward.unnamed_transport


AGREEING = ("family", "given", "dob", "phone", "sex", "postal_code", "event", "hospital")


@given(identities(), identities(), st.sampled_from(AGREEING))
def test_adding_agreeing_evidence_never_lowers_the_score(
    x: dict[str, object], y: dict[str, object], field: str
) -> None:
    names = ("kind", "at") if field == "event" else (field,)
    assume(all(x[n] is None for n in names) or all(y[n] is None for n in names))
    before = explain(report(**x).profile(), report(**y).profile()).weight  # type: ignore[arg-type]
    # The side that lacked it gets the other side's value (or both a new one).
    source = y if all(x[n] is None for n in names) else x
    target = x if source is y else y
    if all(source[n] is None for n in names):
        value = {"family": "Doyle", "given": "Jane", "dob": DOB, "phone": PHONE, "sex": "F",
                 "postal_code": "27401", "hospital": HOSPITAL}  # fmt: skip
        for n in names:
            source[n] = value.get(n, {"kind": "ems", "at": RUN}.get(n))
        if field == "event":
            source["kind"], source["at"] = "ems", RUN
    for n in names:
        target[n] = source[n]
    if field == "event":
        target["kind"] = "ed" if source["kind"] != "ed" else "ems"
    after = explain(report(**x).profile(), report(**y).profile()).weight  # type: ignore[arg-type]
    assert after >= before


@given(st.lists(identities(), min_size=1, max_size=4), identities(), st.randoms())
def test_the_order_of_the_candidates_never_changes_the_decision(
    people: list[dict[str, object]], x: dict[str, object], rng: Random
) -> None:
    candidates = [person(**p) for p in people]  # type: ignore[arg-type]
    identity = report(**x)  # type: ignore[arg-type]
    decision = link(identity, candidates)
    shuffled = list(candidates)
    rng.shuffle(shuffled)
    again = link(identity, shuffled)
    assert (again.kind, again.person_id) == (decision.kind, decision.person_id)
    assert {m.person_id for m in again.possible} == {m.person_id for m in decision.possible}
    assert (decision.person_id is not None) is (decision.kind == "exact")
    assert decision.reasons


# --------------------------------------------------------------------------- episodes


class TestEpisodeFor:
    def test_ems_and_ed_of_the_same_overdose_merge(self) -> None:
        ems = episode(ny(2024, 6, 3, 22), "ems")
        assert episode_for(ny(2024, 6, 3, 23, 30), "ed", [ems]) == ems

    def test_the_ed_report_may_come_first(self) -> None:
        ed = episode(ny(2024, 6, 3, 23, 30), "ed")
        assert episode_for(ny(2024, 6, 3, 22), "ems", [ed]) == ed

    @pytest.mark.parametrize(
        ("gap", "merges"),
        [
            (timedelta(hours=12), True),
            (timedelta(hours=12, seconds=1), False),
            (timedelta(hours=13), False),
            (-timedelta(hours=12), True),
            (-timedelta(hours=13), False),
        ],
    )
    def test_window_is_twelve_hours_either_side(self, gap: timedelta, merges: bool) -> None:
        ems = episode(ny(2024, 6, 3, 22), "ems")
        found = episode_for(ems.incident_at + gap, "ed", [ems])
        assert found == (ems if merges else None)

    def test_window_is_configurable(self) -> None:
        ems = episode(ny(2024, 6, 3, 22), "ems")
        later = ny(2024, 6, 4, 4)
        assert episode_for(later, "ed", [ems], window=timedelta(hours=4)) is None
        assert episode_for(later, "ed", [ems], window=timedelta(hours=6)) == ems

    def test_a_later_overdose_is_a_new_episode(self) -> None:
        earlier = episode(ny(2024, 6, 1, 22), "ems", "ed")
        assert episode_for(ny(2024, 6, 3, 9), "ems", [earlier]) is None
        assert episode_for(ny(2024, 6, 3, 9), "ems", []) is None

    def test_nearest_is_chosen(self) -> None:
        far = episode(ny(2024, 6, 3, 12), "ems")
        near = episode(ny(2024, 6, 3, 20), "ems")
        assert episode_for(ny(2024, 6, 3, 22), "ed", [far, near]) == near
        assert episode_for(ny(2024, 6, 3, 22), "ed", [near, far]) == near

    def test_an_episode_lacking_this_kind_comes_before_a_nearer_one(self) -> None:
        ems_only = episode(ny(2024, 6, 3, 14), "ems")
        has_ed = episode(ny(2024, 6, 3, 21), "ed")
        assert episode_for(ny(2024, 6, 3, 22), "ed", [has_ed, ems_only]) == ems_only

    def test_two_reports_of_the_same_kind_merge(self) -> None:
        first_hospital = episode(ny(2024, 6, 3, 22), "ed")
        assert episode_for(ny(2024, 6, 4, 2), "ed", [first_hospital]) == first_hospital

    def test_ties_go_to_the_earlier_incident_then_the_order_given(self) -> None:
        before = episode(ny(2024, 6, 3, 20), "ems")
        after = episode(ny(2024, 6, 4, 0), "ems")
        assert episode_for(ny(2024, 6, 3, 22), "ed", [after, before]) == before
        twin = episode(ny(2024, 6, 3, 20), "ems")
        assert episode_for(ny(2024, 6, 3, 22), "ed", [twin, before]) == twin

    def test_fall_back_counts_real_hours(self) -> None:
        # Both in New York: Python subtracts wall times when two datetimes share a tzinfo,
        # which would call these 12 h apart. They are 13 real hours apart.
        ems = episode(ny(2024, 11, 2, 13, 30), "ems")
        ed_at = ny(2024, 11, 3, 1, 30, fold=1)  # the second 01:30, standard time
        assert ed_at - ems.incident_at == timedelta(hours=12)  # the trap
        assert episode_for(ed_at, "ed", [ems]) is None

    def test_spring_forward_counts_real_hours(self) -> None:
        ems = episode(ny(2024, 3, 9, 15), "ems")
        ed_at = ny(2024, 3, 10, 4)  # 13 wall hours, 12 real hours later
        assert episode_for(ed_at, "ed", [ems]) == ems

    def test_zones_may_differ(self) -> None:
        ems = episode(ny(2024, 6, 3, 22), "ems")
        assert episode_for(datetime(2024, 6, 4, 3, 30, tzinfo=UTC), "ed", [ems]) == ems

    def test_naive_datetimes_are_errors(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            episode(datetime(2024, 6, 3, 22), "ems")
        with pytest.raises(ValueError, match="timezone-aware"):
            episode_for(datetime(2024, 6, 3, 22), "ed", [])

    @pytest.mark.parametrize("window", [timedelta(0), timedelta(hours=-1)])
    def test_window_must_be_positive(self, window: timedelta) -> None:
        with pytest.raises(ValueError, match="positive"):
            episode_for(ny(2024, 6, 3, 22), "ed", [], window=window)


OFFSETS = st.integers(min_value=-30 * 60, max_value=30 * 60).map(lambda m: timedelta(minutes=m))
ZONES = st.sampled_from([UTC, NEW_YORK, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("Asia/Kolkata")])


@given(
    OFFSETS,
    st.lists(st.tuples(OFFSETS, st.sets(st.sampled_from(["ems", "ed"])), ZONES), max_size=5),
    st.sampled_from(["ems", "ed"]),
    ZONES,
)
def test_episode_for_finds_one_in_window_whatever_the_zone(
    at: timedelta,
    rows: list[tuple[timedelta, set[str], tzinfo]],
    kind: str,
    zone: tzinfo,
) -> None:
    base = datetime(2024, 11, 3, 6, tzinfo=UTC)  # New York falls back at 06:00 UTC
    incident = (base + at).astimezone(zone)
    episodes = [episode((base + offset).astimezone(z), *sources) for offset, sources, z in rows]
    found = episode_for(incident, kind, episodes)

    # Real elapsed time: subtracting two datetimes of one zone subtracts wall-clock times,
    # which is wrong across a DST change, so compare in UTC.
    def apart(e: EpisodeRef) -> timedelta:
        return abs(e.incident_at.astimezone(UTC) - incident.astimezone(UTC))

    in_window = [e for e in episodes if apart(e) <= DEFAULT_EPISODE_WINDOW]
    assert (found is None) is (not in_window)
    if found is not None:
        assert found in in_window
        lacking = [e for e in in_window if kind not in e.sources]
        assert found in lacking or not lacking
        assert all(apart(found) <= apart(e) for e in lacking or in_window)
    # The same instants in UTC give the same answer.
    assert found == episode_for(incident.astimezone(UTC), kind, episodes)


# --------------------------------------------------------------------------- repeat overdose


class TestIsRepeat:
    WINDOW = timedelta(hours=12)

    @pytest.mark.parametrize(
        ("case_open", "last", "repeat"),
        [
            pytest.param(True, ny(2024, 6, 1, 22), True, id="open-days-later"),
            pytest.param(False, ny(2024, 6, 1, 22), False, id="closed"),
            pytest.param(False, None, False, id="first-overdose"),
            pytest.param(True, None, True, id="open-no-incident-on-record"),
            pytest.param(True, ny(2024, 6, 3, 0), True, id="open-just-past-window"),
            pytest.param(True, ny(2024, 6, 3, 2), False, id="open-within-window"),
            pytest.param(True, ny(2024, 6, 5, 8), False, id="late-report-of-older-overdose"),
        ],
    )
    def test_repeat(self, case_open: bool, last: datetime | None, repeat: bool) -> None:
        new = ny(2024, 6, 3, 14)
        assert is_repeat(new, case_open=case_open, last_incident_at=last, window=self.WINDOW) is (
            repeat
        )

    def test_window_counts_real_hours(self) -> None:
        last = ny(2024, 11, 2, 13, 30)
        new = ny(2024, 11, 3, 1, 30, fold=1)  # 13 real hours later, 12 wall hours
        assert is_repeat(new, case_open=True, last_incident_at=last, window=self.WINDOW)

    def test_naive_datetimes_are_errors(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            is_repeat(
                datetime(2024, 6, 3), case_open=True, last_incident_at=None, window=self.WINDOW
            )
        with pytest.raises(ValueError, match="timezone-aware"):
            is_repeat(
                ny(2024, 6, 3),
                case_open=False,
                last_incident_at=datetime(2024, 6, 1),
                window=self.WINDOW,
            )

    def test_window_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            is_repeat(ny(2024, 6, 3), case_open=True, last_incident_at=None, window=timedelta())
