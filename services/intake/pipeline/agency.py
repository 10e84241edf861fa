"""Reports that agencies number themselves (EMS PCR numbers, law-enforcement incident numbers):
one decision loop for all of them.

A report is keyed by (partner, number), so one agency can never touch another's. The first
record with a number creates the report; one whose content differs revises it (revision + 1);
an identical one is a duplicate and changes nothing. A batch is one lookup and one commit
through the storage port; when another replica stored the first report of a number meanwhile,
the batch reads and decides again (the record is then a revision or a duplicate).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from services.intake.models import InboundStatus
from services.intake.pipeline.book import ReportBook
from services.intake.reports import content_hash, person_key
from services.intake.store import BatchWrites, InboundRecord, IntakeStore, StoreConflict
from shared.events import OverdoseReported
from shared.outbox_rows import EventTooLargeError

__all__ = ["AgencyOutcome", "AgencyRecord", "AgencyReports"]

AgencyStatus = Literal["accepted", "revised", "duplicate", "rejected", "not_overdose"]


@dataclass(frozen=True, slots=True)
class AgencyRecord:
    """One numbered record: where it is keyed, what a revision must differ in, and how its
    event is built for a report id and revision."""

    partner_id: str
    key: str
    content: tuple[object, ...]
    build: Callable[[uuid.UUID, int, tuple[bool, bool] | None], OverdoseReported]
    """(report id, revision, the report's kept (opioid, any_drug) or None) -> the event."""
    revise_only: bool = False
    """Not an overdose by itself but says the person died: it revises the number's report to
    fatal, and creates none (``not_overdose`` when there is none)."""
    traceparent: str | None = None
    """The trace of the request it came in (shared.tracing): its event carries it."""


@dataclass(frozen=True, slots=True)
class AgencyOutcome:
    status: AgencyStatus
    report_id: uuid.UUID | None
    revision: int | None
    error_code: str | None = None
    error_message: str | None = None


class AgencyReports:
    """Stores numbered agency records through the port (module docs)."""

    def __init__(
        self,
        store: IntakeStore,
        *,
        source_kind: str,
        channel: str,
        source: str,
        new_id: Callable[[], uuid.UUID],
        max_event_bytes: int | None,
    ) -> None:
        self._store = store
        self._source_kind = source_kind
        self._channel = channel
        self._source = source
        self._new_id = new_id
        self._max_event_bytes = max_event_bytes

    async def store(self, records: Sequence[AgencyRecord], now: datetime) -> list[AgencyOutcome]:
        try:
            return await self._decide_and_write(records, now)
        except StoreConflict:
            return await self._decide_and_write(records, now)

    async def _decide_and_write(
        self, records: Sequence[AgencyRecord], now: datetime
    ) -> list[AgencyOutcome]:
        known = await self._store.lookup(dedupe_keys=(), source_keys=[r.key for r in records])
        reports = ReportBook(known.reports)
        writes = BatchWrites(source=self._source, now=now, max_event_bytes=self._max_event_bytes)
        outcomes = [self._one(writes, reports, r) for r in records]
        writes.new_reports, writes.revised_reports = reports.pending()
        await self._store.write(writes)
        return outcomes

    def _one(self, writes: BatchWrites, reports: ReportBook, r: AgencyRecord) -> AgencyOutcome:
        current = reports.get(r.key)
        if r.revise_only and current is None:
            return AgencyOutcome("not_overdose", None, None)
        report_id = current.report_id if current else self._new_id()
        digest = content_hash(report_id, *r.content)
        if current and current.content_hash == digest:
            return AgencyOutcome("duplicate", report_id, current.revision)
        revision = current.revision + 1 if current else 1
        event = r.build(
            report_id, revision, (current.opioid, current.any_drug) if current else None
        )
        try:
            writes.publish(
                event, subject=person_key(event.blind_keys, report_id), traceparent=r.traceparent
            )
        except EventTooLargeError:
            return AgencyOutcome(
                "rejected",
                None,
                None,
                "event_too_large",
                "The report this record makes is larger than intake can publish.",
            )
        reports.put(r.key, r.partner_id, self._source_kind, event, digest)
        writes.inbound.append(
            InboundRecord(
                id=self._new_id(),
                channel=self._channel,
                partner_id=r.partner_id,
                status=InboundStatus.ACCEPTED.value,
                report_id=report_id,
                revision=revision,
            )
        )
        return AgencyOutcome("revised" if current else "accepted", report_id, revision)
