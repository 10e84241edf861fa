"""The cheap HL7 screen: normalize, read_header, screen, split_messages, check_supported."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from services.intake.classify import classify_ed
from services.intake.hl7 import (
    HL7Error,
    MissingFieldError,
    NotHL7Error,
    Screened,
    UnsupportedMessageError,
    check_supported,
    message_types_supported,
    normalize,
    read_header,
    screen,
    split_messages,
)
from services.intake.hl7.screen import Separators, is_supported_version, unescape
from services.intake.records import HL7Header

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hl7"

MSH = "MSH|^~\\&|SENDAPP|SENDFAC|RECVAPP|RECVFAC|20240302014500||ADT^A04^ADT_A01|CTRL-1|P|2.5.1"


def _message(*segments: str, msh: str = MSH) -> str:
    return "\r".join([msh, *segments])


def _fixture(name: str) -> str:
    return normalize((FIXTURES / name).read_bytes())


# ---------------------------------------------------------------------------------------
# normalize
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"MSH|a\rPID|b", "MSH|a\rPID|b", id="cr"),
        pytest.param(b"MSH|a\nPID|b\n", "MSH|a\rPID|b", id="lf"),
        pytest.param(b"MSH|a\r\nPID|b\r\n", "MSH|a\rPID|b", id="crlf"),
        pytest.param(b"\xef\xbb\xbfMSH|a\rPID|b", "MSH|a\rPID|b", id="bom-bytes"),
        pytest.param("\ufeffMSH|a\rPID|b", "MSH|a\rPID|b", id="bom-str"),
        pytest.param(b"\x00 \r\nMSH|a\rPID|b\x00\x00\r\n ", "MSH|a\rPID|b", id="nul-whitespace"),
        pytest.param(b"MSH|a\r\r\n\rPID|b\r  \rPV1|c", "MSH|a\rPID|b\rPV1|c", id="empty-segments"),
        pytest.param(b"MSH|a\rPID|M\xfcller", "MSH|a\rPID|M\u00fcller", id="latin-1-fallback"),
        pytest.param("MSH|a\rPID|M\u00fcller".encode(), "MSH|a\rPID|M\u00fcller", id="utf-8"),
        pytest.param(bytearray(b"MSH|a\nPID|b"), "MSH|a\rPID|b", id="bytearray"),
        pytest.param(b"", "", id="empty"),
    ],
)
def test_normalize(raw: bytes | str, expected: str) -> None:
    assert normalize(raw) == expected


def test_normalize_never_fails_on_arbitrary_bytes() -> None:
    assert isinstance(normalize(bytes(range(256))), str)


# ---------------------------------------------------------------------------------------
# read_header
# ---------------------------------------------------------------------------------------


def test_read_header_fields() -> None:
    header = read_header(
        "MSH|^~\\&|ADT1^1.2.3^ISO|GOOD HOSP|PORTLINE|HD|20240302014500-0500^S|SEC|"
        "ADT^A04^ADT_A04|MSG-42|P^T|2.5.1^USA^HL7|||AL|NE\rEVN|A04"
    )
    assert header == HL7Header(
        field_separator="|",
        encoding_characters="^~\\&",
        sending_application="ADT1^1.2.3^ISO",
        sending_facility="GOOD HOSP",
        receiving_application="PORTLINE",
        receiving_facility="HD",
        message_time="20240302014500-0500",
        message_code="ADT",
        trigger_event="A04",
        message_structure="ADT_A04",
        control_id="MSG-42",
        processing_id="P",
        version="2.5.1",
    )


@pytest.mark.parametrize(
    ("message", "field_separator", "encoding", "control_id", "version"),
    [
        pytest.param(MSH, "|", "^~\\&", "CTRL-1", "2.5.1", id="standard"),
        pytest.param(
            "MSH|^~\\\\&|A|B|||20120912||ADT^A01|102|T|2.6",
            "|",
            "^~\\&",
            "102",
            "2.6",
            id="msh2-doubled-backslash",
        ),
        pytest.param(
            "MSH|^~\\&#|A|B|||2024||ADT^A01|7|P|2.7", "|", "^~\\&#", "7", "2.7", id="truncation"
        ),
        pytest.param("MSH|^~\\|A|B|||2024||ADT^A01|8|P|2.2", "|", "^~\\", "8", "2.2", id="3-chars"),
        pytest.param("MSH||A|B|||2024||ADT^A01|9|P|2.1", "|", "^~\\&", "9", "2.1", id="no-msh2"),
        pytest.param(
            "MSH#^~\\&#A#B###2024##ADT^A01#10#P#2.5", "#", "^~\\&", "10", "2.5", id="hash-fs"
        ),
        pytest.param(
            "MSH|$*/!|A|B|||2024||ADT$A08$ADT_A01|11|P|2.5", "|", "$*/!", "11", "2.5", id="odd"
        ),
        pytest.param(
            "MSH|^~\\&|A|B|||2024||ADT^A01| 12 |P|2.3\r", "|", "^~\\&", "12", "2.3", id="spaces"
        ),
        pytest.param(
            "MSH|^~\\&|A|B|||2024||ADT^A01|13|P|2.4\nPID|1", "|", "^~\\&", "13", "2.4", id="lf"
        ),
    ],
)
def test_read_header_separators(
    message: str, field_separator: str, encoding: str, control_id: str, version: str
) -> None:
    header = read_header(message)
    assert header.field_separator == field_separator
    assert header.encoding_characters == encoding
    assert header.control_id == control_id
    assert header.version == version
    assert header.message_code == "ADT"


def test_read_header_odd_separators_split_components() -> None:
    header = read_header("MSH|$*/!|A|B|||2024||ADT$A08$ADT_A01|11|P|2.5")
    assert (header.trigger_event, header.message_structure) == ("A08", "ADT_A01")


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("MSH|^~\\&|A|B|||2024||ADT^A01||P|2.5", id="empty"),
        pytest.param("MSH|^~\\&|A|B|||2024||ADT^A01|   |P|2.5", id="blank"),
        pytest.param("MSH|^~\\&|A|B|||2024||ADT^A01", id="absent"),
        pytest.param("MSH|^~\\&|A\rPID|1|2|3|4|5|6|7|8|9|10", id="later-segment-ignored"),
    ],
)
def test_read_header_missing_control_id(message: str) -> None:
    with pytest.raises(MissingFieldError) as info:
        read_header(message)
    assert info.value.code == "missing_field"
    assert info.value.hl7_error_code == "101"
    assert info.value.location == ("MSH", 1, 10)
    assert "MSH-10" in info.value.message


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("", id="empty"),
        pytest.param("MSH", id="msh-only"),
        pytest.param("PID|1||123", id="no-msh"),
        pytest.param("hello world", id="garbage"),
        pytest.param(" MSH|^~\\&|A", id="not-normalized"),
        pytest.param("MSHX^~\\&|A", id="alnum-separator"),
        pytest.param("MSH|^~A&|A|B|||2024||ADT^A01|1", id="alnum-in-encoding"),
    ],
)
def test_read_header_not_hl7(message: str) -> None:
    with pytest.raises(NotHL7Error) as info:
        read_header(message)
    assert info.value.code == "not_hl7"


def test_read_header_empty_values_come_back_empty() -> None:
    header = read_header("MSH|^~\\&||||||||CTRL")
    assert header.sending_facility == ""
    assert header.message_code == header.trigger_event == header.version == ""
    assert header.control_id == "CTRL"


def test_read_header_after_bom_and_crlf() -> None:
    header = read_header(normalize(b"\xef\xbb\xbf" + MSH.encode() + b"\r\nPID|1\r\n"))
    assert header.control_id == "CTRL-1"


def test_errors_never_echo_message_content() -> None:
    secret = "SECRETNAME"
    for message in (f"{secret}|x", f"MSH|^~\\&|{secret}|||||ADT^A01"):
        with pytest.raises(HL7Error) as info:
            read_header(message)
        assert secret not in str(info.value)
        assert secret not in repr(info.value)


# ---------------------------------------------------------------------------------------
# unescape
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("A\\T\\E", "A&E"),
        ("a\\F\\b\\S\\c\\R\\d\\E\\e", "a|b^c~d\\e"),
        ("line1\\.br\\line2", "line1\nline2"),
        ("\\H\\bold\\N\\", "bold"),
        ("\\X41\\", "A"),
        ("\\Xc3a9\\", "\u00e9"),
        ("\\Xe9\\", "\u00e9"),
        ("C:\\path", "C:\\path"),
        ("\\Q\\x", "\\Q\\x"),
        ("\\XZZ\\", "\\XZZ\\"),
        ("a\\", "a\\"),
    ],
)
def test_unescape(text: str, expected: str) -> None:
    assert unescape(text) == expected


def test_unescape_uses_the_message_separators() -> None:
    seps = Separators.from_msh("#", "$*/!")
    assert unescape("a/F/b/S/c/T/d/R/e/E/", seps) == "a#b$c!d*e/"


# ---------------------------------------------------------------------------------------
# screen
# ---------------------------------------------------------------------------------------


def test_screen_nist_overdose_fixture() -> None:
    screened = screen(_fixture("nist_ss_overdose_a04_v251.hl7"))
    assert screened.header.control_id == "NIST-SS-OD-0001"
    assert screened.header.message_structure == "ADT_A04"
    assert screened.codes == (("dg1", "T40.1X1A"),)
    assert screened.texts == (("pv2_3", "OD on heroin"), ("obx_8661_1", "overdose fentanyl"))
    decision = classify_ed(codes=screened.codes, texts=screened.texts)
    assert decision.opioid
    assert {reason.source for reason in decision.reasons} == {"dg1", "pv2_3", "obx_8661_1"}


def test_screen_negative_fixture() -> None:
    screened = screen(_fixture("not_overdose_a03_v251.hl7"))
    assert screened.codes == (("dg1", "R07.9"),)
    assert screened.texts == (("obx_8661_1", "chest pain, denies drug use"),)
    assert not classify_ed(codes=screened.codes, texts=screened.texts).any_drug


@pytest.mark.parametrize(
    ("segments", "codes"),
    [
        pytest.param(["DG1|1||T40.1X1A^Heroin^I10C"], ["T40.1X1A"], id="one"),
        pytest.param(
            ["DG1|1||T40.1X1A^Heroin^I10C|||F", "PV1|1|E", "DG1|2|I10|F11.220^^I10|||A"],
            ["T40.1X1A", "F11.220"],
            id="several-in-order",
        ),
        pytest.param(["DG1|1||T40.4X1A"], ["T40.4X1A"], id="no-components"),
        pytest.param(["DG1|1|| t40.1x1a ^x"], ["t40.1x1a"], id="stripped-as-sent"),
        pytest.param(["DG1|1||^Only text^I10"], [], id="no-code"),
        pytest.param(["DG1|1||"], [], id="empty"),
        pytest.param(["DG1|1"], [], id="short"),
        pytest.param(['DG1|1||""'], [], id="hl7-null"),
        pytest.param(["DG1|1||T40.1X1A~T40.2X1A"], ["T40.1X1A"], id="first-repetition"),
        pytest.param(["ZDG|1||T40.1X1A", "NTE|DG1|T40.1X1A"], [], id="not-dg1"),
        pytest.param(["DG1|1|I9|71596^OSTEO ^I9|OSTEO ||A| "], ["71596"], id="trailing-space"),
    ],
)
def test_screen_dg1_codes(segments: list[str], codes: list[str]) -> None:
    assert screen(_message(*segments)).codes == tuple(("dg1", code) for code in codes)


@pytest.mark.parametrize(
    ("segment", "text"),
    [
        pytest.param("PV2|||^OD on heroin", "OD on heroin", id="text-component"),
        pytest.param("PV2|||OD^Overdose^L", "Overdose", id="code-and-text"),
        pytest.param("PV2|||OVERDOSE", "OVERDOSE", id="code-only"),
        pytest.param("PV2|||4^^L", "4", id="code-no-text"),
        pytest.param("PV2|||^^^^^^^^found down, narcan", "found down, narcan", id="cwe-9"),
        pytest.param(
            "PV2|||OD^Overdose^L^^Drug overdose^L^^^pt took pills",
            "Overdose\nDrug overdose\npt took pills",
            id="text-alt-original",
        ),
        pytest.param("PV2|||^Overdose^L^^Overdose", "Overdose", id="duplicates-dropped"),
        pytest.param("PV2|||^OD \\T\\ found down", "OD & found down", id="escape-T"),
        pytest.param("PV2|||^a\\F\\b\\S\\c\\R\\d\\E\\e", "a|b^c~d\\e", id="escapes"),
        pytest.param("PV2|||^OD~^heroin", "OD\nheroin", id="repetitions"),
    ],
)
def test_screen_pv2_3(segment: str, text: str) -> None:
    assert screen(_message("PV1|1|E", segment)).texts == (("pv2_3", text),)


@pytest.mark.parametrize(
    "segment",
    ["PV2|||", "PV2||NHS", 'PV2|||""', "PV2|||^", "PV2|||^^^^^^^^   "],
)
def test_screen_pv2_3_empty(segment: str) -> None:
    assert screen(_message(segment)).texts == ()


@pytest.mark.parametrize(
    ("segment", "text"),
    [
        pytest.param(
            "OBX|3|CWE|8661-1^CHIEF COMPLAINT:FIND:PT:^LN||overdose fentanyl||||||F",
            "overdose fentanyl",
            id="cwe-component-1",
        ),
        pytest.param(
            "OBX|3|CWE|8661-1^^LN||^^^^^^^^Diarrhea, stomach pain||||||F",
            "Diarrhea, stomach pain",
            id="cwe-original-text",
        ),
        pytest.param("OBX|1|CE|8661-1^CC^LN||OD^Overdose^L", "Overdose", id="ce"),
        pytest.param(
            "OBX|1|TX|8661-1^CHIEF COMPLAINT^LN||found down^ narcan x2||||||F",
            "found down^ narcan x2",
            id="tx-taken-whole",
        ),
        pytest.param("OBX|1|ST|8661-1||OD\\R\\heroin", "OD~heroin", id="st-escaped"),
        pytest.param("OBX|1|TX|8661-1||line one~line two", "line one\nline two", id="tx-reps"),
        pytest.param("OBX|1||8661-1||^overdose", "overdose", id="no-type-coded"),
        pytest.param("OBX|1||8661-1||overdose", "overdose", id="no-type-plain"),
        pytest.param("OBX|1|cwe|8661-1||^overdose", "overdose", id="lower-case-type"),
    ],
)
def test_screen_obx_8661_1(segment: str, text: str) -> None:
    assert screen(_message(segment)).texts == (("obx_8661_1", text),)


@pytest.mark.parametrize(
    "segment",
    [
        pytest.param("OBX|1|NM|21612-7^^LN||45|a^^UCUM|||||F", id="other-loinc"),
        pytest.param("OBX|1|CWE|SS003^^PHINQUESTION||8661-1^x||||||F", id="8661-1-as-value"),
        pytest.param("OBX|1|CWE|18661-1^^LN||overdose", id="similar-code"),
        pytest.param("OBX|1|TX|^8661-1||overdose", id="8661-1-not-first-component"),
        pytest.param("OBX|1|CWE|8661-1^^LN||", id="empty-value"),
        pytest.param("OBX|1|CWE|8661-1^^LN", id="short"),
        pytest.param("NTE|1|8661-1||overdose", id="not-obx"),
    ],
)
def test_screen_obx_ignored(segment: str) -> None:
    assert screen(_message(segment)).texts == ()


def test_screen_texts_pv2_first_then_obx_in_order() -> None:
    message = _message(
        "OBX|1|TX|8661-1||first",
        "PV2|||^reason",
        "OBX|2|TX|8661-1||second",
    )
    assert screen(message).texts == (
        ("pv2_3", "reason"),
        ("obx_8661_1", "first"),
        ("obx_8661_1", "second"),
    )


def test_screen_with_other_separators() -> None:
    message = "MSH#$*/!#A#B###2024##ADT$A04#1#P#2.5\rPV2###$OD /S/ heroin\rDG1#1##T40.1X1A$x"
    screened = screen(message)
    assert screened.codes == (("dg1", "T40.1X1A"),)
    assert screened.texts == (("pv2_3", "OD $ heroin"),)


@pytest.mark.parametrize(
    ("message", "trigger"),
    [
        ("MSH|^~\\&|A|B|||1988||ADT|1|P|2.1\rEVN|A04|198808181126\rPID|1", "A04"),
        ("MSH|^~\\&|A|B|||1988||ADT|1|P|2.1\rPID|1\rEVN|A08^x", "A08"),
        ("MSH|^~\\&|A|B|||1988||ADT^A01|1|P|2.1\rEVN|A04|198808181126\rPID|1", "A01"),
        ("MSH|^~\\&|A|B|||1988||ADT|1|P|2.1\rEVN||198808181126\rPID|1", ""),
        ("MSH|^~\\&|A|B|||1988||ADT|1|P|2.1\rPID|1||EVN|A04", ""),
    ],
)
def test_trigger_from_evn_for_old_versions(message: str, trigger: str) -> None:
    assert read_header(message).trigger_event == trigger
    assert screen(message).header.trigger_event == trigger


def test_screen_raises_what_read_header_raises() -> None:
    with pytest.raises(NotHL7Error):
        screen("PID|1")
    with pytest.raises(MissingFieldError):
        screen("MSH|^~\\&|A|B|||2024||ADT^A01||P|2.5\rDG1|1||T40.1X1A")


def test_screened_is_frozen() -> None:
    screened = screen(MSH)
    assert screened == Screened(header=read_header(MSH))
    with pytest.raises(dataclasses.FrozenInstanceError):
        screened.codes = ()  # type: ignore[misc]


# ---------------------------------------------------------------------------------------
# split_messages
# ---------------------------------------------------------------------------------------


def test_split_single_message_is_returned_as_is() -> None:
    message = _message("PID|1", "PV1|1|E")
    assert split_messages(message) == [message]


def test_split_several_messages() -> None:
    first = "MSH|^~\\&|A|B|||2024||ADT^A01|1|P|2.5\rPID|1"
    second = "MSH|^~\\&|A|B|||2024||ADT^A04|2|P|2.5\rPID|1\rPV1|1"
    third = "MSH|^~\\&|A|B|||2024||ADT^A08|3|P|2.5"
    assert split_messages("\r".join([first, second, third])) == [first, second, third]


def test_split_bhs_batch() -> None:
    message = _message("EVN|A04|2024", "PID|1")
    payload = f"BHS|^~\\&|A|B|||2024||||B1\r{message}\rBTS|1"
    assert split_messages(payload) == [message]


def test_split_fhs_batch_fixture() -> None:
    messages = split_messages(_fixture("batch_fhs_bhs_two_messages.hl7"))
    assert [read_header(m).control_id for m in messages] == ["B-0005", "B-0006"]
    assert all(m.startswith("MSH|") for m in messages)
    assert not any(
        seg[:3] in {"FHS", "BHS", "BTS", "FTS"} for m in messages for seg in m.split("\r")
    )
    # The first message carries the literal "MSH" in PID-17 and PV1 and keeps its segments.
    assert [seg[:3] for seg in messages[0].split("\r")] == ["MSH", "EVN", "PID", "PV1"]
    assert "|MSH|" in messages[0]


@pytest.mark.parametrize(
    "segment",
    [
        pytest.param("PID|1||123^^^^MR||DOE^JOHN|||||||||S|MSH|12345678", id="msh-in-pid-17"),
        pytest.param("PV1|1|O|||||||||||||||||||||||||||||||||MSH||A", id="msh-in-pv1"),
        pytest.param("NTE|1||MSH|^~\\&|fake", id="msh-header-text-in-field"),
        pytest.param("MSHX|1", id="msh-prefixed-segment"),
    ],
)
def test_split_never_starts_at_msh_inside_a_segment(segment: str) -> None:
    message = _message("EVN|A04|2024", segment, "PV2|||^x")
    assert split_messages(message) == [message]


def test_split_drops_leading_junk_segments() -> None:
    message = _message("PID|1")
    assert split_messages(f"garbage\r{message}") == [message]


@pytest.mark.parametrize(
    "payload",
    ["", "PID|1||123", "BHS|^~\\&|A\rBTS|0", "hello\rworld", "XMSH|^~\\&|A"],
)
def test_split_without_msh_is_not_hl7(payload: str) -> None:
    with pytest.raises(NotHL7Error):
        split_messages(payload)


# ---------------------------------------------------------------------------------------
# check_supported
# ---------------------------------------------------------------------------------------


def _header(**changes: str) -> HL7Header:
    return dataclasses.replace(read_header(MSH), **changes)


def test_message_types_supported() -> None:
    assert message_types_supported == {"A01", "A03", "A04", "A08"}


@pytest.mark.parametrize("trigger", ["A01", "A03", "A04", "A08"])
@pytest.mark.parametrize(
    "version",
    ["2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.2"],
)
def test_check_supported_accepts(trigger: str, version: str) -> None:
    check_supported(_header(trigger_event=trigger, version=version))


@pytest.mark.parametrize(
    ("changes", "error", "hl7_code"),
    [
        pytest.param({"message_code": "ACK"}, UnsupportedMessageError, "200", id="ack"),
        pytest.param(
            {"message_code": "ORU", "trigger_event": "R01"},
            UnsupportedMessageError,
            "200",
            id="oru",
        ),
        pytest.param({"message_code": "adt"}, UnsupportedMessageError, "200", id="lower-case"),
        pytest.param({"trigger_event": "A31"}, UnsupportedMessageError, "201", id="a31"),
        pytest.param({"trigger_event": "A05"}, UnsupportedMessageError, "201", id="a05"),
        pytest.param({"version": "3.0"}, UnsupportedMessageError, "203", id="v3"),
        pytest.param({"version": "2.9"}, UnsupportedMessageError, "203", id="v2.9"),
        pytest.param({"version": "2.0"}, UnsupportedMessageError, "203", id="v2.0"),
        pytest.param({"version": "2.5.1.1"}, UnsupportedMessageError, "203", id="four-parts"),
        pytest.param({"version": "2.x"}, UnsupportedMessageError, "203", id="garbage"),
        pytest.param({"message_code": ""}, MissingFieldError, "101", id="no-type"),
        pytest.param({"trigger_event": ""}, MissingFieldError, "101", id="no-trigger"),
        pytest.param({"version": ""}, MissingFieldError, "101", id="no-version"),
    ],
)
def test_check_supported_rejects(
    changes: dict[str, str], error: type[HL7Error], hl7_code: str
) -> None:
    with pytest.raises(error) as info:
        check_supported(_header(**changes))
    assert info.value.hl7_error_code == hl7_code
    assert type(info.value).code in {"unsupported_message_type", "missing_field"}
    for value in changes.values():
        if value:
            assert value not in info.value.message


def test_is_supported_version() -> None:
    assert is_supported_version("2.5.1")
    assert not is_supported_version("2.5.")
    assert not is_supported_version("2")
