"""The transactional outbox: events commit with the domain change, a relay publishes them.

The relay never keeps an "id > last published" watermark: PostgreSQL sequences hand out ids
before commit, so a transaction with a lower id can commit after one with a higher id and a
watermark would skip it. The relay instead selects every row not yet marked published.
On PostgreSQL one relay per schema publishes at a time (transaction-level advisory lock), so a
key's events leave in the order they were committed.

A row that can never be published as it is (too large for the broker, refused by it) is
*parked* instead of blocking every row behind it: it keeps its place, gets `parked_at` and a
short `park_reason`, and the relay carries on. The later rows of its key are *held* (left
unpublished, not parked) so that one person's events never overtake each other; other keys
flow. `unpark()` (`portline outbox retry`) lets the relay try a parked row again.

Exceptions:

    Unpublishable  - this message can never be published as it is; `reason` says why
    PublishFailed  - not every message of one publish() call was acknowledged
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import Field, SQLModel

from shared.clock import Clock
from shared.db import UTCDateTime, bigint_pk
from shared.metrics import (
    EVENTS_PUBLISHED,
    OUTBOX_OLDEST_UNPUBLISHED,
    OUTBOX_PARKED,
    OUTBOX_PARKED_ROWS,
)
from shared.tracing import TRACEPARENT

__all__ = [
    "OUTBOX",
    "OutboxRecord",
    "OutboxRelay",
    "OutgoingMessage",
    "ParkedRow",
    "PublishFailed",
    "Publisher",
    "RelayStage",
    "Unpublishable",
    "park_reason",
    "parked_rows",
    "unpark",
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
    traceparent: str | None = Field(default=None, sa_column=sa.Column(sa.String(64), nullable=True))
    """The W3C trace context of the span that published the event (shared.tracing)."""


OUTBOX: sa.Table = OutboxRecord.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = field(
        default=(("content-type", b"application/cloudevents+json"),)
    )
    """CloudEvents' content type, and the event's `traceparent` when it was traced."""


class Unpublishable(Exception):
    """A message that no retry can publish as it is: too large for the broker, refused by it
    for good, or not encodable. `reason` is a short stable code (never payload content)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot be published: {reason}")
        self.reason = reason[:PARK_REASON_LENGTH]


class PublishFailed(Exception):
    """Not every message of one publish() call was acknowledged.

    `acked` are the indexes (into the messages given) that the broker acknowledged: they are
    on the wire, so they must not be sent again. `failures` maps an index to why that message
    was not acknowledged; a message in neither was not sent at all."""

    def __init__(self, *, acked: Iterable[int], failures: Mapping[int, BaseException]) -> None:
        if not failures:
            raise ValueError("PublishFailed needs at least one failure")
        self.acked = frozenset(acked)
        self.failures = dict(failures)
        first = self.failures[min(self.failures)]
        super().__init__(f"{len(self.failures)} message(s) failed, first: {type(first).__name__}")


class Publisher(Protocol):
    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Send every message and return only once all are acknowledged; raise otherwise
        (PublishFailed tells which were acknowledged and why the others were not)."""
        ...


def park_reason(exc: BaseException) -> str | None:
    """The park reason for a message that failed with `exc`, or None when the failure is
    transient (the broker down, a leader moving, a timeout, anything unknown): those rows are
    retried in order, for as long as it takes, and never parked."""
    if isinstance(exc, Unpublishable):
        return exc.reason
    if isinstance(exc, UnicodeError):
        return "unserialisable"
    return None


BUSY_RETRY_SECONDS = 0.02
"""How soon a relay looks again while another replica holds the publishing lock."""

AGE_REPORT_SECONDS = 1.0
"""How often a running relay refreshes the oldest-unpublished gauge between passes, so that
it keeps rising while a pass is stuck (a broker that stopped answering)."""

PARKED_RECOUNT_SECONDS = 10.0
"""How often a relay that knows of no parked row counts them again (another replica, holding
the publishing lock meanwhile, may have parked one). While it knows of any, or after a pass
that parked one, it counts on every pass: a retried row leaves the gauge at once."""


async def _wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    if seconds <= 0:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


RelayStage = str
"""'claimed' (rows read, nothing sent) or 'sent' (broker acked, rows not yet marked)."""


@dataclass(frozen=True)
class _Row:
    id: int
    topic: str
    key: str
    payload: str
    created_at: datetime
    traceparent: str | None = None


_Pending = tuple[_Row, OutgoingMessage]


@dataclass
class _Pass:
    """What one relay pass did with the rows it read."""

    published: list[_Row] = field(default_factory=list)
    parked: list[tuple[_Row, str]] = field(default_factory=list)
    held: set[str] = field(default_factory=set)
    """Keys with a row parked in this pass: their later rows wait."""
    failure: Exception | None = None
    """A transient failure that ended the pass; the rows not published wait for the next."""

    def park(self, row: _Row, reason: str) -> None:
        self.parked.append((row, reason))
        self.held.add(row.key)


_CONTENT_TYPE = ("content-type", b"application/cloudevents+json")


def _message(row: _Row) -> OutgoingMessage:
    headers: tuple[tuple[str, bytes], ...] = (_CONTENT_TYPE,)
    if row.traceparent:
        # The consumer's span continues the trace of the span that published the event.
        headers = (_CONTENT_TYPE, (TRACEPARENT, row.traceparent.encode("ascii")))
    return OutgoingMessage(row.topic, row.key.encode(), row.payload.encode(), headers)


def _waiting() -> sa.ColumnElement[bool]:
    """Rows still to be published: not yet published, not parked (held rows included)."""
    return sa.and_(OUTBOX.c.published_at.is_(None), OUTBOX.c.parked_at.is_(None))


def _next_rows(limit: int) -> sa.Select[Any]:
    """The next rows to publish in id order, without those held behind a parked row."""
    table = OUTBOX
    parked = table.alias("parked")
    # OFFSET 0 keeps PostgreSQL from turning the test into an anti-join. A generic plan made
    # while the outbox was nearly empty (a new schema, before its first analyze) joined it by
    # scanning the whole table once per waiting row, and kept doing so at thousands of rows.
    # Kept as a test per row, it is one probe of ix_outbox_parked_key at any size
    # (tests/integration/test_query_plans_pg.py).
    held = (
        sa.select(parked.c.id)
        .where(
            parked.c.key == table.c.key,
            parked.c.parked_at.is_not(None),
            parked.c.id < table.c.id,
        )
        .offset(0)
        .exists()
    )
    return (
        sa.select(
            table.c.id,
            table.c.topic,
            table.c.key,
            table.c.payload,
            table.c.created_at,
            table.c.traceparent,
        )
        .where(_waiting(), ~held)
        .order_by(table.c.id)
        .limit(limit)
    )


# A relay runs a pass every poll interval even when nothing is waiting: its statements are
# built once (building them, and their cache keys, was most of an idle pass's CPU).
_OLDEST_WAITING = sa.select(sa.func.min(OUTBOX.c.created_at)).where(_waiting())
# Counting the parked rows is not done every pass: until the table has statistics (a new
# schema's first minutes), PostgreSQL guesses that nearly every row is parked and reads the
# whole table rather than ix_outbox_parked_key (PARKED_RECOUNT_SECONDS).
_PARKED_COUNT = (
    sa.select(sa.func.count()).select_from(OUTBOX).where(OUTBOX.c.parked_at.is_not(None))
)
_TRY_LOCK = sa.text("select pg_try_advisory_xact_lock(:id)")


class OutboxRelay:
    """Publishes unpublished outbox rows in id order and marks them published; parks a row
    that can never be published and holds back the later rows of its key."""

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
        self._next_rows = _next_rows(batch_size)
        self._lock_id: int | None = None
        self._busy = False
        """The last pass found another replica publishing (PostgreSQL's advisory lock)."""
        self._waiting_since: datetime | None = None
        """created_at of the oldest row this relay knows to be waiting, None if none."""
        self._parked: int | None = None
        """How many rows the last count found parked; None before the first count."""
        self._parked_counted_at: datetime | None = None
        # The series exist from the start, so /metrics shows them (at 0) before any event.
        OUTBOX_PARKED.labels(service)
        OUTBOX_PARKED_ROWS.labels(service).set(0)
        self.report_age()

    def wake(self) -> None:
        """Ask the running relay to look for rows now instead of at its next poll."""
        self._wake.set()

    def report_age(self) -> float:
        """Set (and return) the oldest-unpublished gauge from what the last pass saw."""
        age = 0.0
        if self._waiting_since is not None:
            age = max(0.0, (self._clock.now() - self._waiting_since).total_seconds())
        OUTBOX_OLDEST_UNPUBLISHED.labels(self._service).set(age)
        return age

    async def run_once(self) -> int:
        """Relay one batch; returns how many rows were published or parked.

        A transient publish failure is raised, after the rows the broker did acknowledge
        have been marked published."""
        self._busy = False
        done = _Pass()
        async with self._sessions() as session, session.begin():
            if not await self._lock(session):
                self._busy = True
                # The replica holding the lock reports; this one stands down.
                self._waiting_since = None
                self.report_age()
                OUTBOX_PARKED_ROWS.labels(self._service).set(0)
                self._parked = None  # counted again once this replica publishes
                return 0
            rows = await self._read(session)
            if rows:
                oldest = min(r.created_at for r in rows)
                if self._waiting_since is None or oldest < self._waiting_since:
                    self._waiting_since = oldest
                    self.report_age()
                self._on_stage("claimed")
                await self._send(rows, done)
                if done.published:
                    self._on_stage("sent")
                await self._mark(session, done)
            self._waiting_since = await self._oldest_waiting(session)
            if self._recount_parked(parked_now=bool(done.parked)):
                self._parked = await self._count_parked(session)
                self._parked_counted_at = self._clock.now()
        self.report_age()
        OUTBOX_PARKED_ROWS.labels(self._service).set(self._parked or 0)
        for row in done.published:
            EVENTS_PUBLISHED.labels(self._service, row.topic).inc()
        for row, reason in done.parked:
            OUTBOX_PARKED.labels(self._service).inc()
            log.error(
                "outbox row parked: it can never be published as it is; the later events "
                "of its key are held until it is retried",
                extra={
                    "service": self._service,
                    "outbox_id": row.id,
                    "topic": row.topic,
                    "reason": reason,
                },
            )
        if done.failure is not None:
            raise done.failure
        return len(done.published) + len(done.parked)

    async def _lock(self, session: AsyncSession) -> bool:
        """Take this schema's publishing lock (PostgreSQL); False if another relay has it."""
        if session.get_bind().dialect.name != "postgresql":
            return True
        if self._lock_id is None:
            schema = (await session.execute(sa.text("select current_schema()"))).scalar_one()
            self._lock_id = zlib.crc32(f"portline-outbox:{schema}".encode())
        got = await session.execute(_TRY_LOCK, {"id": self._lock_id})
        return bool(got.scalar_one())

    async def _oldest_waiting(self, session: AsyncSession) -> datetime | None:
        """When the oldest waiting row was created; None if none is."""
        oldest: datetime | None = (await session.execute(_OLDEST_WAITING)).scalar_one()
        return oldest

    def _recount_parked(self, *, parked_now: bool) -> bool:
        """Whether this pass counts the parked rows (PARKED_RECOUNT_SECONDS)."""
        if parked_now or self._parked is None or self._parked > 0:
            return True
        assert self._parked_counted_at is not None
        since = (self._clock.now() - self._parked_counted_at).total_seconds()
        return not 0 <= since < PARKED_RECOUNT_SECONDS

    async def _count_parked(self, session: AsyncSession) -> int:
        return int((await session.execute(_PARKED_COUNT)).scalar_one())

    async def _read(self, session: AsyncSession) -> list[_Row]:
        """The next rows to publish in id order, without those held behind a parked row."""
        result = await session.execute(self._next_rows)
        return [_Row(r.id, r.topic, r.key, r.payload, r.created_at, r.traceparent) for r in result]

    async def _send(self, rows: Sequence[_Row], done: _Pass) -> None:
        """Publish the rows as one batch. If the broker refuses part of it for good, the rows
        it did not acknowledge go one at a time, in order, until the one that fails is found;
        that one is parked (its key's later rows held) and the rest go as a batch again."""
        pending: list[_Pending] = []
        for row in rows:
            if row.key in done.held:
                continue
            try:
                pending.append((row, _message(row)))
            except UnicodeError:
                done.park(row, "unserialisable")
        while pending:
            acked, failures = await self._try(pending)
            done.published.extend(pending[i][0] for i in sorted(acked))
            if not failures:
                return
            if not any(park_reason(error) for error in failures.values()):
                done.failure = failures[min(failures)]
                return
            unacked = [p for i, p in enumerate(pending) if i not in acked]
            pending = await self._isolate(unacked, done)

    async def _isolate(self, pending: Sequence[_Pending], done: _Pass) -> list[_Pending]:
        """Publish rows one at a time until one fails for good; park it and return the rows
        after it (without its key's). Returns [] once every row went or a transient failure
        ended the pass."""
        for n, (row, message) in enumerate(pending):
            if row.key in done.held:
                continue
            acked, failures = await self._try([(row, message)])
            if acked:
                done.published.append(row)
                continue
            error = failures[min(failures)]
            reason = park_reason(error)
            if reason is None:
                done.failure = error
                return []
            done.park(row, reason)
            return [p for p in pending[n + 1 :] if p[0].key not in done.held]
        return []

    async def _try(self, batch: Sequence[_Pending]) -> tuple[set[int], dict[int, Exception]]:
        """Publish a batch: the indexes acknowledged, and why the others were not."""
        try:
            await self._publisher.publish([message for _, message in batch])
        except PublishFailed as exc:
            failures = {i: _exception(e) for i, e in exc.failures.items()}
            return set(exc.acked), failures
        except Exception as exc:
            return set(), {0: exc}
        return set(range(len(batch))), {}

    async def _mark(self, session: AsyncSession, done: _Pass) -> None:
        now = self._clock.now()
        if done.published:
            await session.execute(
                sa.update(OUTBOX)
                .where(OUTBOX.c.id.in_([r.id for r in done.published]))
                .values(published_at=now)
            )
        for row, reason in done.parked:
            await session.execute(
                sa.update(OUTBOX)
                .where(OUTBOX.c.id == row.id)
                .values(parked_at=now, park_reason=reason[:PARK_REASON_LENGTH])
            )

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
        ages = asyncio.create_task(self._report_ages(stop), name="outbox-relay-age")
        try:
            await self._relay(stop)
        finally:
            ages.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ages

    async def _report_ages(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.report_age()
            await _wait_or_stop(stop, AGE_REPORT_SECONDS)

    async def _relay(self, stop: asyncio.Event) -> None:
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


def _exception(error: BaseException) -> Exception:
    # A publisher reports failures as BaseException; anything that is not an Exception (a
    # cancellation) is not a verdict on the message, so it stands for a transient failure.
    return error if isinstance(error, Exception) else RuntimeError(type(error).__name__)


@dataclass(frozen=True)
class ParkedRow:
    """A parked outbox row as operators see it: never its payload."""

    id: int
    topic: str
    key: str
    reason: str
    parked_at: datetime


async def parked_rows(sessions: async_sessionmaker[AsyncSession]) -> list[ParkedRow]:
    """Every parked row of this service's outbox, oldest first."""
    async with sessions() as session:
        result = await session.execute(
            sa.select(
                OUTBOX.c.id, OUTBOX.c.topic, OUTBOX.c.key, OUTBOX.c.park_reason, OUTBOX.c.parked_at
            )
            .where(OUTBOX.c.parked_at.is_not(None))
            .order_by(OUTBOX.c.id)
        )
        return [ParkedRow(r.id, r.topic, r.key, r.park_reason or "", r.parked_at) for r in result]


async def unpark(sessions: async_sessionmaker[AsyncSession], row_id: int) -> bool:
    """Let the relay try a parked row again (it parks it again if it still fails); False if
    there is no parked row with that id."""
    async with sessions() as session, session.begin():
        result = await session.execute(
            sa.update(OUTBOX)
            .where(OUTBOX.c.id == row_id, OUTBOX.c.parked_at.is_not(None))
            .values(parked_at=None, park_reason=None)
        )
        return bool(getattr(result, "rowcount", 0))
