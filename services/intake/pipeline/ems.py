"""The EMS pipeline: classify run reports, decide, store through the port — per agency and PCR.

A PCR number is an agency's own id: a report is keyed by (partner, PCR), so one agency can
never touch another's records. Records that are not overdoses are routine writes (the first
copy stored, a resend a duplicate; one whose PCR already has an overdose report is not stored:
the report stands). Overdoses are looked up and written as one batch: the first creates the
report, a changed one revises it, an identical one is a duplicate. The two commits run side by
side, as for HL7.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from services.intake.classify import Decision, Definition, classify_ems
from services.intake.classify import Medication as ClassifyMedication
from services.intake.death import death_of_run
from services.intake.metrics import INTAKE_MESSAGES
from services.intake.models import Channel, InboundStatus
from services.intake.partners import PartnerContext
from services.intake.pipeline.agency import AgencyRecord, AgencyReports
from services.intake.pipeline.hl7 import source_key
from services.intake.records import EmsRunReport
from services.intake.reports import Protector, ems_report
from services.intake.store import InboundRecord, IntakeStore, RoutineWrites
from shared.clock import Clock
from shared.events import OverdoseReported
from shared.ids import new_uuid
from shared.tracing import current_traceparent

__all__ = ["EmsIntake", "EmsOutcome", "EmsStatus", "EmsSubmission", "classify_run"]

EmsStatus = Literal["accepted", "revised", "unchanged", "duplicate", "not_overdose", "rejected"]


@dataclass(frozen=True, slots=True)
class EmsSubmission:
    """One run report (already parsed) from an authenticated EMS partner."""

    partner: PartnerContext
    index: int
    report: EmsRunReport | None
    error_code: str | None = None
    error_message: str | None = None
    traceparent: str | None = field(default_factory=current_traceparent)
    """The trace of the request it came in (shared.tracing): its event carries it."""


@dataclass(frozen=True, slots=True)
class EmsOutcome:
    index: int
    pcr_number: str | None
    status: EmsStatus
    overdose: bool
    opioid: bool
    any_drug: bool
    report_id: uuid.UUID | None
    revision: int | None
    reasons: tuple[tuple[str, str, str], ...]
    error_code: str | None = None
    error_message: str | None = None


def classify_run(run: EmsRunReport) -> Decision:
    return classify_ems(
        impressions=[("eSituation", code) for code in run.impressions],
        medications=[ClassifyMedication(m.rxnorm, m.response) for m in run.medications],
        narrative=[("eNarrative.01", run.narrative)] if run.narrative else [],
    )


def _rejected(s: EmsSubmission, code: str, message: str) -> EmsOutcome:
    pcr = s.report.pcr_number if s.report is not None else None
    return EmsOutcome(s.index, pcr, "rejected", False, False, False, None, None, (), code, message)


def _outcome(
    s: EmsSubmission,
    decision: Decision,
    status: EmsStatus,
    report_id: uuid.UUID | None = None,
    revision: int | None = None,
) -> EmsOutcome:
    assert s.report is not None
    return EmsOutcome(
        s.index,
        s.report.pcr_number,
        status,
        decision.is_overdose(Definition(s.partner.definition)),
        decision.opioid,
        decision.any_drug,
        report_id,
        revision,
        tuple((str(r.code), r.source, r.detail) for r in decision.reasons),
    )


def _run(s: EmsSubmission) -> EmsRunReport:
    assert s.report is not None
    return s.report


def _report_key(s: EmsSubmission) -> str:
    assert s.report is not None
    return source_key("ems", s.partner.partner_id, s.report.pcr_number)


class EmsIntake:
    """Receives EMS run reports; idempotent per agency and PCR number."""

    def __init__(
        self,
        *,
        store: IntakeStore,
        protector: Protector,
        clock: Clock,
        source: str = "/portline/intake",
        new_id: Callable[[], uuid.UUID] = new_uuid,
        max_event_bytes: int | None = None,
    ) -> None:
        self._store = store
        self._protector = protector
        self._clock = clock
        self._new_id = new_id
        self._agency = AgencyReports(
            store,
            source_kind="ems",
            channel=Channel.HTTP_EMS.value,
            source=source,
            new_id=new_id,
            max_event_bytes=max_event_bytes,
        )

    async def receive(self, submissions: Sequence[EmsSubmission]) -> list[EmsOutcome]:
        now = self._clock.now()
        outcomes: list[EmsOutcome | None] = [None] * len(submissions)
        decisions: dict[int, Decision] = {}
        for i, s in enumerate(submissions):
            if s.report is None:
                outcomes[i] = _rejected(
                    s,
                    s.error_code or "invalid_record",
                    s.error_message or "The record is invalid.",
                )
            else:
                decisions[i] = classify_run(s.report)
        overdose = {
            i
            for i, d in decisions.items()
            if d.is_overdose(Definition(submissions[i].partner.definition))
        }
        died = {  # not overdoses by themselves, but they may revise their PCR's report to fatal
            i for i in decisions if i not in overdose and death_of_run(_run(submissions[i])).fatal
        }
        routine = [i for i in decisions if i not in overdose and i not in died]
        general = [i for i in decisions if i in overdose or i in died]
        # As for HL7: the two commits run side by side, neither waits for the other.
        commits: list[Awaitable[None]] = []
        if routine:
            commits.append(self._store_routine(submissions, decisions, routine, outcomes, now))
        if general:
            commits.append(self._store_general(submissions, decisions, general, outcomes, now))
        if len(commits) == 1:
            await commits[0]
        elif commits:
            for result in await asyncio.gather(*commits, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
        done = [o for o in outcomes if o is not None]
        for status, count in Counter(o.status for o in done).items():
            INTAKE_MESSAGES.labels("ems", status).inc(count)
        return done

    async def _store_routine(
        self,
        submissions: Sequence[EmsSubmission],
        decisions: dict[int, Decision],
        indices: list[int],
        outcomes: list[EmsOutcome | None],
        now: datetime,
    ) -> None:
        """Records that are not overdoses: stored once, unless their PCR has a report."""
        rows: dict[str, InboundRecord] = {}
        report_keys: dict[str, str] = {}
        for i in indices:
            s = submissions[i]
            key = _report_key(s)
            dedupe = source_key("seen", key)
            if dedupe not in rows:
                rows[dedupe] = InboundRecord(
                    id=self._new_id(),
                    channel=Channel.HTTP_EMS.value,
                    partner_id=s.partner.partner_id,
                    status=InboundStatus.NOT_OVERDOSE.value,
                    dedupe_key=dedupe,
                    ack="",
                )
                report_keys[dedupe] = key
        result = await self._store.write_routine(
            RoutineWrites(list(rows.values()), now, report_keys=list(report_keys.values()))
        )
        first: set[str] = set()
        for i in indices:
            s = submissions[i]
            key = _report_key(s)
            dedupe = source_key("seen", key)
            if key in result.reports:
                report_id, revision = result.reports[key]
                outcomes[i] = _outcome(s, decisions[i], "unchanged", report_id, revision)
            elif dedupe in result.inserted and dedupe not in first:
                first.add(dedupe)
                outcomes[i] = _outcome(s, decisions[i], "not_overdose")
            else:
                outcomes[i] = _outcome(s, decisions[i], "duplicate")

    async def _store_general(
        self,
        submissions: Sequence[EmsSubmission],
        decisions: dict[int, Decision],
        indices: list[int],
        outcomes: list[EmsOutcome | None],
        now: datetime,
    ) -> None:
        """Overdoses: numbered agency records (pipeline.agency), one lookup and one commit."""

        def record(s: EmsSubmission, decision: Decision) -> AgencyRecord:
            run = _run(s)

            def build(
                report_id: uuid.UUID, revision: int, kept: tuple[bool, bool] | None
            ) -> OverdoseReported:
                return ems_report(
                    run,
                    decision,
                    program_id=s.partner.program_id,
                    partner_id=s.partner.partner_id,
                    report_id=report_id,
                    revision=revision,
                    received_at=now,
                    protector=self._protector,
                    kept=kept,
                )

            overdose = decision.is_overdose(Definition(s.partner.definition))
            return AgencyRecord(
                s.partner.partner_id,
                _report_key(s),
                (run, decision),
                build,
                revise_only=not overdose,
                traceparent=s.traceparent,
            )

        stored = await self._agency.store(
            [record(submissions[i], decisions[i]) for i in indices], now
        )
        for i, outcome in zip(indices, stored, strict=True):
            s = submissions[i]
            if outcome.status == "rejected":
                outcomes[i] = _rejected(s, outcome.error_code or "", outcome.error_message or "")
            else:
                outcomes[i] = _outcome(
                    s, decisions[i], outcome.status, outcome.report_id, outcome.revision
                )
