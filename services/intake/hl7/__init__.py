"""HL7 v2 for intake: screen every message cheaply, fully parse only overdose candidates.

Typical flow for one MLLP payload::

    text = normalize(payload)
    for message in split_messages(text):
        screened = screen(message)          # header + DG1/PV2/OBX values, str ops only
        check_supported(screened.header)    # ADT A01/A03/A04/A08, v2.1-2.8
        decision = classify_ed(codes=screened.codes, texts=screened.texts)
        if decision.any_drug:
            adt = parse_adt(message, screened, default_tz=facility_zone)
        ack = build_ack(screened.header, "AA", now=now, control_id=new_id)

Errors are :class:`HL7Error` subclasses with a stable ``code``, an HL7 table 0357
``hl7_error_code`` and a human ``message`` free of message content (see
:mod:`.errors`); :func:`build_ack` turns one into an AE/AR.
"""

from services.intake.hl7.ack import build_ack, parse_ack
from services.intake.hl7.batch import split_messages
from services.intake.hl7.errors import (
    FieldTooLongError,
    HL7Error,
    MissingFieldError,
    NotHL7Error,
    ParseError,
    UnsupportedMessageError,
)
from services.intake.hl7.parse import parse_adt, parse_hl7_date, parse_hl7_datetime
from services.intake.hl7.screen import (
    SOURCE_DG1,
    SOURCE_OBX_8661_1,
    SOURCE_PV2_3,
    Screened,
    check_supported,
    message_types_supported,
    normalize,
    read_header,
    screen,
)

__all__ = [
    "SOURCE_DG1",
    "SOURCE_OBX_8661_1",
    "SOURCE_PV2_3",
    "FieldTooLongError",
    "HL7Error",
    "MissingFieldError",
    "NotHL7Error",
    "ParseError",
    "Screened",
    "UnsupportedMessageError",
    "build_ack",
    "check_supported",
    "message_types_supported",
    "normalize",
    "parse_ack",
    "parse_adt",
    "parse_hl7_date",
    "parse_hl7_datetime",
    "read_header",
    "screen",
    "split_messages",
]
