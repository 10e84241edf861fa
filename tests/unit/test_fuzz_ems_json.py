"""Fuzzing the JSON run report: arbitrary JSON values and bodies, and mutated valid reports.

Two ways in, as intake has them: a decoded JSON value validated against EmsRunReportIn, or
EmsRunReportBatch when it has "reports", then to_record() (the API route, which answers a
ValidationError with 422); and parse_run_report_json() over a raw body. Only pydantic's
ValidationError may escape, never another exception; every record keeps its contracts
(strings that encode, times with a UTC equivalent, the documented vocabularies); and each
input stays within the time and memory bounds of tests/fuzzing.py.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.intake.ems_json import (
    MAX_BATCH,
    RESPONSE_CODES,
    EmsRunReportBatch,
    EmsRunReportIn,
    parse_run_report_json,
    to_record,
)
from services.intake.nemsis import DEFAULT_MAX_BYTES, LEAVE_BEHIND_ITEMS
from services.intake.records import EmsRunReport
from tests.fuzzing import at_limit, fuzz, note, run_bounded

# The schema's own examples: an overdose with everything, and a refusal.
EXAMPLES: list[dict[str, Any]] = EmsRunReportIn.model_json_schema()["examples"]


def _check_time(value: datetime | None) -> None:
    if value is not None:
        assert value.utcoffset() is not None
        value.astimezone(UTC)  # OverflowError if it has no UTC equivalent


def _check_text(value: str | None) -> None:
    if value is not None:
        assert isinstance(value, str)
        value.encode()  # sealed and hashed downstream: UnicodeEncodeError if not text


def _check_record(record: EmsRunReport) -> None:
    assert record.pcr_number
    assert record.pcr_number == record.pcr_number.strip()
    _check_time(record.incident_at)
    identity = record.identity
    for text in (record.pcr_number, record.agency_id, record.narrative, identity.family):
        _check_text(text)
    for text in (identity.given, identity.middle, *identity.phones):
        _check_text(text)
    assert identity.mrn is None
    assert all(code == code.upper() for code in record.impressions)
    for medication in record.medications:
        assert medication.response in (None, *RESPONSE_CODES.values())
        _check_time(medication.given_at)
    assert set(record.leave_behind) <= set(LEAVE_BEHIND_ITEMS)
    assert len(set(record.leave_behind)) == len(record.leave_behind)
    assert record.consent in ("accepted", "declined", "unknown")


def _as_the_route_does(value: Any) -> list[EmsRunReport]:
    if isinstance(value, dict) and "reports" in value:
        reports = EmsRunReportBatch.model_validate(value).reports
    else:
        reports = [EmsRunReportIn.model_validate(value)]
    return [to_record(report) for report in reports]


def _bounded(call: Any, input_bytes: int) -> str:
    outcome = run_bounded(call, input_bytes=input_bytes)
    if outcome.error is not None:
        if not isinstance(outcome.error, ValidationError):
            raise outcome.error
        errors = outcome.error.errors(include_url=False, include_context=False)
        note(f"invalid: {errors[0]['type']}")
        return "invalid"
    for record in outcome.value:
        _check_record(record)
    note("valid")
    return "valid"


def _size(value: Any) -> int:
    return len(json.dumps(value, default=str).encode("utf-8", "surrogatepass"))


def _validate(value: Any) -> str:
    return _bounded(lambda: _as_the_route_does(value), _size(value))


def _parse(body: bytes | str) -> str:
    size = len(body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body)
    return _bounded(lambda: parse_run_report_json(body), size)


# ---------------------------------------------------------------------------------------
# Arbitrary JSON values and bodies
# ---------------------------------------------------------------------------------------

# Text as json.loads gives it, lone surrogates included ("\ud800" is valid JSON).
# (st.text() drops surrogates from its alphabet, so the characters are joined instead.)
_text = st.lists(st.characters() | st.characters(categories=["Cs"]), max_size=20).map("".join)
# xs:dateTime from year 1 to 9999, with offsets up to the extremes.
_times = st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]) | st.builds(
    lambda moment, offset: moment.isoformat() + offset,
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59)),
    st.sampled_from(["", "Z", "+00:00", "+01:00", "-01:00", "+14:00", "-12:00", "+23:59"]),
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | _text
    | st.sampled_from(
        [
            "2026-11-20T22:14:00-05:00",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-12:00",
            "2026-11-20T22:14:00",
            "1987-06-05",
            "7242",
            "T40.1X1A",
            "improved",
            "naloxone_kit",
        ]
    )
)
_json = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(_text | st.sampled_from(sorted(EXAMPLES[0])), children, max_size=6)
    ),
    max_leaves=30,
)


@fuzz(examples=150)
@given(value=_json)
def test_arbitrary_json_values(value: Any) -> None:
    _validate(value)


@fuzz(examples=100)
@given(body=st.binary(max_size=2048) | _text | _json.map(json.dumps))
def test_arbitrary_bodies(body: bytes | str) -> None:
    _parse(body)


# ---------------------------------------------------------------------------------------
# Mutations of valid reports
# ---------------------------------------------------------------------------------------

_KEYS = sorted({key for example in EXAMPLES for key in example})


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (dict keys and list indexes)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


@st.composite
def mutated_reports(draw: st.DrawFn) -> Any:
    report = copy.deepcopy(draw(st.sampled_from(EXAMPLES)))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(report)))
        target = _at(report, path)
        kind = draw(st.sampled_from(["set", "delete", "add", "repeat", "huge", "swap", "time"]))
        if kind == "time":
            medications = report.get("medications")
            if isinstance(medications, list) and medications and draw(st.booleans()):
                medication = draw(st.sampled_from(medications))
                if isinstance(medication, dict):
                    medication["given_at"] = draw(_times)
            elif isinstance(report, dict):
                report["incident_at"] = draw(_times)
        elif kind == "set" and path:
            _at(report, path[:-1])[path[-1]] = draw(_json)
        elif kind == "delete" and path:
            del _at(report, path[:-1])[path[-1]]
        elif kind == "add" and isinstance(target, dict):
            target[draw(st.sampled_from(_KEYS) | _text)] = draw(_json)
        elif kind == "repeat" and isinstance(target, list) and 0 < len(target) <= 100:
            target.extend(target * draw(st.integers(1, 60)))
        elif kind == "huge" and path and isinstance(target, str) and len(target) <= 1000:
            _at(report, path[:-1])[path[-1]] = target * draw(st.integers(10, 5000))
        elif kind == "swap" and path:  # a list for a value, a value for a list
            _at(report, path[:-1])[path[-1]] = draw(st.sampled_from([[target], {"x": target}]))
    if draw(st.booleans()):
        # As many copies as fit the body size limit the route enforces before parsing.
        fit = DEFAULT_MAX_BYTES // _size(report)
        report = {"reports": [report] * min(fit, draw(st.integers(0, MAX_BATCH + 1)))}
    return report


@fuzz(examples=80)
@given(value=mutated_reports())
def test_mutated_reports(value: Any) -> None:
    _validate(value)


@fuzz(examples=40)
@given(value=mutated_reports())
def test_mutated_reports_as_bodies(value: Any) -> None:
    _parse(json.dumps(value).encode())


# ---------------------------------------------------------------------------------------
# At the size limit (PORTLINE_INTAKE_MAX_EMS_BYTES): the shapes that grow with the input
# ---------------------------------------------------------------------------------------

_SIZE = at_limit(DEFAULT_MAX_BYTES)
_ONE = json.dumps(EXAMPLES[0])
_SHAPES = {
    "deep arrays": "[" * (_SIZE // 2) + "]" * (_SIZE // 2),
    "deep objects": '{"reports":' * (_SIZE // 12) + "1" + "}" * (_SIZE // 12),
    "long narrative": _ONE.replace('"Found unresponsive', '"' + "x" * (_SIZE - len(_ONE)), 1),
    "huge number": '{"pcr_number": "1", "incident_at": ' + "9" * (_SIZE - 40) + "}",
    "many reports": '{"reports": [' + ",".join([_ONE] * (_SIZE // (len(_ONE) + 1))) + "]}",
    "a full batch": '{"reports": [' + ",".join([_ONE] * MAX_BATCH) + "]}",
    "many phones": _ONE.replace(
        '["336-555-0100"]', json.dumps(["336-555-0100"] * ((_SIZE - len(_ONE)) // 16))
    ),
    "many keys": "{" + ",".join(f'"k{i}": {i}' for i in range(_SIZE // 20)) + "}",
}


@pytest.mark.parametrize("shape", sorted(_SHAPES))
def test_shapes_at_the_size_limit(shape: str) -> None:
    body = _SHAPES[shape]
    assert len(body) <= max(_SIZE, len(_SHAPES["a full batch"]))
    _parse(body.encode())
    if shape not in ("deep arrays", "deep objects", "huge number"):  # json.loads refuses these
        _validate(json.loads(body))
