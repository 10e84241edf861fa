"""Whether a report says the person died, and why: pure, explainable, like the classifier.

A fatal overdose must never become outreach to the person, so every source's way of saying
"died" is read, each with a machine-readable reason:

* **EMS (NEMSIS v3.5):** initial acuity ``eSituation.13 = 2813007`` (dead without
  resuscitation efforts); acuity upon release ``eDisposition.19 = 4219007 / 4219009`` (dead
  without / with resuscitation efforts); end of the cardiac arrest event ``eArrest.18 =
  3018003`` (expired in the field) or ``3018001`` (expired in the ED); an ED or hospital
  outcome ``eOutcome.01/.02 = 20`` (expired); and the JSON run report's ``fatal``.
* **ED (HL7 v2):** ``PID-30 = Y`` (patient death indicator), ``PID-29`` (death date and time),
  and ``PV1-36`` discharge disposition "expired" (table 0112 code 20; the hospice codes 40,
  41 and 42 are "expired" too), including in an A03 or A08 that arrives after the first
  message.
* **Law enforcement:** its ``fatal`` flag (``reports.le_report``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.intake.records import AdtMessage, EmsRunReport
from shared.events import DecisionReason

__all__ = ["Death", "death_of_adt", "death_of_run"]

DEAD_INITIAL_ACUITY = frozenset({"2813007"})
DEAD_RELEASE_ACUITY = frozenset({"4219007", "4219009"})
EXPIRED_ARREST_END = frozenset({"3018001", "3018003"})
EXPIRED_OUTCOME = frozenset({"20"})
EXPIRED_DISCHARGE = frozenset({"20", "40", "41", "42"})


@dataclass(frozen=True, slots=True)
class Death:
    """What a report says of a death: fatal or not, when if it says, and the reasons."""

    fatal: bool
    died_at: datetime | None
    reasons: tuple[DecisionReason, ...]


def _reason(code: str, source: str, detail: str) -> DecisionReason:
    return DecisionReason(code=code, source=source, detail=detail)


def death_of_run(run: EmsRunReport) -> Death:
    reasons: list[DecisionReason] = []
    if run.initial_acuity in DEAD_INITIAL_ACUITY:
        reasons.append(_reason("ems_dead_on_arrival", "eSituation.13", run.initial_acuity or ""))
    if run.release_acuity in DEAD_RELEASE_ACUITY:
        reasons.append(_reason("ems_dead_at_scene", "eDisposition.19", run.release_acuity or ""))
    if run.arrest_end in EXPIRED_ARREST_END:
        reasons.append(_reason("ems_arrest_expired", "eArrest.18", run.arrest_end or ""))
    for outcome in run.outcomes:
        if outcome in EXPIRED_OUTCOME:
            reasons.append(_reason("ems_outcome_expired", "eOutcome", outcome))
    if run.fatal:
        reasons.append(_reason("ems_reported_fatal", "fatal", "true"))
    return Death(bool(reasons), run.died_at, tuple(reasons))


def death_of_adt(adt: AdtMessage) -> Death:
    """A Y in PID-30 or an "expired" discharge says so; a death time alone does unless PID-30
    says N (some systems fill a default time)."""
    reasons: list[DecisionReason] = []
    indicator = (adt.death_indicator or "").strip().upper()
    if indicator == "Y":
        reasons.append(_reason("hl7_death_indicator", "pid_30", "Y"))
    disposition = (adt.discharge_disposition or "").strip()
    if disposition in EXPIRED_DISCHARGE:
        reasons.append(_reason("hl7_discharge_expired", "pv1_36", disposition))
    if adt.died_at is not None and (reasons or indicator != "N"):
        reasons.append(_reason("hl7_death_time", "pid_29", "present"))
    fatal = bool(reasons)
    return Death(fatal, adt.died_at if fatal else None, tuple(reasons))
