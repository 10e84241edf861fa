"""The documented JSON EMS run report: a simpler alternative to NEMSIS XML for EMS partners.

These pydantic models are the public JSON schema (they appear in OpenAPI). One report is an
:class:`EmsRunReportIn`; a batch is ``{"reports": [...]}`` (:class:`EmsRunReportBatch`,
1-500 reports). :func:`to_record` converts a validated report into the same
:class:`~services.intake.records.EmsRunReport` the NEMSIS parser produces.

Rules (tests pin each one)
    * Unknown fields are rejected (``extra="forbid"``), strings are stripped, and validation
      errors never echo the submitted values (``hide_input_in_errors=True``): ``str()`` of a
      :class:`pydantic.ValidationError` carries locations and rule names only. Note that
      ``ValidationError.errors()`` still holds the input; an HTTP layer must not return it
      as-is (FastAPI's default 422 handler does include ``input``).
    * ``incident_at`` and ``medications[].given_at`` must carry a UTC offset, and have a UTC
      equivalent (``0001-01-01T00:00:00+01:00`` has none, and no consumer could convert it).
    * ``patient.date_of_birth`` must be on or after 1900-01-01 and not after today (today
      as it is in UTC+14, the first zone to reach a date, so a newborn is never rejected).
    * Phones are 7-20 characters of digits, spaces and ``+ ( ) . / - x``.
    * Impressions are ICD-10-CM shaped (``^[A-TV-Z][0-9][0-9AB](\\.?[0-9A-TV-Z]{1,4})?$``,
      case-insensitive, at most 10 characters) and are upper-cased; the primary comes first.
    * ``medications[].response`` accepts ``improved``/``unchanged``/``worse`` (any case) or
      the NEMSIS codes 9916001/9916003/9916005; the record always holds the code.
    * NEMSIS code lists (dispositions, drug use indicators) are 7-digit codes.
    * ``peer_follow_up`` defaults to ``unknown``; ``leave_behind`` items come from a fixed
      vocabulary (duplicates are dropped in the record).
    * The record's ``identity.mrn`` is always ``None`` (EMS has no MRN).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)
from pydantic_core import from_json

from services.intake.nemsis import LEAVE_BEHIND_ITEMS
from services.intake.records import Address, EmsMedication, EmsRunReport, Identity

__all__ = [
    "AddressIn",
    "DispositionIn",
    "EmsRunReportBatch",
    "EmsRunReportIn",
    "MedicationIn",
    "PatientIn",
    "parse_run_report_json",
    "to_record",
    "to_records",
]

MAX_BATCH: Final = 500

RESPONSE_CODES: Final = {"improved": "9916001", "unchanged": "9916003", "worse": "9916005"}
"""Words accepted for ``medications[].response`` and the NEMSIS eMedications.07 codes."""

ICD10_PATTERN: Final = r"^[A-TV-Za-tv-z][0-9][0-9ABab](\.?[0-9A-TV-Za-tv-z]{1,4})?$"
_NEMSIS_CODE: Final = r"^[0-9]{7}$"

LeaveBehindItem = Literal["naloxone_kit", "resource_information", "fentanyl_test_strips"]
PeerFollowUp = Literal["accepted", "declined", "unknown"]
ResponseValue = Literal["improved", "unchanged", "worse", "9916001", "9916003", "9916005"]


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _upper(value: str) -> str:
    return value.upper()


def _has_utc_equivalent(value: datetime) -> datetime:
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the date-time has no UTC equivalent") from None
    return value


DateTime = Annotated[AwareDatetime, AfterValidator(_has_utc_equivalent)]
Phone = Annotated[str, StringConstraints(min_length=7, max_length=20, pattern=r"^[0-9+()./ xX-]+$")]
Impression = Annotated[
    str, StringConstraints(max_length=10, pattern=ICD10_PATTERN), AfterValidator(_upper)
]
NemsisCode = Annotated[str, StringConstraints(pattern=_NEMSIS_CODE)]
Response = Annotated[ResponseValue, BeforeValidator(_lower)]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        hide_input_in_errors=True,
        str_strip_whitespace=True,
    )


class AddressIn(_Model):
    """A postal address (patient's home or the incident scene)."""

    street: str | None = Field(
        default=None, max_length=200, description="Street address, incl. house number."
    )
    city: str | None = Field(
        default=None, max_length=100, description="City name (or GNIS code as in NEMSIS)."
    )
    state: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9]{2}$",
        description="Two-letter USPS state code (NC) or two-digit ANSI/FIPS code (37).",
    )
    postal_code: str | None = Field(
        default=None, pattern=r"^[0-9]{5}(-?[0-9]{4})?$", description="ZIP or ZIP+4."
    )
    county: str | None = Field(
        default=None, max_length=64, description="County name or 5-digit FIPS code."
    )


class PatientIn(_Model):
    """Who the report is about. Every field is optional and every field is PHI."""

    family_name: str | None = Field(default=None, max_length=100, description="Last name.")
    given_name: str | None = Field(default=None, max_length=100, description="First name.")
    middle_name: str | None = Field(
        default=None, max_length=100, description="Middle name or initial."
    )
    date_of_birth: date | None = Field(
        default=None,
        description="Date of birth (YYYY-MM-DD); on or after 1900-01-01, not in the future.",
    )
    sex: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{1,16}$",
        description="Sex as recorded by EMS: F/M/U or a NEMSIS ePatient.25 code (9919001).",
    )
    phones: list[Phone] = Field(
        default_factory=list,
        max_length=10,
        description="Phone numbers to reach the person, most useful first (7-20 characters).",
    )
    address: AddressIn | None = Field(default=None, description="Home address.")
    language: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$",
        max_length=35,
        description="Preferred language: ISO 639 code or BCP 47 tag (en, spa, es-MX).",
    )

    @field_validator("date_of_birth")
    @classmethod
    def _plausible_dob(cls, value: date | None) -> date | None:
        if value is None:
            return None
        if value < date(1900, 1, 1):
            raise ValueError("date of birth must be on or after 1900-01-01")
        if value > datetime.now(timezone(timedelta(hours=14))).date():
            raise ValueError("date of birth must not be in the future")
        return value


class MedicationIn(_Model):
    """A medication EMS (or a bystander) gave, with the patient's response."""

    rxnorm: str = Field(
        pattern=r"^[0-9]{1,9}$", description="RxNorm code of the medication (naloxone: 7242)."
    )
    response: Response | None = Field(
        default=None,
        description=(
            "Response to the medication: improved, unchanged, worse, or the NEMSIS "
            "eMedications.07 code 9916001 (improved), 9916003 (unchanged), 9916005 (worse)."
        ),
    )
    given_at: DateTime | None = Field(
        default=None, description="When it was given (ISO 8601 with UTC offset)."
    )


class DispositionIn(_Model):
    """NEMSIS v3.5 incident disposition codes (eDisposition.27-.30)."""

    unit: NemsisCode | None = Field(
        default=None, description="Unit disposition, eDisposition.27 (4227001 contact made)."
    )
    patient_evaluation_care: NemsisCode | None = Field(
        default=None,
        description="Patient evaluation/care, eDisposition.28 (4228003 refused care).",
    )
    crew: NemsisCode | None = Field(default=None, description="Crew disposition, eDisposition.29.")
    transport: NemsisCode | None = Field(
        default=None,
        description="Transport disposition, eDisposition.30 (4230009 patient refused transport).",
    )
    destination: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="Where EMS transported the patient: the destination's code, "
        "eDisposition.02 (the facility id the program's hospital partner sends as MSH-4), "
        "else its name, eDisposition.01. Linking evidence: the ED visit at that hospital.",
    )
    release_acuity: NemsisCode | None = Field(
        default=None,
        description="Acuity upon EMS release of the patient, eDisposition.19 (4219007 / 4219009 "
        "dead without / with resuscitation efforts).",
    )
    arrest_end: NemsisCode | None = Field(
        default=None,
        description="End of the cardiac arrest event, eArrest.18 (3018003 expired in the field, "
        "3018001 expired in the ED).",
    )


_EXAMPLE_OD: Final[dict[str, Any]] = {
    "pcr_number": "2026-000123",
    "agency_id": "NC-EMS-041",
    "incident_at": "2026-11-20T22:14:00-05:00",
    "patient": {
        "family_name": "Doe",
        "given_name": "Jordan",
        "middle_name": None,
        "date_of_birth": "1990-04-02",
        "sex": "F",
        "phones": ["336-555-0100"],
        "address": {
            "street": "100 Example Ave",
            "city": "Greensboro",
            "state": "NC",
            "postal_code": "27401",
            "county": "Guilford",
        },
        "language": "en",
    },
    "scene": {
        "street": "400 Example St",
        "city": "Greensboro",
        "state": "NC",
        "postal_code": "27401",
        "county": "Guilford",
    },
    "impressions": ["T40.411A", "F11.20"],
    "medications": [
        {"rxnorm": "7242", "response": "unchanged", "given_at": "2026-11-20T22:26:00-05:00"},
        {"rxnorm": "7242", "response": "improved", "given_at": "2026-11-20T22:30:00-05:00"},
    ],
    "drug_use_indicators": ["3117003"],
    "disposition": {
        "unit": "4227001",
        "patient_evaluation_care": "4228001",
        "crew": "4229001",
        "transport": "4230001",
        "destination": "GUILFORD-1",
    },
    "peer_follow_up": "accepted",
    "leave_behind": ["naloxone_kit", "resource_information"],
    "narrative": "Found unresponsive, pinpoint pupils. Naloxone 4 mg IN x2, improved.",
}

_EXAMPLE_REFUSAL: Final[dict[str, Any]] = {
    "pcr_number": "2026-000124",
    "agency_id": "NC-EMS-041",
    "incident_at": "2026-11-21T01:02:00-05:00",
    "patient": {"given_name": "Sam", "sex": "M"},
    "scene": {"city": "Greensboro", "state": "NC", "postal_code": "27406"},
    "impressions": ["F11.920"],
    "medications": [{"rxnorm": "7242", "response": "9916001"}],
    "disposition": {
        "unit": "4227001",
        "patient_evaluation_care": "4228003",
        "crew": "4229013",
        "transport": "4230009",
    },
    "peer_follow_up": "declined",
    "leave_behind": ["naloxone_kit", "resource_information", "fentanyl_test_strips"],
}


class EmsRunReportIn(_Model):
    """One EMS patient care report in PORTline's JSON format."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_OD, _EXAMPLE_REFUSAL]})

    pcr_number: str = Field(
        min_length=1,
        max_length=64,
        description="The agency's patient care report number (NEMSIS eRecord.01), unique "
        "per agency.",
    )
    agency_id: str | None = Field(
        default=None,
        max_length=64,
        description="EMS agency number as the state assigned it (NEMSIS dAgency.02).",
    )
    incident_at: DateTime = Field(
        description="Start of the incident (PSAP call or unit notified), ISO 8601 with a "
        "UTC offset."
    )
    patient: PatientIn | None = Field(
        default=None, description="The person; omit for a de-identified report."
    )
    scene: AddressIn | None = Field(default=None, description="Where the incident happened.")
    impressions: list[Impression] = Field(
        default_factory=list,
        max_length=20,
        description="Provider impressions as ICD-10-CM codes, primary first (F11.20, T40.1X1A).",
    )
    medications: list[MedicationIn] = Field(
        default_factory=list, max_length=100, description="Medications given, in order."
    )
    drug_use_indicators: list[NemsisCode] = Field(
        default_factory=list,
        max_length=20,
        description="NEMSIS eHistory.17 alcohol/drug use indicator codes (3117003 drug "
        "paraphernalia at scene).",
    )
    disposition: DispositionIn | None = Field(
        default=None, description="NEMSIS incident disposition codes."
    )
    peer_follow_up: PeerFollowUp = Field(
        default="unknown",
        description='The answer to "may a peer follow up with you?". A person who declined '
        "receives no outreach.",
    )
    leave_behind: list[LeaveBehindItem] = Field(
        default_factory=list,
        max_length=len(LEAVE_BEHIND_ITEMS) * 2,
        description="What EMS left with the person.",
    )
    narrative: str | None = Field(
        default=None, max_length=10_000, description="The PCR narrative (free text)."
    )
    fatal: bool = Field(
        default=False,
        description="The patient died (dead at the scene, or expired in the agency's care). A "
        "fatal overdose never creates a task to reach the person.",
    )
    died_at: DateTime | None = Field(default=None, description="When, if known.")


class EmsRunReportBatch(_Model):
    """Several run reports in one request."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"reports": [_EXAMPLE_OD]}]})

    reports: list[EmsRunReportIn] = Field(
        min_length=1, max_length=MAX_BATCH, description=f"1 to {MAX_BATCH} run reports."
    )


def _address(model: AddressIn | None) -> Address | None:
    if model is None:
        return None
    address = Address(
        street=model.street or None,
        city=model.city or None,
        state=model.state.upper() if model.state else None,
        postal_code=model.postal_code or None,
        county=model.county or None,
    )
    return None if address == Address() else address


def _aware(value: datetime) -> datetime:
    """Swap pydantic's TzInfo for a plain :class:`datetime.timezone` with the same offset."""
    offset = value.utcoffset()
    return value if offset is None else value.replace(tzinfo=timezone(offset))


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _identity(model: PatientIn | None) -> Identity:
    if model is None:
        return Identity()
    return Identity(
        family=model.family_name or None,
        given=model.given_name or None,
        middle=model.middle_name or None,
        dob=model.date_of_birth,
        sex=model.sex,
        phones=_unique(model.phones),
        address=_address(model.address),
        mrn=None,
        mrn_authority=None,
        language=model.language,
    )


def to_record(model: EmsRunReportIn) -> EmsRunReport:
    """The validated JSON report as the intake record shared with the NEMSIS parser."""
    disposition = model.disposition or DispositionIn()
    return EmsRunReport(
        pcr_number=model.pcr_number,
        agency_id=model.agency_id or None,
        identity=_identity(model.patient),
        incident_at=_aware(model.incident_at),
        scene=_address(model.scene),
        impressions=_unique(model.impressions),
        medications=tuple(
            EmsMedication(
                rxnorm=m.rxnorm,
                response=RESPONSE_CODES.get(m.response, m.response) if m.response else None,
                given_at=_aware(m.given_at) if m.given_at else None,
            )
            for m in model.medications
        ),
        drug_use_indicators=_unique(model.drug_use_indicators),
        unit_disposition=disposition.unit,
        patient_evaluation_care=disposition.patient_evaluation_care,
        crew_disposition=disposition.crew,
        transport_disposition=disposition.transport,
        destination=disposition.destination,
        consent=model.peer_follow_up,
        narrative=model.narrative or None,
        leave_behind=_unique(list(model.leave_behind)),
        release_acuity=disposition.release_acuity,
        arrest_end=disposition.arrest_end,
        fatal=model.fatal,
        died_at=_aware(model.died_at) if model.died_at else None,
    )


def to_records(batch: EmsRunReportBatch) -> list[EmsRunReport]:
    return [to_record(report) for report in batch.reports]


def parse_run_report_json(data: bytes | str) -> list[EmsRunReport]:
    """Validate a JSON body holding one report or ``{"reports": [...]}``; all or nothing.

    Raises :class:`pydantic.ValidationError` (values hidden) for invalid JSON or content.
    """
    if isinstance(data, str):
        # A lone surrogate cannot be encoded as UTF-8; passed through, it becomes invalid
        # UTF-8 that pydantic reports as json_invalid (from_json raises TypeError on such a str).
        data = data.encode("utf-8", "surrogatepass")
    try:
        raw = from_json(data)
    except ValueError:
        # Not JSON: let pydantic raise its json_invalid ValidationError.
        return [to_record(EmsRunReportIn.model_validate_json(data))]
    if isinstance(raw, dict) and "reports" in raw:
        return to_records(EmsRunReportBatch.model_validate(raw))
    return [to_record(EmsRunReportIn.model_validate(raw))]
