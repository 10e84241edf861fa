"""Fuzzing the HL7 v2 screen and the full parse: arbitrary text, and mutated ADT messages.

Each payload goes the way intake takes it (handlers.prepare, then the full parse, which
parse_pool.parse_inline and the parse pool run as parse_adt): normalize, split_messages,
screen (which reads the header), check_supported, parse_adt, and the ACK for every message.
Only the declared HL7Error hierarchy may escape a step, never another exception; what comes
out keeps its contracts (an ACK frames over MLLP and reads back, every time has a UTC
equivalent); and each payload stays within the time and memory bounds of tests/fuzzing.py.

What the screen found is then classified (classify_ed), which must not raise either. The
classifier is not a parser and is not held to the bounds: its cost grows with the words of
a chief complaint, about 2 s and 90 MiB here for 1 MiB of one-letter words.

The full parse runs on every message that screens, not only on overdose candidates, so
that every mutation reaches it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.intake.classify import classify_ed
from services.intake.hl7 import (
    FieldTooLongError,
    HL7Error,
    MissingFieldError,
    NotHL7Error,
    ParseError,
    Screened,
    UnsupportedMessageError,
    build_ack,
    check_supported,
    normalize,
    parse_ack,
    parse_adt,
    read_header,
    screen,
    split_messages,
)
from services.intake.hl7.errors import HL7_ERROR_DESCRIPTIONS
from services.intake.mllp import frame
from services.intake.records import AdtMessage, HL7Header
from tests.fuzzing import MIB, at_limit, fuzz, note, run_bounded
from tests.hl7_builder import adt, routine

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hl7"
MAX_MESSAGE_BYTES = MIB  # PORTLINE_INTAKE_MAX_MESSAGE_BYTES' default

DECLARED = (NotHL7Error, MissingFieldError, UnsupportedMessageError, ParseError, FieldTooLongError)
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
# The program's zone is used for times without an offset; the extremes reach furthest.
ZONES: tuple[tzinfo, ...] = (
    UTC,
    ZoneInfo("America/New_York"),
    ZoneInfo("Pacific/Kiritimati"),  # UTC+14
    ZoneInfo("Etc/GMT+12"),  # UTC-12
)


def _fixture_messages() -> list[str]:
    found: list[str] = []
    for path in sorted(FIXTURES.glob("*.hl7")):
        found.extend(split_messages(normalize(path.read_bytes())))
    return found


_FIXTURE_TEXTS = _fixture_messages()


def _check_error(error: HL7Error) -> None:
    assert isinstance(error, DECLARED), repr(error)
    assert error.hl7_error_code in HL7_ERROR_DESCRIPTIONS


def _check_ack(header: HL7Header | None, error: HL7Error | None) -> None:
    """The ACK intake would answer with: it reads back, and it fits in an MLLP frame."""
    code = "AA" if error is None else "AR"
    ack = build_ack(header, code, now=NOW, control_id="FUZZ", error=error)
    frame(ack.encode())  # ValueError if the ACK held VT or FS
    assert parse_ack(ack)[0] == code
    names = [segment[:3] for segment in ack.split("\r")]
    assert names == (["MSH", "MSA"] if error is None else ["MSH", "MSA", "ERR"])


def _check_time(value: datetime | None) -> None:
    if value is not None:
        assert value.utcoffset() is not None
        value.astimezone(UTC)  # OverflowError if it has no UTC equivalent


def _check_parsed(parsed: AdtMessage, header: HL7Header) -> None:
    assert parsed.header == header
    _check_time(parsed.admit_at)
    identity = parsed.identity
    assert identity.dob is None or identity.dob >= date(1850, 1, 1)
    assert all(isinstance(phone, str) and phone for phone in identity.phones)
    assert len(set(identity.phones)) == len(identity.phones)
    for value in (identity.family, identity.given, identity.mrn, parsed.visit_number):
        assert value is None or (isinstance(value, str) and value)


def _intake(raw: bytes | str, zone: tzinfo) -> tuple[int, list[Screened]]:
    """One payload through every step: the number of messages in it, and what the screen
    found in each that it read."""
    found: list[Screened] = []
    text = normalize(raw)
    try:
        messages = split_messages(text)
    except HL7Error as exc:
        _check_error(exc)
        _check_ack(None, exc)
        note(f"split: {exc.code}")
        return 0, found
    for message in messages:
        try:
            screened = screen(message)
        except HL7Error as exc:
            _check_error(exc)
            try:
                header: HL7Header | None = read_header(message)
            except HL7Error:
                header = None
            _check_ack(header, exc)
            note(f"screen: {exc.code}")
            continue
        found.append(screened)
        header = screened.header
        _check_ack(header, None)
        try:
            check_supported(header)
        except HL7Error as exc:
            _check_error(exc)
            _check_ack(header, exc)
        try:
            parsed = parse_adt(message, screened, default_tz=zone)
        except HL7Error as exc:
            _check_error(exc)
            _check_ack(header, exc)
            note(f"parse: {exc.code}")
        else:
            _check_parsed(parsed, header)
            note("parsed")
    return len(messages), found


# The full parse's fixed cost per message, on top of the bound for the input's size: hl7apy
# takes 10-35 ms over an ordinary message on this machine, and up to about 0.3 s over the
# largest it is given (HL7APY_MAX_DELIMITERS).
SECONDS_PER_FULL_PARSE = 0.5


def _fuzz_intake(raw: bytes | str, zone: tzinfo = UTC) -> int:
    size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    try:
        count = len(split_messages(normalize(raw)))
    except HL7Error:
        count = 0
    outcome = run_bounded(
        lambda: _intake(raw, zone),
        input_bytes=size,
        extra_seconds=SECONDS_PER_FULL_PARSE * count,
    )
    if outcome.error is not None:
        raise outcome.error
    found, screened = outcome.value
    assert found == count
    for one in screened:
        classify_ed(codes=one.codes, texts=one.texts)
    return count


@pytest.fixture(scope="module", autouse=True)
def _warm_up() -> None:
    """Import hl7apy and load each version's structures before anything is timed: the
    first message of a version costs hl7apy seconds here, once per process."""
    from hl7apy import SUPPORTED_LIBRARIES

    for version in SUPPORTED_LIBRARIES:
        for text in (adt("WARM-UP", version=version), *_FIXTURE_TEXTS):
            message = text.rstrip("\r").replace("|2.5.1", f"|{version}", 1)
            parse_adt(message, screen(message))


# ---------------------------------------------------------------------------------------
# Arbitrary input
# ---------------------------------------------------------------------------------------

# Text made of what the screen and the parse act on, so that random input gets past MSH.
_HL7_ALPHABET = 'MSHPIDEVNVDGOBX12890-.|^~\\&#\r\n "XFSTRE'
_hl7ish = st.tuples(
    st.sampled_from(["MSH|^~\\&|", "MSH|^~\\&", "MSH|", "MSH#", "MSH", ""]),
    st.lists(
        st.sampled_from(
            ["MSH|^~\\&|", "\rPID|", "\rPV1|", "\rEVN|", "\rDG1|", "\rPV2|", "\rOBX|", "8661-1"]
        )
        | st.text(_HL7_ALPHABET, max_size=12)
        | st.text(max_size=4),
        max_size=60,
    ),
).map(lambda parts: parts[0] + "".join(parts[1]))
_zones = st.sampled_from(ZONES)


@fuzz(examples=150)
@given(
    raw=st.binary(max_size=2048)
    | st.text(max_size=1024)
    | st.binary(max_size=2048).map(lambda b: b"MSH|^~\\&|" + b),
    zone=_zones,
)
def test_arbitrary_bytes_and_text(raw: bytes | str, zone: tzinfo) -> None:
    _fuzz_intake(raw, zone)


@fuzz(examples=150)
@given(raw=_hl7ish, zone=_zones)
def test_text_made_of_hl7_pieces(raw: str, zone: tzinfo) -> None:
    _fuzz_intake(raw, zone)


# ---------------------------------------------------------------------------------------
# Mutations of valid ADT messages
# ---------------------------------------------------------------------------------------


_SEEDS = (adt("SEED-1"), routine("SEED-2"), *_FIXTURE_TEXTS)

_values = (
    st.text(max_size=20)
    | st.sampled_from(
        ['""', "\\F\\", "\\S\\", "\\X0D\\", "\\X0B\\", "\\X1C\\", "\\Xzz\\", "\\.br\\"]
    )
    | st.text("0123456789+-.", max_size=20)
)
# HL7 DTM from year 1 to 9999, to the minute or the second, with offsets up to the extremes.
_times = st.sampled_from(["00010101000000+0100", "99991231235959-0100"]) | st.builds(
    lambda moment, seconds, offset: (
        f"{moment.year:04d}{moment:%m%d%H%M}" + (f"{moment:%S}" if seconds else "") + offset
    ),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59)),
    st.booleans(),
    st.sampled_from(["", "+0000", "+0100", "-0100", "+1400", "-1200", "+2359"]),
)
# Values for the generated messages: anything but a line break, which would end a segment.
_field_values = _values.filter(lambda value: "\r" not in value and "\n" not in value)
_valid = st.builds(
    adt,
    control_id=_field_values.filter(str.strip),
    app=_field_values,
    facility=_field_values,
    trigger=st.sampled_from(["A01", "A03", "A04", "A08", "A02", ""]),
    version=st.sampled_from(["2.1", "2.3", "2.5.1", "2.6", "2.7.1", "2.8.2", "3.0", ""]),
    dx=st.none() | st.sampled_from(["T40.1X1A", "F11.220", "T40.411A", "R07.9"]) | _field_values,
    complaint=st.none() | st.sampled_from(["OD on heroin", "narcan x2"]) | _field_values,
    visit=_field_values,
    family=_field_values,
    given=_field_values,
    dob=_field_values,
    phone=_field_values,
    admit=_times | _field_values,
)
_seeds = st.sampled_from(_SEEDS) | _valid

# Separator characters, including ones a sender has no business using.
_separator_chars = st.sampled_from(list("|^~\\&#!$%*@/:;?`'\t\x00\x7f\u00a6\u2016ÿ")) | st.text(
    min_size=1, max_size=1
)
_MSH2_VARIANTS = ["^~\\&", "^~\\&#", "^~\\\\&", "", "^", "^~", "^~\\", "~^&\\", "^^^^", "^~\\& "]

_MUTATIONS = (
    "field_separator",
    "msh2",
    "swap_characters",
    "segment_order",
    "drop_segment",
    "duplicate_segment",
    "add_fields",
    "cut_fields",
    "insert",
    "escape",
    "amplify",
    "truncate",
    "line_endings",
    "batch",
    "segment_name",
)


def _replace_msh2(text: str, value: str) -> str:
    fs = text[3:4]
    end = text.find(fs, 4) if fs else -1
    return text[:4] + value + (text[end:] if end != -1 else "")


def _mutate(draw: st.DrawFn, text: str) -> str:
    """One structural mutation of ``text``, chosen and parametrized by ``draw``."""
    kind = draw(st.sampled_from(_MUTATIONS))
    segments = text.split("\r")
    index = draw(st.integers(0, len(segments) - 1))
    position = draw(st.integers(0, len(text)))

    def with_segment(new: str) -> str:
        return "\r".join([*segments[:index], new, *segments[index + 1 :]])

    if kind == "field_separator":  # everywhere (consistent) or in MSH-1 only
        new = draw(_separator_chars)
        return text.replace("|", new) if draw(st.booleans()) else text[:3] + new + text[4:]
    if kind == "msh2":
        return _replace_msh2(text, draw(st.sampled_from(_MSH2_VARIANTS) | st.text(max_size=6)))
    if kind == "swap_characters":  # e.g. component and repetition, everywhere
        a, b = draw(_separator_chars), draw(_separator_chars)
        return text.replace(a, "\0").replace(b, a).replace("\0", b)
    if kind == "segment_order":
        return "\r".join(segments[i] for i in draw(st.permutations(range(len(segments)))))
    if kind == "drop_segment":
        return "\r".join(segments[:index] + segments[index + 1 :])
    if kind == "duplicate_segment":
        return with_segment("\r".join([segments[index]] * draw(st.integers(2, 50))))
    if kind == "add_fields":
        extra = draw(st.lists(_values, min_size=1, max_size=60))
        return with_segment("|".join([segments[index], *extra]))
    if kind == "cut_fields":
        return with_segment("|".join(segments[index].split("|")[: draw(st.integers(0, 12))]))
    if kind == "insert":
        value = draw(
            _values | _separator_chars | st.sampled_from(["\r", "\n", "\rMSH|", "~", "^&"])
        )
        return text[:position] + value + text[position:]
    if kind == "escape":  # well-formed, unknown and broken escape sequences
        code = draw(
            st.sampled_from(["F", "S", "T", "R", "E", "H", "N", ".br", "X", "X0", "XE2", "C"])
            | st.text("0123456789ABCDEFX", min_size=1, max_size=9)
        )
        escape = draw(st.sampled_from(["\\", "#", "/"]))
        return text[:position] + f"{escape}{code}{escape}" + text[position:]
    if kind == "amplify":  # a long field, many repetitions or many segments
        piece = text[position : position + draw(st.integers(1, 40))]
        return text[:position] + piece * draw(st.integers(2, 400)) + text[position:]
    if kind == "truncate":
        return text[:position]
    if kind == "line_endings":
        return text.replace("\r", draw(st.sampled_from(["\n", "\r\n", "\n\r", "\r\r", "\r \r"])))
    if kind == "batch":
        copies = [text] * draw(st.integers(1, 4))
        return "\r".join(["FHS|^~\\&|A", "BHS|^~\\&|A", *copies, "BTS|1", "FTS|1"])
    # segment_name: unicode, lower case, a name cut short
    return with_segment(draw(st.text(min_size=0, max_size=3)) + segments[index][3:])


@st.composite
def mutated_messages(draw: st.DrawFn) -> str:
    """Up to four mutations; one that would take the message past the size limit (which
    the MLLP decoder and the HTTP route enforce before any parsing) is not applied."""
    text = draw(_seeds).rstrip("\r")
    for _ in range(draw(st.integers(1, 4))):
        mutated = _mutate(draw, text)
        if len(mutated.encode()) <= MAX_MESSAGE_BYTES:
            text = mutated
    return text


_encodings = st.sampled_from(["utf-8", "latin-1", "utf-16", "utf-8-sig", "str"])


def _encode(text: str, encoding: str) -> bytes | str:
    if encoding == "str":
        return text
    return text.encode(encoding, "replace")


@fuzz(examples=300)
@given(text=mutated_messages(), encoding=_encodings, zone=_zones)
def test_mutated_adt_messages(text: str, encoding: str, zone: tzinfo) -> None:
    _fuzz_intake(_encode(text, encoding), zone)


@fuzz(examples=60)
@given(text=_valid, separator=st.sampled_from(["|", "|", "#", "!", "\u00a6"]), zone=_zones)
def test_generated_adt_messages_are_read(text: str, separator: str, zone: tzinfo) -> None:
    """A message of any values, with any field separator: it is read as one message."""
    assert _fuzz_intake(text.replace("|", separator), zone) == 1


# ---------------------------------------------------------------------------------------
# At the size limit: the shapes that grow with the input
# ---------------------------------------------------------------------------------------

_BASE = adt("BIG").rstrip("\r")


def _around(marker: str, keep_before: str = "", keep_after: str = "") -> tuple[str, str]:
    head, tail = _BASE.split(marker, 1)
    return head + keep_before, keep_after + tail


# Where a repeated unit goes, as (before, after): MSH-2, a given name, PID-13, PV2-3, an OBX
# chief complaint, whole segments, and MSH-10.
_CONTEXTS = {
    "msh2": ("MSH|", "|EPIC|FAC|R|F|20261120||ADT^A04|C|P|2.5.1\rPID|1||M^^^F^MR||DOE^J"),
    "pid5": _around("Doe^Jane^Q", "Doe^", "^Q"),
    "pid13": _around("^PRN^PH^^^336^5550100"),
    "pv2_3": _around("^OD on heroin"),
    "obx": (_BASE + "\rOBX|1|CWE|8661-1^CC^LN||", ""),
    "segments": (_BASE + "\r", ""),
    "msh10": _around("|BIG|", "|", "|"),
}


def _fill(context: str, units: str) -> bytes:
    """``units`` (repeated, or cut) in ``context``, up to the size limit (see at_limit)."""
    before, after = (part.encode() for part in _CONTEXTS[context])
    room = at_limit(MAX_MESSAGE_BYTES) - len(before) - len(after)
    body = units.encode()
    body = (body * (room // len(body) + 1))[:room]
    return before + body.decode("utf-8", "ignore").encode() + after


@fuzz(examples=4)
@given(
    context=st.sampled_from(sorted(_CONTEXTS)),
    unit=st.sampled_from(
        ["~DOE^J", "^x", "&x", "|x", "\\X41\\", "\\Q", "~a^b", "\rOBX|8661-1", "\rDG1|1||T40.1X1A"]
    )
    | st.text(min_size=1, max_size=8),
)
def test_repeated_units_at_the_size_limit(context: str, unit: str) -> None:
    _fuzz_intake(_fill(context, unit))


def _distinct(context: str, count: int) -> str:
    """Many different repetitions: what defeats a dedupe by linear search."""
    if context == "msh2":  # characters of the supplementary private use planes
        return "".join(chr(c) for c in range(0xF0000, 0xF0000 + count))
    if context == "pid13":
        return "~".join(f"^PRN^PH^^^336^{i:07d}" for i in range(count))
    return "~".join(f"a^b{i}" for i in range(count))


@pytest.mark.parametrize("context", ["msh2", "pid13", "pv2_3", "obx"])
def test_distinct_repetitions_at_the_size_limit(context: str) -> None:
    """Found by fuzzing: 130,000 distinct MSH-2 characters kept the screen busy for three
    minutes and 20,000 distinct PV2-3 texts for 2.5 s (each deduplicated by linear search),
    and hl7apy took close to a minute over a 1 MiB overdose candidate."""
    _fuzz_intake(_fill(context, _distinct(context, 131_000)))


# ------------------------------------------------------------ read_header against a reference


def _reference_header(message: str) -> HL7Header:
    """MSH read field by field, as read_header did before it was made cheaper per message
    (every message goes through it): the two must agree on every input."""
    if not message.startswith("MSH") or len(message) < 4:
        raise NotHL7Error("the message does not start with an MSH segment")
    fs = message[3]
    if fs.isalnum() or fs.isspace():
        raise NotHL7Error("the MSH segment has no valid field separator")
    end = message.find("\r")
    if end == -1:
        end = message.find("\n")
    fields = (message if end == -1 else message[:end]).split(fs)
    n = len(fields)
    raw_encoding = fields[1].strip() if n > 1 else ""
    encoding = "".join(dict.fromkeys(raw_encoding)) if raw_encoding else "^~\\&"
    if fs in encoding or any(c.isalnum() or c.isspace() for c in encoding):
        raise NotHL7Error("the MSH segment has invalid encoding characters")
    comp = encoding[0]

    def field(number: int) -> str:
        return fields[number - 1].strip() if number - 1 < n else ""

    def component(number: int, index: int) -> str:
        value = field(number)
        if comp not in value:
            return value if index == 0 else ""
        comps = value.split(comp)
        return comps[index].strip() if index < len(comps) else ""

    control_id = field(10)
    if not control_id:
        raise MissingFieldError.for_field("MSH", 10)
    trigger = component(9, 1)
    if not trigger and (start := message.find("\rEVN" + fs)) != -1:
        stop = message.find("\r", start + 1)
        evn = message[start + 1 : stop if stop != -1 else len(message)].split(fs, 2)
        trigger = evn[1].split(comp, 1)[0].strip() if len(evn) > 1 else ""
    return HL7Header(
        field_separator=fs,
        encoding_characters=encoding,
        sending_application=field(3),
        sending_facility=field(4),
        receiving_application=field(5),
        receiving_facility=field(6),
        message_time=component(7, 0),
        message_code=component(9, 0),
        trigger_event=trigger,
        message_structure=component(9, 2),
        control_id=control_id,
        processing_id=component(11, 0),
        version=component(12, 0),
    )


def _outcome(read: Callable[[str], HL7Header], message: str) -> HL7Header | str:
    try:
        return read(message)
    except HL7Error as exc:
        return f"{type(exc).__name__}: {exc.message}"


_msh_fields = st.lists(
    st.sampled_from(["", " ", "A", "ADT^A08", "ADT^^ADT_A01", "A^B^C^D", "2.5.1", "X", "P^T"])
    | st.text(_HL7_ALPHABET, max_size=10),
    max_size=16,
)


@fuzz(examples=200)
@given(
    text=_hl7ish
    | mutated_messages()
    | st.builds(
        lambda fs, enc, fields, rest: f"MSH{fs}{enc}{fs}" + fs.join(fields) + rest,
        st.sampled_from(["|", "#", "^", "~", " ", "1"]),
        st.sampled_from(["^~\\&", "^~\\", "", " ^~\\& ", "^^~~", "^~|&", "a~\\&", "#"]),
        _msh_fields,
        st.sampled_from(["", "\rEVN|A03", "\rEVN#A04^x", "\nPID|1"]),
    )
)
def test_read_header_agrees_with_reading_field_by_field(text: str) -> None:
    message = normalize(text)
    assert _outcome(read_header, message) == _outcome(_reference_header, message)
