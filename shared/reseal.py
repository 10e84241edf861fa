"""Re-sealing stored PHI under the active sealing key, so that a retired key can go.

`portline keys rotate` puts a new key first in PORTLINE_SEAL_KEYS: new writes use it, and
tokens sealed under the older keys still open. `portline keys reseal` then walks every sealed
column of every service (`SealedColumn`, listed by each service in `services/<name>/sealed.py`
and, for the plumbing, here) and re-seals each token that names another key id: opened with
its own context and sealed again under the same context with the active key.

It is safe while the services run and safe to stop at any moment:

- every batch is its own short transaction, and each row is written only if it still holds
  the token that was read (compare and set), so a row a service changed meanwhile is left as
  the service wrote it (already under the active key);
- the work left is found again by what it is (tokens under other key ids), so a restarted
  run carries on where the last one stopped and a finished run finds nothing;
- it is throttled to a number of rows per second.

`key_usage` counts the tokens under each key id, so operators can see when none is left
under a key and remove it (see docs/deploy.md for what else may still need it: the Kafka
topics and backups).

Events carry sealed tokens too (identity and address). Unpublished and parked outbox rows and
unresolved dead letters are re-sealed inside their payloads, token by token; published outbox
rows are never read again and go with retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.inbox import DEAD_LETTER
from shared.outbox import OUTBOX
from shared.retention import append_only_lifted, service_declared
from shared.sealing import Sealer, SealingError

__all__ = [
    "EVENT_CONTEXTS",
    "PLUMBING_COLUMNS",
    "Progress",
    "ResealReport",
    "SealedColumn",
    "columns_for",
    "key_usage",
    "reseal_column",
]

EVENT_CONTEXTS = ("identity", "address")
"""The contexts of the sealed fields events carry (shared/identity.py seals them)."""

_TOKEN = re.compile(r"(?<![A-Za-z0-9_.-])v1\.([A-Za-z0-9_-]{1,32})\.([A-Za-z0-9_-]+)")


@dataclass(frozen=True)
class SealedColumn:
    """A column that holds sealed tokens: either a token per row ("token"), or a JSON
    payload with tokens inside ("payload")."""

    table: sa.Table
    column: str
    contexts: tuple[str, ...]
    kind: Literal["token", "payload"] = "token"
    when: Callable[[sa.Table], sa.ColumnElement[bool]] | None = None
    """Only these rows are read again, so only these need the active key."""
    append_only: bool = False
    """An audit table whose triggers refuse updates: its owner lifts them per batch (the
    content does not change, only the key it is sealed under)."""

    @property
    def name(self) -> str:
        return f"{self.table.name}.{self.column}"

    def rows(self) -> sa.ColumnElement[bool]:
        clauses: list[sa.ColumnElement[bool]] = [self.table.c[self.column].is_not(None)]
        if self.when is not None:
            clauses.append(self.when(self.table))
        return sa.and_(*clauses)


PLUMBING_COLUMNS: tuple[SealedColumn, ...] = (
    SealedColumn(
        OUTBOX,
        "payload",
        EVENT_CONTEXTS,
        kind="payload",
        when=lambda t: t.c.published_at.is_(None),
    ),
    SealedColumn(
        DEAD_LETTER,
        "payload",
        EVENT_CONTEXTS,
        kind="payload",
        when=lambda t: t.c.resolved_at.is_(None),
    ),
)


def columns_for(service: str) -> tuple[SealedColumn, ...]:
    """The plumbing's sealed columns, then the service's own (`services/<name>/sealed.py`)."""
    return (*PLUMBING_COLUMNS, *service_declared(service, "sealed", "COLUMNS"))


def _kid(token: str) -> str | None:
    parts = token.split(".", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "v1" else None


def _reseal_token(sealer: Sealer, token: str, contexts: Iterable[str]) -> str:
    """The token under the active key (itself if it already is), keeping its context."""
    if _kid(token) == sealer.keyring.active_kid:
        return token
    last: SealingError | None = None
    for context in contexts:
        try:
            plain = sealer.open(token, context=context)
        except SealingError as exc:
            last = exc
            continue
        return sealer.seal(plain, context=context)
    assert last is not None
    raise last


def _reseal_payload(sealer: Sealer, text: str, contexts: tuple[str, ...]) -> str:
    """Every token inside a payload re-sealed; text that only looks like a token (its key id
    is not one of ours) is left alone."""

    def one(match: re.Match[str]) -> str:
        if match[1] not in sealer.keyring:
            return match[0]
        return _reseal_token(sealer, match[0], contexts)

    return _TOKEN.sub(one, text)


def _resealed(sealer: Sealer, column: SealedColumn, value: Any) -> Any:
    if column.kind == "token":
        return _reseal_token(sealer, str(value), column.contexts)
    if isinstance(value, bytes | bytearray | memoryview):
        return _reseal_payload(sealer, bytes(value).decode(), column.contexts).encode()
    return _reseal_payload(sealer, str(value), column.contexts)


def _needs_work(column: SealedColumn, active: str) -> sa.ColumnElement[bool]:
    if column.kind == "payload":
        return column.rows()  # tokens are inside: every such row is read (there are few)
    prefix = f"v1.{active}."
    value = column.table.c[column.column]
    return sa.and_(column.rows(), sa.func.substr(value, 1, len(prefix)) != prefix)


class Progress:
    """A progress bar on a terminal, or a line now and then in a log."""

    def __init__(self, write: Callable[[str], None], *, bar: bool, every: float = 5.0) -> None:
        self._write = write
        self._bar = bar
        self._every = every
        self._last = 0.0

    def update(self, name: str, done: int, total: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and not self._bar and now - self._last < self._every:
            return
        self._last = now
        share = done / total if total else 1.0
        if self._bar:
            filled = int(share * 30)
            line = f"\r{name:<40} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}"
            self._write(line + ("\n" if final else ""))
        else:
            self._write(f"{name}: {done}/{total} ({share:.0%})\n")


@dataclass
class ResealReport:
    column: str
    resealed: int = 0
    skipped: int = 0
    """Rows a service changed between our read and our write: already under the new key."""
    failed: int = 0
    """Tokens that opened under no key and context we hold (named, never shown)."""


async def _count(
    sessions: async_sessionmaker[AsyncSession], column: SealedColumn, active: str
) -> int:
    async with sessions() as session:
        total = await session.scalar(
            sa.select(sa.func.count()).select_from(column.table).where(_needs_work(column, active))
        )
    return int(total or 0)


async def _write_batch(
    session: AsyncSession,
    column: SealedColumn,
    sealer: Sealer,
    rows: Sequence[Any],
    width: int,
    report: ResealReport,
) -> None:
    """Write each row's value re-sealed, only where the row still holds what was read."""
    table = column.table
    keys = list(table.primary_key.columns)
    value = table.c[column.column]
    for row in rows:
        pk = tuple(row[:width])
        old = row[width]
        try:
            new = _resealed(sealer, column, old)
        except (SealingError, UnicodeDecodeError):
            report.failed += 1
            continue
        if new == old:
            continue
        result = await session.execute(
            sa.update(table)
            .where(*(k == v for k, v in zip(keys, pk, strict=True)), value == old)
            .values({column.column: new})
        )
        if getattr(result, "rowcount", 0):
            report.resealed += 1
        else:
            report.skipped += 1


async def reseal_column(
    sessions: async_sessionmaker[AsyncSession],
    column: SealedColumn,
    sealer: Sealer,
    *,
    rate: float,
    batch: int = 200,
    progress: Progress | None = None,
    label: str = "",
    sleep: Callable[[float], Any] = asyncio.sleep,
) -> ResealReport:
    """Re-seal one column's tokens under the active key, `rate` rows a second at most."""
    active = sealer.keyring.active_kid
    table = column.table
    keys = list(table.primary_key.columns)
    value = table.c[column.column]
    report = ResealReport(label or column.name)
    total = await _count(sessions, column, active)
    done = 0
    after: tuple[Any, ...] | None = None
    while True:
        started = time.monotonic()
        query = sa.select(*keys, value).where(_needs_work(column, active))
        if after is not None:
            query = query.where(sa.tuple_(*keys) > sa.tuple_(*after))
        query = query.order_by(*keys).limit(batch)
        async with sessions() as session, session.begin():
            rows = (await session.execute(query)).all()
            async with contextlib.AsyncExitStack() as lifted:
                if column.append_only and rows:
                    await lifted.enter_async_context(append_only_lifted(session, table.name))
                await _write_batch(session, column, sealer, rows, len(keys), report)
        if not rows:
            break
        after = tuple(rows[-1][: len(keys)])
        done += len(rows)
        if progress is not None:
            progress.update(report.column, min(done, max(total, done)), max(total, done))
        spent = time.monotonic() - started
        wait = len(rows) / rate - spent
        if wait > 0:
            await sleep(wait)
    if progress is not None:
        progress.update(report.column, done, max(total, done), final=True)
    return report


async def key_usage(
    sessions: async_sessionmaker[AsyncSession], columns: Iterable[SealedColumn]
) -> dict[str, Counter[str]]:
    """Tokens under each key id, per column (only rows that are still read)."""
    usage: dict[str, Counter[str]] = {}
    async with sessions() as session:
        for column in columns:
            counts: Counter[str] = Counter()
            value = column.table.c[column.column]
            if column.kind == "token":
                dialect = session.get_bind().dialect.name
                kid = (
                    sa.func.split_part(value, ".", 2)
                    if dialect == "postgresql"
                    else sa.func.substr(value, 4, sa.func.instr(sa.func.substr(value, 4), ".") - 1)
                )
                rows = await session.execute(
                    sa.select(kid, sa.func.count()).where(column.rows()).group_by(kid)
                )
                counts.update({str(k): int(n) for k, n in rows.all()})
            else:
                payloads = await session.execute(sa.select(value).where(column.rows()))
                for (payload,) in payloads.all():
                    text = (
                        bytes(payload).decode(errors="replace")
                        if not isinstance(payload, str)
                        else payload
                    )
                    counts.update(m[1] for m in _TOKEN.finditer(text))
            usage[column.name] = counts
    return usage
