"""`portline reporting rebuild`: the read models again, from the start of every topic.

It empties the read models and reporting's inbox, then reads every partition of every topic
from its first retained record up to where it ended when the rebuild began, and applies the
records through the consumer's own inbox and handler, a batch at a time. So:

- the figures come out as the live consumer would have made them (one way to apply an event);
- a running reporting service may go on consuming meanwhile: both mark what they applied in
  the one inbox and take turns at the read models, so nothing is applied twice;
- it is safe to stop (Ctrl-C finishes the batch in hand). The read models then say they are
  incomplete (`rpt_rebuild`, and the service's /readyz) until a rebuild finishes:
  `--resume` carries on where the last one stopped (the inbox skips what it applied), a plain
  rebuild starts over.

Kafka keeps events for the topics' retention (30 days by default), so a rebuild can only
recover what the topics still hold; it says how far back that is.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.reporting.app import BATCH, CONSUMER, FACT_TOPICS, read_models, tune_collector
from services.reporting.models import READ_MODEL_TABLES, REBUILD
from shared.bus import make_admin
from shared.clock import Clock, SystemClock
from shared.inbox import INBOX, InboxProcessor, IncomingMessage
from shared.kafka import KafkaConnection, kafka_connection
from shared.settings import Settings
from shared.uow import UnitOfWork

__all__ = [
    "KafkaSource",
    "Progress",
    "RebuildResult",
    "rebuild",
    "replay",
    "run_rebuild",
    "set_state",
    "start_fresh",
]

INBOX_KEY = f"reporting.{CONSUMER}"


class Progress:
    """A progress bar on a terminal (events done, of how many, and the rate); elsewhere, a
    line every few seconds."""

    def __init__(
        self,
        total: int,
        *,
        out: IO[str] = sys.stderr,
        now: Callable[[], float] = time.monotonic,
        width: int = 30,
    ) -> None:
        self.total = total
        self.done = 0
        self._out = out
        self._now = now
        self._width = width
        self._started = now()
        self._shown = -1.0
        self._tty = out.isatty()

    @property
    def rate(self) -> float:
        elapsed = self._now() - self._started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        share = self.done / self.total if self.total else 1.0
        filled = int(self._width * min(share, 1.0))
        bar = "#" * filled + "." * (self._width - filled)
        rate = self.rate
        remaining = (self.total - self.done) / rate if rate > 0 and self.total > self.done else 0.0
        return (
            f"rebuild [{bar}] {self.done:,}/{self.total:,} events {share:6.1%}  "
            f"{rate:,.0f} events/s  ETA {remaining:,.0f} s"
        )

    def advance(self, count: int) -> None:
        self.done += count
        now = self._now()
        interval = 0.2 if self._tty else 5.0
        if now - self._shown >= interval:
            self._shown = now
            self._show()

    def _show(self) -> None:
        if self._tty:
            self._out.write("\r" + self.line())
        else:
            self._out.write(self.line() + "\n")
        self._out.flush()

    def finish(self) -> None:
        self._show()
        if self._tty:
            self._out.write("\n")
        self._out.flush()


@dataclass
class RebuildResult:
    events: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    oldest: datetime | None = None
    finished: bool = False
    seconds: float = 0.0


async def set_state(
    sessions: async_sessionmaker[AsyncSession], clock: Clock, state: str, events: int
) -> None:
    """Say how far a rebuild is: running, done or interrupted (after how many events)."""
    async with sessions() as session, session.begin():
        now = clock.now()
        values: dict[str, Any] = {"state": state, "events": events}
        values["finished_at"] = None if state == "running" else now
        updated = await session.execute(REBUILD.update().where(REBUILD.c.id == 1).values(**values))
        if updated.rowcount == 0:  # type: ignore[attr-defined]
            await session.execute(REBUILD.insert().values(id=1, started_at=now, **values))


async def start_fresh(sessions: async_sessionmaker[AsyncSession], clock: Clock) -> None:
    """Empty the read models and the consumer's inbox, and say a rebuild is under way: one
    transaction, so the service never sees half of it."""
    async with sessions() as session, session.begin():
        for table in READ_MODEL_TABLES:
            await session.execute(table.delete())
        await session.execute(INBOX.delete().where(INBOX.c.consumer == INBOX_KEY))
        await session.execute(REBUILD.delete())
        await session.execute(
            REBUILD.insert().values(
                id=1, state="running", started_at=clock.now(), finished_at=None, events=0
            )
        )


async def replay(
    batches: AsyncIterator[Sequence[IncomingMessage]],
    processor: InboxProcessor[Any],
    progress: Progress,
    stop: asyncio.Event,
    result: RebuildResult,
) -> None:
    """Apply every batch through the inbox, until the batches end or `stop` is set."""
    async for batch in batches:
        outcomes = await processor.process_batch(batch)
        for outcome in outcomes:
            result.outcomes[outcome.value] = result.outcomes.get(outcome.value, 0) + 1
        result.events += len(batch)
        progress.advance(len(batch))
        if stop.is_set():
            return
    result.finished = True


@dataclass
class KafkaSource:
    """Every partition of the topics, from its first retained record to where it ended when
    the rebuild began (records published since are the live consumer's)."""

    bootstrap: str | KafkaConnection
    batch_size: int = BATCH
    total: int = 0
    oldest_ms: int | None = None
    _consumer: AIOKafkaConsumer | None = None
    _ends: dict[TopicPartition, int] = field(default_factory=dict)

    async def open(self) -> None:
        consumer = AIOKafkaConsumer(
            **kafka_connection(self.bootstrap).options(),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        self._consumer = consumer
        partitions = await self._partitions(await consumer.topics())
        if not partitions:
            return
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        self._ends = {tp: ends[tp] for tp in partitions if ends[tp] > starts[tp]}
        self.total = sum(ends[tp] - starts[tp] for tp in self._ends)
        for tp in partitions:
            consumer.seek(tp, starts[tp])

    async def _partitions(self, existing: set[str]) -> list[TopicPartition]:
        names = [t.name for t in FACT_TOPICS if t.name in existing]
        if not names:
            return []
        admin = make_admin(self.bootstrap, client_id="portline-reporting-rebuild")
        await admin.start()
        try:
            described = await admin.describe_topics(names)
        finally:
            await admin.close()
        return sorted(
            TopicPartition(topic["topic"], p["partition"])
            for topic in described
            for p in topic["partitions"]
        )

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def batches(self) -> AsyncIterator[Sequence[IncomingMessage]]:
        consumer = self._consumer
        assert consumer is not None, "open() first"
        remaining = dict(self._ends)
        while remaining:
            fetched = await consumer.getmany(
                *remaining, timeout_ms=1000, max_records=self.batch_size
            )
            batch: list[IncomingMessage] = []
            for tp, records in fetched.items():
                end = remaining.get(tp)
                if end is None:
                    continue
                for record in records:
                    if record.offset >= end:
                        break
                    if self.oldest_ms is None or record.timestamp < self.oldest_ms:
                        self.oldest_ms = record.timestamp
                    batch.append(
                        IncomingMessage(
                            topic=record.topic,
                            partition=record.partition,
                            offset=record.offset,
                            key=record.key,
                            value=record.value,
                        )
                    )
                if await consumer.position(tp) >= end:
                    remaining.pop(tp)
                    consumer.pause(tp)
            if batch:
                yield batch


async def rebuild(
    settings: Settings,
    *,
    resume: bool = False,
    batch_size: int = BATCH,
    out: IO[str] = sys.stderr,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
) -> RebuildResult:
    from shared.db import create_engine, session_factory

    clock = clock or SystemClock()
    stop = stop or asyncio.Event()
    engine = create_engine(
        settings.db_url, service="reporting", schema=settings.schema_for("reporting")
    )
    sessions = session_factory(engine)
    models = read_models(settings)
    tune_collector()

    def uow() -> UnitOfWork:
        return UnitOfWork(sessions, clock=clock, source="/portline/reporting")

    processor: InboxProcessor[UnitOfWork] = InboxProcessor(
        INBOX_KEY,
        uow,
        models.apply,
        max_attempts=settings.inbox_max_attempts,
        backoff_seconds=settings.inbox_retry_backoff_seconds,
        batch_handler=models.apply_all,
    )
    source = KafkaSource(KafkaConnection.from_settings(settings), batch_size=batch_size)
    result = RebuildResult()
    started = time.monotonic()
    try:
        if not resume:
            await start_fresh(sessions, clock)
        else:
            await set_state(sessions, clock, "running", 0)
        await source.open()
        progress = Progress(source.total, out=out)
        try:
            await replay(source.batches(), processor, progress, stop, result)
        finally:
            progress.finish()
            result.seconds = time.monotonic() - started
            if source.oldest_ms is not None:
                result.oldest = datetime.fromtimestamp(source.oldest_ms / 1000, UTC)
            state = "done" if result.finished else "interrupted"
            with contextlib.suppress(Exception):  # the database may be why we stopped
                await set_state(sessions, clock, state, result.events)
    finally:
        await source.close()
        await engine.dispose()
    return result


def run_rebuild(settings: Settings, *, resume: bool, batch_size: int) -> RebuildResult:
    """The CLI's entry: Ctrl-C (or SIGTERM) stops after the batch in hand."""

    async def go() -> RebuildResult:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await rebuild(settings, resume=resume, batch_size=batch_size, stop=stop)

    return asyncio.run(go())
