"""The unit of work: one transaction, one commit point, with the outbox written inside it."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.clock import Clock
from shared.envelope import Envelope, Event
from shared.outbox import OutboxRecord

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
        self._committed = False

    async def __aenter__(self) -> Self:
        self.session = self._sessions()
        self.published = []
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
        """Stage an event in the outbox; it is published only if this unit of work commits."""
        envelope = Envelope.wrap(
            event,
            source=self.source,
            subject=subject,
            time=self.clock.now(),
            event_id=event_id,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        self.session.add(
            OutboxRecord(
                event_id=envelope.id,
                topic=event.topic,
                key=subject,
                payload=envelope.model_dump_json(),
                created_at=self.clock.now(),
            )
        )
        self.published.append(envelope)
        return envelope

    async def commit(self) -> None:
        await self.session.commit()
        self._committed = True
        if self.published and self._on_published is not None:
            self._on_published()  # e.g. wake the outbox relay: there is something to send

    async def rollback(self) -> None:
        await self.session.rollback()
