"""The law-enforcement pipeline: an agency's overdose report, keyed by its incident number.

One way: the agency learns only that its report was stored. It is a numbered agency record
(``pipeline.agency``): the first report of an incident number creates the report, a changed
one revises it (a later "the person died", say), the same one is a duplicate.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from services.intake.metrics import INTAKE_MESSAGES
from services.intake.models import Channel
from services.intake.partners import PartnerContext
from services.intake.pipeline.agency import AgencyOutcome, AgencyRecord, AgencyReports
from services.intake.pipeline.hl7 import source_key
from services.intake.records import LeOverdoseReport
from services.intake.reports import Protector, le_report
from services.intake.store import IntakeStore
from shared.clock import Clock
from shared.events import OverdoseReported
from shared.ids import new_uuid
from shared.tracing import current_traceparent

__all__ = ["LawEnforcementIntake"]


class LawEnforcementIntake:
    """Stores law-enforcement overdose reports; idempotent per agency and incident number."""

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
        self._protector = protector
        self._clock = clock
        self._agency = AgencyReports(
            store,
            source_kind="law_enforcement",
            channel=Channel.HTTP_LE.value,
            source=source,
            new_id=new_id,
            max_event_bytes=max_event_bytes,
        )

    async def receive(self, partner: PartnerContext, report: LeOverdoseReport) -> AgencyOutcome:
        now = self._clock.now()

        def build(
            report_id: uuid.UUID, revision: int, _kept: tuple[bool, bool] | None
        ) -> OverdoseReported:
            return le_report(
                report,
                program_id=partner.program_id,
                partner_id=partner.partner_id,
                report_id=report_id,
                revision=revision,
                received_at=now,
                protector=self._protector,
            )

        key = source_key("law_enforcement", partner.partner_id, report.incident_number)
        (outcome,) = await self._agency.store(
            [
                AgencyRecord(
                    partner.partner_id,
                    key,
                    (report,),
                    build,
                    traceparent=current_traceparent(),
                )
            ],
            now,
        )
        INTAKE_MESSAGES.labels("law_enforcement", outcome.status).inc()
        return outcome
