"""The unit of work: one transaction, one commit point, with the outbox written inside it.

Published events are kept in memory and their outbox rows inserted just before the commit,
in one statement, inside the same transaction: a rollback (or an abandoned unit of work)
leaves no row behind, and a commit always carries every event published through it.

Each row keeps the trace context current when its event was published (``shared.tracing``):
a consumer's span for a single event, or, in a batch, the span of the incoming event named by
:meth:`UnitOfWork.caused_by`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.clock import Clock
from shared.envelope import Envelope, Event
from shared.outbox import OUTBOX
from shared.outbox_rows import outbox_row
from shared.tracing import Context, current_traceparent, use_context

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
        self.trace_contexts: dict[str, Context] = {}
        """The consumer span's context of each incoming event (the inbox sets them)."""
        self._traceparents: dict[str, str] = {}
        self._outboxed = 0
        self._committed = False

    async def __aenter__(self) -> Self:
        self.session = self._sessions()
        self.published = []
        self.trace_contexts = {}
        self._traceparents = {}
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
        if (traceparent := current_traceparent()) is not None:
            self._traceparents[envelope.id] = traceparent
        return envelope

    @contextmanager
    def caused_by(self, event_id: str | None) -> Iterator[None]:
        """Events published inside continue the trace of the incoming event `event_id` (a
        batch handler applying several events names each one's in turn)."""
        with use_context(self.trace_contexts.get(event_id) if event_id else None):
            yield

    async def flush(self) -> None:
        """Insert the outbox rows of the events staged so far, in one statement; they still
        commit or roll back with the unit of work. commit() does this itself."""
        # Events dropped with a savepoint took their rows (if any were written) with them.
        self._outboxed = min(self._outboxed, len(self.published))
        staged = self.published[self._outboxed :]
        if staged:
            await self.session.execute(
                OUTBOX.insert(),
                [outbox_row(e, traceparent=self._traceparents.get(e.id)) for e in staged],
            )
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
