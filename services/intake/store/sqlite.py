"""The storage port on SQLAlchemy: the embedded SQLite default (``make run``, unit tests).

SQLite has one writer at a time, so this adapter runs its write transactions one after the
other (an asyncio lock in this process; ``make run`` runs one intake process per file).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.intake.models import INBOUND, REPORT, InboundStatus
from services.intake.store import (
    BatchWrites,
    Known,
    OnPublished,
    RoutineResult,
    RoutineWrites,
    StoreConflict,
    StoredReport,
)
from shared.outbox import OUTBOX

__all__ = ["SqliteStore"]


def _rows(records: Sequence[Any], **extra: Any) -> list[dict[str, Any]]:
    return [{**dataclasses.asdict(r), **extra} for r in records]


class SqliteStore:
    """Intake's storage port on an SQLAlchemy engine (SQLite)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        on_published: OnPublished | None = None,
    ) -> None:
        self._sessions = sessions
        self._on_published = on_published
        self._writing = asyncio.Lock()

    async def lookup(self, *, dedupe_keys: Sequence[str], source_keys: Sequence[str]) -> Known:
        acks: dict[str, str] = {}
        reports: dict[str, StoredReport] = {}
        async with self._sessions() as s:
            if dedupe_keys:
                rows = await s.execute(
                    sa.select(INBOUND.c.dedupe_key, INBOUND.c.ack).where(
                        INBOUND.c.dedupe_key.in_(set(dedupe_keys)), INBOUND.c.ack.is_not(None)
                    )
                )
                acks = {key: ack for key, ack in rows.all()}
            if source_keys:
                found = await s.execute(
                    sa.select(
                        REPORT.c.source_key,
                        REPORT.c.id,
                        REPORT.c.revision,
                        REPORT.c.content_hash,
                        REPORT.c.opioid,
                        REPORT.c.any_drug,
                    ).where(REPORT.c.source_key.in_(set(source_keys)))
                )
                reports = {row[0]: StoredReport(*row[1:]) for row in found.all()}
        return Known(acks=acks, reports=reports)

    async def write(self, writes: BatchWrites) -> None:
        if not writes:
            return
        now = writes.now
        try:
            async with self._writing, self._sessions() as s, s.begin():
                if writes.inbound:
                    await s.execute(
                        INBOUND.insert(), _rows(writes.inbound, received_at=now, replayed_at=None)
                    )
                if writes.new_reports:
                    await s.execute(
                        REPORT.insert(),
                        _rows(writes.new_reports, created_at=now, updated_at=now),
                    )
                for r in writes.revised_reports:
                    await s.execute(
                        REPORT.update()
                        .where(REPORT.c.id == r.id)
                        .values(
                            revision=r.revision,
                            content_hash=r.content_hash,
                            opioid=r.opioid,
                            any_drug=r.any_drug,
                            updated_at=now,
                        )
                    )
                for again in writes.rejected_again:
                    await s.execute(
                        INBOUND.update()
                        .where(INBOUND.c.id == again.inbound_id)
                        .values(reason_code=again.reason_code, reason=again.reason, ack=again.ack)
                    )
                if writes.replayed:
                    await s.execute(
                        INBOUND.update()
                        .where(INBOUND.c.id.in_(writes.replayed))
                        .values(status=InboundStatus.REPLAYED.value, replayed_at=now)
                    )
                if writes.outbox:
                    await s.execute(OUTBOX.insert(), writes.outbox)
        except sa.exc.IntegrityError:
            raise StoreConflict from None
        if writes.outbox and self._on_published is not None:
            self._on_published()

    async def write_routine(self, writes: RoutineWrites) -> RoutineResult:
        rows = list(writes.rows)
        keys = [r.dedupe_key for r in rows if r.dedupe_key is not None]
        reports: dict[str, tuple[Any, int]] = {}
        async with self._writing, self._sessions() as s, s.begin():
            if writes.report_keys:
                found = await s.execute(
                    sa.select(REPORT.c.source_key, REPORT.c.id, REPORT.c.revision).where(
                        REPORT.c.source_key.in_(set(writes.report_keys))
                    )
                )
                reports = {key: (i, r) for key, i, r in found.all()}
                rows = [
                    row
                    for row, key in zip(writes.rows, writes.report_keys, strict=True)
                    if key not in reports
                ]
            if rows:
                await s.execute(
                    sqlite_insert(INBOUND).on_conflict_do_nothing(index_elements=["dedupe_key"]),
                    _rows(rows, received_at=writes.now, replayed_at=None),
                )
            stored = await s.execute(
                sa.select(INBOUND.c.dedupe_key, INBOUND.c.id, INBOUND.c.ack).where(
                    INBOUND.c.dedupe_key.in_(keys)
                )
            )
            ours = {r.dedupe_key: r.id for r in rows}
            inserted: set[str] = set()
            acks: dict[str, str] = {}
            for key, inbound_id, ack in stored.all():
                if ours.get(key) == inbound_id:
                    inserted.add(key)
                acks[key] = ack or ""
        return RoutineResult(inserted=frozenset(inserted), acks=acks, reports=reports)

    async def close(self) -> None:
        return None
