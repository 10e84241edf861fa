"""A fatal overdose is recognised wherever a source says so, with reasons; refusals of
oversized fields; and a later record of death revises the report, never creates one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.intake.death import death_of_adt, death_of_run
from services.intake.ems_json import EmsRunReportIn, to_record
from services.intake.hl7 import parse_adt, screen
from services.intake.hl7.errors import FieldTooLongError
from services.intake.nemsis import parse_ems_dataset
from services.intake.records import AdtMessage, EmsRunReport, HL7Header, Identity
from tests.hl7_builder import adt

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nemsis"
NOW = datetime.now(UTC)


def _header() -> HL7Header:
    return screen(adt("H1")).header


def _adt(**kw: object) -> AdtMessage:
    values: dict[str, object] = {
        "header": _header(),
        "identity": Identity(),
        "visit_number": "V1",
        "patient_class": "E",
        "admit_at": NOW,
        "discharge_disposition": None,
        "diagnosis_codes": (),
        "chief_complaints": (),
    }
    values.update(kw)
    return AdtMessage(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "fatal", "codes"),
    [
        ({}, False, []),
        ({"death_indicator": "Y"}, True, ["hl7_death_indicator"]),
        ({"discharge_disposition": "20"}, True, ["hl7_discharge_expired"]),
        ({"discharge_disposition": "41"}, True, ["hl7_discharge_expired"]),
        ({"discharge_disposition": "01"}, False, []),
        ({"died_at": NOW}, True, ["hl7_death_time"]),
        ({"died_at": NOW, "death_indicator": "N"}, False, []),
        ({"death_indicator": "Y", "died_at": NOW}, True, ["hl7_death_indicator", "hl7_death_time"]),
    ],
)
def test_an_ed_record_says_the_patient_died_by_pid_30_pid_29_or_pv1_36(
    fields: dict[str, object], fatal: bool, codes: list[str]
) -> None:
    death = death_of_adt(_adt(**fields))
    assert death.fatal is fatal
    assert [r.code for r in death.reasons] == codes


@pytest.mark.parametrize(
    ("fields", "codes"),
    [
        ({}, []),
        ({"initial_acuity": "2813007"}, ["ems_dead_on_arrival"]),
        ({"release_acuity": "4219007"}, ["ems_dead_at_scene"]),
        ({"release_acuity": "4219009"}, ["ems_dead_at_scene"]),
        ({"release_acuity": "4219001"}, []),
        ({"arrest_end": "3018003"}, ["ems_arrest_expired"]),
        ({"arrest_end": "3018007"}, []),  # ROSC in the field
        ({"outcomes": ("01", "20")}, ["ems_outcome_expired"]),
        ({"fatal": True}, ["ems_reported_fatal"]),
    ],
)
def test_an_ems_record_says_the_patient_died_by_its_nemsis_codes(
    fields: dict[str, object], codes: list[str]
) -> None:
    run = EmsRunReport(
        pcr_number="P1",
        agency_id=None,
        identity=Identity(),
        incident_at=NOW,
        scene=None,
        impressions=(),
        medications=(),
        drug_use_indicators=(),
        **fields,  # type: ignore[arg-type]
    )
    death = death_of_run(run)
    assert [r.code for r in death.reasons] == codes
    assert death.fatal is bool(codes)


def _nemsis(insert: str, replace: tuple[str, str] | None = None) -> bytes:
    xml = (FIXTURES / "single_pcr.xml").read_text()
    xml = xml.replace(
        "<eDisposition.27>4227001</eDisposition.27>",
        "<eDisposition.27>4227001</eDisposition.27>" + insert,
    )
    if replace is not None:
        xml = xml.replace(*replace)
    return xml.encode()


def test_nemsis_release_acuity_and_arrest_end_are_read() -> None:
    (result,) = parse_ems_dataset(_nemsis("<eDisposition.19>4219007</eDisposition.19>"))
    assert result.report is not None
    assert result.report.release_acuity == "4219007"
    assert death_of_run(result.report).fatal


def test_nemsis_refuses_an_oversized_name_for_that_record_only() -> None:
    xml = _nemsis(
        "", ("<ePatient.02>Quackenbush</ePatient.02>", f"<ePatient.02>{'Q' * 101}</ePatient.02>")
    )
    (result,) = parse_ems_dataset(xml)
    assert result.report is None
    assert result.error is not None
    assert result.error.code == "field_too_long"
    assert "Q" * 20 not in result.error.message  # the field, never the value


def test_the_json_run_report_says_fatal_in_words_or_nemsis_codes() -> None:
    base = {"pcr_number": "P-1", "incident_at": NOW.isoformat()}
    assert death_of_run(to_record(EmsRunReportIn.model_validate(base | {"fatal": True}))).fatal
    coded = base | {"disposition": {"release_acuity": "4219009"}}
    assert death_of_run(to_record(EmsRunReportIn.model_validate(coded))).fatal
    assert not death_of_run(to_record(EmsRunReportIn.model_validate(base))).fatal


def test_an_a03_saying_expired_is_screened_as_a_death_and_parsed_with_its_time() -> None:
    died = (NOW - timedelta(hours=3)).strftime("%Y%m%d%H%M%z")
    segments = adt("D1", trigger="A03", dx=None, complaint=None).rstrip("\r").split("\r")
    pid = next(i for i, seg in enumerate(segments) if seg.startswith("PID|"))
    fields = segments[pid].split("|")
    fields += [""] * (31 - len(fields))
    fields[29], fields[30] = died, "Y"
    segments[pid] = "|".join(fields)
    message = "\r".join(segments) + "\r"
    screened = screen(message)
    assert screened.death
    parsed = parse_adt(message, screened)
    assert parsed.death_indicator == "Y"
    assert parsed.died_at is not None
    assert death_of_adt(parsed).fatal
    # an admission (A04) is not read for death: the cheap screen stays cheap
    assert not screen(message.replace("A03", "A04")).death


def test_an_oversized_hl7_name_is_refused_with_its_field() -> None:
    message = adt("LONG-1", family="X" * 101)
    with pytest.raises(FieldTooLongError) as caught:
        parse_adt(message, screen(message))
    assert caught.value.location == ("PID", 1, 5)
    assert caught.value.hl7_error_code == "102"
    long_complaint = adt("LONG-2", complaint="overdose " * 300)
    with pytest.raises(FieldTooLongError):
        screen(long_complaint)
