"""HL7 v2 original-mode acknowledgements (MSH, MSA and, for errors, a v2.5-style ERR).

:func:`build_ack` answers a message; :func:`parse_ack` reads an answer (tests and the
benchmark/e2e client use it).

Decisions:

* Sending and receiving application/facility are swapped from the original MSH; the ACK's
  sending application defaults to ``PORTLINE`` when the original named no receiver (or
  there is no original header at all).
* The ACK always uses ``|^~\\&``. Values echoed from an original that used other
  separators are re-encoded.
* MSH-9 is ``ACK^<trigger>^ACK`` when the trigger is known, else ``ACK``. MSH-11 echoes the
  original processing id (default ``P``), MSH-12 the original version when it looks like
  one (default ``2.5.1``).
* MSA-3 is ``text``, else the error's human message, cut to 80 characters before escaping.
* ERR uses the v2.5 layout whatever the version: ERR-2 location, ERR-3
  ``<code>^<description>^HL70357``, ERR-4 severity ``E``, ERR-8 the human message.
* Free text is escaped (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``); line breaks become spaces.
* An ACK never holds the MLLP framing characters VT and FS, which would end or restart the
  frame it travels in: an echoed value holding one (sent raw over HTTP, or unescaped from
  ``\\X1C\\`` when re-encoding other separators) carries it hex-escaped.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Literal

from services.intake.hl7.errors import HL7Error, MissingFieldError, NotHL7Error
from services.intake.hl7.screen import STANDARD_SEPARATORS, Separators, normalize, unescape
from services.intake.records import HL7Header

__all__ = [
    "DEFAULT_ACK_VERSION",
    "MSA_TEXT_MAX",
    "SENDING_APPLICATION",
    "AckCode",
    "build_ack",
    "escape",
    "parse_ack",
]

AckCode = Literal["AA", "AE", "AR"]
SENDING_APPLICATION = "PORTLINE"
DEFAULT_ACK_VERSION = "2.5.1"
MSA_TEXT_MAX = 80

_ACK_SEPARATORS = STANDARD_SEPARATORS
_ESCAPES = {
    "\\": "\\E\\",
    "|": "\\F\\",
    "^": "\\S\\",
    "&": "\\T\\",
    "~": "\\R\\",
    "\r": " ",
    "\n": " ",
}
_ESCAPE_TABLE = str.maketrans(_ESCAPES)
_FRAMING_ESCAPES = str.maketrans({"\x0b": "\\X0B\\", "\x1c": "\\X1C\\"})


def escape(text: str) -> str:
    """Escape free text for an ACK (standard separators ``|^~\\&``)."""
    return text.translate(_ESCAPE_TABLE)


def _reencode(value: str, seps: Separators) -> str:
    """A header value as sent, re-expressed with the ACK's standard separators."""
    if seps is _ACK_SEPARATORS or seps == _ACK_SEPARATORS:
        return value
    comps = value.split(seps.component)
    return "^".join(
        "&".join(escape(unescape(sub, seps)) for sub in comp.split(seps.subcomponent))
        for comp in comps
    )


@functools.lru_cache(maxsize=8)
def _timestamp(now: datetime) -> str:
    """MSH-7; a group commit answers many messages with the same `now`."""
    return now.strftime("%Y%m%d%H%M%S%z")


def _looks_like_version(version: str) -> bool:
    return 0 < len(version) <= 10 and _version_characters(version)


@functools.lru_cache(maxsize=64)
def _version_characters(version: str) -> bool:
    """Digits and dots only. Asked for every ACK, and a partner sends one or two versions:
    remembered (at most 64 strings of at most 10 characters), not checked again."""
    return all(c.isdigit() or c == "." for c in version)


def _format_location(location: tuple[str, int] | tuple[str, int, int] | None) -> str:
    if location is None:
        return ""
    return "^".join(escape(str(part)) for part in location)


def build_ack(
    header: HL7Header | None,
    code: AckCode,
    *,
    now: datetime,
    control_id: str,
    error: HL7Error | None = None,
    text: str | None = None,
) -> str:
    """The ACK for a message whose header is ``header`` (``None`` when it was unreadable).

    ``now`` must be timezone-aware; ``control_id`` is the ACK's own fresh MSH-10.
    """
    if code not in ("AA", "AE", "AR"):
        raise ValueError(f"not an original-mode acknowledgement code: {code!r}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if not control_id:
        raise ValueError("control_id must not be empty")

    if header is not None:
        seps = Separators.of(header)
        sending_app = _reencode(header.receiving_application, seps) or SENDING_APPLICATION
        sending_facility = _reencode(header.receiving_facility, seps)
        receiving_app = _reencode(header.sending_application, seps)
        receiving_facility = _reencode(header.sending_facility, seps)
        trigger = _reencode(header.trigger_event, seps)
        processing_id = _reencode(header.processing_id, seps) or "P"
        version = header.version if _looks_like_version(header.version) else ""
        original_control_id = _reencode(header.control_id, seps)
    else:
        sending_app, sending_facility, receiving_app, receiving_facility = (
            SENDING_APPLICATION,
            "",
            "",
            "",
        )
        trigger = original_control_id = ""
        processing_id = "P"
        version = ""

    msh = "|".join(
        [
            "MSH",
            "^~\\&",
            sending_app,
            sending_facility,
            receiving_app,
            receiving_facility,
            _timestamp(now),
            "",
            f"ACK^{trigger}^ACK" if trigger else "ACK",
            escape(control_id),
            processing_id,
            version or DEFAULT_ACK_VERSION,
        ]
    )
    msa_text = text if text is not None else (error.message if error is not None else "")
    msa = f"MSA|{code}|{original_control_id}"
    if msa_text:
        msa += f"|{escape(msa_text[:MSA_TEXT_MAX])}"
    segments = [msh, msa]
    if code != "AA" and error is not None:
        err_code = f"{error.hl7_error_code}^{escape(error.hl7_error_description)}^HL70357"
        location = _format_location(error.location)
        segments.append(f"ERR||{location}|{err_code}|E||||{escape(error.message)}")
    ack = "\r".join(segments)
    if "\x0b" in ack or "\x1c" in ack:
        ack = ack.translate(_FRAMING_ESCAPES)
    return ack


def parse_ack(text: str) -> tuple[str, str, str | None]:
    """``(acknowledgement code, MSA-2, ERR-8 or else MSA-3 or None)`` of an ACK.

    Raises :class:`NotHL7Error` without an MSH segment, :class:`MissingFieldError`
    without MSA-1.
    """
    message = normalize(text)
    if not message.startswith("MSH") or len(message) < 8:
        raise NotHL7Error("the acknowledgement does not start with an MSH segment")
    fs = message[3]
    encoding = message[4:].split(fs, 1)[0]
    seps = Separators.from_msh(fs, encoding)
    msa: list[str] | None = None
    err: list[str] | None = None
    for segment in message.split("\r"):
        name = segment[:3]
        if name == "MSA" and msa is None:
            msa = segment.split(fs)
        elif name == "ERR" and err is None:
            err = segment.split(fs)
    if msa is None or len(msa) < 2 or not msa[1].strip():
        raise MissingFieldError.for_field("MSA", 1)
    ack_code = msa[1].strip()
    original = msa[2].strip() if len(msa) > 2 else ""
    detail: str | None = None
    if err is not None and len(err) > 8 and err[8].strip():
        detail = unescape(err[8].strip(), seps)
    elif len(msa) > 3 and msa[3].strip():
        detail = unescape(msa[3].strip(), seps)
    return ack_code, unescape(original, seps), detail
