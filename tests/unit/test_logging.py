"""Tests for JSON logging and PHI redaction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from shared.logging import REDACTED, configure_logging, is_phi_key, scrub_text

HL7 = (
    "MSH|^~\\&|EPIC|HOSP|PORTLINE|PORT|20240501120000||ADT^A04|MSG1|P|2.5\r"
    "PID|1||00123^^^HOSP^MR||Doe^Jane^Q||19800102|F|||12 Elm St^^Greensboro^NC^27401||"
    "(336)555-0123\r"
    "PV1|1|E"
)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    names = ("uvicorn", "uvicorn.error", "uvicorn.access")
    saved_uvicorn = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in names
    }
    yield
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, (handlers, propagate) in saved_uvicorn.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate


@pytest.fixture
def stream() -> io.StringIO:
    out = io.StringIO()
    configure_logging(service="intake", level="DEBUG", stream=out)
    return out


# Threads left by earlier tests (aiosqlite's worker closing a connection) may still log at
# DEBUG into the root handler; they are not what these tests write.
BACKGROUND_LOGGERS = ("aiosqlite", "asyncio")


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [e for e in entries if e["logger"] not in BACKGROUND_LOGGERS]


def test_json_lines(stream: io.StringIO) -> None:
    logging.getLogger("portline.test").info("case %s opened", "c-1", extra={"attempt": 2})
    [entry] = lines(stream)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "portline.test"
    assert entry["service"] == "intake"
    assert entry["msg"] == "case c-1 opened"
    assert entry["attempt"] == 2
    ts = datetime.fromisoformat(entry["ts"])
    assert ts.utcoffset() == timedelta(0)
    assert entry["ts"].endswith("Z")


def test_multiline_message_stays_on_one_line(stream: io.StringIO) -> None:
    logging.getLogger("t").warning("first\nsecond")
    assert len(lines(stream)) == 1
    assert lines(stream)[0]["msg"] == "first\nsecond"


def test_phi_extras_are_redacted(stream: io.StringIO) -> None:
    # "name" is a LogRecord attribute, so stdlib logging refuses it as an extra; it is covered
    # in nested fields below.
    phi = {
        "given": "Jane",
        "family": "Doe",
        "first_name": "Jane",
        "last_name": "Doe",
        "dob": "1980-01-02",
        "birth_date": "1980-01-02",
        "phone": "336-555-0123",
        "address": "12 Elm St",
        "street": "12 Elm St",
        "mrn": "00123",
        "ssn": "123-45-6789",
        "email": "jane@example.org",
        "patient": {"id": "p-1"},
        "identity": {"family": "Doe"},
        "raw": HL7,
        "body": "Jane",
        "payload": {"x": 1},
        "notes": "Jane is at 12 Elm St",
        "homePhone": "3365550123",
        "patient_dob": "19800102",
        "given_name": "Jane",
    }
    logging.getLogger("t").info("identity received", extra=phi)
    [entry] = lines(stream)
    for key in phi:
        assert entry[key] == REDACTED, key
    for fragment in ("Jane", "Doe", "Elm", "5550123", "00123", "6789", "example.org"):
        assert fragment not in stream.getvalue()


def test_non_phi_extras_pass_through(stream: io.StringIO) -> None:
    extra = {
        "case_id": "7b0c2f4e-6d3a-4c55-9a8e-2f0d1b3c4a5e",
        "patient_id": "p-42",
        "event_name": "case.opened",
        "topic": "portline.cases",
        "attempt": 3,
        "ok": True,
        "elapsed_ms": 523.125,
        "tags": ["a", "b"],
        "occurred_at": "2024-05-01T10:00:00Z",
    }
    logging.getLogger("t").info("done", extra=extra)
    [entry] = lines(stream)
    for key, value in extra.items():
        assert entry[key] == value, key


def test_nested_phi_keys_are_redacted(stream: io.StringIO) -> None:
    logging.getLogger("t").info(
        "nested",
        extra={"ctx": {"case_id": "c-1", "name": "Jane", "items": [{"dob": "x"}], "n": ("a",)}},
    )
    [entry] = lines(stream)
    assert entry["ctx"] == {
        "case_id": "c-1",
        "name": REDACTED,
        "items": [{"dob": REDACTED}],
        "n": ["a"],
    }


def test_extra_cannot_overwrite_envelope(stream: io.StringIO) -> None:
    logging.getLogger("t").info("x", extra={"service": "spoofed", "level": "nope"})
    [entry] = lines(stream)
    assert entry["service"] == "intake"
    assert entry["level"] == "INFO"
    assert entry["extra_service"] == "spoofed"


def test_pid_segment_in_message_is_scrubbed(stream: io.StringIO) -> None:
    logging.getLogger("t").info("could not parse %s", HL7)
    [entry] = lines(stream)
    assert "PID|[redacted]" in entry["msg"]
    assert "PV1|1|E" in entry["msg"]
    assert "MSH|" in entry["msg"]
    for fragment in ("Doe", "Jane", "Elm", "00123", "19800102", "555-0123"):
        assert fragment not in stream.getvalue()


def test_pid_segment_in_repr_of_bytes_is_scrubbed() -> None:
    text = scrub_text(repr(HL7.encode()))
    assert "Doe" not in text
    assert "PID|[redacted]\\rPV1|1|E" in text


@pytest.mark.parametrize(
    "phone",
    [
        "336-555-0123",
        "(336) 555-0123",
        "(336)555-0123",
        "+1 336 555 0123",
        "1-336-555-0123",
        "336.555.0123",
        "3365550123",
        "555-0123",
    ],
)
def test_phone_in_message_is_scrubbed(stream: io.StringIO, phone: str) -> None:
    logging.getLogger("t").info("calling %s now", phone)
    assert lines(stream)[0]["msg"] == f"calling {REDACTED} now"


@pytest.mark.parametrize("dob", ["1980-01-02", "19800102", "1980/01/02", "01/02/1980", "1/2/1980"])
def test_dob_in_message_is_scrubbed(stream: io.StringIO, dob: str) -> None:
    logging.getLogger("t").info("born %s.", dob)
    assert lines(stream)[0]["msg"] == f"born {REDACTED}."


def test_ssn_in_message_is_scrubbed(stream: io.StringIO) -> None:
    logging.getLogger("t").info("ssn 123-45-6789 given")
    assert lines(stream)[0]["msg"] == f"ssn {REDACTED} given"


def test_ordinary_numbers_survive_scrubbing() -> None:
    text = (
        "took 523.1234 ms at 2024-05-01T10:00:00Z, offset 1714567890, "
        "case 7b0c2f4e-6d3a-4c55-9a8e-2f0d1b3c4a5e from 192.168.1.10 port 8001"
    )
    assert scrub_text(text) == text


def test_exception_text_is_scrubbed(stream: io.StringIO) -> None:
    try:
        raise ValueError(f"bad phone 336-555-0123 for dob 1980-01-02 in {HL7}")
    except ValueError:
        logging.getLogger("t").exception("intake failed")
    [entry] = lines(stream)
    assert entry["level"] == "ERROR"
    assert entry["msg"] == "intake failed"
    assert "ValueError" in entry["exc"]
    assert "Traceback" in entry["exc"]
    assert REDACTED in entry["exc"]
    for fragment in ("336-555-0123", "1980-01-02", "Doe", "Jane"):
        assert fragment not in stream.getvalue()


def test_pydantic_error_input_is_scrubbed() -> None:
    text = (
        "1 validation error for Identity\nfamily\n  String should have at most 3 characters "
        "[type=string_too_long, input_value='Doe-Smith', input_type=str]"
    )
    scrubbed = scrub_text(text)
    assert "Doe" not in scrubbed
    assert f"input_value={REDACTED}, input_type=str]" in scrubbed


def test_configure_is_idempotent() -> None:
    out = io.StringIO()
    configure_logging(service="intake", stream=out)
    configure_logging(service="intake", stream=out)
    root = logging.getLogger()
    ours = [h for h in root.handlers if type(h).__name__ == "_PortlineHandler"]
    assert len(ours) == 1
    logging.getLogger("t").warning("once")
    assert len(lines(out)) == 1


def test_level_is_applied() -> None:
    out = io.StringIO()
    configure_logging(service="scheduler", level="warning", stream=out)
    logging.getLogger("t").info("hidden")
    logging.getLogger("t").warning("shown")
    assert [e["msg"] for e in lines(out)] == ["shown"]


def test_uvicorn_loggers_propagate() -> None:
    access = logging.getLogger("uvicorn.access")
    access.addHandler(logging.StreamHandler(io.StringIO()))
    access.propagate = False
    out = io.StringIO()
    configure_logging(service="intake", stream=out)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        assert logging.getLogger(name).handlers == []
        assert logging.getLogger(name).propagate is True
    access.info(
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:5000",
        "GET",
        "/cases?phone=3365550123",
        "1.1",
        200,
        extra={"color_message": "\x1b[1mGET\x1b[0m"},
    )
    [entry] = lines(out)
    assert entry["logger"] == "uvicorn.access"
    assert "3365550123" not in entry["msg"]
    assert "color_message" not in entry


@pytest.mark.parametrize(
    ("key", "phi"),
    [
        ("name", True),
        ("Name", True),
        ("patient-name", True),
        ("mobile_phone", True),
        ("dateOfBirth", True),
        ("ip_address", True),
        ("patient_id", False),
        ("event_name", False),
        ("case_id", False),
        ("topic", False),
    ],
)
def test_is_phi_key(key: str, phi: bool) -> None:
    assert is_phi_key(key) is phi
