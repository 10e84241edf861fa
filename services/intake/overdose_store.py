"""Overdoses on PostgreSQL in a few round trips: read the reports, write everything.

Beside the routine fast path (routine_store), a batch's EMS overdoses took a SQLAlchemy unit
of work: BEGIN, the report lookup, three inserts (inbound records, reports, outbox) and
COMMIT, about 1.5 ms of intake's CPU per batch, most of it in SQLAlchemy's execution layers
(ADR 0011). HL7 overdoses that are not rejected or replayed take this store too, with one
more read first, for the ACKs of resends (ADR 0012).

Here the lookup is one statement and the writes are another: a single statement, atomic
and durable on its own, inserts the new reports, updates the revised ones and inserts the
inbound records and the outbox rows. Nothing needs a transaction around the reads and the
write. The unit of work read without locking too, so a concurrent first report of the same
PCR or visit fails the write (unique source key, or an HL7 message's unique dedupe key) and
nothing is kept, as before: an EMS partner's resend gets `duplicate` or `revised`, and HL7
intake retries the batch at once, finding the other replica's ACK.

Only on PostgreSQL, on the routine store's connections. The embedded SQLite default keeps
the general unit of work.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.intake.routine_store import Connections
from shared.clock import Clock
from shared.envelope import Envelope, Event
from shared.uow import outbox_row

__all__ = ["OverdoseStore", "OverdoseWrites", "StoredReport"]

_REPORTS = (
    "SELECT source_key, id, revision, content_hash FROM report WHERE source_key = ANY($1::text[])"
)

# One statement: each part is a data-modifying CTE; they all commit, or none does. The
# outbox rows keep their staging order (WITH ORDINALITY), so one key's events get ids, and
# leave, in the order they were published.
_WRITE = """
WITH new_report AS (
    INSERT INTO report (id, source_key, partner_id, source_kind, revision, content_hash,
                        opioid, any_drug, created_at, updated_at)
    SELECT t.id, t.source_key, t.partner_id, t.source_kind, t.revision, t.content_hash,
           t.opioid, t.any_drug, $1, $1
    FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[],
                $8::bool[], $9::bool[])
         AS t(id, source_key, partner_id, source_kind, revision, content_hash, opioid,
              any_drug)
), revised_report AS (
    UPDATE report
    SET revision = u.revision, content_hash = u.content_hash, opioid = u.opioid,
        any_drug = u.any_drug, updated_at = $1
    FROM unnest($10::uuid[], $11::int[], $12::text[], $13::bool[], $14::bool[])
         AS u(id, revision, content_hash, opioid, any_drug)
    WHERE report.id = u.id
), inbound AS (
    INSERT INTO inbound_message (id, channel, partner_id, received_at, status, report_id,
                                 revision, dedupe_key, ack)
    SELECT t.id, t.channel, t.partner_id, $1, t.status, t.report_id, t.revision,
           t.dedupe_key, t.ack
    FROM unnest($15::uuid[], $16::text[], $17::text[], $18::text[], $19::uuid[], $20::int[],
                $21::text[], $22::text[])
         AS t(id, channel, partner_id, status, report_id, revision, dedupe_key, ack)
)
INSERT INTO outbox (event_id, topic, key, payload, created_at)
SELECT t.event_id, t.topic, t.key, t.payload, t.created_at
FROM unnest($23::text[], $24::text[], $25::text[], $26::text[], $27::timestamptz[])
     WITH ORDINALITY AS t(event_id, topic, key, payload, created_at, position)
ORDER BY t.position
"""
_ACKS = (
    "SELECT dedupe_key, ack FROM inbound_message "
    "WHERE dedupe_key = ANY($1::text[]) AND ack IS NOT NULL"
)


@dataclass(frozen=True, slots=True)
class StoredReport:
    report_id: uuid.UUID
    revision: int
    content_hash: str


class OverdoseWrites:
    """What one batch writes: reports (new or revised), inbound records and staged events.

    `publish` has the signature of `UnitOfWork.publish` for the handler's sake; the events
    are written with the rest by `OverdoseStore.write`.
    """

    def __init__(self, *, source: str, clock: Clock) -> None:
        self._source = source
        self._clock = clock
        self.published: list[Envelope] = []
        self.new_reports: list[dict[str, Any]] = []
        self.revised_reports: list[dict[str, Any]] = []
        self.inbound: list[dict[str, Any]] = []

    def publish(self, event: Event, *, subject: str) -> Envelope:
        envelope = Envelope.wrap(
            event, source=self._source, subject=subject, time=self._clock.now()
        )
        self.published.append(envelope)
        return envelope


class OverdoseStore:
    """Reads and writes a batch of overdoses on a few dedicated asyncpg connections."""

    def __init__(
        self,
        connections: Connections,
        *,
        source: str,
        clock: Clock,
        on_published: Callable[[], None] | None = None,
    ) -> None:
        self._connections = connections
        self._source = source
        self._clock = clock
        self._on_published = on_published

    def writes(self) -> OverdoseWrites:
        return OverdoseWrites(source=self._source, clock=self._clock)

    async def reports(self, source_keys: Sequence[str]) -> dict[str, StoredReport]:
        """The reports these source keys already have."""
        if not source_keys:
            return {}
        async with self._connections.acquire() as con:
            rows = await con.fetch(_REPORTS, list(source_keys))
        return {
            r["source_key"]: StoredReport(r["id"], r["revision"], r["content_hash"]) for r in rows
        }

    async def acks(self, dedupe_keys: Sequence[str]) -> dict[str, str]:
        """The ACKs already given to these HL7 messages (a resend gets the original)."""
        if not dedupe_keys:
            return {}
        async with self._connections.acquire() as con:
            rows = await con.fetch(_ACKS, list(dedupe_keys))
        return {r["dedupe_key"]: r["ack"] for r in rows}

    async def write(self, w: OverdoseWrites, now: datetime) -> None:
        """Everything in one statement; then wakes the relay if events were staged."""
        rows = [outbox_row(e) for e in w.published]
        new, revised, inbound = w.new_reports, w.revised_reports, w.inbound
        async with self._connections.acquire() as con:
            await con.execute(
                _WRITE,
                now,
                *_columns(
                    new,
                    "id",
                    "source_key",
                    "partner_id",
                    "source_kind",
                    "revision",
                    "content_hash",
                    "opioid",
                    "any_drug",
                ),
                *_columns(revised, "id", "revision", "content_hash", "opioid", "any_drug"),
                *_columns(
                    inbound,
                    "id",
                    "channel",
                    "partner_id",
                    "status",
                    "report_id",
                    "revision",
                    "dedupe_key",
                    "ack",
                ),
                *_columns(rows, "event_id", "topic", "key", "payload", "created_at"),
            )
        if rows and self._on_published is not None:
            self._on_published()


def _columns(rows: Sequence[dict[str, Any]], *names: str) -> list[list[Any]]:
    """Column arrays for unnest(), one per name."""
    return [[row[name] for row in rows] for name in names]
