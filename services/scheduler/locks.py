"""Linking's locks: reports that could be about one person are linked one batch at a time.

Any number of scheduler replicas consume ``OverdoseReported``, each with its own partitions,
and two reports of one person may sit on two partitions (intake keys a report by its first
blind key, and an ED report without a date of birth has another first key than the EMS run).
Without a lock, two replicas could each find no person for their report and create the same
person twice, or each add an episode for the same overdose to one person's case.

So, before a batch reads its working set (batch.py), its unit of work takes PostgreSQL
transaction-level advisory locks, held until it commits or rolls back:

1. one per blocking key of the batch's reports (program, kind, value): two reports that could
   be linked to each other share a key, so their batches take turns. Whoever creates a person,
   or gives a person one more key, holds that key's lock;
2. then one per person already holding one of those keys: a report may reach a known person by
   a key another report of that person lacks, and both must not open a case or an episode for
   them at once.

Blind-index keys have versions (a key rotation, ADR 0026): the keys locked are the report's
under every version it carries and the derived ones under every version this replica holds.
Indexes under two versions differ, so two batches lock the same thing only if they share a
version; the rotation keeps one version held by every producer and replica at every step (b1
until all hold b2 beside it; b2 from then on), so two reports of one person always share a key
of that version and take turns, whichever replica and configuration reads them.

Each kind of lock is taken in one statement, in ascending order of its number, and every
batch takes all its key locks before any person lock: two batches never wait for each other
in a circle, so no deadlock. The working set is read after the locks, so it holds everything
committed by the batch that held them before.

SQLite (one process, one writer) takes no locks.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.scheduler.batch import key_holders, report_pairs
from services.scheduler.reports import Report

__all__ = ["KEY_LOCKS", "PERSON_LOCKS", "lock_linking", "lock_number"]

KEY_LOCKS = 0x504C_4B01
"""The advisory-lock class (first 32-bit key) of blocking-key locks."""
PERSON_LOCKS = 0x504C_5001
"""The advisory-lock class of person locks."""

_LOCK = sa.text(
    "SELECT count(pg_advisory_xact_lock(CAST(:kind AS int4), n)) "
    "FROM unnest(CAST(:numbers AS int4[])) AS n"
)


def lock_number(*parts: str) -> int:
    """A signed 32-bit lock number for a key or a person; two things rarely share one, and when
    they do, their batches merely take turns."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def _blocking_keys(
    reports: Sequence[Report], lookups: Mapping[uuid.UUID, Iterable[tuple[str, str]]]
) -> set[tuple[str, str, str]]:
    """(program, kind, value) of every key the batch's identified reports find people by:
    intake's blind keys and the keys linking derives (matching.blocking)."""
    return {
        (r.program_id, kind, value)
        for r in reports
        if not r.deidentified
        for kind, value in [*report_pairs(r), *lookups.get(r.report_id, ())]
    }


async def _take(session: AsyncSession, kind: int, numbers: Iterable[int]) -> None:
    ordered = sorted(set(numbers))
    if ordered:  # unnest yields the array in order, so the locks are taken in that order
        await session.execute(_LOCK, {"kind": kind, "numbers": ordered})


async def lock_linking(
    session: AsyncSession,
    reports: Sequence[Report],
    lookups: Mapping[uuid.UUID, Iterable[tuple[str, str]]] | None = None,
) -> None:
    """Lock the batch's blocking keys (with the derived ones in ``lookups``, per report id),
    then the people holding them (module docs)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    keys = _blocking_keys(reports, lookups or {})
    if not keys:
        return
    await _take(session, KEY_LOCKS, (lock_number(*k) for k in keys))
    holders = await session.execute(
        key_holders({program for program, _, _ in keys}, {(kind, value) for _, kind, value in keys})
    )
    await _take(session, PERSON_LOCKS, (_person_number(pid) for pid in holders.scalars()))


def _person_number(person_id: uuid.UUID) -> int:
    return lock_number("person", str(person_id))
