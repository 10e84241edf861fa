"""Full parse of an overdose candidate into :class:`~services.intake.records.AdtMessage`.

hl7apy is the primary parser: its ``parse_segments`` (validation level TOLERANT), as
``parse_message(find_groups=False)`` calls it, but without the Message object that would
hold the segments (building it and checking every segment against it was a third of the
parse); the encoding characters and version come from MSH as ``parse_message`` reads them
(hl7apy's ``get_message_info``), and each field is written back with them. It gives the
segments, their fields by position and the field repetitions; each repetition's ER7 text is
then split into components and subcomponents with the message's own separators and
unescaped.

hl7apy is handed only MSH and the first EVN, PID and PV1, the segments read here, and of
those only the fields read (of MSH: MSH-2 and MSH-12); the others are emptied in place.
When the segments hold more than :data:`HL7APY_MAX_DELIMITERS` delimiters, hl7apy is not
used at all and the fields are read by position: hl7apy's cost grows with every element, the
plain splitter's with the length.

Before hl7apy sees the message, only the copy handed to it is adjusted for what it chokes on
(values read from it are the same either way):

* MSH-2 with repeated characters (``^~\\\\&``) becomes the de-duplicated set (``^~\\&``);
* a version hl7apy has no library for (2.7.1, 2.4.1 ...) is given as its major.minor.

When hl7apy still raises, the same fields are read by position with a plain splitter; only
a debug log without content records it. hl7apy can also lose a value silently: where its
library for a version lacks a component or field (XTN.1 in v2.6, withdrawn fields), it keeps
the value unnamed and puts it elsewhere on output. Such fields (and any field hl7apy did not
report at all) are read by position too, so both readings give the same record. Nothing
here logs or raises with message content.

Extraction rules (empty values and the HL7 null ``""`` become ``None``):

* Name: the first PID-5 repetition with a family or given name; family is 5.1.1 (first
  subcomponent, the FN surname in v2.5+), given 5.2, middle 5.3.
* DOB: PID-7, the first eight digits as a date; anything shorter, invalid or before 1850
  is ``None``.
* Phones: PID-13 then PID-14, every repetition: XTN.1 when it has digits, else area code
  (.6) plus number (.7), else XTN.12 (unformatted). E-mail addresses are skipped and exact
  duplicates dropped; values are kept as sent.
* Address: the first PID-11 repetition of type H (home), else the first non-empty one:
  street 11.1 (11.1.1 when SAD subcomponents; a bare house number there is completed with
  11.1.2, the street name), city .3, state .4, zip .5, county .9, or PID-12 when .9 is
  empty (either may be a v2.7+ CWE: its code, else its text).
* MRN: the PID-3 repetition with identifier type (3.5) MR (or MRN), else the first;
  authority is 3.4.1.
* Times: PV1-44, else EVN-2, else EVN-6, else MSH-7. See :func:`parse_hl7_datetime`.
* Diagnosis codes and chief complaints are the screen's (same rules, already extracted).
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from services.intake.hl7.errors import FieldTooLongError, ParseError
from services.intake.hl7.screen import Screened, Separators, unescape
from services.intake.records import Address, AdtMessage, HL7Header, Identity

__all__ = [
    "DEFAULT_TZ",
    "HL7APY_MAX_DELIMITERS",
    "parse_adt",
    "parse_hl7_date",
    "parse_hl7_datetime",
]

logger = logging.getLogger(__name__)

DEFAULT_TZ: tzinfo = ZoneInfo("America/New_York")

_HL7_NULL = '""'
# The fields read here, per segment.
_WANTED: dict[str, frozenset[int]] = {
    "PID": frozenset({3, 5, 7, 8, 11, 12, 13, 14, 15, 29, 30}),
    "PV1": frozenset({2, 19, 36, 44}),
    "EVN": frozenset({2, 6}),
}
_MSH_FOR_HL7APY = frozenset({0, 1, 11})
"""MSH's positions (after splitting on the field separator) hl7apy is given: the segment
name, MSH-2 (encoding characters) and MSH-12 (version)."""
_MRN_TYPES = frozenset({"MR", "MRN"})
_HOME_ADDRESS_TYPES = frozenset({"H", "HOME"})
_MIN_DOB = "18500101"  # earlier birth dates are data-entry errors (e.g. 10131113)

HL7APY_MAX_DELIMITERS = 1_000
"""The most delimiters (field, component, repetition, subcomponent) hl7apy is given.

hl7apy builds an object per element: about 0.3 ms and 5 KB each on a slow 2-core machine,
so a 1 MiB candidate took it close to a minute. The segments it reads (MSH, EVN, PID, PV1)
have 115-200 delimiters in the fixtures; above this, the positional reading is used alone.
"""

# Segment id -> field number -> repetitions (ER7 text, still escaped).
_Fields = dict[int, list[str]]
_Segments = dict[str, _Fields]


# ---------------------------------------------------------------------------------------
# Dates and times
# ---------------------------------------------------------------------------------------


def _split_offset(value: str) -> tuple[str, str | None]:
    for index in range(len(value) - 1, 3, -1):
        if value[index] in "+-":
            return value[:index], value[index:]
    return value, None


def _offset(text: str) -> tzinfo | None:
    digits = text[1:]
    if len(digits) != 4 or not (digits.isdigit() and digits.isascii()):
        return None
    hours, minutes = int(digits[:2]), int(digits[2:])
    if hours > 23 or minutes > 59:
        return None
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if text[0] == "-" else delta)


def parse_hl7_datetime(value: str | None, default_tz: tzinfo = DEFAULT_TZ) -> datetime | None:
    """HL7 TS/DTM ``YYYYMMDD[HH[MM[SS[.S+]]]][+/-ZZZZ]`` -> aware datetime, else ``None``.

    A value without an offset is read in ``default_tz``. A date alone is midnight; fractions
    beyond microseconds are truncated. Anything malformed (letters, bad offset, impossible
    date, fewer than 8 digits) is ``None``, and so is a time with no UTC equivalent (the
    first hours of year 1 east of UTC, the last of 9999 west of it), which every consumer
    of the event would fail to convert.
    """
    if not value:
        return None
    text = value.strip()
    main, offset_text = _split_offset(text)
    tz: tzinfo = default_tz
    if offset_text is not None:
        offset = _offset(offset_text)
        if offset is None:
            return None
        tz = offset
    fraction = ""
    if "." in main:
        main, fraction = main.split(".", 1)
        if not fraction or not (fraction.isdigit() and fraction.isascii()) or len(main) != 14:
            return None
    if len(main) not in (8, 10, 12, 14) or not (main.isdigit() and main.isascii()):
        return None
    try:
        parsed = datetime(
            int(main[0:4]),
            int(main[4:6]),
            int(main[6:8]),
            int(main[8:10] or 0),
            int(main[10:12] or 0),
            int(main[12:14] or 0),
            int(fraction[:6].ljust(6, "0")) if fraction else 0,
            tzinfo=tz,
        )
        parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return parsed


def parse_hl7_date(value: str | None) -> date | None:
    """The date of an HL7 DT/TS/DTM (``YYYYMMDD...``); fewer than 8 digits, invalid or
    before 1850: None.

    No time-zone conversion: a birth date is a calendar date wherever it was recorded.
    """
    if not value:
        return None
    text = value.strip()
    head = text[:8]
    if len(head) != 8 or not (head.isdigit() and head.isascii()) or head < _MIN_DOB:
        return None
    rest = text[8:]
    if rest and not (rest[0].isdigit() or rest[0] in "+-."):
        return None
    try:
        return date(int(head[:4]), int(head[4:6]), int(head[6:8]))
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------
# Reading segments: hl7apy first, positional fallback
# ---------------------------------------------------------------------------------------


@functools.cache
def _hl7apy_memoized() -> None:
    """Memoize hl7apy's `load_library(version)`, once per process. hl7apy calls it for
    every element it builds (about 1,100 times for a six-segment ADT), and each call goes
    through importlib: a quarter of a candidate's parse time (make bench, cProfile). The
    function is pure (a version's module, or an error for an unsupported version, which
    the cache does not keep), and hl7apy's modules imported it by name, so each is patched.
    """
    import hl7apy
    import hl7apy.core
    import hl7apy.factories

    cached = functools.lru_cache(maxsize=None)(hl7apy.load_library)
    for module in (hl7apy, hl7apy.core, hl7apy.factories):
        module.load_library = cached


def _hl7apy_version(version: str) -> str:
    from hl7apy import SUPPORTED_LIBRARIES

    if version in SUPPORTED_LIBRARIES:
        return version
    short = ".".join(version.split(".")[:2])
    return short if short in SUPPORTED_LIBRARIES else version


def _wanted_segments(message: str, fs: str) -> str:
    """MSH and the first segment of each kind read here: hl7apy need not build the rest
    (a candidate with 10,000 OBX segments took it 10 s)."""
    kept = [message.split("\r", 1)[0]]
    seen: set[str] = set()
    for segment in message.split("\r")[1:]:
        name = segment[:3]
        if name in _WANTED and name not in seen and segment[3:4] in (fs, ""):
            seen.add(name)
            kept.append(segment)
    return "\r".join(kept)


def _prepare_for_hl7apy(message: str, header: HL7Header, seps: Separators) -> str:
    """The copy of the message hl7apy is given: of MSH only what hl7apy reads to parse the
    rest (MSH-1, MSH-2 and MSH-12), and of EVN, PID and PV1 only the fields read here; every
    other field is emptied in place, so the fields read keep their positions. hl7apy builds
    an object per element, and the fields nobody reads cost more than half of its time.
    What is read from it is the same either way."""
    segments = message.split("\r")
    fields = segments[0].split(seps.field)
    if len(fields) > 1:
        fields[1] = header.encoding_characters
    if len(fields) > 11 and header.version:
        comps = fields[11].split(seps.component)
        comps[0] = _hl7apy_version(header.version)
        fields[11] = seps.component.join(comps)
    segments[0] = seps.field.join(
        value if index in _MSH_FOR_HL7APY else "" for index, value in enumerate(fields[:12])
    )
    for index in range(1, len(segments)):
        wanted = _WANTED.get(segments[index][:3])
        if wanted is not None:
            parts = segments[index].split(seps.field)
            segments[index] = seps.field.join(
                value if position == 0 or position in wanted else ""
                for position, value in enumerate(parts)
            ).rstrip(seps.field)
    return "\r".join(segments)


def _placed(element: Any, depth: int = 0) -> bool:
    """Whether hl7apy knew where every component (and subcomponent) of a field goes.

    Where its library for a version lacks a component (XTN.1 in v2.6, for one), hl7apy
    keeps the value unnamed and serializes it at the wrong position.
    """
    for child in element.children:
        if not getattr(child, "name", None):
            return False
        if depth < 1 and hasattr(child, "children") and not _placed(child, depth + 1):
            return False
    return True


def _segments_hl7apy(
    message: str, header: HL7Header, seps: Separators
) -> tuple[_Segments, set[tuple[str, int]]]:
    """Wanted segments as hl7apy read them, and the fields it could not place faithfully."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import get_message_info, parse_segments

    _hl7apy_memoized()
    msh, _, body = _prepare_for_hl7apy(message, header, seps).partition("\r")
    # What parse_message(find_groups=False) does, less the Message it would build and check
    # every segment against (a third of the time): the encoding characters and version read
    # from MSH as it reads them, then the segments. Outside a Message a field would be
    # written back with the default separators: it is given the message's own.
    encoding, _structure, version = get_message_info(msh)
    parsed: Any = parse_segments(body, version, encoding, VALIDATION_LEVEL.TOLERANT)
    found: _Segments = {}
    misplaced: set[tuple[str, int]] = set()
    for segment in parsed:
        name = segment.name
        if name not in _WANTED or name in found:
            continue
        fields: _Fields = {}
        for field in segment.children:
            number = (field.name or "").rpartition("_")[2]
            if not number.isdigit():
                continue  # a field hl7apy could not place: filled in by position below
            fields.setdefault(int(number), []).append(field.to_er7(encoding))
            if not _placed(field):
                misplaced.add((name, int(number)))
        found[name] = fields
    return found, misplaced


def _segments_positional(message: str, seps: Separators) -> _Segments:
    found: _Segments = {}
    fs = seps.field
    for segment in message.split("\r"):
        name = segment[:3]
        if name in _WANTED and name not in found and segment[3:4] == fs:
            wanted = _WANTED[name]
            # Split no further than the last field read: a PID of 300,000 fields would
            # otherwise cost an object (and a list) per field.
            parts = segment.split(fs, max(wanted) + 1)
            found[name] = {
                number: parts[number].split(seps.repetition)
                for number in sorted(wanted)
                if number < len(parts) and parts[number]
            }
    return found


def _delimiters(text: str, seps: Separators) -> int:
    return sum(
        text.count(c) for c in (seps.field, seps.component, seps.repetition, seps.subcomponent)
    )


def _read_segments(message: str, header: HL7Header, seps: Separators) -> _Segments:
    """hl7apy's reading, with any field it dropped or misplaced read by position.

    Segments with more than :data:`HL7APY_MAX_DELIMITERS` delimiters are read by position
    alone: the same record, in linear time."""
    positional = _segments_positional(message, seps)
    wanted = _wanted_segments(message, seps.field)
    if _delimiters(wanted, seps) > HL7APY_MAX_DELIMITERS:
        logger.debug("a candidate too large for hl7apy; reading fields by position")
        return positional
    try:
        found, misplaced = _segments_hl7apy(wanted, header, seps)
    except Exception as exc:  # hl7apy raises many unrelated types; fall back on any
        # The exception text may quote the message: log the type only.
        logger.debug(
            "hl7apy could not parse a candidate; reading fields by position",
            extra={"error_type": type(exc).__name__},
        )
        return positional
    filled = 0
    for name, by_position in positional.items():
        fields = found.setdefault(name, {})
        for number, reps in by_position.items():
            if number not in _WANTED[name]:
                continue
            if (name, number) in misplaced or len(fields.get(number, ())) != len(reps):
                fields[number] = reps
                filled += 1
    if filled:
        logger.debug(
            "hl7apy dropped or misplaced fields; read them by position",
            extra={"field_count": filled},
        )
    return found


# ---------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------


class _Reader:
    """Field access over one segment with the message's separators."""

    __slots__ = ("fields", "seps")

    def __init__(self, fields: _Fields | None, seps: Separators) -> None:
        self.fields = fields or {}
        self.seps = seps

    def reps(self, number: int) -> list[str]:
        return self.fields.get(number, [])

    def first(self, number: int) -> str:
        reps = self.fields.get(number)
        return reps[0] if reps else ""

    def comps(self, rep: str) -> list[str]:
        return rep.split(self.seps.component)

    def value(self, raw: str | None, *, subcomponent: bool = False) -> str | None:
        if raw is None:
            return None
        if subcomponent:
            raw = raw.split(self.seps.subcomponent, 1)[0]
        raw = raw.strip()
        if not raw or raw == _HL7_NULL:
            return None
        return unescape(raw, self.seps).strip() or None

    def component(self, rep: str, position: int, *, subcomponent: bool = False) -> str | None:
        comps = self.comps(rep)
        raw = comps[position - 1] if position <= len(comps) else None
        return self.value(raw, subcomponent=subcomponent)

    def first_component(self, number: int, position: int = 1) -> str | None:
        return self.component(self.first(number), position)


def _name(pid: _Reader) -> tuple[str | None, str | None, str | None]:
    for rep in pid.reps(5):
        family = pid.component(rep, 1, subcomponent=True)
        given = pid.component(rep, 2)
        if family or given:
            return family, given, pid.component(rep, 3)
    return None, None, None


def _has_digit(text: str) -> bool:
    return any(c.isdigit() for c in text)


def _phone(pid: _Reader, rep: str) -> str | None:
    number = pid.component(rep, 1)
    if number and _has_digit(number) and "@" not in number:
        return number
    local = pid.component(rep, 7)
    if local and _has_digit(local):
        area = pid.component(rep, 6) or ""
        return area + local
    unformatted = pid.component(rep, 12)
    if unformatted and _has_digit(unformatted) and "@" not in unformatted:
        return unformatted
    return None


def _phones(pid: _Reader) -> tuple[str, ...]:
    phones: dict[str, None] = {}  # ordered, without searching a list per repetition
    for number in (13, 14):
        for rep in pid.reps(number):
            if phone := _phone(pid, rep):
                phones[phone] = None
    return tuple(phones)


def _code_or_text(pid: _Reader, parts: list[str]) -> str | None:
    """A county as IS (a code) or, in v2.7+, CWE: its code, else its text."""
    for part in parts[:2]:
        if value := pid.value(part):
            return value
    return None


def _county(pid: _Reader, address: str) -> str | None:
    """XAD.9 of the chosen address, else PID-12."""
    comps = pid.comps(address)
    if len(comps) > 8 and (county := _code_or_text(pid, comps[8].split(pid.seps.subcomponent))):
        return county
    return _code_or_text(pid, pid.comps(pid.first(12)))


def _street(pid: _Reader, rep: str) -> str | None:
    """XAD.1 (its first subcomponent, SAD.1, in v2.5+); a bare house number is completed
    with SAD.2, the street name."""
    comps = pid.comps(rep)
    subs = comps[0].split(pid.seps.subcomponent)
    street = pid.value(subs[0])
    name = pid.value(subs[1]) if len(subs) > 1 else None
    if street and name and street.isdigit():
        return f"{street} {name}"
    return street or name


def _address(pid: _Reader) -> Address | None:
    reps = [rep for rep in pid.reps(11) if pid.value(rep.replace(pid.seps.component, ""))]
    chosen = next(
        (rep for rep in reps if (pid.component(rep, 7) or "").upper() in _HOME_ADDRESS_TYPES),
        reps[0] if reps else "",
    )
    county = _county(pid, chosen)
    address = Address(
        street=_street(pid, chosen),
        city=pid.component(chosen, 3),
        state=pid.component(chosen, 4),
        postal_code=pid.component(chosen, 5),
        county=county,
    )
    return None if address == Address() else address


def _mrn(pid: _Reader) -> tuple[str | None, str | None]:
    reps = [rep for rep in pid.reps(3) if pid.component(rep, 1)]
    if not reps:
        return None, None
    chosen = next(
        (rep for rep in reps if (pid.component(rep, 5) or "").upper() in _MRN_TYPES), reps[0]
    )
    return pid.component(chosen, 1), pid.component(chosen, 4, subcomponent=True)


# The longest value intake keeps per identity field: refused beyond (AR 102), never cut.
MAX_NAME = 100
MAX_STREET = 200
MAX_PLACE = 100
MAX_PHONE = 32
MAX_MRN = 64
MAX_CODE = 64


def _identity(pid: _Reader) -> Identity:
    check = FieldTooLongError.check
    family, given, middle = _name(pid)
    for name in (family, given, middle):
        check(name, MAX_NAME, "PID", 5)
    mrn, authority = _mrn(pid)
    check(mrn, MAX_MRN, "PID", 3)
    check(authority, MAX_CODE, "PID", 3)
    phones = _phones(pid)
    for phone in phones:
        check(phone, MAX_PHONE, "PID", 13)
    address = _address(pid)
    if address is not None:
        check(address.street, MAX_STREET, "PID", 11)
        for part in (address.city, address.state, address.postal_code, address.county):
            check(part, MAX_PLACE, "PID", 11)
    return Identity(
        family=family,
        given=given,
        middle=middle,
        dob=parse_hl7_date(pid.first_component(7)),
        sex=check(pid.first_component(8), MAX_CODE, "PID", 8),
        phones=phones,
        address=address,
        mrn=mrn,
        mrn_authority=authority,
        language=check(pid.first_component(15), MAX_CODE, "PID", 15),
    )


def _admit_at(pv1: _Reader, evn: _Reader, header: HL7Header, tz: tzinfo) -> datetime | None:
    for candidate in (
        pv1.first_component(44),
        evn.first_component(2),
        evn.first_component(6),
        header.message_time,
    ):
        if candidate and (parsed := parse_hl7_datetime(candidate, tz)) is not None:
            return parsed
    return None


def parse_adt(message: str, screened: Screened, *, default_tz: tzinfo = DEFAULT_TZ) -> AdtMessage:
    """Fully parse one normalized ADT message that :func:`~.screen.screen` produced
    ``screened`` from.

    Raises :class:`ParseError` (HL7 code 100) when the message has no PID segment.
    """
    header = screened.header
    seps = Separators.of(header)
    segments = _read_segments(message, header, seps)
    if "PID" not in segments:
        raise ParseError("required segment PID is missing", location=("PID", 1))
    pid = _Reader(segments["PID"], seps)
    pv1 = _Reader(segments.get("PV1"), seps)
    evn = _Reader(segments.get("EVN"), seps)
    return AdtMessage(
        header=header,
        identity=_identity(pid),
        visit_number=FieldTooLongError.check(pv1.first_component(19), MAX_CODE, "PV1", 19),
        patient_class=pv1.first_component(2),
        admit_at=_admit_at(pv1, evn, header, default_tz),
        discharge_disposition=FieldTooLongError.check(pv1.first_component(36), MAX_CODE, "PV1", 36),
        diagnosis_codes=tuple(code for _, code in screened.codes),
        chief_complaints=screened.texts,
        death_indicator=FieldTooLongError.check(pid.first_component(30), MAX_CODE, "PID", 30),
        died_at=parse_hl7_datetime(pid.first_component(29), default_tz),
    )
