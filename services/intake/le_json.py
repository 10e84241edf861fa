"""The law-enforcement overdose report: ODMAP's data points, as JSON.

Police often reach an overdose first and give naloxone. An agency reports when and where, fatal
or not, naloxone given (and doses), the drugs suspected and its own incident number; the
person's identity and phone only when the person agreed to be contacted. The flow is one way:
law enforcement sends and never reads anything back.

Validation is strict (unknown fields refused, values never echoed in errors). A person given
without consent is refused (``identity_without_consent``), so identity never arrives by
mistake.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from services.intake.ems_json import AddressIn, PatientIn
from services.intake.ems_json import _address as _address
from services.intake.ems_json import _aware as _aware
from services.intake.ems_json import _identity as _identity
from services.intake.records import Identity, LeOverdoseReport

__all__ = [
    "LeLocationIn",
    "LeNaloxoneIn",
    "LeOverdoseReportIn",
    "SuspectedDrug",
    "to_le_report",
]

SuspectedDrug = Literal[
    "fentanyl",
    "heroin",
    "prescription_opioid",
    "other_opioid",
    "cocaine",
    "methamphetamine",
    "other_stimulant",
    "benzodiazepine",
    "xylazine",
    "alcohol",
    "other",
    "unknown",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, str_strip_whitespace=True)


class LeLocationIn(_Model):
    """Where it happened: an address or coordinates, and the county."""

    address: AddressIn | None = Field(default=None, description="The scene's address.")
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)

    @model_validator(mode="after")
    def _where(self) -> LeLocationIn:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("give latitude and longitude together")
        return self


class LeNaloxoneIn(_Model):
    given: bool = Field(description="Whether anyone (officers, bystanders) gave naloxone.")
    doses: int | None = Field(default=None, ge=0, le=20, description="How many doses, if known.")


class LeOverdoseReportIn(_Model):
    """One overdose, as a law-enforcement agency reports it (ODMAP's data points)."""

    incident_number: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="The agency's own incident number. Sending it again with other content "
        "revises the report; the same content is a duplicate.",
    )
    occurred_at: AwareDatetime = Field(description="When, with its UTC offset.")
    location: LeLocationIn
    fatal: bool = Field(description="Whether the person died.")
    naloxone: LeNaloxoneIn
    suspected_drugs: list[SuspectedDrug] = Field(default_factory=list, max_length=12)
    consent: Literal["accepted", "declined", "unknown"] = Field(
        description="The person's answer to a peer from the program following up."
    )
    person: PatientIn | None = Field(
        default=None,
        description="Only when consent is `accepted`: the person's name, date of birth and "
        "phone, so a peer can reach them. Refused otherwise.",
    )

    model_config = ConfigDict(
        extra="forbid",
        hide_input_in_errors=True,
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "incident_number": "GPD-2026-004411",
                    "occurred_at": "2026-11-20T22:14:00-05:00",
                    "location": {
                        "address": {"street": "400 Market St", "city": "Greensboro"},
                        "latitude": 36.0726,
                        "longitude": -79.7920,
                    },
                    "fatal": False,
                    "naloxone": {"given": True, "doses": 2},
                    "suspected_drugs": ["fentanyl"],
                    "consent": "accepted",
                    "person": {
                        "family_name": "Rivera",
                        "given_name": "Jordan",
                        "phones": ["336-555-0142"],
                    },
                },
                {
                    "incident_number": "GPD-2026-004412",
                    "occurred_at": "2026-11-21T03:40:00-05:00",
                    "location": {"address": {"county": "Guilford", "state": "NC"}},
                    "fatal": True,
                    "naloxone": {"given": False},
                    "suspected_drugs": ["unknown"],
                    "consent": "unknown",
                },
            ]
        },
    )

    @model_validator(mode="after")
    def _identity_only_with_consent(self) -> LeOverdoseReportIn:
        if self.person is not None and self.consent != "accepted":
            raise ValueError(
                "identity_without_consent: send the person only when they agreed to be "
                "contacted (consent = accepted)"
            )
        return self


def to_le_report(model: LeOverdoseReportIn) -> LeOverdoseReport:
    """The validated report as intake's record (plaintext: it stays in memory)."""
    return LeOverdoseReport(
        incident_number=model.incident_number,
        occurred_at=_aware(model.occurred_at),
        scene=_address(model.location.address),
        latitude=model.location.latitude,
        longitude=model.location.longitude,
        fatal=model.fatal,
        naloxone_given=model.naloxone.given,
        naloxone_doses=model.naloxone.doses,
        suspected_drugs=tuple(dict.fromkeys(model.suspected_drugs)),
        consent=model.consent,
        identity=_identity(model.person) if model.person is not None else Identity(),
    )
