"""Dead letters for operators: list them, show one, replay them, or resolve one by hand.

A dead letter (shared/inbox.py) is a message a consumer gave up on, kept whole in the
service's `dead_letter` table. Replay hands the stored message to the same inbox processor
and handler the running consumer uses: the inbox check, the handler and the inbox mark commit
together, so replaying twice (or replaying an event Kafka redelivered meanwhile) applies it
once. A replayed or resolved dead letter gets `resolved_at`.

What operators see is the reason and the event as its contract defines it: sealed fields stay
sealed tokens, nothing is ever opened. A payload that is not a valid PORTline event is never
printed (it could hold anything); only its size and the envelope attributes that parse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import shared.events  # noqa: F401  (every event model registers itself: `show` needs them all)
from shared.envelope import Envelope, EnvelopeError
from shared.inbox import DEAD_LETTER, InboxProcessor, Outcome, is_transient
from shared.uow import UnitOfWork

__all__ = [
    "DeadLetterEntry",
    "ReplayResult",
    "describe_payload",
    "get_dead_letter",
    "list_dead_letters",
    "replay_dead_letter",
    "resolve_dead_letter",
]


@dataclass(frozen=True)
class DeadLetterEntry:
    id: int
    consumer: str
    topic: str
    partition: int
    offset: int
    event_id: str | None
    error: str
    attempts: int
    created_at: datetime
    resolved_at: datetime | None
    payload: bytes

    @property
    def event_type(self) -> str:
        """The event's type as its envelope names it, or what the payload is instead."""
        if not self.payload:
            return "(no payload)"
        try:
            head = json.loads(self.payload)
        except ValueError:
            return "(not JSON)"
        kind = head.get("type") if isinstance(head, dict) else None
        return kind if isinstance(kind, str) and len(kind) <= 64 else "(not an envelope)"


def _entry(row: Any) -> DeadLetterEntry:
    return DeadLetterEntry(
        id=row.id,
        consumer=row.consumer,
        topic=row.topic,
        partition=row.partition,
        offset=row.offset,
        event_id=row.event_id,
        error=row.error,
        attempts=row.attempts,
        created_at=row.created_at,
        resolved_at=row.resolved_at,
        payload=row.payload or b"",
    )


async def list_dead_letters(
    sessions: async_sessionmaker[AsyncSession], *, include_resolved: bool = False
) -> list[DeadLetterEntry]:
    """This service's dead letters, oldest first; unresolved ones unless told otherwise."""
    query = sa.select(DEAD_LETTER).order_by(DEAD_LETTER.c.id)
    if not include_resolved:
        query = query.where(DEAD_LETTER.c.resolved_at.is_(None))
    async with sessions() as session:
        return [_entry(row) for row in await session.execute(query)]


async def get_dead_letter(
    sessions: async_sessionmaker[AsyncSession], dead_letter_id: int
) -> DeadLetterEntry | None:
    async with sessions() as session:
        row = (
            await session.execute(sa.select(DEAD_LETTER).where(DEAD_LETTER.c.id == dead_letter_id))
        ).first()
    return None if row is None else _entry(row)


def describe_payload(payload: bytes) -> dict[str, Any]:
    """What may be shown of a dead letter's payload: the whole event when it is a valid
    PORTline event (its sealed fields stay sealed), else only what is safe to say."""
    if not payload:
        return {"payload": "none (a tombstone, or a message too odd to store whole)"}
    try:
        envelope = Envelope.from_bytes(payload)
    except EnvelopeError as exc:
        return {"payload": f"{len(payload)} bytes, not shown: {exc}"}
    attributes = envelope.model_dump(mode="json", exclude={"data"})
    try:
        event = envelope.event()
    except EnvelopeError as exc:
        return {**attributes, "data": f"not shown: {exc}"}
    return {**attributes, "data": event.model_dump(mode="json")}


@dataclass(frozen=True)
class ReplayResult:
    entry: DeadLetterEntry
    outcome: Outcome | None
    """APPLIED, DUPLICATE (already applied: only marked resolved), or None when it failed."""
    error: str | None = None


async def _mark_resolved(
    sessions: async_sessionmaker[AsyncSession], dead_letter_id: int, now: datetime
) -> bool:
    async with sessions() as session, session.begin():
        result = await session.execute(
            sa.update(DEAD_LETTER)
            .where(DEAD_LETTER.c.id == dead_letter_id, DEAD_LETTER.c.resolved_at.is_(None))
            .values(resolved_at=now)
        )
        return bool(getattr(result, "rowcount", 0))


async def resolve_dead_letter(
    sessions: async_sessionmaker[AsyncSession], dead_letter_id: int, *, now: datetime
) -> bool:
    """Mark a dead letter handled without replaying it (a person decided its event is not to
    be applied); False if there is no unresolved dead letter with that id."""
    return await _mark_resolved(sessions, dead_letter_id, now)


async def replay_dead_letter(
    sessions: async_sessionmaker[AsyncSession],
    processor: InboxProcessor[UnitOfWork],
    entry: DeadLetterEntry,
    *,
    now: datetime,
) -> ReplayResult:
    """Apply a dead letter's event through its consumer's own inbox processor and handler,
    once; on success mark it resolved. A failure is recorded on the dead letter (its error and
    one more attempt) and returned; an outage of the database is raised."""
    try:
        envelope = Envelope.from_bytes(entry.payload)
    except EnvelopeError as exc:
        return ReplayResult(entry, None, f"cannot be replayed: {exc}")
    try:
        outcome = await processor.apply(envelope)
    except Exception as exc:
        if is_transient(exc):
            raise
        error = f"{type(exc).__name__}: {exc}"[:2000].replace("\x00", "")
        async with sessions() as session, session.begin():
            await session.execute(
                sa.update(DEAD_LETTER)
                .where(DEAD_LETTER.c.id == entry.id)
                .values(error=error, attempts=DEAD_LETTER.c.attempts + 1)
            )
        return ReplayResult(entry, None, error)
    await _mark_resolved(sessions, entry.id, now)
    return ReplayResult(entry, outcome)
