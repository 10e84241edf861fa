"""The cheap first pass over every HL7 v2 message: plain ``str`` operations only.

Intake sees the whole ADT feed of a hospital and almost none of it is an overdose, so every
message is only *screened*: the MSH header is read (enough to ACK and deduplicate) and the
few values the overdose classifier needs are pulled out. Only candidates are fully parsed
(:mod:`services.intake.hl7.parse`).

* :func:`normalize` turns raw bytes into one ``str`` with ``"\\r"`` segment terminators.
* :func:`read_header` reads MSH into :class:`~services.intake.records.HL7Header`.
* :func:`screen` extracts ``codes`` (``("dg1", DG1-3.1)``) and ``texts``
  (``("pv2_3", PV2-3)``, ``("obx_8661_1", OBX-5 of an OBX whose OBX-3.1 is 8661-1)``) in the
  shape :func:`services.intake.classify.classify_ed` takes. Only segments whose first three
  characters name them are split.
* :func:`check_supported` rejects what intake does not take (not ADT A01/A03/A04/A08, or an
  HL7 version outside 2.1-2.8).

Decisions:

* MSH numbering: MSH-1 is the field separator itself, so after ``split(field_separator)``
  index ``n - 1`` holds MSH-n. MSH-2 is read up to the next field separator; repeated
  characters are dropped (``^~\\\\&`` -> ``^~\\&``), so the stored encoding characters are
  the ones in force. Missing characters take the HL7 defaults.
* Header values are stripped of surrounding whitespace. Applications and facilities keep
  the whole HD field as sent (components included) so the ACK can echo them; message
  time, processing id and version keep component 1.
* HL7 v2.1/v2.2 carry the trigger event in EVN-1 only: when MSH-9.2 is empty,
  :func:`read_header` fills ``trigger_event`` from EVN-1 (the only non-MSH value it reads).
* Coded text (PV2-3, CWE/CE OBX-5): components 2 (text), 5 (alternate text) and 9
  (original text, where the NIST syndromic-surveillance profile puts the chief complaint)
  are all kept, distinct, joined by a newline; component 1 only when none of them is
  present. Repetitions are joined by a newline. Non-coded OBX-5 (TX, ST, FT ...) is taken
  whole. Values are unescaped; the HL7 null ``""`` counts as empty.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.intake.hl7.errors import (
    FieldTooLongError,
    MissingFieldError,
    NotHL7Error,
    UnsupportedMessageError,
)
from services.intake.records import HL7Header

__all__ = [
    "DEFAULT_ENCODING_CHARACTERS",
    "SOURCE_DG1",
    "SOURCE_OBX_8661_1",
    "SOURCE_PV2_3",
    "STANDARD_SEPARATORS",
    "Screened",
    "Separators",
    "check_supported",
    "is_supported_version",
    "message_types_supported",
    "normalize",
    "read_header",
    "screen",
    "unescape",
]

SOURCE_DG1 = "dg1"
SOURCE_PV2_3 = "pv2_3"
SOURCE_OBX_8661_1 = "obx_8661_1"

DEFAULT_ENCODING_CHARACTERS = "^~\\&"

message_types_supported: frozenset[str] = frozenset({"A01", "A03", "A04", "A08"})
"""ADT trigger events intake accepts."""

_CODED_VALUE_TYPES = frozenset({"CWE", "CE", "CNE", "CF", "CD"})
_HL7_NULL = '""'
_UTF8_BOM = b"\xef\xbb\xbf"
# Surrounding junk normalize() removes: whitespace (incl. stray MLLP VT/FS) and NULs.
_STRIP = " \t\r\n\x00\x0b\x0c\x1c\x1d\x1e\x1f\ufeff"


@dataclass(frozen=True, slots=True)
class Separators:
    """The delimiters one message declares in MSH-1 and MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @classmethod
    def of(cls, header: HL7Header) -> Separators:
        if header.field_separator == "|" and header.encoding_characters == "^~\\&":
            return STANDARD_SEPARATORS  # almost every message: no new object
        return cls.from_msh(header.field_separator, header.encoding_characters)

    @classmethod
    def from_msh(cls, field: str, encoding_characters: str) -> Separators:
        enc = encoding_characters
        d = DEFAULT_ENCODING_CHARACTERS
        return cls(
            field=field,
            component=enc[0] if len(enc) > 0 else d[0],
            repetition=enc[1] if len(enc) > 1 else d[1],
            escape=enc[2] if len(enc) > 2 else d[2],
            subcomponent=enc[3] if len(enc) > 3 else d[3],
        )


STANDARD_SEPARATORS = Separators()
"""`|^~\\&`: what almost every message declares, and what ACKs always use."""


@dataclass(frozen=True, slots=True)
class Screened:
    """What the screen found in one message: header and the classifier's inputs."""

    header: HL7Header
    codes: tuple[tuple[str, str], ...] = ()
    """``("dg1", DG1-3.1)`` for every DG1 segment with a code, in message order."""
    texts: tuple[tuple[str, str], ...] = ()
    """``("pv2_3", text)`` first, then ``("obx_8661_1", text)``, each in message order."""
    death: bool = False
    """An A03 or A08 whose PID-30 is Y or whose PV1-36 says "expired" (20, 40, 41, 42): it
    may revise an overdose report of the visit to fatal even without overdose codes."""


MAX_TEXT = 2000
"""The longest chief complaint (PV2-3, OBX-5) intake reads; longer is refused."""
MAX_CONTROL_ID = 199
"""MSH-10's length in HL7 v2.5 and later; the ACK echoes it."""
_EXPIRED = frozenset({"20", "40", "41", "42"})
_DEATH_TRIGGERS = frozenset({"A03", "A08"})


# ---------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------


def normalize(raw: bytes | bytearray | memoryview | str) -> str:
    """Decode and tidy a payload: one ``str``, ``"\\r"`` between segments, no empties.

    Bytes are UTF-8, falling back to latin-1 (which never fails). A UTF-8 BOM, surrounding
    whitespace and NULs are removed, ``"\\r\\n"`` and ``"\\n"`` become ``"\\r"`` and
    empty (or blank) segments are dropped.
    """
    if isinstance(raw, str):
        text = raw
    else:
        data = bytes(raw).lstrip(b" \t\r\n\x00")
        if data.startswith(_UTF8_BOM):
            data = data[3:]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    text = text.strip(_STRIP)
    parts = text.split("\r")
    for part in parts:
        if not part or part.isspace():
            return "\r".join(p for p in parts if p and not p.isspace())
    return text


# ---------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------


def unescape(text: str, seps: Separators = STANDARD_SEPARATORS) -> str:
    """Resolve HL7 escape sequences in one value.

    ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` become the message's separators, ``\\.br\\`` a
    newline, ``\\Xhh..\\`` the bytes it names (UTF-8, else latin-1); highlighting
    (``\\H\\``, ``\\N\\``) is dropped. Anything else is kept literally.
    """
    esc = seps.escape
    if esc not in text:
        return text
    out: list[str] = []
    pos = 0
    while True:
        start = text.find(esc, pos)
        if start == -1:
            break
        end = text.find(esc, start + 1)
        if end == -1:
            break
        code = text[start + 1 : end]
        replacement = _escape_replacement(code, seps)
        if replacement is None:
            # Not an escape sequence: keep the escape character and rescan from the next.
            out.append(text[pos : start + 1])
            pos = start + 1
            continue
        out.append(text[pos:start])
        out.append(replacement)
        pos = end + 1
    out.append(text[pos:])
    return "".join(out)


def _escape_replacement(code: str, seps: Separators) -> str | None:
    if code == "F":
        return seps.field
    if code == "S":
        return seps.component
    if code == "T":
        return seps.subcomponent
    if code == "R":
        return seps.repetition
    if code == "E":
        return seps.escape
    if code in ("H", "N"):
        return ""
    if code == ".br":
        return "\n"
    if code[:1] == "X" and len(code) > 1 and len(code) % 2 == 1:
        try:
            data = bytes.fromhex(code[1:])
        except ValueError:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    return None


def _clean(value: str, seps: Separators) -> str:
    """Unescaped and stripped; the HL7 null ``""`` becomes empty."""
    value = value.strip()
    if value == _HL7_NULL:
        return ""
    return unescape(value, seps).strip()


def _coded_text(field: str, seps: Separators) -> str:
    """Text of a CE/CWE field (all repetitions): components 2, 5, 9, else component 1."""
    parts: list[str] = []
    seen: set[str] = set()  # searching parts instead was quadratic in the repetitions
    reps = field.split(seps.repetition) if seps.repetition in field else (field,)
    for rep in reps:
        if seps.component not in rep:
            if value := _clean(rep, seps):
                parts.append(value)
                seen.add(value)
            continue
        comps = rep.split(seps.component)
        found = False
        for index in (1, 4, 8):
            if index < len(comps) and (value := _clean(comps[index], seps)):
                found = True
                if value not in seen:
                    parts.append(value)
                    seen.add(value)
        if not found and (value := _clean(comps[0], seps)):
            parts.append(value)
            seen.add(value)
    return "\n".join(parts)


def _plain_text(field: str, seps: Separators) -> str:
    reps = field.split(seps.repetition) if seps.repetition in field else (field,)
    return "\n".join(v for rep in reps if (v := _clean(rep, seps)))


# ---------------------------------------------------------------------------------------
# Header
# ---------------------------------------------------------------------------------------


def _first_segment(message: str) -> str:
    end = message.find("\r")
    if end == -1:
        end = message.find("\n")
    return message if end == -1 else message[:end]


def _dedupe(chars: str) -> str:
    # dict keeps the first of each in order; a list searched per character took minutes
    # over a 1 MiB MSH-2 of distinct characters.
    return "".join(dict.fromkeys(chars))


def _evn_trigger(message: str, fs: str, comp: str) -> str:
    """EVN-1, where HL7 v2.1/v2.2 carry the trigger event."""
    start = message.find("\rEVN" + fs)
    if start == -1:
        return ""
    end = message.find("\r", start + 1)
    segment = message[start + 1 : end if end != -1 else len(message)]
    fields = segment.split(fs, 2)
    return fields[1].split(comp, 1)[0].strip() if len(fields) > 1 else ""


def read_header(message: str) -> HL7Header:
    """Read MSH without a full parse.

    Raises :class:`NotHL7Error` when the message does not start with ``MSH`` and a field
    separator, :class:`MissingFieldError` when MSH-10 (the control id) is empty. Other empty
    fields come back as ``""``: the caller decides.
    """
    if not message.startswith("MSH") or len(message) < 4:
        raise NotHL7Error("the message does not start with an MSH segment")
    fs = message[3]
    if fs.isalnum() or fs.isspace():
        raise NotHL7Error("the MSH segment has no valid field separator")
    # Every message is read here: plain indexing, no helper calls per field.
    fields = _first_segment(message).split(fs, 12)[:12]
    if len(fields) < 12:
        fields += [""] * (12 - len(fields))
    raw_encoding = fields[1].strip()
    if raw_encoding == DEFAULT_ENCODING_CHARACTERS:
        encoding = raw_encoding  # almost every message: nothing to check further
    else:
        encoding = _dedupe(raw_encoding) if raw_encoding else DEFAULT_ENCODING_CHARACTERS
        if fs in encoding or any(c.isalnum() or c.isspace() for c in encoding):
            raise NotHL7Error("the MSH segment has invalid encoding characters")
    comp = encoding[0]
    control_id = fields[9].strip()
    if not control_id:
        raise MissingFieldError.for_field("MSH", 10)
    message_type = fields[8]
    trigger = _component(message_type, comp, 1) or _evn_trigger(message, fs, comp)
    return HL7Header(
        field_separator=fs,
        encoding_characters=encoding,
        sending_application=fields[2].strip(),
        sending_facility=fields[3].strip(),
        receiving_application=fields[4].strip(),
        receiving_facility=fields[5].strip(),
        message_time=_component(fields[6], comp, 0),
        message_code=_component(message_type, comp, 0),
        trigger_event=trigger,
        message_structure=_component(message_type, comp, 2),
        control_id=control_id,
        processing_id=_component(fields[10], comp, 0),
        version=_component(fields[11], comp, 0),
    )


def _component(field: str, comp: str, index: int) -> str:
    """Component ``index`` (0-based) of a header field, stripped; the field stripped is
    component 0 when it has no component separator."""
    if comp not in field:
        return field.strip() if index == 0 else ""
    comps = field.strip().split(comp)
    return comps[index].strip() if index < len(comps) else ""


# ---------------------------------------------------------------------------------------
# Screen
# ---------------------------------------------------------------------------------------


def _segments(message: str, name: str, fs: str) -> list[str]:
    """Every segment called ``name`` except the first one of the message (which is MSH)."""
    key = "\r" + name + fs
    found: list[str] = []
    start = message.find(key)
    while start != -1:
        end = message.find("\r", start + 1)
        if end == -1:
            found.append(message[start + 1 :])
            break
        found.append(message[start + 1 : end])
        start = message.find(key, end)
    return found


def screen(message: str) -> Screened:
    """Read the header and the classifier's inputs from a normalized single message."""
    header = read_header(message)
    fs = header.field_separator
    seps = Separators.of(header)
    comp = seps.component

    codes: list[tuple[str, str]] = []
    texts: list[tuple[str, str]] = []
    if "\rDG1" in message:
        for dg1 in _segments(message, "DG1", fs):
            fields = dg1.split(fs, 4)
            if len(fields) > 3:
                value = fields[3].split(seps.repetition, 1)[0].split(comp, 1)[0]
                if code := _clean(value, seps):
                    codes.append((SOURCE_DG1, code))
    if "\rPV2" in message:
        for pv2 in _segments(message, "PV2", fs):
            fields = pv2.split(fs, 4)
            if len(fields) > 3 and (text := _coded_text(fields[3], seps)):
                FieldTooLongError.check(text, MAX_TEXT, "PV2", 3)
                texts.append((SOURCE_PV2_3, text))
    if "8661-1" in message:
        for obx in _segments(message, "OBX", fs):
            if "8661-1" not in obx:
                continue
            fields = obx.split(fs, 6)
            if len(fields) < 6 or fields[3].split(comp, 1)[0].strip() != "8661-1":
                continue
            value_type = fields[2].split(comp, 1)[0].strip().upper()
            value = fields[5]
            if value_type in _CODED_VALUE_TYPES or (not value_type and comp in value):
                text = _coded_text(value, seps)
            else:
                text = _plain_text(value, seps)
            if text:
                FieldTooLongError.check(text, MAX_TEXT, "OBX", 5)
                texts.append((SOURCE_OBX_8661_1, text))
    death = header.trigger_event in _DEATH_TRIGGERS and _says_died(message, fs, comp)
    return Screened(header=header, codes=tuple(codes), texts=tuple(texts), death=death)


def _says_died(message: str, fs: str, comp: str) -> bool:
    """PID-30 = Y, or PV1-36 expired: read only for discharges and updates (A03, A08)."""
    for pid in _segments(message, "PID", fs):
        fields = pid.split(fs, 31)
        if len(fields) > 30 and fields[30].split(comp, 1)[0].strip().upper() == "Y":
            return True
    for pv1 in _segments(message, "PV1", fs):
        fields = pv1.split(fs, 37)
        if len(fields) > 36 and fields[36].split(comp, 1)[0].strip() in _EXPIRED:
            return True
    return False


# ---------------------------------------------------------------------------------------
# What intake accepts
# ---------------------------------------------------------------------------------------


def is_supported_version(version: str) -> bool:
    """HL7 v2.1 to v2.8, with or without a patch level (2.3.1, 2.5.1, 2.8.2)."""
    parts = version.split(".")
    return (
        2 <= len(parts) <= 3
        and parts[0] == "2"
        and parts[1] in ("1", "2", "3", "4", "5", "6", "7", "8")
        and (len(parts) == 2 or (parts[2].isdigit() and parts[2].isascii()))
    )


def check_supported(header: HL7Header) -> None:
    """Raise unless the message is an ADT A01/A03/A04/A08 of HL7 v2.1-2.8.

    :class:`MissingFieldError` (101) for an empty MSH-9.1, MSH-9.2 or MSH-12;
    :class:`UnsupportedMessageError` with 200 (not ADT), 201 (other trigger) or 203
    (other version).
    """
    if not header.message_code:
        raise MissingFieldError(
            "required field MSH-9 (message type) is missing", location=("MSH", 1, 9)
        )
    if header.message_code != "ADT":
        raise UnsupportedMessageError(
            "only ADT messages are accepted", hl7_error_code="200", location=("MSH", 1, 9)
        )
    if not header.trigger_event:
        raise MissingFieldError(
            "required field MSH-9.2 (trigger event) is missing", location=("MSH", 1, 9)
        )
    FieldTooLongError.check(header.control_id, MAX_CONTROL_ID, "MSH", 10)
    if header.trigger_event not in message_types_supported:
        raise UnsupportedMessageError(
            "only ADT A01, A03, A04 and A08 events are accepted",
            hl7_error_code="201",
            location=("MSH", 1, 9),
        )
    if not header.version:
        raise MissingFieldError.for_field("MSH", 12)
    if not is_supported_version(header.version):
        raise UnsupportedMessageError(
            "only HL7 versions 2.1 to 2.8 are accepted",
            hl7_error_code="203",
            location=("MSH", 1, 12),
        )
