"""How an event becomes an outbox row, and the outbox's part of a one-statement write.

A unit of work (``shared.uow``) inserts these rows with SQLAlchemy. A store that writes a
whole batch in one asyncpg statement (intake on PostgreSQL) appends :func:`outbox_insert_sql`
as the statement's last part and passes :func:`outbox_params` as its last parameters, so the
outbox's own SQL is written once, here, beside its table.

Exceptions::

    ValueError
    └── EventTooLargeError   an event whose envelope exceeds the size the broker accepts
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.envelope import Envelope, event_model

__all__ = [
    "OUTBOX_COLUMNS",
    "EventTooLargeError",
    "outbox_insert_sql",
    "outbox_params",
    "outbox_row",
]

OUTBOX_COLUMNS = ("event_id", "topic", "key", "payload", "created_at", "traceparent")


class EventTooLargeError(ValueError):
    """An event that the broker would refuse: it must not be committed, or it would wedge."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"event of {size} bytes exceeds the {limit}-byte limit")


def outbox_row(
    envelope: Envelope, *, max_bytes: int | None = None, traceparent: str | None = None
) -> dict[str, Any]:
    """The outbox row that carries an event: its topic, key (the subject) and payload, and
    the trace context of the span that published it (``shared.tracing``), if any.

    With ``max_bytes``, an envelope (with its key) larger than that raises
    :class:`EventTooLargeError` before anything is written.
    """
    payload = envelope.model_dump_json()
    if max_bytes is not None:
        size = len(payload.encode()) + len(envelope.subject.encode())
        if size > max_bytes:
            raise EventTooLargeError(size, max_bytes)
    return {
        "event_id": envelope.id,
        "topic": event_model(envelope.type, envelope.dataversion).topic,
        "key": envelope.subject,
        "payload": payload,
        "created_at": envelope.time,
        "traceparent": traceparent,
    }


def outbox_insert_sql(first: int) -> str:
    """The final part of a one-statement write (after data-modifying CTEs): insert the outbox
    rows passed as parameters ``$first`` to ``$first + 5`` (see :func:`outbox_params`).

    The rows keep their staging order (``WITH ORDINALITY``), so one key's events get ids, and
    leave, in the order they were published.
    """
    p = [f"${first + i}" for i in range(len(OUTBOX_COLUMNS))]
    return (
        "INSERT INTO outbox (event_id, topic, key, payload, created_at, traceparent)\n"
        "SELECT t.event_id, t.topic, t.key, t.payload, t.created_at, t.traceparent\n"
        f"FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::text[], {p[3]}::text[], "
        f"{p[4]}::timestamptz[], {p[5]}::text[])\n"
        "     WITH ORDINALITY AS t(event_id, topic, key, payload, created_at, traceparent,\n"
        "                          position)\n"
        "ORDER BY t.position"
    )


def outbox_params(rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """The column arrays for :func:`outbox_insert_sql`, in its parameter order."""
    return [[row[name] for row in rows] for name in OUTBOX_COLUMNS]
