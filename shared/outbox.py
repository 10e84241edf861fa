"""The transactional outbox: events commit with the domain change, a relay publishes them.

The relay never keeps an "id > last published" watermark: PostgreSQL sequences hand out ids
before commit, so a transaction with a lower id can commit after one with a higher id and a
watermark would skip it. The relay instead selects every row not yet marked published.
On PostgreSQL one relay per schema publishes at a time (transaction-level advisory lock), so a
key's events leave in the order they were committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import Field, SQLModel

from shared.clock import Clock
from shared.db import UTCDateTime, bigint_pk
from shared.metrics import EVENTS_PUBLISHED

__all__ = [
    "OUTBOX",
    "OutboxRecord",
    "OutboxRelay",
    "OutgoingMessage",
    "Publisher",
    "RelayStage",
]

log = logging.getLogger(__name__)

PARK_REASON_LENGTH = 64


class OutboxRecord(SQLModel, table=True):
    """One event waiting to be (or already) published, or parked."""

    __tablename__ = "outbox"
    __table_args__ = (
        # The relay holds back the later rows of a key with a parked row: this index answers
        # "has this key a parked row before this one?" from the (usually empty) parked set.
        sa.Index(
            "ix_outbox_parked_key",
            "key",
            "id",
            postgresql_where=sa.text("parked_at IS NOT NULL"),
            sqlite_where=sa.text("parked_at IS NOT NULL"),
        ),
    )

    id: int | None = Field(default=None, sa_column=bigint_pk())
    event_id: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    topic: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    key: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    payload: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    published_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    parked_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    park_reason: str | None = Field(
        default=None, sa_column=sa.Column(sa.String(PARK_REASON_LENGTH), nullable=True)
    )


OUTBOX: sa.Table = OutboxRecord.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = field(
        default=(("content-type", b"application/cloudevents+json"),)
    )


class Publisher(Protocol):
    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Send every message and return only once all are acknowledged; raise otherwise."""
        ...


BUSY_RETRY_SECONDS = 0.02
"""How soon a relay looks again while another replica holds the publishing lock."""


async def _wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    if seconds <= 0:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


RelayStage = str
"""'claimed' (rows read, nothing sent) or 'sent' (broker acked, rows not yet marked)."""


class OutboxRelay:
    """Publishes unpublished outbox rows in id order and marks them published."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        publisher: Publisher,
        *,
        clock: Clock,
        batch_size: int = 200,
        poll_interval: float = 0.2,
        min_interval: float = 0.0,
        on_stage: Callable[[RelayStage], None] | None = None,
        service: str = "",
    ) -> None:
        self._service = service
        self._sessions = sessions
        self._publisher = publisher
        self._clock = clock
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._min_interval = min_interval
        self._on_stage = on_stage or (lambda _stage: None)
        self._wake = asyncio.Event()
        self._lock_id: int | None = None
        self._busy = False
        """The last pass found another replica publishing (PostgreSQL's advisory lock)."""

    def wake(self) -> None:
        """Ask the running relay to look for rows now instead of at its next poll."""
        self._wake.set()

    async def run_once(self) -> int:
        """Publish one batch; returns how many rows were published."""
        self._busy = False
        async with self._sessions() as session, session.begin():
            if session.get_bind().dialect.name == "postgresql":
                if self._lock_id is None:
                    schema = (
                        await session.execute(sa.text("select current_schema()"))
                    ).scalar_one()
                    self._lock_id = zlib.crc32(f"portline-outbox:{schema}".encode())
                got = await session.execute(
                    sa.text("select pg_try_advisory_xact_lock(:id)"), {"id": self._lock_id}
                )
                if not got.scalar_one():
                    self._busy = True
                    return 0
            table = OUTBOX
            rows = (
                await session.execute(
                    sa.select(table.c.id, table.c.topic, table.c.key, table.c.payload)
                    .where(table.c.published_at.is_(None))
                    .order_by(table.c.id)
                    .limit(self._batch_size)
                )
            ).all()
            if not rows:
                return 0
            self._on_stage("claimed")
            await self._publisher.publish(
                [OutgoingMessage(r.topic, r.key.encode(), r.payload.encode()) for r in rows]
            )
            self._on_stage("sent")
            for r in rows:
                EVENTS_PUBLISHED.labels(self._service, r.topic).inc()
            await session.execute(
                sa.update(table)
                .where(table.c.id.in_([r.id for r in rows]))
                .values(published_at=self._clock.now())
            )
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until stop is set; transient failures are logged and retried with backoff.

        A pass that published a full batch is followed at once by the next. Otherwise the
        relay waits for a wake or its poll interval; a wake that came during the pass (a
        commit it may not have seen) ends that wait at once. So an idle pass is not run after
        every publish, only when something may be waiting. While another replica holds the
        publishing lock, the relay looks again soon: that replica's pass may have started
        before this process's rows were committed.

        Passes that are not draining a backlog start at least `min_interval` apart: under
        load, the commits of that interval share one pass (one transaction and one produce
        request) instead of a pass each. An occasional commit is relayed at once."""
        loop = asyncio.get_running_loop()
        backoff = self._poll_interval
        last_pass = -math.inf
        draining = False
        while not stop.is_set():
            if not draining:
                await _wait_or_stop(stop, last_pass + self._min_interval - loop.time())
                if stop.is_set():
                    break
            last_pass = loop.time()
            self._wake.clear()  # a wake from here on may announce rows this pass misses
            try:
                sent = await self.run_once()
                backoff = self._poll_interval
            except Exception as exc:
                log.warning("outbox relay failed; retrying", extra={"error": type(exc).__name__})
                sent = 0
                backoff = min(backoff * 2, 5.0)
            draining = sent >= self._batch_size
            if draining:
                continue
            if self._busy:
                await _wait_or_stop(stop, BUSY_RETRY_SECONDS)
                continue
            wait_for_wake = asyncio.ensure_future(self._wake.wait())
            wait_for_stop = asyncio.ensure_future(stop.wait())
            _done, pending = await asyncio.wait(
                {wait_for_wake, wait_for_stop},
                timeout=backoff,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in pending:
                task.cancel()
