"""ACK building (AA/AE/AR with ERR) and parsing."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.intake.hl7 import (
    HL7Error,
    MissingFieldError,
    NotHL7Error,
    ParseError,
    UnsupportedMessageError,
    build_ack,
    parse_ack,
    read_header,
)
from services.intake.hl7.ack import escape
from services.intake.hl7.screen import unescape

NOW = datetime(2024, 3, 2, 6, 45, 12, tzinfo=timezone(timedelta(hours=-5)))
ORIGINAL = read_header(
    "MSH|^~\\&|EPIC^1.2.3^ISO|GENHOSP|PORTLINE|HEALTHDEPT|20240302014500||ADT^A04^ADT_A01|"
    "MSG-42|T|2.3.1"
)


def _segments(ack: str) -> list[list[str]]:
    assert "\n" not in ack
    return [segment.split("|") for segment in ack.split("\r")]


def test_aa() -> None:
    ack = build_ack(ORIGINAL, "AA", now=NOW, control_id="ACK-1")
    msh, msa = _segments(ack)
    assert msh == [
        "MSH",
        "^~\\&",
        "PORTLINE",
        "HEALTHDEPT",
        "EPIC^1.2.3^ISO",
        "GENHOSP",
        "20240302064512-0500",
        "",
        "ACK^A04^ACK",
        "ACK-1",
        "T",
        "2.3.1",
    ]
    assert msa == ["MSA", "AA", "MSG-42"]
    assert parse_ack(ack) == ("AA", "MSG-42", None)
    # The ACK is itself a readable HL7 message.
    header = read_header(ack)
    assert (header.message_code, header.trigger_event, header.control_id) == ("ACK", "A04", "ACK-1")


def test_aa_with_text() -> None:
    ack = build_ack(ORIGINAL, "AA", now=NOW, control_id="ACK-1", text="accepted")
    assert _segments(ack)[1] == ["MSA", "AA", "MSG-42", "accepted"]
    assert parse_ack(ack) == ("AA", "MSG-42", "accepted")


@pytest.mark.parametrize(
    ("error", "location", "err3"),
    [
        pytest.param(
            MissingFieldError.for_field("MSH", 10),
            "MSH^1^10",
            "101^Required field missing^HL70357",
            id="missing-field",
        ),
        pytest.param(
            UnsupportedMessageError("only ADT messages are accepted", location=("MSH", 1, 9)),
            "MSH^1^9",
            "200^Unsupported message type^HL70357",
            id="unsupported-type",
        ),
        pytest.param(
            UnsupportedMessageError("only versions 2.1 to 2.8", hl7_error_code="203"),
            "",
            "203^Unsupported version id^HL70357",
            id="unsupported-version",
        ),
        pytest.param(
            ParseError("required segment PID is missing", location=("PID", 1)),
            "PID^1",
            "100^Segment sequence error^HL70357",
            id="segment-location",
        ),
        pytest.param(
            NotHL7Error("no MSH segment"), "", "100^Segment sequence error^HL70357", id="not-hl7"
        ),
        pytest.param(
            HL7Error("internal error"), "", "207^Application internal error^HL70357", id="base"
        ),
    ],
)
@pytest.mark.parametrize("code", ["AE", "AR"])
def test_errors(code: str, error: HL7Error, location: str, err3: str) -> None:
    ack = build_ack(ORIGINAL, code, now=NOW, control_id="ACK-2", error=error)  # type: ignore[arg-type]
    _msh, msa, err = _segments(ack)
    assert msa == ["MSA", code, "MSG-42", error.message]
    assert err == ["ERR", "", location, err3, "E", "", "", "", error.message]
    assert parse_ack(ack) == (code, "MSG-42", error.message)


def test_error_text_overrides_msa_3() -> None:
    error = MissingFieldError.for_field("MSH", 10)
    ack = build_ack(ORIGINAL, "AR", now=NOW, control_id="A", error=error, text="rejected")
    _, msa, err = _segments(ack)
    assert msa[3] == "rejected"
    assert err[8] == error.message
    assert parse_ack(ack)[2] == error.message  # ERR-8 wins over MSA-3


def test_ar_without_error_has_no_err() -> None:
    ack = build_ack(ORIGINAL, "AR", now=NOW, control_id="A", text="framing problem")
    assert [s[0] for s in _segments(ack)] == ["MSH", "MSA"]
    assert parse_ack(ack) == ("AR", "MSG-42", "framing problem")


def test_without_header() -> None:
    ack = build_ack(None, "AR", now=NOW, control_id="ACK-3", error=NotHL7Error("not HL7"))
    msh, msa, _ = _segments(ack)
    assert msh[2:6] == ["PORTLINE", "", "", ""]
    assert msh[8:12] == ["ACK", "ACK-3", "P", "2.5.1"]
    assert msa == ["MSA", "AR", "", "not HL7"]
    assert parse_ack(ack) == ("AR", "", "not HL7")


def test_defaults_when_header_fields_empty() -> None:
    header = read_header("MSH|^~\\&||||||||CTRL-7")
    msh, msa = _segments(build_ack(header, "AA", now=NOW, control_id="ACK-4"))
    assert msh[2:6] == ["PORTLINE", "", "", ""]
    assert msh[8:12] == ["ACK", "ACK-4", "P", "2.5.1"]
    assert msa == ["MSA", "AA", "CTRL-7"]


def test_version_that_is_not_a_version_is_not_echoed() -> None:
    header = dataclasses.replace(ORIGINAL, version="v2 please")
    assert _segments(build_ack(header, "AA", now=NOW, control_id="A"))[0][11] == "2.5.1"


def test_now_formats_offset() -> None:
    ack = build_ack(ORIGINAL, "AA", now=datetime(2024, 1, 1, tzinfo=UTC), control_id="A")
    assert _segments(ack)[0][6] == "20240101000000+0000"


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_ack(ORIGINAL, "AA", now=datetime(2024, 1, 1), control_id="A")


@pytest.mark.parametrize(("code", "control_id"), [("XX", "A"), ("AA", "")])
def test_bad_arguments(code: str, control_id: str) -> None:
    with pytest.raises(ValueError, match=r"code|control_id"):
        build_ack(ORIGINAL, code, now=NOW, control_id=control_id)  # type: ignore[arg-type]


def test_free_text_is_escaped() -> None:
    text = "a|b^c&d~e\\f\rg\nh"
    error = HL7Error("bad|value^here")
    ack = build_ack(ORIGINAL, "AE", now=NOW, control_id="A", error=error, text=text)
    _, msa, err = _segments(ack)
    assert msa[3] == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f g h"
    assert err[8] == "bad\\F\\value\\S\\here"
    assert len(_segments(ack)) == 3
    assert parse_ack(ack) == ("AE", "MSG-42", "bad|value^here")


def test_msa_3_is_cut_to_80_characters() -> None:
    ack = build_ack(ORIGINAL, "AA", now=NOW, control_id="A", text="x" * 200)
    assert _segments(ack)[1][3] == "x" * 80


def test_header_from_other_separators_is_reencoded() -> None:
    header = read_header("MSH#$*/!#APP$1.2$ISO#FAC###2024##ADT$A08#ID^1#P#2.5")
    msh, msa = _segments(build_ack(header, "AA", now=NOW, control_id="A"))
    assert msh[4] == "APP^1.2^ISO"
    assert msh[8] == "ACK^A08^ACK"
    assert msa[2] == "ID\\S\\1"
    assert parse_ack(build_ack(header, "AA", now=NOW, control_id="A"))[1] == "ID^1"


@pytest.mark.parametrize(
    "message",
    [
        # Other separators: re-encoding unescapes \X1C\ to the FS byte.
        "MSH#^~\\&#AP\\X1C\\P#FA\\X0B\\C#R#F#2024##ADT^A04#C\\X1C\\1#P#2.5",
        # Raw framing bytes, as an HTTP body may carry them.
        "MSH|^~\\&|AP\x1cP|FA\x0bC|R|F|2024||ADT^A04|C\x1c1|P|2.5",
    ],
)
def test_the_ack_never_holds_mllp_framing_bytes(message: str) -> None:
    """Found by fuzzing: such an ACK made the MLLP listener's frame() raise, so the partner
    never got an answer, and got none to each resend either."""
    ack = build_ack(read_header(message), "AA", now=NOW, control_id="A")
    assert "\x0b" not in ack
    assert "\x1c" not in ack
    msh, msa = _segments(ack)
    assert (msh[4], msh[5]) == ("AP\\X1C\\P", "FA\\X0B\\C")
    assert msa[2] == "C\\X1C\\1"
    assert parse_ack(ack) == ("AA", "C\x1c1", None)


@pytest.mark.parametrize(
    "text",
    [
        "MSH|^~\\&|A|B|||2024||ACK|1|P|2.5\rMSA|AA|X",
        "MSH|^~\\&|A|B|||2024||ACK|1|P|2.5\nMSA|AA|X\n",
        "\x0bMSH|^~\\&|A|B|||2024||ACK|1|P|2.5\rMSA|AA|X\x1c\r",
    ],
)
def test_parse_ack_tolerates_framing_and_line_endings(text: str) -> None:
    assert parse_ack(text) == ("AA", "X", None)


def test_parse_ack_errors() -> None:
    with pytest.raises(NotHL7Error):
        parse_ack("MSA|AA|1")
    with pytest.raises(MissingFieldError):
        parse_ack("MSH|^~\\&|A|B|||2024||ACK|1|P|2.5")
    with pytest.raises(MissingFieldError):
        parse_ack("MSH|^~\\&|A|B|||2024||ACK|1|P|2.5\rMSA||1")


@given(st.text(min_size=0, max_size=60))
def test_escape_round_trip(text: str) -> None:
    cleaned = text.replace("\r", " ").replace("\n", " ")
    assert unescape(escape(text)) == cleaned
    assert not any(c in escape(text) for c in "|^&~\r\n")


@given(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00\x0b\x1c\ufeff"),
        min_size=1,
        max_size=80,
    ).filter(lambda t: t.strip() == t and t.strip())
)
def test_parse_ack_round_trips_text(text: str) -> None:
    ack = build_ack(ORIGINAL, "AA", now=NOW, control_id="A", text=text)
    assert parse_ack(ack) == ("AA", "MSG-42", text)
