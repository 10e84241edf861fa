"""Errors raised by intake's HL7 v2 layer.

Hierarchy::

    HL7Error                    code "hl7_error", HL7 table 0357 "207" (application internal error)
    +-- NotHL7Error             code "not_hl7", "100": no MSH segment, garbage
    +-- MissingFieldError       code "missing_field", "101": e.g. MSH-10 missing
    +-- UnsupportedMessageError code "unsupported_message_type", "200" (not ADT), "201"
    |                           (trigger not A01/A03/A04/A08) or "203" (version not 2.1-2.8)
    +-- ParseError              code "parse_error", "100": a candidate that cannot be parsed
    +-- FieldTooLongError       code "field_too_long", "102": a value longer than intake keeps

Every error carries a stable machine ``code``, the HL7 table 0357 value ``hl7_error_code``
used in ERR-3 of the ACK, an optional ``location`` (segment id, segment sequence and, when
the error is about a field, field number) used in ERR-2, and a human ``message``. The
message is built only from constants, segment ids, field numbers and HL7 codes, never from
message content: it may be logged and sent back to the partner without leaking PHI.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "HL7_ERROR_DESCRIPTIONS",
    "FieldTooLongError",
    "HL7Error",
    "MissingFieldError",
    "NotHL7Error",
    "ParseError",
    "UnsupportedMessageError",
]

HL7_ERROR_DESCRIPTIONS: dict[str, str] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}
"""HL7 table 0357 (message error condition codes): code -> description."""


class HL7Error(Exception):
    """Base class. ``str(error)`` is the human message (no message content, ever)."""

    code: ClassVar[str] = "hl7_error"
    default_hl7_error_code: ClassVar[str] = "207"

    def __init__(
        self,
        message: str,
        *,
        hl7_error_code: str | None = None,
        location: tuple[str, int] | tuple[str, int, int] | None = None,
    ) -> None:
        code = hl7_error_code or self.default_hl7_error_code
        if code not in HL7_ERROR_DESCRIPTIONS:
            raise ValueError(f"not an HL7 table 0357 code: {code!r}")
        super().__init__(message)
        self.message = message
        self.hl7_error_code = code
        self.location = location
        """(segment id, segment sequence[, field number]), e.g. ("MSH", 1, 10)."""

    @property
    def hl7_error_description(self) -> str:
        return HL7_ERROR_DESCRIPTIONS[self.hl7_error_code]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, hl7_error_code={self.hl7_error_code!r})"


class NotHL7Error(HL7Error):
    """The payload is not an HL7 v2 message (no MSH segment where one must be)."""

    code: ClassVar[str] = "not_hl7"
    default_hl7_error_code: ClassVar[str] = "100"


class MissingFieldError(HL7Error):
    """A field intake cannot do without is empty (e.g. MSH-10, the control id)."""

    code: ClassVar[str] = "missing_field"
    default_hl7_error_code: ClassVar[str] = "101"

    @classmethod
    def for_field(cls, segment: str, field: int, *, sequence: int = 1) -> MissingFieldError:
        return cls(
            f"required field {segment}-{field} is missing",
            location=(segment, sequence, field),
        )


class UnsupportedMessageError(HL7Error):
    """Not an ADT A01/A03/A04/A08, or an HL7 version intake does not accept."""

    code: ClassVar[str] = "unsupported_message_type"
    default_hl7_error_code: ClassVar[str] = "200"


class ParseError(HL7Error):
    """A screened candidate could not be fully parsed."""

    code: ClassVar[str] = "parse_error"
    default_hl7_error_code: ClassVar[str] = "100"


class FieldTooLongError(HL7Error):
    """A field longer than intake keeps for it (a name, an address, a phone, an MRN, a chief
    complaint, MSH-10): refused, never truncated, so nothing is silently changed."""

    code: ClassVar[str] = "field_too_long"
    default_hl7_error_code: ClassVar[str] = "102"

    @classmethod
    def check(cls, value: str | None, limit: int, segment: str, field: int) -> str | None:
        """The value, unless it is longer than ``limit`` characters."""
        if value is not None and len(value) > limit:
            raise cls(
                f"field {segment}-{field} is longer than {limit} characters",
                location=(segment, 1, field),
            )
        return value
