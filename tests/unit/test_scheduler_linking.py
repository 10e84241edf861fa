"""Tests for person linking and episode merging (services/scheduler/linking.py).

Blind keys are made by the real indexer under a fixed test key, so a report and a person match
by key exactly when intake would have given them equal keys.
"""

from __future__ import annotations

import functools
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
    LinkDecision,
    LinkReason,
    PersonCandidate,
    PossibleMatch,
    ReportIdentity,
    episode_for,
    is_repeat,
    link,
    names_similar,
    osa_distance,
)
from shared.events import BlindKeys
from shared.sealing import BlindIndexer

R = LinkReason
INDEXER = BlindIndexer(bytes(range(32)))
NEW_YORK = ZoneInfo("America/New_York")
DOB = date(1990, 4, 12)
OTHER_DOB = date(1991, 4, 12)
PHONE = "(617) 555-0100"
OTHER_PHONE = "617-555-0199"
FACILITY = "MERCY_ED"


def report(
    family: str | None = None,
    given: str | None = None,
    dob: date | None = None,
    phone: str | None = None,
    mrn: str | None = None,
    facility: str = FACILITY,
) -> ReportIdentity:
    """A report's identity with the blind keys intake would have published for it."""
    return ReportIdentity(
        family=family,
        given=given,
        dob=dob,
        phones=(phone,) if phone else (),
        mrn=mrn,
        blind=BlindKeys(
            name_dob=INDEXER.name_dob(family, given, dob) if family and given and dob else None,
            phone=INDEXER.phone(phone) if phone else None,
            mrn=INDEXER.mrn(facility, mrn) if mrn else None,
            dob=INDEXER.dob(dob) if dob else None,
        ),
    )


def person(
    family: str | None = None,
    given: str | None = None,
    dob: date | None = None,
    phone: str | None = None,
    mrn: str | None = None,
    *,
    person_id: uuid.UUID | None = None,
    also: tuple[ReportIdentity, ...] = (),
) -> PersonCandidate:
    """A known person holding the keys of a report like this one (and of ``also``)."""
    reports = (report(family, given, dob, phone, mrn), *also)
    return PersonCandidate(
        person_id=person_id or uuid.uuid4(),
        family=family,
        given=given,
        dob=dob,
        name_dob_keys=frozenset(r.blind.name_dob for r in reports if r.blind.name_dob),
        phone_keys=frozenset(r.blind.phone for r in reports if r.blind.phone),
        mrn_keys=frozenset(r.blind.mrn for r in reports if r.blind.mrn),
    )


JANE = person("Doyle", "Jane", DOB, PHONE, "A123")


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0, fold: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NEW_YORK, fold=fold)


def episode(at: datetime, *sources: str) -> EpisodeRef:
    return EpisodeRef(episode_id=uuid.uuid4(), incident_at=at, sources=frozenset(sources))


# --------------------------------------------------------------------------- name similarity


@pytest.mark.parametrize(
    ("a", "b", "similar"),
    [
        pytest.param(("Doe", "Jane"), ("Doe", "Jane"), True, id="equal"),
        pytest.param(("Doe", "Jane"), ("Doe", "Jnae"), True, id="transposed-given"),
        pytest.param(("Smith", "John"), ("Simth", "John"), True, id="transposed-family"),
        pytest.param(("Smith", "John"), ("Smyth", "John"), True, id="substituted-family"),
        pytest.param(("Smith", "John"), ("Smth", "John"), True, id="deleted-letter"),
        pytest.param(("Smith", "John"), ("Smiith", "John"), True, id="inserted-letter"),
        pytest.param(("Smith", "Jane"), ("Smiht", "Jnae"), True, id="one-typo-in-each-part"),
        pytest.param(("Smith", "Johnny"), ("Smoth", "Jonny"), True, id="typo-and-deletion"),
        pytest.param(("Smith", "Jane"), ("Smyht", "Jane"), False, id="two-typos-in-one-part"),
        pytest.param(("Smith", "Jane"), ("Smithers", "Jane"), False, id="longer-family"),
        pytest.param(("Doe", "Jane"), ("Jane", "Doe"), True, id="swapped-fields"),
        pytest.param(("Doe", "Jane"), ("Jnae", "Doe"), True, id="swapped-with-typo"),
        pytest.param(("O'Brien-Smith", "José"), ("OBRIENSMITH", "jose"), True, id="punct-accent"),
        pytest.param(("van der Berg", "Zoë"), ("VanDerBerg", "ZOE"), True, id="spaces-case"),
        pytest.param(("Lee", "Ann"), ("Lee", "Anne"), False, id="short-given-must-be-equal"),
        pytest.param(("Lee", "Anna"), ("Lea", "Anna"), False, id="short-family-must-be-equal"),
        pytest.param(("Li", "Wei"), ("Li", "Wei"), True, id="short-names-equal"),
        pytest.param(("Li", "Wei"), ("Lu", "Wei"), False, id="short-names-one-letter"),
        pytest.param(("Smith", "Bob"), ("Smith", "Robert"), False, id="nickname-not-matched"),
        pytest.param(("Smith", "Bill"), ("Smith", "William"), False, id="nickname-not-matched-2"),
        pytest.param(("Smith", "Jane"), ("Jones", "Jane"), False, id="different-family"),
        pytest.param(("Smith", "Jane"), (None, "Jane"), False, id="family-missing"),
        pytest.param(("Smith", None), ("Smith", None), False, id="given-missing-both"),
        pytest.param(("Smith", "Jane"), ("Smith", "---"), False, id="given-only-punctuation"),
    ],
)
def test_names_similar(
    a: tuple[str | None, str | None], b: tuple[str | None, str | None], similar: bool
) -> None:
    assert names_similar(*a, *b) is similar
    assert names_similar(*b, *a) is similar


NAMES = st.text(alphabet="abcdeé'- ", max_size=8)


@given(NAMES, NAMES, NAMES, NAMES)
def test_names_similar_is_symmetric_and_ignores_field_order(
    family: str, given_name: str, other_family: str, other_given: str
) -> None:
    forward = names_similar(family, given_name, other_family, other_given)
    assert forward == names_similar(other_family, other_given, family, given_name)
    assert forward == names_similar(given_name, family, other_given, other_family)
    assert forward == names_similar(family, given_name, other_given, other_family)


@given(NAMES, NAMES)
def test_a_name_is_similar_to_itself(family: str, given_name: str) -> None:
    has_both = any(c.isalpha() for c in family) and any(c.isalpha() for c in given_name)
    assert names_similar(family, given_name, family.upper(), given_name.upper()) is has_both


# --------------------------------------------------------------------------- OSA distance


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("", "", 0),
        ("", "abc", 3),
        ("jane", "jane", 0),
        ("jane", "jnae", 1),
        ("jane", "jan", 1),
        ("jane", "jdane", 1),
        ("jane", "jone", 1),
        ("ca", "abc", 3),  # OSA, unlike unrestricted Damerau-Levenshtein (2), edits once
        ("smith", "smyht", 2),
        ("kitten", "sitting", 3),
        ("abcdef", "badcfe", 3),
    ],
)
def test_osa_distance_examples(a: str, b: str, distance: int) -> None:
    assert osa_distance(a, b) == distance
    assert osa_distance(b, a) == distance


@functools.cache
def _reference_osa(a: str, b: str) -> int:
    """The textbook recursive definition, for short strings only."""
    if not a or not b:
        return len(a) + len(b)
    best = min(
        _reference_osa(a[:-1], b) + 1,
        _reference_osa(a, b[:-1]) + 1,
        _reference_osa(a[:-1], b[:-1]) + (a[-1] != b[-1]),
    )
    if len(a) > 1 and len(b) > 1 and a[-1] == b[-2] and a[-2] == b[-1]:
        best = min(best, _reference_osa(a[:-2], b[:-2]) + 1)
    return best


WORDS = st.text(alphabet="abcd", max_size=7)


@given(WORDS, WORDS)
def test_osa_distance_properties(a: str, b: str) -> None:
    d = osa_distance(a, b)
    assert d == osa_distance(b, a)
    assert (d == 0) is (a == b)
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))
    assert d == _reference_osa(a, b)


@given(st.text(max_size=12))
def test_osa_distance_to_itself_is_zero(a: str) -> None:
    assert osa_distance(a, a) == 0


@given(st.text(alphabet="abcdefgh", min_size=2, max_size=10), st.data())
def test_transposing_adjacent_distinct_letters_costs_one(word: str, data: st.DataObject) -> None:
    i = data.draw(st.integers(min_value=0, max_value=len(word) - 2))
    assume(word[i] != word[i + 1])
    swapped = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    assert osa_distance(word, swapped) == 1


@given(WORDS, st.data())
def test_a_single_edit_costs_at_most_one(word: str, data: st.DataObject) -> None:
    i = data.draw(st.integers(min_value=0, max_value=len(word)))
    letter = data.draw(st.sampled_from("abcde"))
    assert osa_distance(word, word[:i] + letter + word[i:]) == 1
    assert osa_distance(word, word[:i] + letter + word[i + 1 :]) <= 1


# --------------------------------------------------------------------------- linking


def exact(candidate: PersonCandidate, *reasons: LinkReason) -> LinkDecision:
    return LinkDecision(kind="exact", person_id=candidate.person_id, reasons=reasons)


def possible(
    *matches: tuple[PersonCandidate, tuple[LinkReason, ...]], reasons: tuple[LinkReason, ...]
) -> LinkDecision:
    return LinkDecision(
        kind="possible",
        person_id=None,
        possible=tuple(PossibleMatch(person_id=c.person_id, reasons=r) for c, r in matches),
        reasons=reasons,
    )


NEW = LinkDecision(kind="new", person_id=None, reasons=(R.NO_MATCH,))
DEIDENTIFIED = LinkDecision(kind="deidentified", person_id=None, reasons=(R.NO_IDENTITY,))


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
        assert link(identity, [JANE]) == DEIDENTIFIED

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
        assert link(identity, []) == NEW


class TestExact:
    @pytest.mark.parametrize(
        "identity",
        [
            pytest.param(report("Doyle", "Jane", DOB), id="same"),
            pytest.param(report("DOYLE", "jane", DOB), id="case"),
            pytest.param(report("Doylé", "Jane.", DOB), id="accent-punctuation"),
        ],
    )
    def test_name_dob_key(self, identity: ReportIdentity) -> None:
        assert link(identity, [JANE]) == exact(JANE, R.NAME_DOB_KEY)

    def test_name_dob_key_from_an_earlier_report_of_the_person(self) -> None:
        married = person("Doyle", "Jane", DOB, also=(report("Roe", "Jane", DOB),))
        assert link(report("Roe", "Jane", DOB), [married]) == exact(married, R.NAME_DOB_KEY)

    def test_mrn_key_despite_a_typo_in_the_name(self) -> None:
        assert link(report("Doyel", "Jnae", mrn="A123"), [JANE]) == exact(JANE, R.MRN_KEY)

    def test_mrn_key_is_exact_even_with_a_different_dob(self) -> None:
        decision = link(report("Doyle", "Jane", OTHER_DOB, mrn=" a123 "), [JANE])
        assert decision == exact(JANE, R.MRN_KEY)

    def test_mrn_is_scoped_to_its_facility(self) -> None:
        other_hospital = report("Doyel", "Jnae", mrn="A123", facility="ST_JUDE")
        assert link(other_hospital, [JANE]) == NEW

    def test_every_key_that_matched_is_a_reason(self) -> None:
        decision = link(report("Doyle", "Jane", DOB, PHONE, "A123"), [JANE])
        assert decision == exact(JANE, R.NAME_DOB_KEY, R.MRN_KEY, R.PHONE_KEY_AND_SIMILAR_NAME)

    @pytest.mark.parametrize(
        ("identity", "candidate"),
        [
            pytest.param(report("Doyle", "Jnae", DOB, PHONE), JANE, id="transposed-given"),
            pytest.param(report("Doyla", "Jane", DOB, PHONE), JANE, id="one-letter-family"),
            pytest.param(report("Jane", "Doyle", DOB, PHONE), JANE, id="swapped-fields"),
            pytest.param(report("Doyle", "Jnae", None, PHONE), JANE, id="report-dob-unknown"),
            pytest.param(
                report("Doyle", "Jnae", DOB, PHONE),
                person("Doyle", "Jane", None, PHONE),
                id="no-dob",
            ),
            pytest.param(report("Doyle", "Jane", None, PHONE), JANE, id="same-name-no-dob"),
        ],
    )
    def test_phone_key_and_similar_name(
        self, identity: ReportIdentity, candidate: PersonCandidate
    ) -> None:
        decision = link(identity, [candidate])
        assert decision == exact(candidate, R.PHONE_KEY_AND_SIMILAR_NAME)

    def test_one_exact_match_wins_over_possible_ones(self) -> None:
        twin = person("Doyle", "Jnae", DOB)
        assert link(report("Doyle", "Jane", DOB), [twin, JANE]) == exact(JANE, R.NAME_DOB_KEY)

    def test_two_rows_of_the_same_person_are_one_candidate(self) -> None:
        by_mrn = person("Doyle", "Jane", None, mrn="A123", person_id=JANE.person_id)
        by_phone = person("Doyle", "Jane", None, PHONE, person_id=JANE.person_id)
        decision = link(report("Doyle", "Jnae", DOB, PHONE, "A123"), [by_mrn, by_phone])
        assert decision == exact(JANE, R.MRN_KEY, R.PHONE_KEY_AND_SIMILAR_NAME)


class TestConflict:
    def test_two_exact_candidates_are_only_possible(self) -> None:
        by_mrn = person("Roe", "Janet", OTHER_DOB, mrn="A123")
        by_name = person("Doyle", "Jane", DOB)
        decision = link(report("Doyle", "Jane", DOB, mrn="A123"), [by_mrn, by_name])
        assert decision == possible(
            (by_mrn, (R.MRN_KEY,)),
            (by_name, (R.NAME_DOB_KEY,)),
            reasons=(R.CONFLICTING_EXACT_MATCHES,),
        )

    def test_possible_matches_are_listed_after_the_conflicting_exact_ones(self) -> None:
        typo = person("Doyle", "Jnae", DOB)
        by_phone = person("Doyle", "Jane", None, PHONE)
        by_name = person("Doyle", "Jane", DOB)
        decision = link(report("Doyle", "Jane", DOB, PHONE), [typo, by_phone, by_name])
        assert decision == possible(
            (by_phone, (R.PHONE_KEY_AND_SIMILAR_NAME,)),
            (by_name, (R.NAME_DOB_KEY,)),
            (typo, (R.DOB_AND_SIMILAR_NAME,)),
            reasons=(R.CONFLICTING_EXACT_MATCHES,),
        )


class TestPossible:
    @pytest.mark.parametrize(
        "identity",
        [
            pytest.param(report("Doyle", "Jnae", DOB), id="transposed-given"),
            pytest.param(report("Doyel", "Jane", DOB), id="transposed-family"),
            pytest.param(report("Doyla", "Jane", DOB), id="one-letter-family"),
            pytest.param(report("Jane", "Doyle", DOB), id="swapped-fields"),
        ],
    )
    def test_same_dob_and_similar_name(self, identity: ReportIdentity) -> None:
        decision = link(identity, [JANE])
        assert decision == possible(
            (JANE, (R.DOB_AND_SIMILAR_NAME,)), reasons=(R.DOB_AND_SIMILAR_NAME,)
        )

    @pytest.mark.parametrize(
        "identity",
        [
            pytest.param(report("Doyle", "John", DOB, PHONE), id="household-member"),
            pytest.param(report("Roe", "Sam", None, PHONE), id="stranger-no-dob"),
            pytest.param(report("Doyle", "Bob", DOB, PHONE), id="nickname"),
            pytest.param(report(given="Jane", phone=PHONE), id="given-name-only"),
            pytest.param(report(phone=PHONE), id="no-name"),
        ],
    )
    def test_phone_key_with_dissimilar_name(self, identity: ReportIdentity) -> None:
        decision = link(identity, [JANE])
        assert decision == possible((JANE, (R.PHONE_KEY_ONLY,)), reasons=(R.PHONE_KEY_ONLY,))

    def test_phone_key_and_similar_name_with_a_different_dob(self) -> None:
        junior = report("Doyle", "Jane", OTHER_DOB, PHONE)
        decision = link(junior, [JANE])
        reasons = (R.PHONE_KEY_SIMILAR_NAME_DOB_DIFFERS,)
        assert decision == possible((JANE, reasons), reasons=reasons)

    def test_every_possible_person_is_listed_in_order(self) -> None:
        sister = person("Doyle", "Joan", OTHER_DOB, PHONE)
        decision = link(report("Doyle", "Jnae", DOB, OTHER_PHONE), [sister, JANE])
        assert decision == possible(
            (JANE, (R.DOB_AND_SIMILAR_NAME,)), reasons=(R.DOB_AND_SIMILAR_NAME,)
        )
        decision = link(report("Doyle", "Jnae", DOB, PHONE), [sister, JANE])
        assert decision == exact(JANE, R.PHONE_KEY_AND_SIMILAR_NAME)
        decision = link(report("Doyle", "Jnea", DOB, PHONE), [sister, JANE])
        assert decision == possible(
            (sister, (R.PHONE_KEY_ONLY,)),
            (JANE, (R.PHONE_KEY_ONLY,)),
            reasons=(R.PHONE_KEY_ONLY,),
        )


class TestNew:
    @pytest.mark.parametrize(
        "identity",
        [
            pytest.param(report("Doyle", "Jane", OTHER_DOB), id="same-name-other-dob"),
            pytest.param(report("Doyle", "Jane"), id="same-name-no-dob"),
            pytest.param(report("Doyle", "Jnae", OTHER_DOB), id="typo-other-dob"),
            pytest.param(report("Doyle", "Jnea", DOB), id="two-edits"),
            pytest.param(report("Smith", "Robert", DOB), id="nickname-same-dob"),
            pytest.param(report("Roe", "Sam", mrn="A123", facility="ST_JUDE"), id="mrn-elsewhere"),
        ],
    )
    def test_no_match(self, identity: ReportIdentity) -> None:
        candidates = [JANE, person("Smith", "Bob", DOB), person("Doyle", "Jane", None, OTHER_PHONE)]
        assert link(identity, candidates) == NEW

    def test_short_names_must_be_equal(self) -> None:
        assert link(report("Lee", "Anne", DOB), [person("Lee", "Ann", DOB)]) == NEW
        ann = person("Lee", "Ann", DOB, PHONE)
        decision = link(report("Lee", "Anne", DOB, PHONE), [ann])
        assert decision == possible((ann, (R.PHONE_KEY_ONLY,)), reasons=(R.PHONE_KEY_ONLY,))

    def test_no_candidates(self) -> None:
        assert link(report("Doyle", "Jane", DOB, PHONE, "A123"), []) == NEW


# Small pools, so that random reports and people often share keys, DOBs and similar names.
POOL_NAMES = st.sampled_from([None, "Jane", "Jnae", "Doyle", "Doyel", "Ann", "Anne", "Bob", "Li"])
POOL_DOBS = st.sampled_from([None, DOB, OTHER_DOB])
POOL_PHONES = st.sampled_from([None, PHONE, OTHER_PHONE])
POOL_MRNS = st.sampled_from([None, "A123", "B456"])
REPORTS = st.builds(report, POOL_NAMES, POOL_NAMES, POOL_DOBS, POOL_PHONES, POOL_MRNS)
CANDIDATES = st.builds(
    person,
    POOL_NAMES,
    POOL_NAMES,
    POOL_DOBS,
    POOL_PHONES,
    POOL_MRNS,
    also=st.lists(REPORTS, max_size=2).map(tuple),  # keys from the person's other reports
)


@given(REPORTS, st.lists(CANDIDATES, max_size=4))
def test_exact_never_crosses_a_known_dob_without_a_name_dob_or_mrn_key(
    identity: ReportIdentity, candidates: list[PersonCandidate]
) -> None:
    decision = link(identity, candidates)
    if decision.kind != "exact":
        return
    (match,) = [c for c in candidates if c.person_id == decision.person_id]
    keyed = identity.blind.name_dob in match.name_dob_keys or identity.blind.mrn in match.mrn_keys
    dob_agrees = identity.dob is None or match.dob is None or identity.dob == match.dob
    assert keyed or dob_agrees


@given(REPORTS, st.lists(CANDIDATES, max_size=4), st.randoms(use_true_random=False))
def test_link_decision_shape(
    identity: ReportIdentity, candidates: list[PersonCandidate], rng: Random
) -> None:
    decision = link(identity, candidates)
    ids = {c.person_id for c in candidates}
    assert (decision.kind == "deidentified") is identity.deidentified
    assert (decision.person_id is not None) is (decision.kind == "exact")
    assert bool(decision.possible) is (decision.kind == "possible")
    assert decision.reasons
    listed = [m.person_id for m in decision.possible]
    assert len(listed) == len(set(listed))
    assert set(listed) <= ids
    assert decision.person_id is None or decision.person_id in ids
    # The order of the candidates changes only the order of the list, never the decision.
    shuffled = list(candidates)
    rng.shuffle(shuffled)
    again = link(identity, shuffled)
    assert (again.kind, again.person_id) == (decision.kind, decision.person_id)
    assert {m.person_id: m.reasons for m in again.possible} == {
        m.person_id: m.reasons for m in decision.possible
    }


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
