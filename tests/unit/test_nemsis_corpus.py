"""NEMSIS TAC compliance test cases (see shared/corpus/SOURCES.md) through the parser.

The corpus is not part of the repo: it is read from PORTLINE_CORPUS_DIR (default: the
``shared/corpus`` directory beside the repository), and these tests skip when it is absent.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from services.intake.nemsis import (
    DEFAULT_CONSENT_ELEMENT,
    DEFAULT_LEAVE_BEHIND_ELEMENT,
    parse_ems_dataset,
)
from services.intake.records import EmsRunReport

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("PORTLINE_CORPUS_DIR") or ROOT.parent / "shared" / "corpus")
NEMSIS = CORPUS / "nemsis"

KNOWN = [
    "2020-EMS-1-NoPatient_v350.xml",
    "2023-EMS-1-Opioid-Release_v350.xml",
    "2024-EMS-2-Trauma-Refusal_v350.xml",
    "2025-EMS-1-Overdose_v351.xml",
    "2025-EMS-1-Overdose_v351_national.xml",
    "2025-EMS-2-Suicide_v351.xml",
    "2025-EMS-3-MVC_v351.xml",
    "2025-EMS-FailXsd_v351.xml",
]
FULL_WITH_NAMES = [
    "2023-EMS-1-Opioid-Release_v350.xml",
    "2024-EMS-2-Trauma-Refusal_v350.xml",
    "2025-EMS-1-Overdose_v351.xml",
    "2025-EMS-2-Suicide_v351.xml",
    "2025-EMS-3-MVC_v351.xml",
    "2025-EMS-FailXsd_v351.xml",
]


def corpus_file(name: str) -> bytes:
    path = NEMSIS / name
    if not path.is_file():
        pytest.skip(f"NEMSIS corpus file not available: {path}")
    return path.read_bytes()


def report(
    name: str,
    *,
    consent_element: str = DEFAULT_CONSENT_ELEMENT,
    leave_behind_element: str = DEFAULT_LEAVE_BEHIND_ELEMENT,
) -> EmsRunReport:
    results = parse_ems_dataset(
        corpus_file(name),
        consent_element=consent_element,
        leave_behind_element=leave_behind_element,
    )
    assert len(results) == 1
    assert results[0].error is None
    assert results[0].report is not None
    return results[0].report


@pytest.mark.parametrize("name", KNOWN)
def test_known_file_parses(name: str) -> None:
    got = report(name)
    assert got.pcr_number
    assert got.agency_id
    assert got.incident_at is not None
    assert got.incident_at.tzinfo is not None


def test_every_corpus_file_parses() -> None:
    if not NEMSIS.is_dir():
        pytest.skip(f"NEMSIS corpus not available: {NEMSIS}")
    files = sorted(NEMSIS.glob("*.xml"))
    if not files:
        pytest.skip(f"no NEMSIS XML in {NEMSIS}")
    for path in files:
        results = parse_ems_dataset(path.read_bytes())
        assert results, path.name
        assert all(r.report is not None for r in results), path.name


def test_opioid_release() -> None:
    got = report("2023-EMS-1-Opioid-Release_v350.xml")
    assert got.impressions[0].startswith("F11")
    naloxone = [m for m in got.medications if m.rxnorm == "7242"]
    assert len(naloxone) == 2
    assert {m.response for m in naloxone} == {"9916001", "9916003"}
    assert all(m.given_at is not None for m in naloxone)
    assert got.transport_disposition == "4230009"  # patient refused transport
    assert got.patient_evaluation_care == "4228001"
    assert got.unit_disposition == "4227001"
    assert got.crew_disposition == "4229001"
    assert got.drug_use_indicators == ("3117003", "3117007", "3117013")
    assert got.incident_at == datetime(2022, 10, 7, 22, 18, 1, tzinfo=timezone(timedelta(hours=-5)))
    assert got.agency_id == "350-501"
    # No consent element in the TAC test case; the arHistory custom results are not consent.
    assert got.consent == "unknown"
    assert got.leave_behind == ()
    assert got.narrative is not None
    assert "naloxone" in got.narrative


def test_opioid_release_custom_results_are_not_misread() -> None:
    """arHistory.01 holds drug names ("heroin", "fentanyl"): neither consent nor items."""
    got = report(
        "2023-EMS-1-Opioid-Release_v350.xml",
        consent_element="arHistory.01",
        leave_behind_element="arHistory.01",
    )
    assert got.consent == "unknown"
    assert got.leave_behind == ()


def test_overdose_2025() -> None:
    got = report("2025-EMS-1-Overdose_v351.xml")
    assert got.impressions == ("F19", "F10.92")
    assert got.medications == ()
    assert got.identity.language == "eng"
    assert got.identity.sex == "9919001"
    assert got.transport_disposition == "4230001"
    assert got.destination == "330125"  # eDisposition.02, the destination's code


def test_overdose_2025_national_matches_full_without_identity() -> None:
    full = report("2025-EMS-1-Overdose_v351.xml")
    national = report("2025-EMS-1-Overdose_v351_national.xml")
    assert national.pcr_number == full.pcr_number
    assert national.impressions == full.impressions == ("F19", "F10.92")
    assert national.incident_at == full.incident_at
    assert national.drug_use_indicators == full.drug_use_indicators


def test_mvc_is_not_an_opioid_impression() -> None:
    got = report("2025-EMS-3-MVC_v351.xml")
    assert got.impressions
    assert not any(code.startswith(("F11", "T40")) for code in got.impressions)
    # SNOMED-coded (CodeType 9924005) and not-given (PN) medications are skipped.
    assert {m.rxnorm for m in got.medications} == {"7806", "3628"}
    assert got.identity.phones == ("+19174094876", "212-268-5211")


def test_trauma_refusal() -> None:
    got = report("2024-EMS-2-Trauma-Refusal_v350.xml")
    assert got.patient_evaluation_care == "4228003"  # evaluated and refused care
    assert got.crew_disposition == "4229013"
    assert got.medications == ()  # both medications carry PN (refused / allergy)


def test_no_patient() -> None:
    got = report("2020-EMS-1-NoPatient_v350.xml")
    assert got.unit_disposition == "4227003"
    assert got.impressions == ()
    assert got.identity.deidentified


def test_fail_xsd_is_still_read() -> None:
    got = report("2025-EMS-FailXsd_v351.xml")
    assert got.impressions == ("Z51.89",)


@pytest.mark.parametrize("name", FULL_WITH_NAMES)
def test_full_files_have_names(name: str) -> None:
    got = report(name)
    assert got.identity.family
    assert got.identity.given
    assert got.identity.dob is not None
    assert not got.identity.deidentified


def test_national_file_is_deidentified() -> None:
    got = report("2025-EMS-1-Overdose_v351_national.xml")
    identity = got.identity
    assert (identity.family, identity.given, identity.middle, identity.dob) == (
        None,
        None,
        None,
        None,
    )
    assert identity.phones == ()
    assert identity.deidentified
    assert got.narrative is None
