"""The documented JSON EMS run report: schema, validation and conversion."""

from __future__ import annotations

import copy
import json
import typing
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from services.intake.ems_json import (
    EmsRunReportBatch,
    EmsRunReportIn,
    LeaveBehindItem,
    parse_run_report_json,
    to_record,
    to_records,
)
from services.intake.nemsis import LEAVE_BEHIND_ITEMS
from services.intake.records import Address, EmsMedication, EmsRunReport

EST = timezone(timedelta(hours=-5))

# A valid report full of distinctive PHI; invalid variants must never echo these values.
PHI_VALUES = (
    "Quackenbush",
    "Zebulon",
    "Ignatius",
    "1987-06-05",
    "336-555-0142",
    "77 Sentinel Road",
    "Whistleville",
    "Confidential narrative marker",
)


def valid() -> dict[str, Any]:
    return {
        "pcr_number": "2026-000777",
        "agency_id": "NC-EMS-041",
        "incident_at": "2026-11-20T22:14:00-05:00",
        "patient": {
            "family_name": "Quackenbush",
            "given_name": "Zebulon",
            "middle_name": "Ignatius",
            "date_of_birth": "1987-06-05",
            "sex": "M",
            "phones": ["336-555-0142"],
            "address": {
                "street": "77 Sentinel Road",
                "city": "Whistleville",
                "state": "nc",
                "postal_code": "27401",
                "county": "Guilford",
            },
            "language": "en",
        },
        "scene": {"street": "1 Scene Way", "state": "NC", "postal_code": "27401-1234"},
        "impressions": ["t40.1x1a", "F11.20"],
        "medications": [
            {"rxnorm": "7242", "response": "Improved", "given_at": "2026-11-20T22:30:00-05:00"}
        ],
        "drug_use_indicators": ["3117003"],
        "disposition": {"patient_evaluation_care": "4228001", "transport": "4230001"},
        "peer_follow_up": "accepted",
        "leave_behind": ["naloxone_kit"],
        "narrative": "Confidential narrative marker",
    }


def schema_examples() -> list[dict[str, Any]]:
    examples = EmsRunReportIn.model_json_schema()["examples"]
    assert isinstance(examples, list)
    return examples


# --------------------------------------------------------------------------- examples


def test_schema_has_two_examples() -> None:
    examples = schema_examples()
    assert len(examples) == 2
    assert {e["peer_follow_up"] for e in examples} == {"accepted", "declined"}


@pytest.mark.parametrize("index", [0, 1])
def test_schema_examples_validate_and_convert(index: int) -> None:
    example = schema_examples()[index]
    record = to_record(EmsRunReportIn.model_validate(example))
    assert isinstance(record, EmsRunReport)
    assert record.pcr_number == example["pcr_number"]
    # ... also through JSON, as an HTTP body would arrive.
    assert to_record(EmsRunReportIn.model_validate_json(json.dumps(example))) == record


def test_overdose_example_content() -> None:
    record = to_record(EmsRunReportIn.model_validate(schema_examples()[0]))
    assert record.consent == "accepted"
    assert record.impressions[0].startswith("T40")
    assert any(m.rxnorm == "7242" and m.response == "9916001" for m in record.medications)
    assert not record.identity.deidentified


def test_refusal_example_content() -> None:
    record = to_record(EmsRunReportIn.model_validate(schema_examples()[1]))
    assert record.consent == "declined"
    assert record.transport_disposition == "4230009"
    assert "naloxone_kit" in record.leave_behind


def test_batch_example_validates() -> None:
    example = EmsRunReportBatch.model_json_schema()["examples"][0]
    records = to_records(EmsRunReportBatch.model_validate(example))
    assert [r.pcr_number for r in records] == ["2026-000123"]


def _walk_properties(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, model in [("root", schema), *schema.get("$defs", {}).items()]:
        for prop, spec in model.get("properties", {}).items():
            yield f"{name}.{prop}", spec


@pytest.mark.parametrize("model", [EmsRunReportIn, EmsRunReportBatch])
def test_every_field_has_a_description(model: type[EmsRunReportIn | EmsRunReportBatch]) -> None:
    schema = model.model_json_schema()
    props = list(_walk_properties(schema))
    assert props
    missing = [name for name, spec in props if not spec.get("description")]
    assert missing == []
    for definition in [schema, *schema.get("$defs", {}).values()]:
        assert definition.get("additionalProperties") is False
        assert definition.get("description")


def test_leave_behind_vocabulary_matches_nemsis_parser() -> None:
    assert typing.get_args(LeaveBehindItem) == LEAVE_BEHIND_ITEMS


# --------------------------------------------------------------------------- conversion

Field = Callable[[EmsRunReport], object]

FIELDS: list[tuple[str, Field, object]] = [
    ("pcr_number", lambda r: r.pcr_number, "2026-000777"),
    ("agency", lambda r: r.agency_id, "NC-EMS-041"),
    ("family", lambda r: r.identity.family, "Quackenbush"),
    ("given", lambda r: r.identity.given, "Zebulon"),
    ("middle", lambda r: r.identity.middle, "Ignatius"),
    ("dob", lambda r: r.identity.dob, date(1987, 6, 5)),
    ("sex", lambda r: r.identity.sex, "M"),
    ("phones", lambda r: r.identity.phones, ("336-555-0142",)),
    (
        "home address, state upper-cased",
        lambda r: r.identity.address,
        Address("77 Sentinel Road", "Whistleville", "NC", "27401", "Guilford"),
    ),
    ("mrn", lambda r: r.identity.mrn, None),
    ("language", lambda r: r.identity.language, "en"),
    ("incident_at", lambda r: r.incident_at, datetime(2026, 11, 20, 22, 14, tzinfo=EST)),
    ("scene", lambda r: r.scene, Address("1 Scene Way", None, "NC", "27401-1234", None)),
    ("impressions upper-cased", lambda r: r.impressions, ("T40.1X1A", "F11.20")),
    (
        "medications word -> code",
        lambda r: r.medications,
        (EmsMedication("7242", "9916001", datetime(2026, 11, 20, 22, 30, tzinfo=EST)),),
    ),
    ("drug use", lambda r: r.drug_use_indicators, ("3117003",)),
    ("unit", lambda r: r.unit_disposition, None),
    ("evaluation", lambda r: r.patient_evaluation_care, "4228001"),
    ("crew", lambda r: r.crew_disposition, None),
    ("transport", lambda r: r.transport_disposition, "4230001"),
    ("consent", lambda r: r.consent, "accepted"),
    ("leave behind", lambda r: r.leave_behind, ("naloxone_kit",)),
    ("narrative", lambda r: r.narrative, "Confidential narrative marker"),
]


@pytest.mark.parametrize(("field", "expected"), [pytest.param(f, e, id=i) for i, f, e in FIELDS])
def test_to_record_fields(field: Field, expected: object) -> None:
    assert field(to_record(EmsRunReportIn.model_validate(valid()))) == expected


def test_record_times_use_plain_timezone() -> None:
    record = to_record(EmsRunReportIn.model_validate(valid()))
    assert type(record.incident_at.tzinfo) is timezone  # type: ignore[union-attr]
    assert type(record.medications[0].given_at.tzinfo) is timezone  # type: ignore[union-attr]


def test_minimal_report() -> None:
    record = to_record(
        EmsRunReportIn.model_validate({"pcr_number": "P1", "incident_at": "2026-01-01T00:00:00Z"})
    )
    assert record.identity.deidentified
    assert record.incident_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert record.consent == "unknown"
    assert (record.scene, record.impressions, record.medications, record.leave_behind) == (
        None,
        (),
        (),
        (),
    )
    assert record.agency_id is None
    assert record.narrative is None


def test_whitespace_is_stripped_and_empty_address_is_none() -> None:
    payload = valid()
    payload["pcr_number"] = "  2026-000777 \n"
    payload["scene"] = {}
    payload["patient"]["address"] = {"street": None}
    record = to_record(EmsRunReportIn.model_validate(payload))
    assert record.pcr_number == "2026-000777"
    assert record.scene is None
    assert record.identity.address is None


def test_duplicates_dropped() -> None:
    payload = valid()
    payload["impressions"] = ["F11.20", "f11.20", "T40.1X1A"]
    payload["leave_behind"] = ["naloxone_kit", "naloxone_kit", "resource_information"]
    payload["patient"]["phones"] = ["336-555-0142", "336-555-0142"]
    record = to_record(EmsRunReportIn.model_validate(payload))
    assert record.impressions == ("F11.20", "T40.1X1A")
    assert record.leave_behind == ("naloxone_kit", "resource_information")
    assert record.identity.phones == ("336-555-0142",)


@pytest.mark.parametrize(
    ("response", "code"),
    [
        ("improved", "9916001"),
        ("IMPROVED", "9916001"),
        (" Unchanged ", "9916003"),
        ("worse", "9916005"),
        ("9916001", "9916001"),
        ("9916003", "9916003"),
        ("9916005", "9916005"),
        (None, None),
    ],
)
def test_medication_response(response: str | None, code: str | None) -> None:
    payload = valid()
    payload["medications"] = [{"rxnorm": "7242", "response": response}]
    record = to_record(EmsRunReportIn.model_validate(payload))
    assert record.medications == (EmsMedication("7242", code, None),)


@pytest.mark.parametrize(
    "impression", ["F11.20", "T40.1X1A", "t401x1a", "F19", "R40.2", "Z51.89", "S09.90"]
)
def test_valid_impressions(impression: str) -> None:
    payload = valid()
    payload["impressions"] = [impression]
    assert EmsRunReportIn.model_validate(payload).impressions == [impression.upper()]


def test_date_of_birth_today_and_1900_are_fine() -> None:
    for dob in (date(1900, 1, 1), datetime.now(UTC).date()):
        payload = valid()
        payload["patient"]["date_of_birth"] = dob.isoformat()
        assert EmsRunReportIn.model_validate(payload).patient.date_of_birth == dob  # type: ignore[union-attr]


# --------------------------------------------------------------------------- invalid input

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(payload: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = payload
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        if last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


def _delete(key: str) -> Mutation:
    def mutate(payload: dict[str, Any]) -> None:
        del payload[key]

    return mutate


INVALID: list[tuple[str, Mutation, str]] = [
    ("naive incident_at", _set("incident_at", "2026-11-20T22:14:00"), "timezone_aware"),
    ("missing incident_at", _delete("incident_at"), "missing"),
    ("missing pcr_number", _delete("pcr_number"), "missing"),
    ("blank pcr_number", _set("pcr_number", "   "), "string_too_short"),
    ("long pcr_number", _set("pcr_number", "Quackenbush" * 6), "string_too_long"),
    ("future DOB", _set("patient.date_of_birth", "2999-01-01"), "value_error"),
    ("DOB before 1900", _set("patient.date_of_birth", "1899-12-31"), "value_error"),
    ("impossible DOB", _set("patient.date_of_birth", "1987-02-30"), "date_from_datetime_parsing"),
    ("extra top-level field", _set("ssn", "Zebulon-123-45-6789"), "extra_forbidden"),
    ("extra patient field", _set("patient.nickname", "Zebulon"), "extra_forbidden"),
    ("extra address field", _set("patient.address.unit", "Zebulon"), "extra_forbidden"),
    ("bad impression", _set("impressions", ["ZEBULON"]), "string_pattern_mismatch"),
    ("U-code impression", _set("impressions", ["U07.1"]), "string_pattern_mismatch"),
    ("long impression", _set("impressions", ["T40.1X1AAA"]), "string_pattern_mismatch"),
    ("free-text impression", _set("impressions", ["Quackenbush OD"]), "string_too_long"),
    ("short phone", _set("patient.phones", ["555-01"]), "string_too_short"),
    ("long phone", _set("patient.phones", ["336-555-0142-336-555-01"]), "string_too_long"),
    ("text phone", _set("patient.phones", ["call Zebulon"]), "string_pattern_mismatch"),
    ("naive given_at", _set("medications.0.given_at", "2026-11-20T22:30:00"), "timezone_aware"),
    # Found while fuzzing: accepted, these had no UTC equivalent for the scheduler to convert.
    (
        "incident_at before year 1 in UTC",
        _set("incident_at", "0001-01-01T00:00:00+01:00"),
        "value_error",
    ),
    (
        "given_at after 9999 in UTC",
        _set("medications.0.given_at", "9999-12-31T23:30:00-01:00"),
        "value_error",
    ),
    ("unknown response", _set("medications.0.response", "Zebulon"), "literal_error"),
    ("bad rxnorm", _set("medications.0.rxnorm", "naloxone"), "string_pattern_mismatch"),
    ("bad consent", _set("peer_follow_up", "maybe-Zebulon"), "literal_error"),
    ("bad leave behind", _set("leave_behind", ["Zebulon"]), "literal_error"),
    ("bad disposition", _set("disposition.transport", "refused"), "string_pattern_mismatch"),
    ("bad drug use", _set("drug_use_indicators", ["heroin"]), "string_pattern_mismatch"),
    ("long narrative", _set("narrative", "Quackenbush " * 1000), "string_too_long"),
    ("bad postal code", _set("scene.postal_code", "Zebulon"), "string_pattern_mismatch"),
    ("wrong type", _set("patient", "Quackenbush, Zebulon"), "model_type"),
]


@pytest.mark.parametrize(
    ("mutate", "error_type"), [pytest.param(m, t, id=i) for i, m, t in INVALID]
)
def test_invalid_input_hides_phi(mutate: Mutation, error_type: str) -> None:
    payload = copy.deepcopy(valid())
    mutate(payload)
    with pytest.raises(ValidationError) as info:
        EmsRunReportIn.model_validate(payload)
    assert error_type in {e["type"] for e in info.value.errors()}
    for text in (str(info.value), repr(info.value)):
        for value in (*PHI_VALUES, "2999-01-01", "1899-12-31", "Zebulon"):
            assert value not in text
    # ... and the same through JSON parsing.
    with pytest.raises(ValidationError) as info_json:
        EmsRunReportIn.model_validate_json(json.dumps(payload))
    for value in (*PHI_VALUES, "Zebulon"):
        assert value not in str(info_json.value)


def test_batch_limits() -> None:
    report = schema_examples()[0]
    assert len(EmsRunReportBatch.model_validate({"reports": [report] * 500}).reports) == 500
    for reports in ([], [report] * 501):
        with pytest.raises(ValidationError):
            EmsRunReportBatch.model_validate({"reports": reports})
    with pytest.raises(ValidationError):
        EmsRunReportBatch.model_validate({"reports": [report], "extra": 1})


# --------------------------------------------------------------------------- parse helper


def test_parse_run_report_json_single_and_batch() -> None:
    single = json.dumps(valid())
    assert [r.pcr_number for r in parse_run_report_json(single)] == ["2026-000777"]
    batch = json.dumps({"reports": [valid(), schema_examples()[1]]}).encode()
    assert [r.pcr_number for r in parse_run_report_json(batch)] == ["2026-000777", "2026-000124"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json Quackenbush",
        b"[]",
        b'"Quackenbush"',
        json.dumps({"reports": [valid(), {"pcr_number": "Quackenbush"}]}).encode(),
    ],
)
def test_parse_run_report_json_invalid(body: bytes) -> None:
    with pytest.raises(ValidationError) as info:
        parse_run_report_json(body)
    assert "Quackenbush" not in str(info.value)


def test_a_str_holding_a_lone_surrogate_is_invalid_json() -> None:
    """Found by fuzzing: pydantic's from_json raised TypeError on such a str."""
    body = json.dumps(valid()).replace("Quackenbush", "Quacken\ud800bush")
    with pytest.raises(ValidationError) as info:
        parse_run_report_json(body)
    assert {e["type"] for e in info.value.errors()} == {"json_invalid"}
