"""Split an HL7 v2 payload (one message, or a batch) into its messages.

A message starts only at a *segment* (the start of the payload or after ``"\\r"``) whose
first three characters are ``MSH`` followed by the field separator: ``MSH`` inside a field
(some partners put it in PID-17 or PV1) never starts one. File and batch envelope segments
(FHS, BHS, BTS, FTS) are dropped, and so is anything before the first MSH.
"""

from __future__ import annotations

from services.intake.hl7.errors import NotHL7Error

__all__ = ["ENVELOPE_SEGMENTS", "split_messages"]

ENVELOPE_SEGMENTS = frozenset({"FHS", "BHS", "BTS", "FTS"})
_HEADER_SEGMENTS = frozenset({"MSH", "FHS", "BHS"})


def _field_separator(segments: list[str]) -> str | None:
    for segment in segments:
        if segment[:3] in _HEADER_SEGMENTS and len(segment) > 3:
            return segment[3]
    return None


def split_messages(payload: str) -> list[str]:
    """The messages of a normalized payload (see :func:`~.screen.normalize`), in order.

    Raises :class:`NotHL7Error` when there is no MSH segment at all.
    """
    if (
        payload.startswith("MSH")
        and "\rMSH" not in payload
        and "\rBTS" not in payload
        and "\rFTS" not in payload
    ):
        return [payload]

    segments = payload.split("\r")
    fs = _field_separator(segments)
    messages: list[list[str]] = []
    current: list[str] | None = None
    if fs is not None:
        for segment in segments:
            name = segment[:3]
            marker = segment[3:4]
            if name == "MSH" and marker == fs:
                current = [segment]
                messages.append(current)
            elif name in ENVELOPE_SEGMENTS and marker in (fs, ""):
                continue
            elif current is not None:
                current.append(segment)
    if not messages:
        raise NotHL7Error("no MSH segment found in the payload")
    return ["\r".join(message) for message in messages]
