"""Retention: what each service prunes, after how long, and the loop that does it.

Rows that only plumbing needs grow for ever unless something removes them: published outbox
rows, inbox ids, resolved dead letters, and in intake idempotency keys and the sealed raw
text of rejected messages once their replay window is over. Each kind is a `RetentionRule`
with its own setting (0 keeps it for ever) and a label on the `portline_retention_*`
metrics. The services run the rules in a `Maintenance` loop; `portline prune` runs them once.

Inbox ids protect against redelivery, so they must outlive every record Kafka could still
deliver: the settings refuse an inbox retention shorter than the topics' retention
(`Settings._inbox_outlives_kafka`).

The audit log has its own retention (six years by default, after HIPAA's documentation
rule, 45 CFR 164.316(b)(2)) and is pruned only when PORTLINE_AUDIT_PRUNE says so, and only by
`portline prune`, never by a running service: the log is append-only for the services.

Rows go in batches of `BATCH` rows, one short transaction each, so pruning never holds locks
that the services' own writes wait on for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.clock import Clock
from shared.inbox import DEAD_LETTER, INBOX
from shared.metrics import (
    DEAD_LETTERS,
    RETENTION_FAILURES,
    RETENTION_LAST_SUCCESS,
    RETENTION_PRUNED,
)
from shared.outbox import OUTBOX
from shared.settings import Settings

__all__ = [
    "BATCH",
    "PLUMBING_RULES",
    "Maintenance",
    "RetentionRule",
    "append_only_lifted",
    "audit_rule",
    "count_dead_letters",
    "prune",
    "rules_for",
    "service_declared",
]

log = logging.getLogger(__name__)

BATCH = 2000
"""Rows one pruning transaction removes (or clears) at most."""


@dataclass(frozen=True)
class RetentionRule:
    """One kind of row a service prunes once it is older than its setting says.

    `keep_days` reads the setting (0: keep for ever). `action` is "delete" (the row goes) or
    "clear" (the row stays, `column` is set to NULL: what is kept of a message is its ACK
    and dedupe key, not its sealed text). `when` narrows the rows further.
    """

    name: str
    table: sa.Table
    age: str
    """The timestamp column whose age is compared with the setting."""
    keep_days: Callable[[Settings], int]
    setting: str
    when: Callable[[sa.Table], sa.ColumnElement[bool]] | None = None
    action: Literal["delete", "clear"] = "delete"
    column: str | None = None
    append_only: bool = False
    """An audit table: pruned only when asked for explicitly, and never by a service."""

    def cutoff(self, settings: Settings, now: datetime) -> datetime | None:
        days = self.keep_days(settings)
        return None if days <= 0 else now - timedelta(days=days)

    def condition(self, cutoff: datetime) -> sa.ColumnElement[bool]:
        clauses: list[sa.ColumnElement[bool]] = [self.table.c[self.age] < cutoff]
        if self.when is not None:
            clauses.append(self.when(self.table))
        if self.action == "clear":
            assert self.column is not None, f"{self.name}: a clear rule names its column"
            clauses.append(self.table.c[self.column].is_not(None))
        return sa.and_(*clauses)


PLUMBING_RULES: tuple[RetentionRule, ...] = (
    RetentionRule(
        "outbox_published",
        OUTBOX,
        "published_at",
        lambda s: s.retention_outbox_days,
        "PORTLINE_RETENTION_OUTBOX_DAYS",
        when=lambda t: t.c.published_at.is_not(None),
    ),
    RetentionRule(
        "inbox",
        INBOX,
        "processed_at",
        lambda s: s.retention_inbox_days,
        "PORTLINE_RETENTION_INBOX_DAYS",
    ),
    RetentionRule(
        "dead_letter_resolved",
        DEAD_LETTER,
        "resolved_at",
        lambda s: s.retention_dead_letter_days,
        "PORTLINE_RETENTION_DEAD_LETTER_DAYS",
        when=lambda t: t.c.resolved_at.is_not(None),
    ),
)


def service_declared(service: str, module: str, name: str) -> tuple[Any, ...]:
    """What a service declares in `services/<service>/<module>.py` under `name` (a tuple), or
    nothing when it has no such module."""
    path = f"services.{service}.{module}"
    try:
        found = importlib.import_module(path)
    except ModuleNotFoundError as exc:
        if exc.name != path:
            raise
        return ()
    declared: tuple[Any, ...] = getattr(found, name)
    return declared


def rules_for(service: str) -> tuple[RetentionRule, ...]:
    """The plumbing rules, then the service's own (`services/<name>/retention.py`, RULES)."""
    return (*PLUMBING_RULES, *service_declared(service, "retention", "RULES"))


def audit_rule(table: sa.Table) -> RetentionRule:
    """A service's audit log: PORTLINE_AUDIT_RETENTION_DAYS, only by `portline prune
    --audit-log` with PORTLINE_AUDIT_PRUNE, never by the service itself."""
    return RetentionRule(
        "audit_log",
        table,
        "at",
        lambda s: s.audit_retention_days,
        "PORTLINE_AUDIT_RETENTION_DAYS",
        append_only=True,
    )


def _key(table: sa.Table) -> sa.ColumnElement[Any]:
    columns = list(table.primary_key.columns)
    if len(columns) == 1:
        return columns[0]
    key: sa.ColumnElement[Any] = sa.tuple_(*columns)
    return key


async def _batch(
    session: AsyncSession, rule: RetentionRule, cutoff: datetime, *, limit: int
) -> int:
    table = rule.table
    chosen = sa.select(*table.primary_key.columns).where(rule.condition(cutoff)).limit(limit)
    key = _key(table)
    statement: sa.Delete | sa.Update
    if rule.action == "delete":
        statement = sa.delete(table).where(key.in_(chosen))
    else:
        assert rule.column is not None
        statement = sa.update(table).where(key.in_(chosen)).values({rule.column: None})
    if rule.append_only:
        async with append_only_lifted(session, table.name):
            result = await session.execute(statement)
    else:
        result = await session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


@contextlib.asynccontextmanager
async def append_only_lifted(session: AsyncSession, table: str) -> AsyncIterator[None]:
    """Lift an append-only table's triggers inside the session's transaction, and put them
    back before it commits: no other transaction ever sees the table unprotected.

    On PostgreSQL only the table's owner may do this (a runtime role fails here, as it
    should), and the lock it takes makes the services' inserts into that table wait for the
    batch. On SQLite the triggers are dropped and created again from their stored SQL.
    """
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(sa.text(f'ALTER TABLE "{table}" DISABLE TRIGGER USER'))
        yield
        await session.execute(sa.text(f'ALTER TABLE "{table}" ENABLE TRIGGER USER'))
        return
    triggers = (
        await session.execute(
            sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"),
            {"t": table},
        )
    ).all()
    for name, _sql in triggers:
        await session.execute(sa.text(f'DROP TRIGGER "{name}"'))
    yield
    for _name, sql in triggers:
        await session.execute(sa.text(sql))


async def prune(
    sessions: async_sessionmaker[AsyncSession],
    rules: tuple[RetentionRule, ...],
    settings: Settings,
    *,
    now: datetime,
    service: str,
    include_append_only: bool = False,
    dry_run: bool = False,
    batch: int = BATCH,
) -> dict[str, int]:
    """Prune every rule's rows older than its cutoff; the rows pruned (or, dry, that would be)
    per rule. Append-only rules run only with `include_append_only` and PORTLINE_AUDIT_PRUNE."""
    done: dict[str, int] = {}
    for rule in rules:
        if rule.append_only and not (include_append_only and settings.audit_prune):
            continue
        cutoff = rule.cutoff(settings, now)
        if cutoff is None:
            continue
        if dry_run:
            async with sessions() as session:
                count = await session.scalar(
                    sa.select(sa.func.count()).select_from(rule.table).where(rule.condition(cutoff))
                )
            done[rule.name] = int(count or 0)
            continue
        total = 0
        while True:
            async with sessions() as session, session.begin():
                removed = await _batch(session, rule, cutoff, limit=batch)
            total += removed
            RETENTION_PRUNED.labels(service, rule.name).inc(removed)
            if removed < batch:
                break
            await asyncio.sleep(0)  # let the service's own work in between batches
        done[rule.name] = total
    return done


async def count_dead_letters(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """Unresolved dead letters per consumer."""
    async with sessions() as session:
        rows = await session.execute(
            sa.select(DEAD_LETTER.c.consumer, sa.func.count())
            .where(DEAD_LETTER.c.resolved_at.is_(None))
            .group_by(DEAD_LETTER.c.consumer)
        )
        return {consumer: int(count) for consumer, count in rows.all()}


GAUGE_SECONDS = 30.0
"""How often the dead-letter gauge is refreshed."""


class Maintenance:
    """A service's periodic housekeeping: the retention rules every
    PORTLINE_RETENTION_INTERVAL_SECONDS, and the dead-letter gauge every `GAUGE_SECONDS`."""

    def __init__(
        self,
        service: str,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        clock: Clock,
        gauge_seconds: float = GAUGE_SECONDS,
    ) -> None:
        self._service = service
        self._sessions = sessions
        self._settings = settings
        self._clock = clock
        self._rules = rules_for(service)
        self._gauge_seconds = gauge_seconds
        self._consumers: set[str] = set()

    async def prune_once(self) -> dict[str, int]:
        done = await prune(
            self._sessions,
            self._rules,
            self._settings,
            now=self._clock.now(),
            service=self._service,
        )
        RETENTION_LAST_SUCCESS.labels(self._service).set(self._clock.now().timestamp())
        if any(done.values()):
            log.info("retention pruned rows", extra={"service": self._service, **done})
        return done

    async def refresh_gauges(self) -> None:
        counts = await count_dead_letters(self._sessions)
        for consumer in self._consumers | set(counts):
            DEAD_LETTERS.labels(self._service, consumer).set(counts.get(consumer, 0))
        self._consumers |= set(counts)

    async def run(self, stop: asyncio.Event) -> None:
        interval = self._settings.retention_interval_seconds
        next_prune = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                await self.refresh_gauges()
                if loop.time() >= next_prune:
                    await self.prune_once()
                    next_prune = loop.time() + interval
            except Exception as exc:
                # The database may be down; the next round tries again. Never the row values.
                RETENTION_FAILURES.labels(self._service).inc()
                log.warning(
                    "maintenance failed; retrying",
                    extra={"service": self._service, "error": type(exc).__name__},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(self._gauge_seconds, interval))
