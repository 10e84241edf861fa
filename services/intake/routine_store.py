"""The fast path for the common case: a batch of routine (not overdose) ED messages.

Almost every message in a hospital feed is not an overdose. For those intake keeps only a
dedupe key and the ACK, and publishes nothing, so a batch of them is one statement on one of
a few dedicated asyncpg connections: insert what is new, and read back the original ACKs of
resends. Overdoses take the overdose store, on these same connections (ADR 0011, ADR 0012);
HL7 rejections and replays, and the overdoses batched with them, take the general unit of
work beside it (ADR 0009).
Only on PostgreSQL; the embedded SQLite default always uses the general path.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

__all__ = ["Connections", "RoutineRow", "RoutineStore"]

# received_at and status are the same for the whole batch: scalars, not arrays (asyncpg
# encodes arrays element by element in Python).
_INSERT = """
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
# snapshot, as the two statements this replaces did one after the other.
_EMS = """
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


@dataclass(frozen=True, slots=True)
class RoutineRow:
    id: uuid.UUID
    channel: str
    partner_id: str
    dedupe_key: str
    ack: str


def _params(rows: Sequence[RoutineRow], status: str, received_at: datetime) -> list[Any]:
    """$1-$7 of the inserts: the rows' columns as arrays, the batch's time and status."""
    return [
        [r.id for r in rows],
        [r.channel for r in rows],
        [r.partner_id for r in rows],
        [r.dedupe_key for r in rows],
        received_at,
        status,
        [r.ack for r in rows],
    ]


async def _insert(
    con: asyncpg.Connection, rows: Sequence[RoutineRow], status: str, received_at: datetime
) -> set[str]:
    """Insert what is new; the dedupe keys this statement inserted."""
    inserted = await con.fetch(_INSERT, *_params(rows, status, received_at))
    return {r["dedupe_key"] for r in inserted}


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


class RoutineStore:
    """Stores routine messages in one round trip; returns the ACK each must get."""

    def __init__(self, connections: Connections) -> None:
        self.connections = connections  # shared with the EMS overdose store

    @classmethod
    async def connect(cls, sqlalchemy_url: str, *, schema: str) -> RoutineStore:
        dsn = "postgresql://" + sqlalchemy_url.split("://", 1)[1]
        return cls(Connections(dsn, schema=schema, max_size=6))

    async def close(self) -> None:
        await self.connections.close()

    async def store(
        self, rows: Sequence[RoutineRow], status: str, received_at: datetime
    ) -> dict[str, str]:
        """Insert the rows (unique dedupe keys); the ACK per key: ours, or the original."""
        acks = {r.dedupe_key: r.ack for r in rows}
        # One INSERT is atomic and durable on its own: no BEGIN/COMMIT round trips needed.
        async with self.connections.acquire() as con:
            fresh = await _insert(con, rows, status, received_at)
            if len(fresh) < len(rows):
                resent = [k for k in acks if k not in fresh]
                for known in await con.fetch(_KNOWN, resent):
                    acks[known["dedupe_key"]] = known["ack"]
        return acks

    async def store_ems(
        self,
        rows: Sequence[RoutineRow],
        source_keys: Sequence[str],
        status: str,
        received_at: datetime,
    ) -> tuple[set[str], dict[str, tuple[uuid.UUID, int]]]:
        """Routine EMS records (not overdoses): (dedupe keys newly stored, existing reports by
        source key); `source_keys[i]` is the PCR's key of `rows[i]`. A record whose PCR already
        has a report is not stored: it stands. One round trip."""
        async with self.connections.acquire() as con:
            found = await con.fetch(_EMS, *_params(rows, status, received_at), list(source_keys))
        inserted = {r["key"] for r in found if r["id"] is None}
        reports = {r["key"]: (r["id"], r["revision"]) for r in found if r["id"] is not None}
        return inserted, reports
