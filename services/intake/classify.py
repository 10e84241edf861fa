"""Overdose classification for intake records: pure domain logic, no I/O.

Intake sees hospital ED HL7 v2 ADT messages and EMS NEMSIS run reports. This module decides,
explainably, whether a record is an overdose under each definition programs choose from
(:class:`Definition`): opioid-only or all-drug. Every decision carries machine-readable
:class:`Reason` values with stable :class:`ReasonCode` codes; positive findings and the
things that were deliberately *not* counted (excluded codes, negated or historical terms,
"OD" meaning right eye) both appear. A reason's ``detail`` is a normalised code or the
matched lexicon term, never surrounding free text.

Decisions taken where the design left a choice (tests pin each one):

ICD-10-CM codes (ED diagnoses, :func:`classify_icd10`)
    * Codes are normalised by :func:`normalize_icd10`: whitespace and dots removed, ASCII
      upper-cased (``" t40.1x1a "`` -> ``"T401X1A"``). Non-ASCII never matches a code.
    * T36-T50 count when the intent (always the 6th character) is 1-4 and the 7th character
      is ``A`` or missing. Intent 5 (adverse effect), 6 (underdosing), any other digit,
      7th character ``D`` (subsequent) or ``S`` (sequela) are recorded and not counted.
    * Codes truncated above intent level (``T40``, ``T40.1``, ``T40.1X``, ``T40.41``) are
      not counted and are recorded as ``code_incomplete``.
    * Opioid subset: T40.0-T40.4 (incl. T40.41/.42/.49) and T40.6. Other T36-T50 codes
      (cocaine T40.5, cannabis T40.7, hallucinogens T40.8/T40.9, benzodiazepines T42.4 ...)
      count for all-drug only. T50.A/B/Z (vaccines) follow the T36-T50 rule like the rest.
    * F11.x2x (opioid "with intoxication", x in 1/2/9) counts for opioid and all-drug,
      including the 5-character header (``F11.92``): intoxication is already known there.
    * F12-F16, F18 and F19 x2x intoxication codes count for all-drug only; cannabis (F12)
      is included to stay consistent with T40.7 counting for all-drug. F17 (nicotine) has
      no intoxication codes and is ignored.
    * Other F11-F16/F18/F19 codes (e.g. F11.20 dependence) are recorded as
      ``icd10_substance_use_not_intoxication``; F10 (alcohol) and T51 (toxic effect of
      alcohol) as ``icd10_alcohol_excluded``; T52-T65 as ``icd10_non_drug_toxic_effect``.
      None of these ever counts. A value that is not shaped like an ICD-10-CM code is
      recorded as ``icd10_malformed`` with an empty detail (it may be free text).

EMS (NEMSIS, :func:`classify_ems`)
    * Impressions (eSituation.11/.12) are prefix matches, so missing intent/encounter
      characters are fine (``T40.1``, ``T40.601``, ``F11``). Where an intent or encounter
      character *is* present the ED exclusions still apply (adverse effect, underdosing,
      subsequent encounter, sequela) - the conservative reading.
    * Opioid: F11 (any code) and T40.0-T40.4, T40.6 prefixes. All-drug additionally: any
      T36-T50 prefix (a bare ``T40`` counts for all-drug only), and F12-F16/F18/F19 when
      coded at category level (``F19``, as impression pick-lists often do) or as x2x
      intoxication; more specific non-intoxication codes (``F14.20``) and 4-character
      headers (``F19.9``, ambiguous) do not count.
    * Naloxone (RxNorm 7242, 203192, 197117 in eMedications.03) given with response
      "Improved" (eMedications.07 == 9916001) is an opioid overdose. Naloxone with any
      other or missing response is recorded (``ems_naloxone_not_improved``) and not counted.
    * The EMS narrative is classified with the same text rules as ED chief complaints.

Free text (chief complaint PV2-3, OBX 8661-1, EMS narrative, :func:`classify_text`)
    * Counting on their own: overdose and its misspellings (overdoes, overdosed, over dose,
      ovrdose ...), "OD" as a whole token (OD, O.D., o/d, OD'd, ODs), naloxone / narcan.
      Naloxone also makes the text opioid.
    * Otherwise an overdose-context term (unresponsive, found down, ingestion, poisoning,
      intoxication, took too many pills, not breathing ...) must co-occur with a drug term
      anywhere in the same text. "took too many pills" carries its own drug term.
    * Opioid when an opioid drug term (or naloxone) is present. A counted overdose without
      any drug term is all-drug, opioid False, with ``text_drug_unspecified``.
    * Xylazine / "tranq" is a drug term but not an opioid (it is a veterinary sedative).
      Alcohol terms are not drug terms. Benzodiazepines other than "xanax"/"benzo" (e.g.
      ativan, which EMS gives for seizures) are deliberately not in the lexicon.
    * "OD" within 4 tokens of an eye word (eye, OS, OU, vision, acuity, ...) in the same
      sentence is read as oculus dexter: recorded as ``text_od_ophthalmic``, not counted.
    * NegEx-style pre-triggers suppress terms in the next 5 tokens: negation (denies,
      denied, no, not, never, negative for, neg for, without, w/o) and history (hx, h/o,
      history, history of, pmh, past medical history, prior, previous). Sentence
      punctuation (. ; ! ? newline) and the words but, however, although, though, now,
      currently, today, tonight, presents/presenting/presented, c/o, complains, except,
      positive end a scope. A comma ends only the single-item negators (no, not, without,
      w/o) - "unresponsive, no pulse, narcan x2" still counts narcan - while list-taking
      triggers (denies, negative for, history) run on across commas ("denies fever,
      chills, heroin use"). "prior to" / "prior to arrival" is a time phrase, not history.
      Suppressed terms are recorded as ``text_negated`` / ``text_history``.
    * Post-negation ("opiates negative") and hypotheticals ("r/o OD") are not modelled.
"""

from __future__ import annotations

import enum
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

__all__ = [
    "NALOXONE_RXNORM",
    "NEMSIS_RESPONSE_IMPROVED",
    "SOURCE_EMEDICATIONS",
    "Decision",
    "Definition",
    "Medication",
    "Reason",
    "ReasonCode",
    "classify_ed",
    "classify_ems",
    "classify_ems_impression",
    "classify_icd10",
    "classify_medication",
    "classify_text",
    "combine",
    "normalize_icd10",
]


class Definition(StrEnum):
    """Which overdose definition a program uses."""

    OPIOID = "opioid"
    ANY_DRUG = "any_drug"


class ReasonCode(StrEnum):
    """Stable, machine-readable reason codes. Values never change once released."""

    # ICD-10-CM (ED diagnoses)
    ICD10_OPIOID_POISONING = "icd10_opioid_poisoning"
    ICD10_POISONING = "icd10_poisoning"
    ICD10_ADVERSE_EFFECT = "icd10_adverse_effect"
    ICD10_UNDERDOSING = "icd10_underdosing"
    ICD10_EXCLUDED_INTENT = "icd10_excluded_intent"
    ICD10_SUBSEQUENT_ENCOUNTER = "icd10_subsequent_encounter"
    ICD10_SEQUELA = "icd10_sequela"
    ICD10_F11_INTOXICATION = "icd10_f11_intoxication"
    ICD10_DRUG_INTOXICATION = "icd10_drug_intoxication"
    ICD10_SUBSTANCE_USE_NOT_INTOXICATION = "icd10_substance_use_not_intoxication"
    ICD10_ALCOHOL_EXCLUDED = "icd10_alcohol_excluded"
    ICD10_NON_DRUG_TOXIC_EFFECT = "icd10_non_drug_toxic_effect"
    ICD10_MALFORMED = "icd10_malformed"
    CODE_INCOMPLETE = "code_incomplete"
    # EMS (NEMSIS)
    EMS_IMPRESSION_OPIOID = "ems_impression_opioid"
    EMS_IMPRESSION_POISONING = "ems_impression_poisoning"
    EMS_IMPRESSION_DRUG = "ems_impression_drug"
    EMS_NALOXONE_IMPROVED = "ems_naloxone_improved"
    EMS_NALOXONE_NOT_IMPROVED = "ems_naloxone_not_improved"
    # Free text
    TEXT_OVERDOSE_TERM = "text_overdose_term"
    TEXT_NALOXONE_TERM = "text_naloxone_term"
    TEXT_OVERDOSE_CONTEXT_TERM = "text_overdose_context_term"
    TEXT_OPIOID_DRUG_TERM = "text_opioid_drug_term"
    TEXT_DRUG_TERM = "text_drug_term"
    TEXT_DRUG_UNSPECIFIED = "text_drug_unspecified"
    TEXT_NEGATED = "text_negated"
    TEXT_HISTORY = "text_history"
    TEXT_OD_OPHTHALMIC = "text_od_ophthalmic"


@dataclass(frozen=True, slots=True)
class Reason:
    """One explanation of a decision.

    ``source`` is the caller's label for where the value came from (``"dg1"``,
    ``"pv2_3"``, ``"eSituation.11"`` ...). ``detail`` is a normalised code or a matched
    lexicon term, never surrounding free text.
    """

    code: ReasonCode
    source: str
    detail: str


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a record (or one value of it) is an overdose, under both definitions."""

    opioid: bool
    any_drug: bool
    reasons: tuple[Reason, ...] = ()

    def __post_init__(self) -> None:
        if self.opioid and not self.any_drug:
            raise ValueError("an opioid overdose is always an any-drug overdose")

    def is_overdose(self, definition: Definition) -> bool:
        if definition is Definition.OPIOID:
            return self.opioid
        return self.any_drug


@dataclass(frozen=True, slots=True)
class Medication:
    """One NEMSIS medication administration: eMedications.03 and eMedications.07."""

    rxnorm: str
    response: str | None = None


NALOXONE_RXNORM: frozenset[str] = frozenset({"7242", "203192", "197117"})
NEMSIS_RESPONSE_IMPROVED = "9916001"
SOURCE_EMEDICATIONS = "eMedications"

_NEGATIVE = Decision(opioid=False, any_drug=False)


def combine(decisions: Iterable[Decision]) -> Decision:
    """Union of decisions; reasons keep their order with exact duplicates removed."""
    opioid = any_drug = False
    reasons: dict[Reason, None] = {}
    for decision in decisions:
        opioid = opioid or decision.opioid
        any_drug = any_drug or decision.any_drug
        reasons.update(dict.fromkeys(decision.reasons))
    return Decision(opioid=opioid, any_drug=any_drug, reasons=tuple(reasons))


# ---------------------------------------------------------------------------------------
# ICD-10-CM
# ---------------------------------------------------------------------------------------

_ASCII_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)
_ICD_SHAPE = re.compile(r"[A-Z][0-9][0-9A-Z]{1,5}")
# T36-T50: category, 4th (subcategory), 5th (digit or X placeholder), 6th intent, 7th.
_T_DRUG = re.compile(
    r"T(?P<cat>3[6-9]|4[0-9]|50)"
    r"(?:(?P<d4>[0-9A-Z])(?:(?P<d5>[0-9X])(?:(?P<intent>[0-9])(?P<enc>[ADS])?)?)?)?"
)
_T_CATEGORY = re.compile(r"T(?P<cat>[0-9]{2})")
_F_SUBSTANCE = re.compile(r"F1(?P<cls>[0-9])(?:(?P<d4>[0-9])(?:(?P<d5>[0-9])[0-9]?)?)?")
_OPIOID_T40_SUBCATEGORIES = frozenset("012346")
_F_DRUG_CLASSES = frozenset("2345689")  # F12-F16, F18, F19 (not F10 alcohol, F17 nicotine)
_F_OPIOID_OR_DRUG_CLASSES = _F_DRUG_CLASSES | {"1"}
_F_INTOXICATION_D4 = frozenset("129")  # abuse / dependence / use ... then 2 = intoxication


def normalize_icd10(code: str) -> str:
    """``" t40.1x1a "`` -> ``"T401X1A"``: drop whitespace and dots, upper-case ASCII."""
    return "".join(code.split()).replace(".", "").translate(_ASCII_UPPER)


def _reason(code: ReasonCode, source: str, detail: str) -> Decision:
    return Decision(opioid=False, any_drug=False, reasons=(Reason(code, source, detail),))


def _positive(code: ReasonCode, source: str, detail: str, *, opioid: bool) -> Decision:
    return Decision(opioid=opioid, any_drug=True, reasons=(Reason(code, source, detail),))


def _t_exclusion(m: re.Match[str]) -> ReasonCode | None:
    """Exclusion for a present intent / encounter character of a T36-T50 code, if any."""
    intent = m["intent"]
    if intent == "5":
        return ReasonCode.ICD10_ADVERSE_EFFECT
    if intent == "6":
        return ReasonCode.ICD10_UNDERDOSING
    if intent is not None and intent not in "1234":
        return ReasonCode.ICD10_EXCLUDED_INTENT
    if m["enc"] == "D":
        return ReasonCode.ICD10_SUBSEQUENT_ENCOUNTER
    if m["enc"] == "S":
        return ReasonCode.ICD10_SEQUELA
    return None


def _is_opioid_t(m: re.Match[str]) -> bool:
    return m["cat"] == "40" and m["d4"] in _OPIOID_T40_SUBCATEGORIES


def _other_code(n: str, source: str) -> Decision:
    """Shared handling of alcohol, non-drug toxic effects and malformed values."""
    if not _ICD_SHAPE.fullmatch(n):
        return _reason(ReasonCode.ICD10_MALFORMED, source, "")
    if n.startswith("F10"):
        return _reason(ReasonCode.ICD10_ALCOHOL_EXCLUDED, source, n)
    t = _T_CATEGORY.match(n)
    if t is not None and 51 <= int(t["cat"]) <= 65:
        if t["cat"] == "51":
            return _reason(ReasonCode.ICD10_ALCOHOL_EXCLUDED, source, n)
        return _reason(ReasonCode.ICD10_NON_DRUG_TOXIC_EFFECT, source, n)
    if (t is not None and 36 <= int(t["cat"]) <= 50) or (
        n[:2] == "F1" and n[2] in _F_OPIOID_OR_DRUG_CLASSES
    ):
        return _reason(ReasonCode.ICD10_MALFORMED, source, "")
    return _NEGATIVE


def classify_icd10(code: str, *, source: str) -> Decision:
    """Classify one ED diagnosis code (e.g. from DG1-3) by the ED definitions."""
    n = normalize_icd10(code)
    if not n:
        return _NEGATIVE
    if (m := _T_DRUG.fullmatch(n)) is not None:
        if m["intent"] is None:
            return _reason(ReasonCode.CODE_INCOMPLETE, source, n)
        if (excluded := _t_exclusion(m)) is not None:
            return _reason(excluded, source, n)
        if _is_opioid_t(m):
            return _positive(ReasonCode.ICD10_OPIOID_POISONING, source, n, opioid=True)
        return _positive(ReasonCode.ICD10_POISONING, source, n, opioid=False)
    if (f := _F_SUBSTANCE.fullmatch(n)) is not None and f["cls"] != "0" and f["cls"] != "7":
        cls = f["cls"]
        if f["d5"] is None:
            if f["d4"] is None or f["d4"] in _F_INTOXICATION_D4:
                return _reason(ReasonCode.CODE_INCOMPLETE, source, n)
            return _reason(ReasonCode.ICD10_SUBSTANCE_USE_NOT_INTOXICATION, source, n)
        if f["d4"] in _F_INTOXICATION_D4 and f["d5"] == "2":
            if cls == "1":
                return _positive(ReasonCode.ICD10_F11_INTOXICATION, source, n, opioid=True)
            return _positive(ReasonCode.ICD10_DRUG_INTOXICATION, source, n, opioid=False)
        return _reason(ReasonCode.ICD10_SUBSTANCE_USE_NOT_INTOXICATION, source, n)
    return _other_code(n, source)


def classify_ems_impression(code: str, *, source: str) -> Decision:
    """Classify one EMS impression (eSituation.11 / .12) by NEMSIS-style prefix rules."""
    n = normalize_icd10(code)
    if not n:
        return _NEGATIVE
    if (m := _T_DRUG.fullmatch(n)) is not None:
        if (excluded := _t_exclusion(m)) is not None:
            return _reason(excluded, source, n)
        if _is_opioid_t(m):
            return _positive(ReasonCode.EMS_IMPRESSION_OPIOID, source, n, opioid=True)
        return _positive(ReasonCode.EMS_IMPRESSION_POISONING, source, n, opioid=False)
    if (f := _F_SUBSTANCE.fullmatch(n)) is not None and f["cls"] != "0" and f["cls"] != "7":
        if f["cls"] == "1":
            return _positive(ReasonCode.EMS_IMPRESSION_OPIOID, source, n, opioid=True)
        if f["d4"] is None or (f["d4"] in _F_INTOXICATION_D4 and f["d5"] == "2"):
            return _positive(ReasonCode.EMS_IMPRESSION_DRUG, source, n, opioid=False)
        if f["d5"] is None and f["d4"] in _F_INTOXICATION_D4:
            return _reason(ReasonCode.CODE_INCOMPLETE, source, n)
        return _reason(ReasonCode.ICD10_SUBSTANCE_USE_NOT_INTOXICATION, source, n)
    return _other_code(n, source)


_NEMSIS_CODE = re.compile(r"[0-9]{7}")


def classify_medication(medication: Medication, *, source: str = SOURCE_EMEDICATIONS) -> Decision:
    """Naloxone given with response "Improved" is an opioid overdose; other meds say nothing.

    The detail is ``"<rxnorm>:<response>"`` where response is the NEMSIS code, ``missing``
    or ``other`` (anything not shaped like a NEMSIS code is never echoed).
    """
    rxnorm = medication.rxnorm.strip()
    if rxnorm not in NALOXONE_RXNORM:
        return _NEGATIVE
    response = (medication.response or "").strip()
    if response == NEMSIS_RESPONSE_IMPROVED:
        detail = f"{rxnorm}:{response}"
        return _positive(ReasonCode.EMS_NALOXONE_IMPROVED, source, detail, opioid=True)
    shown = response if _NEMSIS_CODE.fullmatch(response) else ("other" if response else "missing")
    return _reason(ReasonCode.EMS_NALOXONE_NOT_IMPROVED, source, f"{rxnorm}:{shown}")


# ---------------------------------------------------------------------------------------
# Free text
# ---------------------------------------------------------------------------------------


class _Kind(enum.Enum):
    FILLER = enum.auto()
    TERM = enum.auto()
    EYE = enum.auto()
    NEGATION = enum.auto()  # list-taking: runs on across commas
    NEGATION_WEAK = enum.auto()  # single-item: a comma ends it
    HISTORY = enum.auto()
    STOP_SENTENCE = enum.auto()
    STOP_COMMA = enum.auto()
    STOP_WORD = enum.auto()


class _Role(enum.Enum):
    OVERDOSE = enum.auto()  # counts on its own
    NALOXONE = enum.auto()  # counts on its own, opioid
    CONTEXT = enum.auto()  # counts with a drug term
    OPIOID = enum.auto()
    DRUG = enum.auto()


_NEGATION_WINDOW = 5
_EYE_WINDOW = 4

_TOKEN = re.compile(
    r"(?<![a-z0-9])o\.\s?d\b\.?"  # o.d. / o. d.
    r"|(?<![a-z0-9])[a-z]/[a-z](?![a-z0-9])"  # h/o w/o o/d c/o
    r"|[a-z0-9]+(?:'[a-z]+)*"
    r"|[.;!?\n\r]"
    r"|,"
)
_WHITESPACE = re.compile(r"\s+")
_OVERDOSE_WORD = re.compile(r"(?:over|ovr|ovar)d(?:o|oe|oo)s(?:e[ds]?|ing|d)?")
_OD_ABBREVIATIONS = frozenset(
    {"od", "ods", "od's", "od'd", "od'ed", "oded", "oding", "od'ing", "o.d.", "o.d", "o/d"}
)

_Entry = tuple[_Kind, frozenset[_Role]]


def _term(*roles: _Role) -> _Entry:
    return (_Kind.TERM, frozenset(roles))


def _build_words() -> dict[str, _Entry]:
    words: dict[str, _Entry] = {}

    def add(entry: _Entry, *items: str) -> None:
        for item in items:
            words[item] = entry

    add(_term(_Role.OVERDOSE), *_OD_ABBREVIATIONS)
    add(
        _term(_Role.NALOXONE),
        *("naloxone", "nalaxone", "naloxon", "narcan", "narcans", "narcaned", "narcanned"),
        "narcan'd",
    )
    add(
        _term(_Role.CONTEXT),
        *("unresponsive", "unresponsiveness", "nonresponsive", "unarousable"),
        *("ingestion", "ingestions", "ingested", "poisoning", "poisoned"),
        *("intoxication", "intoxicated", "apneic"),
    )
    add(
        _term(_Role.OPIOID),
        *("heroin", "heroine", "fentanyl", "fent", "fetanyl", "fentanil", "fentynal"),
        *("carfentanil", "carfentanyl", "opioid", "opioids", "opiod", "opiods"),
        *("opiate", "opiates", "narcotic", "narcotics", "oxy", "oxys", "oxycodone"),
        *("oxycontin", "roxicodone", "percocet", "percocets", "perc", "percs", "m30", "m30s"),
        *("methadone", "suboxone", "subutex", "buprenorphine", "morphine", "dilaudid"),
        *("hydromorphone", "hydrocodone", "vicodin", "norco", "tramadol", "codeine"),
        *("oxymorphone", "opana"),
    )
    add(
        _term(_Role.DRUG),
        *("drug", "drugs", "pill", "pills", "cocaine", "coke", "crack", "meth"),
        *("methamphetamine", "amphetamine", "amphetamines", "xanax", "benzo", "benzos"),
        *("benzodiazepine", "benzodiazepines", "k2", "spice", "xylazine", "tranq"),
        *("mdma", "ecstasy", "molly", "pcp", "ghb"),
    )
    add(
        (_Kind.EYE, frozenset()),
        *("eye", "eyes", "ocular", "vision", "visual", "acuity", "os", "ou", "conjunctivitis"),
        *("conjunctiva", "conjunctival", "cornea", "corneal", "eyelid", "lid", "retina"),
        *("retinal", "iritis", "ophtho", "ophthalmology", "ophthalmic", "gtt", "gtts"),
        *("blurry", "blurred", "stye", "chalazion", "floaters", "glaucoma", "cataract", "iop"),
    )
    add((_Kind.NEGATION, frozenset()), "denies", "denied", "deny", "denying", "never")
    add((_Kind.NEGATION_WEAK, frozenset()), "no", "not", "without", "w/o")
    add(
        (_Kind.HISTORY, frozenset()),
        *("hx", "h/o", "history", "pmh", "pmhx", "prior", "previous", "previously"),
    )
    add((_Kind.STOP_SENTENCE, frozenset()), ".", ";", "!", "?", "\n", "\r")
    add((_Kind.STOP_COMMA, frozenset()), ",")
    add(
        (_Kind.STOP_WORD, frozenset()),
        *("but", "however", "although", "though", "now", "currently", "today", "tonight"),
        *("presents", "presenting", "presented", "c/o", "complains", "except", "positive"),
    )
    return words


def _build_phrases() -> dict[tuple[str, ...], _Entry]:
    phrases: dict[tuple[str, ...], _Entry] = {}
    overdose = _term(_Role.OVERDOSE)
    for tail in ("dose", "dosed", "doses", "dosing"):
        phrases["over", tail] = overdose
    context = _term(_Role.CONTEXT)
    for phrase in (
        "found down",
        "not breathing",
        "not responsive",
        "not responding",
        "non responsive",
        "took too much",
        "taken too much",
    ):
        phrases[tuple(phrase.split())] = context
    pills = _term(_Role.CONTEXT, _Role.DRUG)
    for phrase in ("took too many pills", "too many pills", "taken too many pills"):
        phrases[tuple(phrase.split())] = pills
    negation = (_Kind.NEGATION, frozenset[_Role]())
    for phrase in ("negative for", "neg for"):
        phrases[tuple(phrase.split())] = negation
    history = (_Kind.HISTORY, frozenset[_Role]())
    for phrase in ("history of", "hx of", "past medical history"):
        phrases[tuple(phrase.split())] = history
    filler = (_Kind.FILLER, frozenset[_Role]())
    for phrase in ("prior to arrival", "prior to"):
        phrases[tuple(phrase.split())] = filler
    phrases["presents", "with"] = (_Kind.STOP_WORD, frozenset())
    return phrases


_WORDS = _build_words()
_PHRASES = _build_phrases()
_MAX_PHRASE = max(len(p) for p in _PHRASES)
_PHRASE_STARTS = frozenset(p[0] for p in _PHRASES)
_FILLER: _Entry = (_Kind.FILLER, frozenset())
_OVERDOSE_ENTRY = _term(_Role.OVERDOSE)


class _Unit(NamedTuple):  # a tuple: built per token, so its construction cost counts
    kind: _Kind
    roles: frozenset[_Role]
    text: str


def _tokens(text: str) -> list[str]:
    lowered = text.lower().replace("\u2019", "'")
    return [
        _WHITESPACE.sub("", t) if t[0] == "o" and "." in t else t for t in _TOKEN.findall(lowered)
    ]


def _phrase_at(tokens: list[str], i: int) -> tuple[tuple[str, ...], _Entry] | None:
    """The longest phrase that starts at tokens[i], and its entry."""
    for length in range(min(_MAX_PHRASE, len(tokens) - i), 1, -1):
        key = tuple(tokens[i : i + length])
        if (entry := _PHRASES.get(key)) is not None:
            return key, entry
    return None


def _units(text: str) -> list[_Unit]:
    tokens = _tokens(text)
    units: list[_Unit] = []
    count = len(tokens)
    i = 0
    while i < count:
        token = tokens[i]
        # Only a token that can start a phrase is tried against them (most tokens cannot).
        if token in _PHRASE_STARTS and (match := _phrase_at(tokens, i)) is not None:
            key, phrase = match
            units.append(_Unit(phrase[0], phrase[1], " ".join(key)))
            i += len(key)
            continue
        entry = _WORDS.get(token)
        if entry is None:
            # Every spelling _OVERDOSE_WORD accepts starts with "ov": most tokens skip it.
            overdose = token[:2] == "ov" and _OVERDOSE_WORD.fullmatch(token)
            entry = _OVERDOSE_ENTRY if overdose else _FILLER
        units.append(_Unit(entry[0], entry[1], token))
        i += 1
    return units


def _is_ophthalmic(units: Sequence[_Unit], index: int) -> bool:
    """An "OD" with an eye word within the window, not crossing sentence punctuation."""
    for step in (-1, 1):
        j = index
        for _ in range(_EYE_WINDOW):
            j += step
            if not 0 <= j < len(units) or units[j].kind is _Kind.STOP_SENTENCE:
                break
            if units[j].kind is _Kind.EYE:
                return True
    return False


_ROLE_REASON = {
    _Role.OVERDOSE: ReasonCode.TEXT_OVERDOSE_TERM,
    _Role.NALOXONE: ReasonCode.TEXT_NALOXONE_TERM,
    _Role.CONTEXT: ReasonCode.TEXT_OVERDOSE_CONTEXT_TERM,
    _Role.OPIOID: ReasonCode.TEXT_OPIOID_DRUG_TERM,
    _Role.DRUG: ReasonCode.TEXT_DRUG_TERM,
}
_ROLE_ORDER = tuple(_ROLE_REASON)
_NOTHING = Decision(opioid=False, any_drug=False)


def classify_text(text: str, *, source: str) -> Decision:
    """Classify one free-text value (chief complaint, OBX 8661-1, EMS narrative)."""
    units = _units(text)
    if not any(unit.kind is _Kind.TERM for unit in units):
        return _NOTHING  # negation and history only matter around a term (most texts)
    reasons: dict[Reason, None] = {}
    found: set[_Role] = set()
    first_overdose = ""
    scope: _Kind | None = None
    remaining = 0
    for index, unit in enumerate(units):
        kind = unit.kind
        if kind is _Kind.STOP_SENTENCE or kind is _Kind.STOP_WORD:
            scope = None
            continue
        if kind is _Kind.STOP_COMMA:
            if scope is _Kind.NEGATION_WEAK:
                scope = None
            continue
        if kind in (_Kind.NEGATION, _Kind.NEGATION_WEAK, _Kind.HISTORY):
            scope, remaining = kind, _NEGATION_WINDOW
            continue
        if kind is _Kind.TERM:
            if unit.text in _OD_ABBREVIATIONS and _is_ophthalmic(units, index):
                reasons[Reason(ReasonCode.TEXT_OD_OPHTHALMIC, source, unit.text)] = None
            elif scope is not None:
                code = (
                    ReasonCode.TEXT_HISTORY if scope is _Kind.HISTORY else ReasonCode.TEXT_NEGATED
                )
                reasons[Reason(code, source, unit.text)] = None
            else:
                found |= unit.roles
                for role in _ROLE_ORDER:
                    if role in unit.roles:
                        reasons[Reason(_ROLE_REASON[role], source, unit.text)] = None
                if _Role.OVERDOSE in unit.roles and not first_overdose:
                    first_overdose = unit.text
        if scope is not None:
            remaining -= 1
            if remaining == 0:
                scope = None

    has_drug = bool(found & {_Role.OPIOID, _Role.DRUG})
    any_drug = bool(found & {_Role.OVERDOSE, _Role.NALOXONE}) or (
        _Role.CONTEXT in found and has_drug
    )
    opioid = any_drug and bool(found & {_Role.OPIOID, _Role.NALOXONE})
    if any_drug and not has_drug and not opioid:
        reasons[Reason(ReasonCode.TEXT_DRUG_UNSPECIFIED, source, first_overdose)] = None
    return Decision(opioid=opioid, any_drug=any_drug, reasons=tuple(reasons))


# ---------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------


def classify_ed(
    *, codes: Sequence[tuple[str, str]], texts: Sequence[tuple[str, str]] = ()
) -> Decision:
    """Classify an ED record from ``(source, code)`` diagnoses and ``(source, text)`` texts.

    Any counted code or text makes the record an overdose; reasons list everything seen.
    """
    return combine(
        [classify_icd10(code, source=source) for source, code in codes]
        + [classify_text(text, source=source) for source, text in texts]
    )


def classify_ems(
    *,
    impressions: Sequence[tuple[str, str]],
    medications: Sequence[Medication] = (),
    narrative: Sequence[tuple[str, str]] = (),
) -> Decision:
    """Classify an EMS run from ``(source, code)`` impressions, medications and narrative."""
    return combine(
        [classify_ems_impression(code, source=source) for source, code in impressions]
        + [classify_medication(medication) for medication in medications]
        + [classify_text(text, source=source) for source, text in narrative]
    )
