"""The fast path for the common case: a batch of routine (not overdose) ED messages.

Almost every message in a hospital feed is not an overdose. For those intake keeps only a
dedupe key and the ACK, and publishes nothing, so a batch of them is one statement on a
plain asyncpg pool: insert what is new, and read back the original ACKs of resends. Batches
with an overdose, a rejection or a replay take the general unit of work instead. Only on
PostgreSQL; the embedded SQLite default always uses the general path.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

__all__ = ["RoutineRow", "RoutineStore"]

_INSERT = """
INSERT INTO inbound_message (id, channel, partner_id, dedupe_key, received_at, status, ack)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                     $6::text[], $7::text[])
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING dedupe_key
"""
_KNOWN = "SELECT dedupe_key, ack FROM inbound_message WHERE dedupe_key = ANY($1::text[])"
_REPORTS = "SELECT source_key, id, revision FROM report WHERE source_key = ANY($1::text[])"


@dataclass(frozen=True, slots=True)
class RoutineRow:
    id: uuid.UUID
    channel: str
    partner_id: str
    dedupe_key: str
    received_at: datetime
    ack: str


async def _insert(con: asyncpg.Connection, rows: Sequence[RoutineRow], status: str) -> set[str]:
    """Insert what is new; the dedupe keys this statement inserted."""
    inserted = await con.fetch(
        _INSERT,
        [r.id for r in rows],
        [r.channel for r in rows],
        [r.partner_id for r in rows],
        [r.dedupe_key for r in rows],
        [r.received_at for r in rows],
        [status] * len(rows),
        [r.ack for r in rows],
    )
    return {r["dedupe_key"] for r in inserted}


async def _no_reset(_con: asyncpg.Connection) -> None:
    return None


class RoutineStore:
    """Stores routine messages in one round trip; returns the ACK each must get."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, sqlalchemy_url: str, *, schema: str) -> RoutineStore:
        dsn = "postgresql://" + sqlalchemy_url.split("://", 1)[1]
        pool = await asyncpg.create_pool(
            # min_size=0: no connection at start, so intake starts (not ready) while the
            # database is down, like every other part of the service.
            dsn,
            min_size=0,
            max_size=4,
            server_settings={"search_path": schema},
            # The store never changes session state (no SET, LISTEN, advisory locks or
            # cursors), so the default reset query on every release would be a wasted
            # round trip per batch; an open transaction is still rolled back by asyncpg.
            reset=_no_reset,
        )
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    async def store(self, rows: Sequence[RoutineRow], status: str) -> dict[str, str]:
        """Insert the rows (unique dedupe keys); the ACK per key: ours, or the original."""
        acks = {r.dedupe_key: r.ack for r in rows}
        # One INSERT is atomic and durable on its own: no BEGIN/COMMIT round trips needed.
        async with self._pool.acquire() as con:
            fresh = await _insert(con, rows, status)
            if len(fresh) < len(rows):
                resent = [k for k in acks if k not in fresh]
                for known in await con.fetch(_KNOWN, resent):
                    acks[known["dedupe_key"]] = known["ack"]
        return acks

    async def store_ems(
        self, rows: Sequence[RoutineRow], source_keys: Sequence[str], status: str
    ) -> tuple[set[str], dict[str, tuple[uuid.UUID, int]]]:
        """Routine EMS records (not overdoses): (dedupe keys newly stored, existing reports by
        source key). A record whose PCR already has a report is not stored: it stands."""
        async with self._pool.acquire() as con:
            reports = {
                r["source_key"]: (r["id"], r["revision"])
                for r in await con.fetch(_REPORTS, list(source_keys))
            }
            fresh = [r for r, key in zip(rows, source_keys, strict=True) if key not in reports]
            inserted = await _insert(con, fresh, status) if fresh else set()
        return inserted, reports
