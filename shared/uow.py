"""The unit of work: one transaction, one commit point, with the outbox written inside it.

Published events are kept in memory and their outbox rows inserted just before the commit,
in one statement, inside the same transaction: a rollback (or an abandoned unit of work)
leaves no row behind, and a commit always carries every event published through it.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.clock import Clock
from shared.envelope import Envelope, Event
from shared.outbox import OUTBOX
from shared.outbox_rows import outbox_row

__all__ = ["UnitOfWork"]


class UnitOfWork:
    """Rolls back unless commit() is called; events published here commit with the change."""

    session: AsyncSession

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Clock,
        source: str,
        on_published: Callable[[], None] | None = None,
    ) -> None:
        self._on_published = on_published
        self._sessions = sessions
        self.clock = clock
        self.source = source
        self.published: list[Envelope] = []
        self._outboxed = 0
        self._committed = False

    async def __aenter__(self) -> Self:
        self.session = self._sessions()
        self.published = []
        self._outboxed = 0
        self._committed = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self._committed:
                await self.session.rollback()
        finally:
            await self.session.close()

    def publish(
        self,
        event: Event,
        *,
        subject: str,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        event_id: str | None = None,
    ) -> Envelope:
        """Stage an event for the outbox; it is published only if this unit of work commits.

        Events leave in the order they were staged. A caller that rolls back part of its work
        (a savepoint) removes that part's events from ``published`` itself.
        """
        envelope = Envelope.wrap(
            event,
            source=self.source,
            subject=subject,
            time=self.clock.now(),
            event_id=event_id,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        self.published.append(envelope)
        return envelope

    async def flush(self) -> None:
        """Insert the outbox rows of the events staged so far, in one statement; they still
        commit or roll back with the unit of work. commit() does this itself."""
        # Events dropped with a savepoint took their rows (if any were written) with them.
        self._outboxed = min(self._outboxed, len(self.published))
        staged = self.published[self._outboxed :]
        if staged:
            await self.session.execute(OUTBOX.insert(), [outbox_row(e) for e in staged])
            self._outboxed = len(self.published)
        await self.session.flush()

    async def commit(self) -> None:
        await self.flush()
        await self.session.commit()
        self._committed = True
        if self.published and self._on_published is not None:
            self._on_published()  # e.g. wake the outbox relay: there is something to send

    async def rollback(self) -> None:
        await self.session.rollback()
