"""The HL7 layer against the shared public-sample corpus (read in place, never copied).

The corpus is ``$PORTLINE_CORPUS_DIR`` or ``../shared/corpus`` beside the repository; the
tests skip when it is absent. Every file goes through normalize -> split_messages ->
read_header -> screen -> check_supported -> parse_adt.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.intake.classify import classify_ed
from services.intake.hl7 import (
    UnsupportedMessageError,
    check_supported,
    normalize,
    parse_adt,
    read_header,
    screen,
    split_messages,
)
from services.intake.hl7 import parse as parse_module
from services.intake.hl7.screen import Separators

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("PORTLINE_CORPUS_DIR") or ROOT.parent / "shared" / "corpus")
HL7_DIR = CORPUS / "hl7"

# file -> (messages, MSH-10 of the first, trigger, version, DG1 codes, texts)
EXPECTED: dict[str, tuple[int, str, str, str, int, int]] = {
    "cdcti_001_Other_ADT_A01.hl7": (1, "MSG00001", "A01", "2.8", 0, 0),
    "cdcti_005_MN_ADT_A01.hl7": (1, "407750281", "A01", "2.3", 0, 0),
    "elixirhl7_nist_syndromic_NIST-SS-003.32_ADT_A03_v2.5.1.hl7": (
        *(1, "NIST-SS-003.32", "A03", "2.5.1"),
        *(3, 1),
    ),
    "elixirhl7_wikipedia_ADT_A01_v2.5.hl7": (1, "01052901", "A01", "2.5", 1, 0),
    "hl7v2tofhir_01_A01-Admit-Patient-example-from-V2-8-2-base-standard-v2.8.hl7": (
        *(1, "MSG00001", "A01", "2.8"),
        *(0, 0),
    ),
    "hl7v2tofhir_02_A01-Simple-Admit-VHIS-1-v2.3.1.hl7": (
        *(1, "MSG015410771930-19", "A01", "2.3.1"),
        *(0, 0),
    ),
    "hl7v2tofhir_03_A04-REDOX-A28-1-v2.3.hl7": (1, "1270326314", "A04", "2.3", 0, 0),
    "hl7v2tofhir_04_A04-Register-Patient-v2.1.hl7": (
        *(1, "IHS-20180301010000.00120", "A04", "2.1"),
        *(0, 0),
    ),
    "hl7v2tofhir_05_A04-with-allergies-v2.3.1.hl7": (1, "0SHT2MNK9WWH8IB", "A04", "2.3.1", 0, 0),
    "hl7v2tofhir_06_A08-Update-Patient-v2.3.hl7": (1, "8899-39", "A08", "2.3", 0, 0),
    "hl7v2tofhir_07_A31-A05-Pre-admit-Patient-v2.3.hl7": (
        *(1, "Q111111119T4083493511111111", "A31", "2.3"),
        *(0, 1),
    ),
    "lfh_ADT-multiline_A01_v2.6.hl7": (1, "102", "A01", "2.6", 0, 0),
    "msfhirconv_ADT-A01-01.hl7": (1, "MSG00001", "A01", "2.8", 1, 1),
    "msfhirconv_ADT-A03-01.hl7": (1, "MSG00001", "A03", "2.8", 1, 1),
    "msfhirconv_ADT-A04-01.hl7": (1, "MSG00001", "A04", "2.8", 1, 1),
    "msfhirconv_ADT-A08-01.hl7": (1, "MSG00001", "A08", "2.8", 1, 1),
    "msfhirconv_ADT01-23.hl7": (1, "599102", "A01", "2.3", 1, 0),
    "msfhirconv_ADT04-23.hl7": (1, "Q123456789T123456789X123456", "A04", "2.3", 0, 0),
    "pythonhl7_sample_batch_BHS_ADT_A04_v2.5.hl7": (1, "12334456778890", "A04", "2.5", 0, 0),
}
# Files whose messages check_supported() must reject, with the HL7 error code.
UNSUPPORTED = {"hl7v2tofhir_07_A31-A05-Pre-admit-Patient-v2.3.hl7": "201"}


def _corpus_files() -> list[Path]:
    if not HL7_DIR.is_dir():
        pytest.skip(f"HL7 corpus not found at {HL7_DIR} (set PORTLINE_CORPUS_DIR)")
    files = sorted(HL7_DIR.glob("*.hl7"))
    if not files:
        pytest.skip(f"no .hl7 files in {HL7_DIR}")
    return files


def _messages(path: Path) -> list[str]:
    return split_messages(normalize(path.read_bytes()))


def test_every_corpus_file_screens() -> None:
    for path in _corpus_files():
        for message in _messages(path):
            header = read_header(message)
            screened = screen(message)
            assert screened.header.control_id == header.control_id, path.name
            assert message.startswith("MSH"), path.name
            assert "\n" not in message, path.name
            assert "\ufeff" not in message, path.name


def test_every_supported_corpus_message_parses() -> None:
    parsed = 0
    for path in _corpus_files():
        for message in _messages(path):
            screened = screen(message)
            if path.name in UNSUPPORTED:
                with pytest.raises(UnsupportedMessageError) as info:
                    check_supported(screened.header)
                assert info.value.hl7_error_code == UNSUPPORTED[path.name], path.name
                continue
            check_supported(screened.header)
            # hl7apy itself takes every corpus message (no exception, so no full fallback).
            seps = Separators.of(screened.header)
            found, _ = parse_module._segments_hl7apy(message, screened.header, seps)
            assert "PID" in found, path.name
            adt = parse_adt(message, screened)
            assert adt.header == screened.header
            assert adt.identity.mrn, path.name
            assert adt.admit_at is not None, path.name
            assert adt.admit_at.tzinfo is not None, path.name
            parsed += 1
    assert parsed >= 1


def test_hl7apy_and_positional_reader_agree_on_the_corpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    messages = [m for path in _corpus_files() for m in _messages(path)]
    with_hl7apy = [parse_adt(m, screen(m)) for m in messages]

    def broken(*args: object) -> None:
        raise RuntimeError("hl7apy disabled")

    monkeypatch.setattr(parse_module, "_segments_hl7apy", broken)
    positional = [parse_adt(m, screen(m)) for m in messages]
    assert positional == with_hl7apy


def test_corpus_expectations() -> None:
    files = {path.name: path for path in _corpus_files()}
    for name, (count, control_id, trigger, version, codes, texts) in EXPECTED.items():
        if name not in files:
            continue  # the corpus changed; the generic tests still cover what is there
        messages = _messages(files[name])
        screened = screen(messages[0])
        assert len(messages) == count, name
        assert screened.header.control_id == control_id, name
        assert screened.header.message_code == "ADT", name
        assert screened.header.trigger_event == trigger, name
        assert screened.header.version == version, name
        assert (len(screened.codes), len(screened.texts)) == (codes, texts), name


def test_corpus_has_no_overdose() -> None:
    # SOURCES.md: no public sample with an overdose was found; the screen must not invent one.
    for path in _corpus_files():
        for message in _messages(path):
            screened = screen(message)
            decision = classify_ed(codes=screened.codes, texts=screened.texts)
            assert not decision.any_drug, path.name


def test_corpus_specifics() -> None:
    files = {path.name: path for path in _corpus_files()}

    nist = files.get("elixirhl7_nist_syndromic_NIST-SS-003.32_ADT_A03_v2.5.1.hl7")
    if nist is not None:
        screened = screen(_messages(nist)[0])
        assert [code for _, code in screened.codes] == ["0074", "27651", "78791"]
        assert screened.texts == (("obx_8661_1", "Diarrhea, stomach pain, dehydration"),)

    literal_msh = files.get("msfhirconv_ADT04-23.hl7")
    if literal_msh is not None:
        (message,) = _messages(literal_msh)
        assert [seg[:3] for seg in message.split("\r")] == [
            *("MSH", "EVN", "PID", "NK1", "NK1", "PV1", "IN1", "IN1"),
        ]

    lfh = files.get("lfh_ADT-multiline_A01_v2.6.hl7")
    if lfh is not None:
        assert screen(_messages(lfh)[0]).header.encoding_characters == "^~\\&"

    homerton = files.get("hl7v2tofhir_07_A31-A05-Pre-admit-Patient-v2.3.hl7")
    if homerton is not None:
        header = screen(_messages(homerton)[0]).header
        with pytest.raises(UnsupportedMessageError) as info:
            check_supported(header)
        assert info.value.code == "unsupported_message_type"
        assert info.value.hl7_error_code == "201"
