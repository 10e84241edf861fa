"""Tests for the overdose classifier (services/intake/classify.py)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.intake.classify import (
    NALOXONE_RXNORM,
    Decision,
    Definition,
    Medication,
    Reason,
    ReasonCode,
    classify_ed,
    classify_ems,
    classify_ems_impression,
    classify_icd10,
    classify_medication,
    classify_text,
    combine,
    normalize_icd10,
)

R = ReasonCode


def codes_of(decision: Decision) -> list[tuple[str, str]]:
    return [(r.code.value, r.detail) for r in decision.reasons]


def flags(decision: Decision) -> tuple[bool, bool]:
    return decision.opioid, decision.any_drug


# --------------------------------------------------------------------------- model


def test_decision_rejects_opioid_without_any_drug() -> None:
    with pytest.raises(ValueError, match="any-drug"):
        Decision(opioid=True, any_drug=False)


@pytest.mark.parametrize(
    ("opioid", "any_drug", "definition", "expected"),
    [
        (True, True, Definition.OPIOID, True),
        (True, True, Definition.ANY_DRUG, True),
        (False, True, Definition.OPIOID, False),
        (False, True, Definition.ANY_DRUG, True),
        (False, False, Definition.OPIOID, False),
        (False, False, Definition.ANY_DRUG, False),
    ],
)
def test_is_overdose(opioid: bool, any_drug: bool, definition: Definition, expected: bool) -> None:
    assert Decision(opioid=opioid, any_drug=any_drug).is_overdose(definition) is expected


def test_decisions_are_frozen() -> None:
    decision = classify_icd10("T40.1X1A", source="dg1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.opioid = False  # type: ignore[misc]


def test_combine_unions_flags_and_dedupes_reasons() -> None:
    a = classify_icd10("T40.1X1A", source="dg1")
    b = classify_icd10("T40.5X1A", source="dg1")
    merged = combine([b, a, a])
    assert flags(merged) == (True, True)
    assert codes_of(merged) == [
        ("icd10_poisoning", "T405X1A"),
        ("icd10_opioid_poisoning", "T401X1A"),
    ]
    assert combine([]) == Decision(opioid=False, any_drug=False, reasons=())


# --------------------------------------------------------------------------- ICD-10-CM


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("T40.1X1A", "T401X1A"),
        ("t40.1x1a", "T401X1A"),
        (" T401X1A ", "T401X1A"),
        ("t40.1X1a\t", "T401X1A"),
        ("F11.120", "F11120"),
        ("T 40.1 X1A", "T401X1A"),
        ("", ""),
    ],
)
def test_normalize_icd10(raw: str, normalized: str) -> None:
    assert normalize_icd10(raw) == normalized


@pytest.mark.parametrize(
    ("code", "opioid", "any_drug", "reason"),
    [
        # format variants
        ("T40.1X1A", True, True, R.ICD10_OPIOID_POISONING),
        ("T401X1A", True, True, R.ICD10_OPIOID_POISONING),
        ("t40.1x1a", True, True, R.ICD10_OPIOID_POISONING),
        (" t401x1a ", True, True, R.ICD10_OPIOID_POISONING),
        # intent and encounter
        ("T40.1X2A", True, True, R.ICD10_OPIOID_POISONING),
        ("T40.1X3A", True, True, R.ICD10_OPIOID_POISONING),
        ("T40.1X4A", True, True, R.ICD10_OPIOID_POISONING),
        ("T40.1X5A", False, False, R.ICD10_ADVERSE_EFFECT),
        ("T40.1X6A", False, False, R.ICD10_UNDERDOSING),
        ("T40.1X0A", False, False, R.ICD10_EXCLUDED_INTENT),
        ("T40.1X1D", False, False, R.ICD10_SUBSEQUENT_ENCOUNTER),
        ("T40.1X1S", False, False, R.ICD10_SEQUELA),
        ("T40.1X1", True, True, R.ICD10_OPIOID_POISONING),
        # opioid subset
        ("T40.0X1A", True, True, R.ICD10_OPIOID_POISONING),
        ("T40.2X1A", True, True, R.ICD10_OPIOID_POISONING),
        ("T40.3X1A", True, True, R.ICD10_OPIOID_POISONING),
        ("T40.411A", True, True, R.ICD10_OPIOID_POISONING),
        ("T40.421A", True, True, R.ICD10_OPIOID_POISONING),
        ("T40.491A", True, True, R.ICD10_OPIOID_POISONING),
        ("T40.415A", False, False, R.ICD10_ADVERSE_EFFECT),
        ("T40.601A", True, True, R.ICD10_OPIOID_POISONING),
        ("T40.691A", True, True, R.ICD10_OPIOID_POISONING),
        # all-drug only
        ("T40.5X1A", False, True, R.ICD10_POISONING),
        ("T40.711A", False, True, R.ICD10_POISONING),
        ("T40.8X1A", False, True, R.ICD10_POISONING),
        ("T40.901A", False, True, R.ICD10_POISONING),
        ("T42.4X2A", False, True, R.ICD10_POISONING),
        ("T43.621A", False, True, R.ICD10_POISONING),
        ("T36.0X1A", False, True, R.ICD10_POISONING),
        ("T50.901A", False, True, R.ICD10_POISONING),
        ("T50.A11A", False, True, R.ICD10_POISONING),
        ("T39.1X4A", False, True, R.ICD10_POISONING),
        # truncated above intent level
        ("T40", False, False, R.CODE_INCOMPLETE),
        ("T40.1", False, False, R.CODE_INCOMPLETE),
        ("T40.1X", False, False, R.CODE_INCOMPLETE),
        ("T40.41", False, False, R.CODE_INCOMPLETE),
        # outside T36-T50
        ("T51.0X1A", False, False, R.ICD10_ALCOHOL_EXCLUDED),
        ("T58.01XA", False, False, R.ICD10_NON_DRUG_TOXIC_EFFECT),
        # F codes
        ("F11.120", True, True, R.ICD10_F11_INTOXICATION),
        ("F11.121", True, True, R.ICD10_F11_INTOXICATION),
        ("F11.122", True, True, R.ICD10_F11_INTOXICATION),
        ("F11.129", True, True, R.ICD10_F11_INTOXICATION),
        ("F11.220", True, True, R.ICD10_F11_INTOXICATION),
        ("F11.920", True, True, R.ICD10_F11_INTOXICATION),
        ("F11.929", True, True, R.ICD10_F11_INTOXICATION),
        ("F11.92", True, True, R.ICD10_F11_INTOXICATION),
        ("F11.20", False, False, R.ICD10_SUBSTANCE_USE_NOT_INTOXICATION),
        ("F11.10", False, False, R.ICD10_SUBSTANCE_USE_NOT_INTOXICATION),
        ("F11.23", False, False, R.ICD10_SUBSTANCE_USE_NOT_INTOXICATION),
        ("F11", False, False, R.CODE_INCOMPLETE),
        ("F11.1", False, False, R.CODE_INCOMPLETE),
        ("F10.920", False, False, R.ICD10_ALCOHOL_EXCLUDED),
        ("F10.129", False, False, R.ICD10_ALCOHOL_EXCLUDED),
        # decision: other drug-class intoxication counts for all-drug only
        ("F12.120", False, True, R.ICD10_DRUG_INTOXICATION),
        ("F13.920", False, True, R.ICD10_DRUG_INTOXICATION),
        ("F14.220", False, True, R.ICD10_DRUG_INTOXICATION),
        ("F15.929", False, True, R.ICD10_DRUG_INTOXICATION),
        ("F16.120", False, True, R.ICD10_DRUG_INTOXICATION),
        ("F18.920", False, True, R.ICD10_DRUG_INTOXICATION),
        ("F19.920", False, True, R.ICD10_DRUG_INTOXICATION),
        ("F14.20", False, False, R.ICD10_SUBSTANCE_USE_NOT_INTOXICATION),
    ],
)
def test_classify_icd10(code: str, opioid: bool, any_drug: bool, reason: ReasonCode) -> None:
    decision = classify_icd10(code, source="dg1")
    assert flags(decision) == (opioid, any_drug)
    assert decision.reasons == (Reason(reason, "dg1", normalize_icd10(code)),)


@pytest.mark.parametrize("code", ["I21.9", "R55", "F17.210", "Z91.19", "", "   "])
def test_irrelevant_codes_have_no_reasons(code: str) -> None:
    assert classify_icd10(code, source="dg1") == Decision(opioid=False, any_drug=False)


@pytest.mark.parametrize(
    "value", ["SYNCOPE", "heroin overdose", "T40.1X1AA", "T4011A", "T40.1Y1A", "F11.2X", "1234567"]
)
def test_malformed_codes_never_echo_the_value(value: str) -> None:
    decision = classify_icd10(value, source="dg1")
    assert flags(decision) == (False, False)
    assert decision.reasons == (Reason(R.ICD10_MALFORMED, "dg1", ""),)


# --------------------------------------------------------------------------- text

POSITIVE_TEXTS = [
    # text, opioid, expected (code, detail) reasons present
    ("OD on heroin", True, [("text_overdose_term", "od"), ("text_opioid_drug_term", "heroin")]),
    (
        "overdose",
        False,
        [("text_overdose_term", "overdose"), ("text_drug_unspecified", "overdose")],
    ),
    ("OD", False, [("text_overdose_term", "od"), ("text_drug_unspecified", "od")]),
    ("O.D.", False, [("text_overdose_term", "o.d.")]),
    ("pt o/d", False, [("text_overdose_term", "o/d")]),
    ("OD'd on fent", True, [("text_opioid_drug_term", "fent")]),
    ("pt given narcan", True, [("text_naloxone_term", "narcan")]),
    ("Narcan x2", True, [("text_naloxone_term", "narcan")]),
    ("NALOXONE 4MG IN", True, [("text_naloxone_term", "naloxone")]),
    ("possible fentanyl overdose", True, [("text_opioid_drug_term", "fentanyl")]),
    ("overdoes", False, [("text_overdose_term", "overdoes")]),
    ("overdosed on xanax", False, [("text_drug_term", "xanax")]),
    ("over dose", False, [("text_overdose_term", "over dose")]),
    ("found down, heroin use", True, [("text_overdose_context_term", "found down")]),
    ("unresponsive after using heroine", True, [("text_opioid_drug_term", "heroine")]),
    ("not breathing, fetanyl", True, [("text_overdose_context_term", "not breathing")]),
    ("ingestion of pills", False, [("text_drug_term", "pills")]),
    ("took too many pills", False, [("text_overdose_context_term", "took too many pills")]),
    ("intoxicated on meth", False, [("text_drug_term", "meth")]),
    ("unresponsive, k2", False, [("text_drug_term", "k2")]),
    ("found down xylazine", False, [("text_drug_term", "xylazine")]),
    ("UNRESPONSIVE TRAMADOL", True, [("text_opioid_drug_term", "tramadol")]),
    (
        "denies heroin but took fentanyl, unresponsive",
        True,
        [("text_negated", "heroin"), ("text_opioid_drug_term", "fentanyl")],
    ),
    ("unresponsive, no pulse, narcan x2", True, [("text_naloxone_term", "narcan")]),
    ("prior to arrival narcan given", True, [("text_naloxone_term", "narcan")]),
    (
        "negative for cocaine, positive for fentanyl, unresponsive",
        True,
        [("text_negated", "cocaine"), ("text_opioid_drug_term", "fentanyl")],
    ),
    ("hx of OD. now OD on heroin", True, [("text_history", "od"), ("text_overdose_term", "od")]),
    ("eye injury.\nOD on heroin", True, [("text_overdose_term", "od")]),
]


@pytest.mark.parametrize(("text", "opioid", "expected"), POSITIVE_TEXTS)
def test_text_positive(text: str, opioid: bool, expected: list[tuple[str, str]]) -> None:
    decision = classify_text(text, source="pv2_3")
    assert decision.any_drug
    assert decision.opioid is opioid
    for reason in expected:
        assert reason in codes_of(decision)
    assert all(r.source == "pv2_3" for r in decision.reasons)


NEGATIVE_TEXTS = [
    # text, reasons exactly
    ("denies heroin use", [("text_negated", "heroin")]),
    ("denies drug use", [("text_negated", "drug")]),
    ("no narcan given", [("text_negated", "narcan")]),
    ("negative for opiates", [("text_negated", "opiates")]),
    ("hx of OD, now chest pain", [("text_history", "od")]),
    ("history of overdose", [("text_history", "overdose")]),
    ("h/o heroin use", [("text_history", "heroin")]),
    ("PMH: opioid use disorder", [("text_history", "opioid")]),
    ("previous OD", [("text_history", "od")]),
    ("eye pain OD", [("text_od_ophthalmic", "od")]),
    ("OD/OS redness", [("text_od_ophthalmic", "od")]),
    ("blurry vision in OD", [("text_od_ophthalmic", "od")]),
    ("ODOR of smoke", []),
    ("good", []),
    ("chest pain", []),
    ("", []),
    ("ingestion", [("text_overdose_context_term", "ingestion")]),
    ("bleach ingestion", [("text_overdose_context_term", "ingestion")]),
    ("unresponsive", [("text_overdose_context_term", "unresponsive")]),
    ("heroin use", [("text_opioid_drug_term", "heroin")]),
    ("etoh intoxication", [("text_overdose_context_term", "intoxication")]),
    (
        "denies fever, chills, heroin use. unresponsive",
        [("text_negated", "heroin"), ("text_overdose_context_term", "unresponsive")],
    ),
]


@pytest.mark.parametrize(("text", "reasons"), NEGATIVE_TEXTS)
def test_text_negative(text: str, reasons: list[tuple[str, str]]) -> None:
    decision = classify_text(text, source="obx_8661_1")
    assert flags(decision) == (False, False)
    assert codes_of(decision) == reasons


def test_text_reason_details_are_terms_not_free_text() -> None:
    text = "Patient John Smith at 12 Main St found down, fentanyl, narcan x2 by bystander"
    decision = classify_text(text, source="narrative")
    assert flags(decision) == (True, True)
    assert {r.detail for r in decision.reasons} == {"found down", "fentanyl", "narcan"}


def test_negation_window_is_bounded() -> None:
    # "narcan" is the sixth token after "denies": outside the window.
    decision = classify_text("denies a b c d e narcan", source="t")
    assert flags(decision) == (True, True)
    decision = classify_text("denies a b c d narcan", source="t")
    assert flags(decision) == (False, False)


# --------------------------------------------------------------------------- ED records


def test_classify_ed_combines_codes_and_texts() -> None:
    decision = classify_ed(
        codes=[("dg1", "R55"), ("dg1", "T40.1X5A")],
        texts=[("pv2_3", "OD on heroin")],
    )
    assert flags(decision) == (True, True)
    assert codes_of(decision) == [
        ("icd10_adverse_effect", "T401X5A"),
        ("text_overdose_term", "od"),
        ("text_opioid_drug_term", "heroin"),
    ]


def test_classify_ed_negative_keeps_exclusions() -> None:
    decision = classify_ed(codes=[("dg1", "T40.1X1D")], texts=[("obx_8661_1", "denies heroin use")])
    assert not decision.is_overdose(Definition.ANY_DRUG)
    assert codes_of(decision) == [
        ("icd10_subsequent_encounter", "T401X1D"),
        ("text_negated", "heroin"),
    ]


def test_classify_ed_any_drug_only() -> None:
    decision = classify_ed(codes=[("dg1", "T40.5X1A")], texts=[])
    assert decision.is_overdose(Definition.ANY_DRUG)
    assert not decision.is_overdose(Definition.OPIOID)


# --------------------------------------------------------------------------- EMS


@pytest.mark.parametrize(
    ("code", "opioid", "any_drug", "reason"),
    [
        ("F11.20", True, True, R.EMS_IMPRESSION_OPIOID),
        ("F11", True, True, R.EMS_IMPRESSION_OPIOID),
        ("F11.920", True, True, R.EMS_IMPRESSION_OPIOID),
        ("T40.1", True, True, R.EMS_IMPRESSION_OPIOID),
        ("T40.0", True, True, R.EMS_IMPRESSION_OPIOID),
        ("T40.2", True, True, R.EMS_IMPRESSION_OPIOID),
        ("T40.3", True, True, R.EMS_IMPRESSION_OPIOID),
        ("T40.4", True, True, R.EMS_IMPRESSION_OPIOID),
        ("T40.411A", True, True, R.EMS_IMPRESSION_OPIOID),
        ("T40.601", True, True, R.EMS_IMPRESSION_OPIOID),
        ("t40.6", True, True, R.EMS_IMPRESSION_OPIOID),
        ("T40.1X1A", True, True, R.EMS_IMPRESSION_OPIOID),
        # decision: exclusions apply when the intent / encounter character is present
        ("T40.1X5", False, False, R.ICD10_ADVERSE_EFFECT),
        ("T40.1X6A", False, False, R.ICD10_UNDERDOSING),
        ("T40.1X1D", False, False, R.ICD10_SUBSEQUENT_ENCOUNTER),
        # all-drug only
        ("T40.5", False, True, R.EMS_IMPRESSION_POISONING),
        ("T40", False, True, R.EMS_IMPRESSION_POISONING),
        ("T42.4", False, True, R.EMS_IMPRESSION_POISONING),
        ("T50.901", False, True, R.EMS_IMPRESSION_POISONING),
        ("F19", False, True, R.EMS_IMPRESSION_DRUG),
        ("F14", False, True, R.EMS_IMPRESSION_DRUG),
        ("F19.920", False, True, R.EMS_IMPRESSION_DRUG),
        ("F15.12", False, True, R.EMS_IMPRESSION_DRUG),
        # decision: specific non-intoxication and ambiguous headers do not count
        ("F14.20", False, False, R.ICD10_SUBSTANCE_USE_NOT_INTOXICATION),
        ("F19.9", False, False, R.CODE_INCOMPLETE),
        ("F10.920", False, False, R.ICD10_ALCOHOL_EXCLUDED),
        ("F10", False, False, R.ICD10_ALCOHOL_EXCLUDED),
        ("T51.9", False, False, R.ICD10_ALCOHOL_EXCLUDED),
    ],
)
def test_classify_ems_impression(
    code: str, opioid: bool, any_drug: bool, reason: ReasonCode
) -> None:
    decision = classify_ems_impression(code, source="eSituation.11")
    assert flags(decision) == (opioid, any_drug)
    assert decision.reasons == (Reason(reason, "eSituation.11", normalize_icd10(code)),)


@pytest.mark.parametrize("code", ["R40.20", "I46.9", "F17", ""])
def test_irrelevant_impressions(code: str) -> None:
    assert classify_ems_impression(code, source="eSituation.12") == Decision(
        opioid=False, any_drug=False
    )


@pytest.mark.parametrize(
    ("medication", "opioid", "reasons"),
    [
        (Medication("7242", "9916001"), True, [("ems_naloxone_improved", "7242:9916001")]),
        (Medication("203192", "9916001"), True, [("ems_naloxone_improved", "203192:9916001")]),
        (Medication(" 197117 ", "9916001"), True, [("ems_naloxone_improved", "197117:9916001")]),
        (Medication("7242", "9916003"), False, [("ems_naloxone_not_improved", "7242:9916003")]),
        (Medication("7242", "9916005"), False, [("ems_naloxone_not_improved", "7242:9916005")]),
        (Medication("7242", None), False, [("ems_naloxone_not_improved", "7242:missing")]),
        (Medication("7242", "got better"), False, [("ems_naloxone_not_improved", "7242:other")]),
        (Medication("4337", "9916001"), False, []),  # not naloxone
        (Medication("", "9916001"), False, []),
    ],
)
def test_classify_medication(
    medication: Medication, opioid: bool, reasons: list[tuple[str, str]]
) -> None:
    decision = classify_medication(medication)
    assert flags(decision) == (opioid, opioid)
    assert codes_of(decision) == reasons
    assert all(r.source == "eMedications" for r in decision.reasons)


def test_naloxone_codes() -> None:
    assert frozenset({"7242", "203192", "197117"}) == NALOXONE_RXNORM


def test_classify_ems_combines_all_inputs() -> None:
    decision = classify_ems(
        impressions=[("eSituation.11", "R40.20"), ("eSituation.12", "F19")],
        medications=[Medication("7242", "9916003"), Medication("4337", "9916001")],
        narrative=[("eNarrative.01", "pt found down, denies heroin")],
    )
    assert flags(decision) == (False, True)
    assert codes_of(decision) == [
        ("ems_impression_drug", "F19"),
        ("ems_naloxone_not_improved", "7242:9916003"),
        ("text_overdose_context_term", "found down"),
        ("text_negated", "heroin"),
    ]


def test_classify_ems_naloxone_improved_is_opioid() -> None:
    decision = classify_ems(impressions=[], medications=[Medication("7242", "9916001")])
    assert decision.is_overdose(Definition.OPIOID)


def test_classify_ems_nothing_relevant() -> None:
    assert classify_ems(impressions=[("eSituation.11", "I46.9")]) == Decision(
        opioid=False, any_drug=False
    )


# --------------------------------------------------------------------------- properties

_VOCAB = [
    "od",
    "OD",
    "o.d.",
    "o/d",
    "overdose",
    "over",
    "dose",
    "narcan",
    "heroin",
    "fentanyl",
    "pills",
    "took",
    "too",
    "many",
    "unresponsive",
    "found",
    "down",
    "not",
    "breathing",
    "denies",
    "no",
    "hx",
    "of",
    "h/o",
    "eye",
    "os",
    "but",
    "now",
    "prior",
    "to",
    "negative",
    "for",
    ",",
    ".",
    ";",
    "\n",
    "x2",
    "pt",
]
_TRIGGERS = [
    "denies",
    "denied",
    "no",
    "not",
    "never",
    "negative for",
    "neg for",
    "without",
    "w/o",
    "hx",
    "hx of",
    "h/o",
    "history of",
    "pmh",
    "PMH:",
    "past medical history",
    "prior",
    "previous",
]
_TERMS = [
    "heroin",
    "fentanyl",
    "fent",
    "opioids",
    "pills",
    "drugs",
    "cocaine",
    "narcan",
    "naloxone",
    "overdose",
    "overdoes",
    "OD",
    "O.D.",
    "unresponsive",
    "found down",
    "took too many pills",
]

texts = st.one_of(
    st.text(),
    st.lists(st.sampled_from(_VOCAB), max_size=25).map(" ".join),
    st.lists(st.one_of(st.sampled_from(_VOCAB), st.text(max_size=5)), max_size=15).map(" ".join),
)


def _check_invariants(decision: Decision) -> None:
    assert decision.any_drug or not decision.opioid
    for reason in decision.reasons:
        assert isinstance(reason.code, ReasonCode)
        assert len(reason.detail) <= 20


@given(texts)
def test_classify_text_never_raises(text: str) -> None:
    _check_invariants(classify_text(text, source="t"))


@given(st.sampled_from(_TRIGGERS), st.sampled_from(_TERMS))
def test_negated_lone_term_is_never_positive(trigger: str, term: str) -> None:
    decision = classify_text(f"{trigger} {term}", source="t")
    assert flags(decision) == (False, False)
    assert decision.reasons
    assert {r.code for r in decision.reasons} <= {R.TEXT_NEGATED, R.TEXT_HISTORY}


@given(texts, st.sampled_from(_TRIGGERS), st.sampled_from(_TERMS))
def test_appending_a_negated_term_never_creates_a_positive(
    text: str, trigger: str, term: str
) -> None:
    before = classify_text(text, source="t")
    after = classify_text(f"{text}. {trigger} {term}", source="t")
    assert after.any_drug <= before.any_drug
    assert after.opioid <= before.opioid


_icd_like = st.from_regex(r"\A[ tTfF]?[0-9]{0,2}\.?[0-9A-Za-z]{0,5} ?\Z", fullmatch=True)
codes = st.one_of(st.text(), _icd_like)


@given(codes)
def test_normalize_icd10_is_idempotent(code: str) -> None:
    once = normalize_icd10(code)
    assert normalize_icd10(once) == once


@given(codes)
def test_classify_codes_never_raise(code: str) -> None:
    for decision in (
        classify_icd10(code, source="dg1"),
        classify_ems_impression(code, source="eSituation.11"),
    ):
        _check_invariants(decision)
        # Codes are normalised in details, and junk is never echoed.
        assert all(r.detail in ("", normalize_icd10(code)) for r in decision.reasons)


@given(st.text(), st.one_of(st.none(), st.text()))
def test_classify_medication_never_raises(rxnorm: str, response: str | None) -> None:
    _check_invariants(classify_medication(Medication(rxnorm, response)))


@given(st.lists(st.tuples(st.just("dg1"), codes)), st.lists(st.tuples(st.just("t"), texts)))
def test_classify_ed_invariants(
    code_values: list[tuple[str, str]], text_values: list[tuple[str, str]]
) -> None:
    decision = classify_ed(codes=code_values, texts=text_values)
    _check_invariants(decision)
    expected_any = any(classify_icd10(c, source=s).any_drug for s, c in code_values) or any(
        classify_text(t, source=s).any_drug for s, t in text_values
    )
    assert decision.any_drug is expected_any
