"""Intake's two pipelines and the report book they share.

* ``hl7`` — hospital ADT over MLLP and HTTP: screen, classify, decide, store, acknowledge;
* ``ems`` — EMS run reports (NEMSIS XML and JSON): classify, decide, store, answer per record;
* ``book`` — the overdose reports a batch creates or revises.

Both decide in plain Python and store through one port (``services.intake.store``).
"""

from services.intake.pipeline.ems import EmsIntake, EmsOutcome, EmsSubmission, classify_run
from services.intake.pipeline.hl7 import (
    EventTooLarge,
    HL7Intake,
    HL7Submission,
    PreparedSubmission,
    UnknownFacilityError,
)

__all__ = [
    "EmsIntake",
    "EmsOutcome",
    "EmsSubmission",
    "EventTooLarge",
    "HL7Intake",
    "HL7Submission",
    "PreparedSubmission",
    "UnknownFacilityError",
    "classify_run",
]
