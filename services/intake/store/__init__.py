"""Intake's storage port: what a batch reads, what it writes, and the two adapters.

Both pipelines (``services.intake.pipeline``) decide what a batch of messages does once, in
plain Python, and hand the result to one port as one value:

* :class:`RoutineWrites` — valid messages that are not overdoses (almost all of an ED
  feed). Nothing is read first: the first copy of a message is inserted, and a resend gets
  the ACK its first copy got (``ON CONFLICT DO NOTHING``, then read the originals). An EMS
  record whose PCR already has an overdose report is not stored: the report stands.
* :class:`BatchWrites` — everything else: overdose reports and their revisions, rejected
  messages kept sealed for replay, replays that fail again, the inbound records, and the
  outbox rows of the events. After :meth:`IntakeStore.lookup` of the ACKs of resends and
  the reports the batch touches, all of it commits together or not at all.

Adapters: :class:`~services.intake.store.sqlite.SqliteStore` (SQLAlchemy, the embedded
default and the unit tests) and :class:`~services.intake.store.postgres.PostgresStore`
(asyncpg: one statement per write, ADR 0011/0012). They take the same values and give the
same answers; ``tests/unit/test_intake_store.py`` runs one contract against both.

Exceptions::

    Exception
    └── StoreConflict   a unique key was taken meanwhile (another replica stored the same
                        message or report first): read again and decide again
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from shared.envelope import Envelope, Event
from shared.outbox_rows import outbox_row

__all__ = [
    "BatchWrites",
    "InboundRecord",
    "IntakeStore",
    "Known",
    "OnPublished",
    "RejectedAgain",
    "ReportRow",
    "RoutineResult",
    "RoutineWrites",
    "StoreConflict",
    "StoredReport",
]


class StoreConflict(Exception):
    """A unique key was taken meanwhile; the batch reads and decides again."""


@dataclass(slots=True)
class InboundRecord:
    """One row of ``inbound_message``: a received message (or one EMS record)."""

    id: uuid.UUID
    channel: str
    partner_id: str | None
    status: str
    dedupe_key: str | None = None
    ack: str | None = None
    report_id: uuid.UUID | None = None
    revision: int | None = None
    reason_code: str | None = None
    reason: str | None = None
    raw_sealed: str | None = None


@dataclass(slots=True)
class ReportRow:
    """One row of ``report``: an overdose report as last published."""

    id: uuid.UUID
    source_key: str
    partner_id: str
    source_kind: str
    revision: int
    content_hash: str
    opioid: bool
    any_drug: bool


@dataclass(frozen=True, slots=True)
class StoredReport:
    report_id: uuid.UUID
    revision: int
    content_hash: str
    opioid: bool = False
    any_drug: bool = False


@dataclass(frozen=True, slots=True)
class RejectedAgain:
    """A replay of a rejected message that was refused again: its record gets the new answer."""

    inbound_id: uuid.UUID
    reason_code: str
    reason: str
    ack: str | None


@dataclass(frozen=True, slots=True)
class Known:
    """What the store holds of a batch's keys: ACKs given to resends, reports by source key."""

    acks: dict[str, str] = field(default_factory=dict)
    reports: dict[str, StoredReport] = field(default_factory=dict)


class BatchWrites:
    """What one batch writes, beside its routine messages: one commit.

    :meth:`publish` is ``UnitOfWork.publish`` with the trace context given, not current; it
    turns the event into its outbox row at once, so an event too large for the broker raises
    (``shared.outbox_rows.EventTooLargeError``) before the batch has changed anything for it.
    """

    def __init__(self, *, source: str, now: datetime, max_event_bytes: int | None = None) -> None:
        self.source = source
        self.now = now
        self._max_event_bytes = max_event_bytes
        self.inbound: list[InboundRecord] = []
        self.new_reports: list[ReportRow] = []
        self.revised_reports: list[ReportRow] = []
        self.rejected_again: list[RejectedAgain] = []
        self.replayed: list[uuid.UUID] = []
        """Rejected records whose replay was accepted now."""
        self.outbox: list[dict[str, Any]] = []

    def publish(self, event: Event, *, subject: str, traceparent: str | None = None) -> Envelope:
        """Stage an event; `traceparent` is the trace of the request or frame it came in."""
        envelope = Envelope.wrap(event, source=self.source, subject=subject, time=self.now)
        self.outbox.append(
            outbox_row(envelope, max_bytes=self._max_event_bytes, traceparent=traceparent)
        )
        return envelope

    def __bool__(self) -> bool:
        return bool(
            self.inbound
            or self.new_reports
            or self.revised_reports
            or self.rejected_again
            or self.replayed
            or self.outbox
        )


@dataclass(frozen=True, slots=True)
class RoutineWrites:
    """Routine messages: first copy stored, resends answered with the first copy's ACK.

    ``report_keys[i]``, when given, is the source key of the report that ``rows[i]`` would
    be about (an EMS PCR): a record whose report exists is not stored.
    """

    rows: Sequence[InboundRecord]
    now: datetime
    report_keys: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class RoutineResult:
    inserted: frozenset[str]
    """Dedupe keys this write stored."""
    acks: dict[str, str]
    """The ACK of each dedupe key: the new row's, or the first copy's for a resend."""
    reports: dict[str, tuple[uuid.UUID, int]]
    """Reports found for ``report_keys``: (report id, revision) by source key."""


class IntakeStore(Protocol):
    """The port both pipelines write through (module docs)."""

    async def lookup(self, *, dedupe_keys: Sequence[str], source_keys: Sequence[str]) -> Known:
        """The ACKs already given to these messages and the reports of these source keys."""
        ...

    async def write(self, writes: BatchWrites) -> None:
        """Everything in ``writes`` in one commit; raises :class:`StoreConflict` when a
        unique key was taken meanwhile (nothing is then written)."""
        ...

    async def write_routine(self, writes: RoutineWrites) -> RoutineResult:
        """Routine messages in one commit, first copy wins (see :class:`RoutineWrites`)."""
        ...

    async def close(self) -> None: ...


OnPublished = Callable[[], None]
"""Called after a commit that wrote outbox rows (the relay's wake-up)."""
