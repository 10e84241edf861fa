"""The storage port on asyncpg: PostgreSQL, one statement per write.

Most of an ED feed is routine messages, and each of intake's commits used to cost more CPU in
SQLAlchemy's execution layers than in the database (ADR 0009, ADR 0011, ADR 0012). Here:

* a routine write is one statement: insert what is new, and read back the original ACKs of
  resends (a second statement only when there were resends); an EMS record whose PCR already
  has a report is not stored, in the same statement;
* a lookup is one statement: the ACKs of resends and the reports of the batch;
* a batch write is one statement of data-modifying CTEs — new reports, revised reports,
  inbound records, replays refused again or accepted, and the outbox rows last (their SQL is
  ``shared.outbox_rows``'s) — atomic and durable on its own: no BEGIN/COMMIT round trips.

Nothing holds a transaction between a lookup and its write. A concurrent first copy of the
same message or report makes the write fail on a unique key, nothing of it is kept, and the
caller reads and decides again (:class:`~services.intake.store.StoreConflict`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from services.intake.models import InboundStatus
from services.intake.store import (
    BatchWrites,
    InboundRecord,
    Known,
    OnPublished,
    RoutineResult,
    RoutineWrites,
    StoreConflict,
    StoredReport,
)
from shared.outbox_rows import outbox_insert_sql, outbox_params

__all__ = ["Connections", "PostgresStore"]

_LOOKUP = """
SELECT dedupe_key AS key, ack, NULL::uuid AS id, NULL::int AS revision, NULL::text AS digest,
       NULL::bool AS opioid, NULL::bool AS any_drug
FROM inbound_message WHERE dedupe_key = ANY($1::text[]) AND ack IS NOT NULL
UNION ALL
SELECT source_key, NULL, id, revision, content_hash, opioid, any_drug
FROM report WHERE source_key = ANY($2::text[])
"""

# received_at and status are the same for the whole batch: scalars, not arrays (asyncpg
# encodes arrays element by element in Python).
_ROUTINE = """
INSERT INTO inbound_message (id, channel, partner_id, dedupe_key, received_at, status, ack)
SELECT t.id, t.channel, t.partner_id, t.dedupe_key, $5, $6, t.ack
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $7::text[])
     AS t(id, channel, partner_id, dedupe_key, ack)
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING dedupe_key
"""
_KNOWN = "SELECT dedupe_key, ack FROM inbound_message WHERE dedupe_key = ANY($1::text[])"
# Routine EMS records in one round trip: the reports their PCRs already have (such a record
# is not stored: the report stands), and the insert of the others. Both parts see the same
# snapshot.
_ROUTINE_EMS = """
WITH known AS (
    SELECT source_key, id, revision FROM report WHERE source_key = ANY($8::text[])
), stored AS (
    INSERT INTO inbound_message (id, channel, partner_id, dedupe_key, received_at, status, ack)
    SELECT t.id, t.channel, t.partner_id, t.dedupe_key, $5, $6, t.ack
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $7::text[], $8::text[])
         AS t(id, channel, partner_id, dedupe_key, ack, source_key)
    WHERE NOT EXISTS (SELECT 1 FROM known WHERE known.source_key = t.source_key)
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING dedupe_key
)
SELECT source_key AS key, id, revision FROM known
UNION ALL
SELECT dedupe_key, NULL, NULL FROM stored
"""

# One statement: each part is a data-modifying CTE; they all commit, or none does.
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
                                 revision, dedupe_key, ack, reason_code, reason, raw_sealed)
    SELECT t.id, t.channel, t.partner_id, $1, t.status, t.report_id, t.revision,
           t.dedupe_key, t.ack, t.reason_code, t.reason, t.raw_sealed
    FROM unnest($15::uuid[], $16::text[], $17::text[], $18::text[], $19::uuid[], $20::int[],
                $21::text[], $22::text[], $23::text[], $24::text[], $25::text[])
         AS t(id, channel, partner_id, status, report_id, revision, dedupe_key, ack,
              reason_code, reason, raw_sealed)
), rejected_again AS (
    UPDATE inbound_message
    SET reason_code = u.reason_code, reason = u.reason, ack = u.ack
    FROM unnest($26::uuid[], $27::text[], $28::text[], $29::text[])
         AS u(id, reason_code, reason, ack)
    WHERE inbound_message.id = u.id
), replayed AS (
    UPDATE inbound_message SET status = $31, replayed_at = $1
    WHERE id = ANY($30::uuid[])
)
""" + outbox_insert_sql(32)  # noqa: S608 - constant SQL; the outbox part is shared

_REPORT_COLUMNS = (
    "id",
    "source_key",
    "partner_id",
    "source_kind",
    "revision",
    "content_hash",
    "opioid",
    "any_drug",
)
_REVISED_COLUMNS = ("id", "revision", "content_hash", "opioid", "any_drug")
_INBOUND_COLUMNS = (
    "id",
    "channel",
    "partner_id",
    "status",
    "report_id",
    "revision",
    "dedupe_key",
    "ack",
    "reason_code",
    "reason",
    "raw_sealed",
)


def _columns(rows: Sequence[Any], names: Sequence[str]) -> list[list[Any]]:
    """Column arrays for unnest(), one per name."""
    return [[getattr(row, name) for row in rows] for name in names]


def _routine_params(writes: RoutineWrites, rows: Sequence[InboundRecord]) -> list[Any]:
    """$1-$7 of the routine inserts: the rows' columns as arrays, the batch's time and status."""
    return [
        [r.id for r in rows],
        [r.channel for r in rows],
        [r.partner_id for r in rows],
        [r.dedupe_key for r in rows],
        writes.now,
        InboundStatus.NOT_OVERDOSE.value,
        [r.ack or "" for r in rows],
    ]


class Connections:
    """A few dedicated connections, each used by one batch at a time.

    Not asyncpg's pool: its acquire and release cost about 23 us of CPU per batch (measured,
    tests/bench), and the store needs none of what it adds. The store never changes session
    state (no SET, LISTEN, advisory locks, cursors or open transactions), so a connection
    goes back as it came. A connection whose batch failed is closed, not reused; the next
    batch opens a fresh one. None is opened before the first batch, so intake starts (not
    ready) while the database is down, like every other part of the service.
    """

    def __init__(self, dsn: str, *, schema: str, max_size: int) -> None:
        self._dsn = dsn
        # The application name tells these connections apart in pg_stat_activity.
        self._settings = {"search_path": schema, "application_name": f"portline-intake-{schema}"}
        self._slots = asyncio.Semaphore(max_size)
        self._idle: list[asyncpg.Connection] = []

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._slots:
            con = None
            while self._idle and con is None:
                candidate = self._idle.pop()
                if not candidate.is_closed():  # the server may have dropped it meanwhile
                    con = candidate
            if con is None:
                con = await asyncpg.connect(self._dsn, server_settings=self._settings)
            try:
                yield con
            except BaseException:
                con.terminate()
                raise
            if not con.is_closed():
                self._idle.append(con)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for con in idle:
            with contextlib.suppress(Exception):
                await con.close(timeout=5)


class PostgresStore:
    """Intake's storage port on a few dedicated asyncpg connections."""

    def __init__(
        self, connections: Connections, *, on_published: OnPublished | None = None
    ) -> None:
        self.connections = connections
        self._on_published = on_published

    @classmethod
    def connect(
        cls,
        sqlalchemy_url: str,
        *,
        schema: str,
        on_published: OnPublished | None = None,
        max_size: int = 6,
    ) -> PostgresStore:
        """A store on the database of an SQLAlchemy URL (connections open on first use)."""
        dsn = "postgresql://" + sqlalchemy_url.split("://", 1)[1]
        return cls(Connections(dsn, schema=schema, max_size=max_size), on_published=on_published)

    async def close(self) -> None:
        await self.connections.close()

    async def lookup(self, *, dedupe_keys: Sequence[str], source_keys: Sequence[str]) -> Known:
        if not dedupe_keys and not source_keys:
            return Known()
        async with self.connections.acquire() as con:
            rows = await con.fetch(_LOOKUP, list(dedupe_keys), list(source_keys))
        acks: dict[str, str] = {}
        reports: dict[str, StoredReport] = {}
        for r in rows:
            if r["id"] is None:
                acks[r["key"]] = r["ack"]
            else:
                reports[r["key"]] = StoredReport(
                    r["id"], r["revision"], r["digest"], r["opioid"], r["any_drug"]
                )
        return Known(acks=acks, reports=reports)

    async def write(self, writes: BatchWrites) -> None:
        if not writes:
            return
        try:
            async with self.connections.acquire() as con:
                await con.execute(
                    _WRITE,
                    writes.now,
                    *_columns(writes.new_reports, _REPORT_COLUMNS),
                    *_columns(writes.revised_reports, _REVISED_COLUMNS),
                    *_columns(writes.inbound, _INBOUND_COLUMNS),
                    *_columns(
                        writes.rejected_again, ("inbound_id", "reason_code", "reason", "ack")
                    ),
                    list(writes.replayed),
                    InboundStatus.REPLAYED.value,
                    *outbox_params(writes.outbox),
                )
        except asyncpg.UniqueViolationError:
            raise StoreConflict from None
        if writes.outbox and self._on_published is not None:
            self._on_published()

    async def write_routine(self, writes: RoutineWrites) -> RoutineResult:
        rows = writes.rows
        acks = {r.dedupe_key: r.ack or "" for r in rows if r.dedupe_key is not None}
        reports: dict[str, tuple[uuid.UUID, int]] = {}
        # One INSERT is atomic and durable on its own: no BEGIN/COMMIT round trips needed.
        async with self.connections.acquire() as con:
            if writes.report_keys is not None:
                found = await con.fetch(
                    _ROUTINE_EMS, *_routine_params(writes, rows), list(writes.report_keys)
                )
                inserted = {r["key"] for r in found if r["id"] is None}
                reports = {r["key"]: (r["id"], r["revision"]) for r in found if r["id"] is not None}
            else:
                fresh = await con.fetch(_ROUTINE, *_routine_params(writes, rows))
                inserted = {r["dedupe_key"] for r in fresh}
                resent = [k for k in acks if k not in inserted]
                if resent:
                    for known in await con.fetch(_KNOWN, resent):
                        acks[known["dedupe_key"]] = known["ack"] or ""
        return RoutineResult(inserted=frozenset(inserted), acks=acks, reports=reports)
