"""JSON-lines logging for every PORTline service, with PHI redaction on the way out.

Log facts as structured fields (``logger.info("case opened", extra={"case_id": ...})``) and
never log PHI. Fields whose key names PHI (name, dob, phone, mrn, ...) are replaced with
``"[redacted]"``; message, string field and exception text are scrubbed of obvious PHI
patterns (HL7 PID and other patient segments, US phone numbers, dates of birth, SSNs). The
scrubbing is a safety net for mistakes, not a licence to put PHI in free text: it cannot
recognise a bare name or address.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any, TextIO

__all__ = ["REDACTED", "JsonFormatter", "configure_logging", "is_phi_key", "redact", "scrub_text"]

REDACTED = "[redacted]"

# Keys (after snake_case normalization) whose values are always redacted.
_DENY_KEYS = frozenset(
    {
        "name", "given", "family", "first_name", "last_name", "dob", "birth_date", "phone",
        "address", "street", "mrn", "ssn", "email", "patient", "identity", "raw", "body",
        "payload", "notes",
        # Common compounds of the above.
        "given_name", "family_name", "middle_name", "full_name", "patient_name", "client_name",
        "person_name", "maiden_name", "date_of_birth", "birthdate", "zip", "zip_code",
        "postal_code", "note", "message_body", "hl7",
    }
)  # fmt: skip
# Key parts that mark a key as PHI wherever they appear ("home_phone", "patient_dob", ...).
# "name", "patient", "body" and the like are matched only as whole keys, so "event_name"
# and "patient_id" (an opaque id) still get through.
_DENY_PARTS = frozenset({"dob", "phone", "mrn", "ssn", "email", "street", "birth", "address"})
# Uvicorn duplicates the message with ANSI colours; it is noise in JSON.
_DROP_KEYS = frozenset({"color_message"})
_OUTPUT_KEYS = ("ts", "level", "logger", "service", "msg", "exc", "stack")
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
_MAX_DEPTH = 6

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_KEY_SEPARATORS = re.compile(r"[^a-z0-9]+")

# HL7 segments that carry patient, next-of-kin, guarantor or insured identity. A segment runs
# to a carriage return or newline, real or escaped ("\\r" as printed by repr()).
_HL7_SEGMENT = re.compile(
    r"(?:(?<=\\r)|(?<=\\n)|\b)(PID|PD1|NK1|GT1|IN1|IN2|MRG)\|(?:(?!\\[rn])[^\r\n])*"
)
# Pydantic validation errors echo the offending input.
_PYDANTIC_INPUT = re.compile(r"input_value=.*?(?=, input_type=|\]$|$)", re.MULTILINE)
_SSN = re.compile(r"(?<![\d-])\d{3}([- ])\d{2}\1\d{4}(?![\d-])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+?1[\s.-]?)?"
    r"(?:\([2-9]\d{2}\)\s?[2-9]\d{2}[\s.-]?\d{4}"  # (336) 555-0123
    r"|[2-9]\d{2}([\s.-]?)[2-9]\d{2}\1\d{4})(?!\d)"  # 336-555-0123, 336.555.0123, 3365550123
    r"|(?<![\w-])[2-9]\d{2}-\d{4}(?![\w-])"  # 555-0123
)
# Calendar dates 1900-2099 as YYYY-MM-DD, YYYY/MM/DD, YYYYMMDD or MM/DD/YYYY. A date glued to
# a time ("2024-05-01T10:00:00Z") is a timestamp and is kept.
_DATE = re.compile(r"(?<!\w)(?:19|20)\d{2}([-/]?)(?:0[1-9]|1[0-2])\1(?:0[1-9]|[12]\d|3[01])(?!\w)")
_US_DATE = re.compile(
    r"(?<![\d/])(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01])/(?:19|20)\d{2}(?![\d/])"
)


def scrub_text(text: str) -> str:
    """Replace obvious PHI patterns in free text with ``[redacted]``."""
    text = _HL7_SEGMENT.sub(rf"\1|{REDACTED}", text)
    text = _PYDANTIC_INPUT.sub(f"input_value={REDACTED}", text)
    text = _SSN.sub(REDACTED, text)
    text = _PHONE.sub(REDACTED, text)
    text = _DATE.sub(REDACTED, text)
    return _US_DATE.sub(REDACTED, text)


def is_phi_key(key: str) -> bool:
    """Whether a structured field named ``key`` holds PHI and must be redacted."""
    snake = _KEY_SEPARATORS.sub("_", _CAMEL.sub("_", key).lower()).strip("_")
    if snake in _DENY_KEYS:
        return True
    return any(part in _DENY_PARTS for part in snake.split("_"))


def redact(value: Any, *, _depth: int = 0) -> Any:
    """A JSON-ready copy of ``value`` with PHI keys redacted and strings scrubbed."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return scrub_text(value)
    if _depth >= _MAX_DEPTH:
        return REDACTED
    if isinstance(value, Mapping):
        return {
            str(key): REDACTED if is_phi_key(str(key)) else redact(item, _depth=_depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(item, _depth=_depth + 1) for item in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return scrub_text(str(value))


class JsonFormatter(logging.Formatter):
    """Formats records as one JSON object per line, redacting PHI."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "service": self.service,
            "msg": scrub_text(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRS or key in _DROP_KEYS or key.startswith("_"):
                continue
            name = f"extra_{key}" if key in _OUTPUT_KEYS else key
            out[name] = REDACTED if is_phi_key(key) else redact(value)
        if record.exc_info:
            out["exc"] = scrub_text(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = scrub_text(record.exc_text)
        if record.stack_info:
            out["stack"] = scrub_text(self.formatStack(record.stack_info))
        return json.dumps(out, default=str, separators=(",", ":"))


class _PortlineHandler(logging.StreamHandler[TextIO]):
    """Marks the handler `configure_logging` installed, so a second call replaces it."""


def configure_logging(*, service: str, level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send all logging to ``stream`` (default stderr) as redacted JSON lines.

    Idempotent: a second call replaces the handler installed by the first. Uvicorn's loggers
    lose their own handlers and propagate here; run uvicorn with ``log_config=None`` so it does
    not reinstall them.
    """
    root = logging.getLogger()
    for installed in [h for h in root.handlers if isinstance(h, _PortlineHandler)]:
        root.removeHandler(installed)
        installed.close()
    handler = _PortlineHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        for own in list(uvicorn_logger.handlers):
            uvicorn_logger.removeHandler(own)
        uvicorn_logger.propagate = True
