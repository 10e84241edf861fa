"""Durable timers: rows with a due time that fire exactly once, however many replicas run.

Why each timer's effect happens exactly once:

- **Claiming.** A runner selects due timers with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
  replicas never wait on each other: each takes rows no other open transaction holds.
- **Constraint.** Firing inserts the timer's key into ``timer_firing``, whose primary key is the
  key. The effect is written only for keys whose row this transaction inserted, so even if two
  replicas somehow claimed the same timer, only one firing (and one effect) can ever commit.
- **One transaction per batch.** The firing rows, every effect ``fire()`` writes through the unit
  of work (domain rows, outbox events) and the timers' ``fired_at`` marks commit together or not
  at all. A replica that dies mid-batch leaves nothing behind: PostgreSQL rolls its transaction
  back, releases its row locks, and another replica fires those timers.

On SQLite (one process, the embedded default) there are no row locks. The batch starts with a
write, which takes SQLite's database write lock before the due timers are read, so a second
runner on the same file waits instead of reading the same rows (and the driver opens the
transaction there, so the savepoints below nest inside it).

**Missed timers.** Nothing special happens after downtime: on start-up every overdue timer is
simply due, fires on the first rounds, and is marked ``late`` when it fires more than
``late_after`` past its due time.

**Marked, then fired.** Each claimed timer is marked fired just before its ``fire()`` runs, so
an effect may cancel its task's other timers without cancelling the one firing; a timer that
an earlier effect in the same batch cancelled or moved is found changed and does not fire (a
moved one fires when it is due again).

**A failing fire().** A batch first runs without savepoints (half the round trips per timer).
If a ``fire()`` raises, that attempt rolls back whole and the batch is redone with a savepoint
per timer: then only the failing timer's savepoint rolls back, the rest of the batch fires, and
the failed timer stays unfired. This replica retries it on a later round (straight on the
savepoint path), after a delay that doubles with each consecutive failure (kept in memory,
capped at five minutes), so timers failing at the head of the queue cannot starve the ones
behind them. So ``fire()`` may run more than once for a timer in transactions that roll back,
and only one ever commits: it must write only through the unit of work it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel

from services.scheduler.metrics import TIMER_LATENESS, TIMERS_OVERDUE
from shared.db import UTCDateTime, bigint_pk
from shared.uow import UnitOfWork

__all__ = [
    "TIMER",
    "TIMER_FIRING",
    "FireTimer",
    "Timer",
    "TimerFiringRecord",
    "TimerRecord",
    "TimerRunner",
    "cancel",
    "cancel_for_task",
    "reschedule",
    "schedule",
    "schedule_many",
]

log = logging.getLogger(__name__)

_MAX_RETRY_DELAY = timedelta(minutes=5)
_MAX_BACKOFF_SECONDS = 5.0


class TimerRecord(SQLModel, table=True):
    """A durable timer: its effect is identified by ``key`` and happens once, at or after
    ``due_at``."""

    __tablename__ = "timer"
    __table_args__ = (
        sa.UniqueConstraint("key", name="uq_timer_key"),
        # Only pending timers are ever searched by due time; fired and cancelled ones stay out.
        sa.Index(
            "ix_timer_due",
            "due_at",
            postgresql_where=sa.text("fired_at IS NULL AND cancelled_at IS NULL"),
            sqlite_where=sa.text("fired_at IS NULL AND cancelled_at IS NULL"),
        ),
        sa.Index("ix_timer_task_id", "task_id"),
    )

    id: int | None = Field(default=None, sa_column=bigint_pk())
    key: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    kind: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    task_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(sa.Uuid(), nullable=True))
    case_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(sa.Uuid(), nullable=True))
    due_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    fired_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    late: bool | None = Field(default=None, sa_column=sa.Column(sa.Boolean(), nullable=True))
    cancelled_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class TimerFiringRecord(SQLModel, table=True):
    """A timer's effect, committed: the primary key lets it happen only once."""

    __tablename__ = "timer_firing"

    key: str = Field(sa_column=sa.Column(sa.String(200), primary_key=True))
    fired_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    replica: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))


TIMER: sa.Table = TimerRecord.__table__  # type: ignore[attr-defined]
TIMER_FIRING: sa.Table = TimerFiringRecord.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Timer:
    """A due timer, as handed to ``fire()``."""

    id: int
    key: str
    kind: str
    task_id: uuid.UUID | None
    case_id: uuid.UUID | None
    due_at: datetime


FireTimer = Callable[[UnitOfWork, Timer, bool], Awaitable[None]]
"""Writes a timer's effect through the unit of work (never commits); the bool is ``late``."""


def _insert(session: AsyncSession, table: sa.Table) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"durable timers need PostgreSQL or SQLite, not {dialect}")


def _pending() -> sa.ColumnElement[bool]:
    return sa.and_(TIMER.c.fired_at.is_(None), TIMER.c.cancelled_at.is_(None))


async def schedule(
    session: AsyncSession,
    *,
    key: str,
    kind: str,
    due_at: datetime,
    task_id: uuid.UUID | None = None,
    case_id: uuid.UUID | None = None,
    now: datetime,
) -> bool:
    """Add a timer; False (and no change) when a timer with this key already exists."""
    statement = (
        _insert(session, TIMER)
        .values(
            key=key,
            kind=kind,
            due_at=due_at,
            task_id=task_id,
            case_id=case_id,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(TIMER.c.id)
    )
    return (await session.execute(statement)).scalar_one_or_none() is not None


async def schedule_many(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Add timers in one statement (rows hold the timer columns but ``id``); a row whose key
    already exists is skipped, leaving that timer as it is."""
    if rows:
        statement = _insert(session, TIMER).on_conflict_do_nothing(index_elements=["key"])
        await session.execute(statement, list(rows))


async def cancel(session: AsyncSession, *, key: str, now: datetime) -> bool:
    """Cancel a pending timer; False when there is none (unknown, fired or already cancelled)."""
    result = await session.execute(
        sa.update(TIMER)
        .where(TIMER.c.key == key, _pending())
        .values(cancelled_at=now)
        .returning(TIMER.c.id)
    )
    return result.first() is not None


async def cancel_for_task(session: AsyncSession, *, task_id: uuid.UUID, now: datetime) -> int:
    """Cancel every pending timer of a task; returns how many were cancelled."""
    result = await session.execute(
        sa.update(TIMER)
        .where(TIMER.c.task_id == task_id, _pending())
        .values(cancelled_at=now)
        .returning(TIMER.c.id)
    )
    return len(result.all())


async def reschedule(session: AsyncSession, *, key: str, due_at: datetime) -> bool:
    """Move a pending timer to a new due time; False when there is none to move."""
    result = await session.execute(
        sa.update(TIMER)
        .where(TIMER.c.key == key, _pending())
        .values(due_at=due_at)
        .returning(TIMER.c.id)
    )
    return result.first() is not None


class _FireFailed(Exception):
    """fire() raised in a batch without savepoints: that batch is redone with them."""


def _connection_lost(exc: Exception) -> bool:
    """The database went away: the whole batch fails, not one timer."""
    return isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated


@dataclass(frozen=True)
class _Failure:
    attempts: int
    retry_at: datetime


class TimerRunner:
    """Fires due timers in batches, each batch in one unit of work; see the module docstring.

    Started after downtime, it needs nothing special: every overdue timer is simply due and
    fires on the first rounds, marked late.
    """

    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork],
        fire: FireTimer,
        *,
        replica: str,
        batch_size: int = 100,
        poll_interval: float = 0.5,
        late_after: timedelta = timedelta(seconds=60),
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._uow_factory = uow_factory
        self._fire = fire
        self._replica = replica
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._late_after = late_after
        self._failures: dict[int, _Failure] = {}
        self._claimed = 0

    async def run_once(self) -> int:
        """Fire one batch of due timers and commit it; returns how many fired."""
        try:
            return await self._run_batch(isolated=False)
        except _FireFailed:
            return await self._run_batch(isolated=True)

    async def _run_batch(self, *, isolated: bool) -> int:
        """Claim, fire and commit one batch; isolated puts each timer in its own savepoint."""
        async with self._uow_factory() as uow:
            now = uow.clock.now()
            timers = await self._claim(uow.session, now)
            self._claimed = len(timers)
            # Claimed oldest first: the first is the longest waiting.
            TIMERS_OVERDUE.set((now - timers[0].due_at).total_seconds() if timers else 0)
            if not timers:
                return 0
            isolated = isolated or any(t.id in self._failures for t in timers)
            fire_one = self._fire_isolated if isolated else self._fire_direct
            owned = await self._insert_firings(uow.session, timers, now)
            fired: list[Timer] = []
            released: list[str] = []
            for timer in timers:
                if timer.key not in owned:
                    continue
                if await fire_one(uow, timer, now):
                    fired.append(timer)
                else:
                    released.append(timer.key)
            if released:
                await uow.session.execute(
                    sa.delete(TIMER_FIRING).where(TIMER_FIRING.c.key.in_(released))
                )
            await self._mark_fired_elsewhere(uow.session, timers, owned, now)
            await uow.commit()
        for timer in fired:
            self._failures.pop(timer.id, None)
            TIMER_LATENESS.observe(max(0.0, (now - timer.due_at).total_seconds()))
        return len(fired)

    async def run(self, stop: asyncio.Event) -> None:
        """Fire timers until stop is set: at once while batches come back full, otherwise every
        poll_interval; database failures are logged and retried with backoff."""
        backoff = self._poll_interval
        while not stop.is_set():
            try:
                await self.run_once()
                full = self._claimed >= self._batch_size
                backoff = self._poll_interval
            except Exception as exc:
                log.warning(
                    "timer runner failed; retrying",
                    extra={"replica": self._replica, "error": type(exc).__name__},
                )
                full = False
                backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
            if full:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)

    async def _claim(self, session: AsyncSession, now: datetime) -> list[Timer]:
        dialect = session.get_bind().dialect.name
        if dialect == "sqlite":
            # Take SQLite's write lock before reading (its stand-in for row locks). It also makes
            # the driver open the transaction now, so the savepoints below nest inside it
            # instead of each committing on release.
            await session.execute(sa.update(TIMER).where(sa.false()).values(id=TIMER.c.id))
        self._forget_old_failures(now)
        held_back = [i for i, f in self._failures.items() if f.retry_at > now]
        query = (
            sa.select(
                TIMER.c.id,
                TIMER.c.key,
                TIMER.c.kind,
                TIMER.c.task_id,
                TIMER.c.case_id,
                TIMER.c.due_at,
            )
            .where(_pending(), TIMER.c.due_at <= now)
            .order_by(TIMER.c.due_at, TIMER.c.id)
            .limit(self._batch_size)
        )
        if held_back:
            query = query.where(TIMER.c.id.not_in(held_back))
        if dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        rows = (await session.execute(query)).all()
        return [Timer(r.id, r.key, r.kind, r.task_id, r.case_id, r.due_at) for r in rows]

    async def _insert_firings(
        self, session: AsyncSession, timers: Sequence[Timer], now: datetime
    ) -> set[str]:
        """Insert the batch's firing rows; returns the keys this transaction now owns."""
        statement = (
            _insert(session, TIMER_FIRING)
            .values([{"key": t.key, "fired_at": now, "replica": self._replica} for t in timers])
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(TIMER_FIRING.c.key)
        )
        return set((await session.scalars(statement)).all())

    async def _mark(self, session: AsyncSession, timer: Timer, now: datetime, late: bool) -> bool:
        """Mark the timer fired; False when an earlier effect in this batch cancelled or moved
        it."""
        marked = await session.execute(
            sa.update(TIMER)
            .where(TIMER.c.id == timer.id, TIMER.c.due_at == timer.due_at, _pending())
            .values(fired_at=now, late=late)
            .returning(TIMER.c.id)
        )
        return marked.first() is not None

    async def _fire_direct(self, uow: UnitOfWork, timer: Timer, now: datetime) -> bool:
        """Mark and fire, with no savepoint; a failing fire() fails the batch (_FireFailed)."""
        late = now - timer.due_at > self._late_after
        if not await self._mark(uow.session, timer, now, late):
            return False
        try:
            await self._fire(uow, timer, late)
        except Exception as exc:
            if _connection_lost(exc):
                raise
            raise _FireFailed from exc
        return True

    async def _fire_isolated(self, uow: UnitOfWork, timer: Timer, now: datetime) -> bool:
        """Mark and fire in a savepoint; False (rolled back, failure noted) if fire() raised."""
        late = now - timer.due_at > self._late_after
        staged = len(uow.published)
        try:
            async with uow.session.begin_nested():
                if not await self._mark(uow.session, timer, now, late):
                    return False
                await self._fire(uow, timer, late)
        except Exception as exc:
            if _connection_lost(exc):
                raise
            del uow.published[staged:]  # its events were rolled back with the savepoint
            self._note_failure(timer, now, exc)
            return False
        return True

    def _note_failure(self, timer: Timer, now: datetime, exc: Exception) -> None:
        previous = self._failures.get(timer.id)
        attempts = previous.attempts + 1 if previous else 1
        delay = timedelta(seconds=self._poll_interval * 2 ** (attempts - 1))
        self._failures[timer.id] = _Failure(attempts, now + min(delay, _MAX_RETRY_DELAY))
        log.warning(
            "timer failed to fire; retrying later",
            extra={
                "replica": self._replica,
                "timer_id": timer.id,
                "timer_kind": timer.kind,
                "attempts": attempts,
                "error": type(exc).__name__,
            },
        )

    async def _mark_fired_elsewhere(
        self, session: AsyncSession, timers: Sequence[Timer], owned: set[str], now: datetime
    ) -> None:
        """Mark claimed timers whose firing row already existed, without firing them.

        A committed firing row for a timer still unfired means its effect committed in a
        transaction that did not mark it, which only a firing outside these rules could do:
        never fire it again, mark it (late unknown) and say so.
        """
        elsewhere = [t.id for t in timers if t.key not in owned]
        if not elsewhere:
            return
        healed = (
            await session.scalars(
                sa.update(TIMER)
                .where(TIMER.c.id.in_(elsewhere), TIMER.c.fired_at.is_(None))
                .values(fired_at=now)
                .returning(TIMER.c.id)
            )
        ).all()
        if healed:
            log.warning(
                "timers found fired but unmarked; marked without firing again",
                extra={"replica": self._replica, "timer_ids": list(healed)},
            )

    def _forget_old_failures(self, now: datetime) -> None:
        """Drop failure counts long past their retry time (the timer fired or was cancelled
        elsewhere, or will start counting again)."""
        stale = [i for i, f in self._failures.items() if now - f.retry_at > _MAX_RETRY_DELAY]
        for timer_id in stale:
            del self._failures[timer_id]
