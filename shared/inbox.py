"""Idempotent consumption: the handler's effects and the inbox mark commit together.

A handler that keeps failing on the same message (a poison message) is retried a bounded
number of times and then written to the dead-letter store, so the partition moves on. A
failure that no retry can mend (an event that does not match its schema, data sealed under
keys this service does not hold) is dead-lettered at once.
Transient infrastructure failures (the database is down) are not the message's fault: they
are raised to the consumer loop, which backs off and redelivers without counting attempts.

Dead-lettering itself must not fail on what the message holds, or the partition would be
redelivered for ever: a tombstone (no value) is dead-lettered as such, an event id longer than
the column is cut, NUL characters (PostgreSQL text refuses them) are dropped from the error,
and a dead letter that still cannot be stored whole is stored without its payload, as a
pointer to the message's topic, partition and offset (Kafka keeps it for its retention).

A consumer may also give a batch handler, which applies several events in one call (with
set-based reads and writes) exactly as the handler would apply them one after another; a
batch of one goes through the batch handler too, so there is one way to apply an event.

Every message is applied inside a consumer span that continues the trace in its record's
`traceparent` header (shared.tracing); in a batch, each event's span is lent to the unit of
work (`UnitOfWork.caused_by`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from shared.db import UTCDateTime, bigint_pk
from shared.envelope import Envelope, EnvelopeError
from shared.sealing import SealingError
from shared.tracing import (
    Context,
    Span,
    SpanKind,
    context_from_headers,
    in_context,
    set_attributes,
    start_span,
)
from shared.tracing import span as trace_span
from shared.uow import UnitOfWork

__all__ = [
    "BatchHandler",
    "DeadLetter",
    "Handler",
    "InboxProcessor",
    "InboxRecord",
    "IncomingMessage",
    "Outcome",
    "dead_letter_row",
    "is_transient",
]

log = logging.getLogger(__name__)

U = TypeVar("U", bound=UnitOfWork)
Handler = Callable[[U, Envelope], Awaitable[None]]
BatchHandler = Callable[[U, Sequence[Envelope]], Awaitable[None]]
"""Applies events in their order, with the effect of applying each in turn with the handler."""


class InboxRecord(SQLModel, table=True):
    """An event this consumer has applied; its presence makes redelivery a no-op."""

    __tablename__ = "inbox"

    consumer: str = Field(sa_column=sa.Column(sa.String(100), primary_key=True))
    event_id: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    processed_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class DeadLetter(SQLModel, table=True):
    """A message this consumer gave up on, kept whole for inspection and replay."""

    __tablename__ = "dead_letter"
    __table_args__ = (sa.UniqueConstraint("consumer", "topic", "partition", "offset"),)

    id: int | None = Field(default=None, sa_column=bigint_pk())
    consumer: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    topic: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    partition: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False))
    offset: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False))
    key: bytes | None = Field(default=None, sa_column=sa.Column(sa.LargeBinary(), nullable=True))
    event_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(64), nullable=True))
    payload: bytes = Field(sa_column=sa.Column(sa.LargeBinary(), nullable=False))
    error: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    attempts: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    resolved_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )


DEAD_LETTER: sa.Table = DeadLetter.__table__  # type: ignore[attr-defined]
INBOX: sa.Table = InboxRecord.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class IncomingMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    """None for a tombstone: no PORTline producer sends one, so it is dead-lettered."""
    headers: tuple[tuple[str, bytes], ...] = ()
    """The record's headers; a `traceparent` among them is continued (shared.tracing)."""


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"


_TRANSIENT = (sa.exc.OperationalError, sa.exc.InterfaceError, ConnectionError, TimeoutError)


# SQLSTATE classes and codes of a database that is down, starting or stopping, not of a
# message: connection exceptions (08), operator intervention (57: admin or crash shutdown,
# "the database system is starting up / shutting down"), insufficient resources (53, e.g.
# too many connections) and a cancelled or timed-out statement during failover (57014).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57")


def _sqlstate(exc: BaseException) -> str | None:
    for candidate in (exc, getattr(exc, "orig", None), getattr(exc, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is the infrastructure's (retry forever) rather than the message's.

    A PostgreSQL restart answers with errors SQLAlchemy reports as a plain ``DBAPIError``
    ("the database system is shutting down" / "starting up"); their SQLSTATE says they are
    the database's, not the message's.
    """
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    code = _sqlstate(exc)
    if code is not None and code[:2] in _TRANSIENT_SQLSTATE_CLASSES:
        return True
    return isinstance(exc, _TRANSIENT) or (isinstance(exc, OSError) and exc.errno is not None)


EVENT_ID_LENGTH = 64
ERROR_LENGTH = 2000


def _describe(exc: BaseException) -> str:
    # Exception text from handlers is ours, not the partner's; still keep it short.
    return f"{type(exc).__name__}: {exc}"[:ERROR_LENGTH]


def dead_letter_row(
    message: IncomingMessage,
    *,
    consumer: str,
    event_id: str | None,
    error: str,
    attempts: int,
) -> dict[str, Any]:
    """The dead_letter row for a message (but its created_at), cut to fit its columns whatever
    the message holds."""
    return {
        "consumer": consumer,
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": message.key,
        "event_id": event_id[:EVENT_ID_LENGTH] if event_id is not None else None,
        "payload": message.value if message.value is not None else b"",
        "error": error.replace("\x00", "")[:ERROR_LENGTH],
        "attempts": attempts,
    }


class InboxProcessor(Generic[U]):
    """Applies each event at most once per consumer, dead-lettering poison messages."""

    def __init__(
        self,
        consumer: str,
        uow_factory: Callable[[], U],
        handler: Handler[U],
        *,
        max_attempts: int = 5,
        backoff_seconds: float = 0.2,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        permanent: tuple[type[Exception], ...] = (EnvelopeError, SealingError),
        batch_handler: BatchHandler[U] | None = None,
    ) -> None:
        self._permanent = permanent
        self._batch_handler = batch_handler
        self.consumer = consumer
        self._uow_factory = uow_factory
        self._handler = handler
        self._max_attempts = max_attempts
        self._backoff = backoff_seconds
        self._sleep = sleep

    def _span_attributes(self, message: IncomingMessage) -> dict[str, Any]:
        return {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": message.topic,
            "messaging.destination.partition.id": str(message.partition),
            "messaging.kafka.offset": message.offset,
            "messaging.consumer.group.name": self.consumer,
        }

    async def process(self, message: IncomingMessage) -> Outcome:
        """Apply one message, inside a consumer span that continues its producer's trace."""
        with trace_span(
            f"process {message.topic}",
            kind=SpanKind.CONSUMER,
            parent=context_from_headers(message.headers),
            attributes=self._span_attributes(message),
        ) as span:
            outcome = await self._process(message, span)
            set_attributes(span, {"portline.outcome": outcome.value})
            return outcome

    async def _process(self, message: IncomingMessage, span: Span) -> Outcome:
        if message.value is None:
            error = "not a PORTline envelope (a tombstone: no value)"
            return await self._dead_letter(message, None, error, attempts=1)
        try:
            envelope = Envelope.from_bytes(message.value)
        except EnvelopeError as exc:
            return await self._dead_letter(message, None, str(exc), attempts=1)
        set_attributes(
            span, {"messaging.message.id": envelope.id, "portline.event_type": envelope.type}
        )

        last_error = ""
        for attempt in range(1, self._max_attempts + 1):
            try:
                return await self._apply(envelope)
            except Exception as exc:
                if is_transient(exc):
                    raise
                last_error = _describe(exc)
                log.warning(
                    "handler failed",
                    extra={
                        "consumer": self.consumer,
                        "event_id": envelope.id,
                        "event_type": envelope.type,
                        "attempt": attempt,
                        "error": type(exc).__name__,
                    },
                )
                if isinstance(exc, self._permanent):
                    # Retrying cannot help (an unknown event version, data sealed under
                    # keys we do not hold): dead-letter now, keep the partition moving.
                    return await self._dead_letter(message, envelope.id, last_error, attempt)
                if attempt < self._max_attempts:
                    await self._sleep(self._backoff * attempt)
        return await self._dead_letter(message, envelope.id, last_error, self._max_attempts)

    async def process_batch(self, messages: Sequence[IncomingMessage]) -> list[Outcome]:
        """Apply several messages in one unit of work (one commit for all of them).

        If any handler fails, nothing of the batch is kept and the messages are processed one
        at a time instead, with the usual retries and dead-lettering; each event is still
        applied at most once. Transient failures are raised, as in process().
        """
        if len(messages) <= 1:
            return [await self.process(m) for m in messages]
        decoded: list[Envelope | None] = []
        for m in messages:
            try:
                decoded.append(None if m.value is None else Envelope.from_bytes(m.value))
            except EnvelopeError:
                decoded.append(None)
        if any(e is None for e in decoded):
            return [await self.process(m) for m in messages]
        envelopes = [e for e in decoded if e is not None]
        spans = [self._start_span(m, e) for m, e in zip(messages, envelopes, strict=True)]
        outcomes: list[Outcome] | None = None
        try:
            outcomes = await self._apply_all(envelopes, spans)
        except Exception as exc:
            if is_transient(exc):
                raise
        finally:
            for n, span in enumerate(spans):
                if outcomes is not None:
                    set_attributes(span, {"portline.outcome": outcomes[n].value})
                span.end()
        if outcomes is None:  # a handler failed: one at a time, each in a span of its own
            return [await self.process(m) for m in messages]
        return outcomes

    def _start_span(self, message: IncomingMessage, envelope: Envelope) -> Span:
        """A consumer span for one message of a batch, continuing its producer's trace."""
        return start_span(
            f"process {message.topic}",
            kind=SpanKind.CONSUMER,
            parent=context_from_headers(message.headers),
            attributes={
                **self._span_attributes(message),
                "messaging.message.id": envelope.id,
                "portline.event_type": envelope.type,
            },
        )

    async def _apply_all(
        self, envelopes: Sequence[Envelope], spans: Sequence[Span] = ()
    ) -> list[Outcome]:
        async with self._uow_factory() as uow:
            for envelope, span in zip(envelopes, spans, strict=False):
                uow.trace_contexts[envelope.id] = in_context(Context(), span)
            ids = [e.id for e in envelopes]
            seen = set(
                (
                    await uow.session.execute(
                        sa.select(INBOX.c.event_id).where(
                            INBOX.c.consumer == self.consumer, INBOX.c.event_id.in_(ids)
                        )
                    )
                ).scalars()
            )
            outcomes: list[Outcome] = []
            fresh: list[Envelope] = []
            for envelope in envelopes:
                if envelope.id in seen:
                    outcomes.append(Outcome.DUPLICATE)
                    continue
                seen.add(envelope.id)
                fresh.append(envelope)
                outcomes.append(Outcome.APPLIED)
            await self._handle(uow, fresh)
            await self._mark(uow, fresh)
            await uow.commit()
        return outcomes

    async def _handle(self, uow: U, envelopes: Sequence[Envelope]) -> None:
        if not envelopes:
            return
        if self._batch_handler is not None:
            await self._batch_handler(uow, envelopes)
            return
        for envelope in envelopes:
            await self._handler(uow, envelope)

    async def _mark(self, uow: U, envelopes: Sequence[Envelope]) -> None:
        """The inbox rows, in one statement, committed with the handler's effects."""
        if envelopes:
            now = uow.clock.now()
            await uow.session.execute(
                INBOX.insert(),
                [
                    {"consumer": self.consumer, "event_id": e.id, "processed_at": now}
                    for e in envelopes
                ],
            )

    async def apply(self, envelope: Envelope) -> Outcome:
        """Apply one event once, as the consumer loop would, but without retries or
        dead-lettering: the handler's failure is raised (replaying a dead letter)."""
        return await self._apply(envelope)

    async def _apply(self, envelope: Envelope) -> Outcome:
        async with self._uow_factory() as uow:
            seen = await uow.session.get(InboxRecord, (self.consumer, envelope.id))
            if seen is not None:
                return Outcome.DUPLICATE
            await self._handle(uow, [envelope])
            try:
                await self._mark(uow, [envelope])
                await uow.commit()
            except sa.exc.IntegrityError:
                # Either a concurrent delivery of the same event won the race (ours rolled
                # back whole), or the handler's own writes broke a constraint: only the
                # first is a duplicate; the second is the handler failing.
                if await self._seen(envelope.id):
                    return Outcome.DUPLICATE
                raise
        return Outcome.APPLIED

    async def _seen(self, event_id: str) -> bool:
        async with self._uow_factory() as uow:
            return await uow.session.get(InboxRecord, (self.consumer, event_id)) is not None

    async def _dead_letter(
        self, message: IncomingMessage, event_id: str | None, error: str, attempts: int
    ) -> Outcome:
        row = dead_letter_row(
            message, consumer=self.consumer, event_id=event_id, error=error, attempts=attempts
        )
        try:
            await self._store_dead_letter(row)
        except Exception as exc:
            if is_transient(exc):
                raise
            # Something in the message still does not fit: store where it is instead, so the
            # partition moves on and the message can be fetched from Kafka.
            log.error(
                "dead letter could not be stored whole; storing where the message is",
                extra={"consumer": self.consumer, "error": type(exc).__name__},
            )
            pointer = {
                **row,
                "key": None,
                "event_id": None,
                "payload": b"",
                "error": f"stored without its payload ({type(exc).__name__}); "
                f"the message is at {message.topic}/{message.partition}/{message.offset}. "
                f"{row['error']}"[:ERROR_LENGTH],
            }
            await self._store_dead_letter(pointer)
        log.error(
            "message dead-lettered",
            extra={
                "consumer": self.consumer,
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
                "event_id": row["event_id"],
            },
        )
        return Outcome.DEAD_LETTERED

    async def _store_dead_letter(self, row: dict[str, Any]) -> None:
        """Insert the row unless this consumer already dead-lettered that message."""
        async with self._uow_factory() as uow:
            table = DEAD_LETTER
            exists = await uow.session.execute(
                sa.select(table.c.id).where(
                    table.c.consumer == row["consumer"],
                    table.c.topic == row["topic"],
                    table.c.partition == row["partition"],
                    table.c.offset == row["offset"],
                )
            )
            if exists.first() is None:
                await uow.session.execute(table.insert(), {**row, "created_at": uow.clock.now()})
                await uow.commit()
