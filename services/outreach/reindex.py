"""Re-indexing SMS opt-outs under a new blind-index key version, so that an old version can
retire without a STOP being forgotten (ADR 0026).

An opt-out is a group of ``sms_opt_out`` rows sharing a ``number_key``: the number's blind index
under each version held when it was recorded, with the number sealed beside them
(``phone_sealed``). `portline keys reindex` gives every opt-out with no row under the active
version a row under it, in two passes:

1. **From the sealed number.** Opt-outs that keep their number sealed (every STOP since
   outreach_0013) are indexed from it.
2. **Recovered from outreach's people.** An opt-out recorded before outreach_0013 holds its
   index only. If a report outreach holds (an overdose or community referral's sealed identity)
   gives a phone whose index under the opt-out's version equals it, that is the number: the
   opt-out gets its row under the active version and the number sealed on every row (so that
   the next rotation needs no recovery). This needs the opt-out's version still held.

What cannot be recovered: an opt-out from a number that no report outreach holds gives (a
person reported with another phone since, or never reported). It stays under the old version
only and is counted; `retire` refuses while any is left, and the runbook says what to decide.

Safe while outreach runs and safe to stop at any moment, like the scheduler's reindex: each
batch is its own short transaction; an insert whose row is already there (a STOP recorded
meanwhile) is skipped; the work left is found again by what it is (opt-outs with no row under
the active version); throttled to a number of rows a second, with progress.

`usage` counts opt-outs by version; `retire` deletes a version's rows, and refuses while any
opt-out is under that version only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.outreach.models import REPORT, SMS_OPT_OUT
from services.outreach.views import SMS_PHONE
from shared.reseal import Progress
from shared.sealing import BlindIndexer, Sealer, SealingError, UnknownKeyError

__all__ = [
    "OptOutReport",
    "OptOutUsage",
    "RetireRefused",
    "refuse_retire",
    "reindex",
    "retire",
    "usage",
]


class RetireRefused(Exception):
    """Opt-outs are still under the version only; run `portline keys reindex` first."""


@dataclass
class OptOutReport:
    reindexed: int = 0
    """Opt-outs indexed under the active version from their sealed number."""
    recovered: int = 0
    """Opt-outs with no sealed number whose number a report gave (indexed and sealed)."""
    unrecoverable: int = 0
    """Opt-outs with no sealed number that no report's phone matches: left under the old
    version."""
    failed: int = 0
    """Opt-outs whose sealed number opened under no sealing key held."""


@dataclass(frozen=True)
class OptOutUsage:
    total: int
    """Opt-outs (numbers opted out)."""
    opt_outs: dict[str, int]
    """Opt-outs with a row under each version."""
    only: dict[str, int]
    """Opt-outs under that version and no other."""


def _to_do(version: str) -> sa.Select[Any]:
    """The rows of opt-outs with no row under ``version``."""
    under = sa.select(SMS_OPT_OUT.c.number_key).where(SMS_OPT_OUT.c.version == version)
    return sa.select(
        SMS_OPT_OUT.c.number_key,
        SMS_OPT_OUT.c.phone_key,
        SMS_OPT_OUT.c.version,
        SMS_OPT_OUT.c.phone_sealed,
        SMS_OPT_OUT.c.at,
    ).where(SMS_OPT_OUT.c.number_key.not_in(under))


async def _add(
    session: AsyncSession, group: str, key: str, version: str, sealed: str, at: Any
) -> None:
    """Put the opt-out ``group`` under ``version`` (index ``key``), its number sealed on every
    row. A row already there under that index (a STOP recorded meanwhile) joins the group."""
    there = await session.scalar(
        sa.select(SMS_OPT_OUT.c.number_key).where(SMS_OPT_OUT.c.phone_key == key)
    )
    if there is None:
        await session.execute(
            SMS_OPT_OUT.insert().values(
                phone_key=key, at=at, version=version, number_key=group, phone_sealed=sealed
            )
        )
    elif there != group:
        await session.execute(
            SMS_OPT_OUT.update().where(SMS_OPT_OUT.c.number_key == there).values(number_key=group)
        )
    await session.execute(
        SMS_OPT_OUT.update()
        .where(SMS_OPT_OUT.c.number_key == group, SMS_OPT_OUT.c.phone_sealed.is_(None))
        .values(phone_sealed=sealed)
    )


async def _throttle(count: int, started: float, rate: float, sleep: Callable[[float], Any]) -> None:
    wait = count / rate - (time.monotonic() - started)
    if wait > 0:
        await sleep(wait)


async def reindex(
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    indexer: BlindIndexer,
    *,
    rate: float,
    batch: int = 200,
    progress: Progress | None = None,
    sleep: Callable[[float], Any] = asyncio.sleep,
) -> OptOutReport:
    """Give every opt-out a row under the active version (``indexer.version``), `rate` rows a
    second at most (module docs)."""
    version = indexer.version
    report = OptOutReport()
    label = f"outreach sms_opt_out {version}"
    async with sessions() as session:
        left = _to_do(version).subquery()
        total = int(
            await session.scalar(sa.select(sa.func.count(sa.distinct(left.c.number_key)))) or 0
        )
    # Pass 1: from the sealed number. Opt-outs without one are collected for pass 2.
    unsealed: dict[str, list[Any]] = {}
    done = 0
    after: str | None = None
    while True:
        started = time.monotonic()
        query = _to_do(version)
        if after is not None:  # opt-outs passed over stay to do: never read twice in a run
            query = query.where(SMS_OPT_OUT.c.number_key > after)
        async with sessions() as session, session.begin():
            groups = sa.select(query.subquery().c.number_key).distinct()
            chosen = (
                (await session.execute(groups.order_by("number_key").limit(batch))).scalars().all()
            )
            rows = (await session.execute(query.where(SMS_OPT_OUT.c.number_key.in_(chosen)))).all()
            by_group: dict[str, list[Any]] = {}
            for row in rows:
                by_group.setdefault(row.number_key, []).append(row)
            for group in chosen:
                members = by_group.get(group, [])
                sealed = next((r.phone_sealed for r in members if r.phone_sealed), None)
                if sealed is None:
                    unsealed[group] = members
                    continue
                try:
                    number = sealer.open(sealed, context=SMS_PHONE)
                except SealingError:
                    report.failed += 1
                    continue
                key = indexer.phone(number)
                if key is None:  # cannot happen for a number indexed before; counted as lost
                    report.unrecoverable += 1
                    continue
                at = min(r.at for r in members)
                await _add(session, group, key, version, sealed, at)
                report.reindexed += 1
        if not chosen:
            break
        after = chosen[-1]
        done += len(chosen)
        if progress is not None:
            progress.update(label, done, max(total, done))
        await _throttle(len(chosen), started, rate, sleep)
    if progress is not None:
        progress.update(label, done, max(total, done), final=True)
    if unsealed:
        await _recover(sessions, sealer, indexer, unsealed, report, rate, batch, progress, sleep)
    return report


async def _recover(
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    indexer: BlindIndexer,
    unsealed: dict[str, list[Any]],
    report: OptOutReport,
    rate: float,
    batch: int,
    progress: Progress | None,
    sleep: Callable[[float], Any],
) -> None:
    """Pass 2: find the numbers of opt-outs with none sealed among the phones of the reports
    outreach holds (module docs)."""
    wanted: dict[tuple[str, str], str] = {}  # (version, index) -> group
    for group, members in unsealed.items():
        for row in members:
            wanted[(row.version, row.phone_key)] = group
    old = []
    for v in sorted({v for v, _ in wanted}):
        try:
            old.append(indexer.at(v))
        except UnknownKeyError:
            continue  # a version no longer held: nothing can match it
    label = "outreach report (numbers of opt-outs)"
    async with sessions() as session:
        total = int(
            await session.scalar(
                sa.select(sa.func.count()).where(REPORT.c.identity_sealed.is_not(None))
            )
            or 0
        )
    found: set[str] = set()
    done = 0
    after: Any = None
    while old and len(found) < len(unsealed):
        started = time.monotonic()
        query = sa.select(REPORT.c.id, REPORT.c.identity_sealed).where(
            REPORT.c.identity_sealed.is_not(None)
        )
        if after is not None:
            query = query.where(REPORT.c.id > after)
        async with sessions() as session, session.begin():
            reports = (await session.execute(query.order_by(REPORT.c.id).limit(batch))).all()
            for _, token in reports:
                try:
                    identity = sealer.open_json(token, context="identity")
                except SealingError:
                    continue  # `keys reseal` / `keys status` report those
                for phone in identity.get("phones") or ():
                    for held in old:
                        match = wanted.get((held.version, held.phone(str(phone)) or ""))
                        if match is None or match in found:
                            continue
                        key = indexer.phone(str(phone))
                        if key is None:
                            continue
                        sealed = sealer.seal(str(phone), context=SMS_PHONE)
                        at = min(r.at for r in unsealed[match])
                        await _add(session, match, key, indexer.version, sealed, at)
                        found.add(match)
        if not reports:
            break
        after = reports[-1][0]
        done += len(reports)
        if progress is not None:
            progress.update(label, done, max(total, done))
        await _throttle(len(reports), started, rate, sleep)
    if progress is not None and done:
        progress.update(label, done, max(total, done), final=True)
    report.recovered += len(found)
    report.unrecoverable += len(unsealed) - len(found)


async def usage(sessions: async_sessionmaker[AsyncSession]) -> OptOutUsage:
    """Opt-outs by version, and opt-outs under one version only."""
    async with sessions() as session:
        per = await session.execute(
            sa.select(SMS_OPT_OUT.c.version, sa.func.count(sa.distinct(SMS_OPT_OUT.c.number_key)))
            .group_by(SMS_OPT_OUT.c.version)
            .order_by(SMS_OPT_OUT.c.version)
        )
        by_group = (
            sa.select(SMS_OPT_OUT.c.number_key, sa.func.min(SMS_OPT_OUT.c.version).label("version"))
            .group_by(SMS_OPT_OUT.c.number_key)
            .having(sa.func.count(sa.distinct(SMS_OPT_OUT.c.version)) == 1)
            .subquery()
        )
        only = await session.execute(
            sa.select(by_group.c.version, sa.func.count()).group_by(by_group.c.version)
        )
        total = await session.scalar(
            sa.select(sa.func.count(sa.distinct(SMS_OPT_OUT.c.number_key)))
        )
        return OptOutUsage(
            total=int(total or 0),
            opt_outs={str(v): int(n) for v, n in per.all()},
            only={str(v): int(n) for v, n in only.all()},
        )


async def refuse_retire(sessions: async_sessionmaker[AsyncSession], version: str) -> None:
    """`RetireRefused` while an opt-out is under ``version`` and no other."""
    left = (await usage(sessions)).only.get(version, 0)
    if left:
        raise RetireRefused(
            f"{left} SMS opt-out(s) are under {version} only: run `portline keys reindex` with "
            "the new version active (opt-outs it cannot recover have no number outreach knows)"
        )


async def retire(
    sessions: async_sessionmaker[AsyncSession], version: str, *, batch: int = 5000
) -> int:
    """Delete every opt-out row under ``version``; `RetireRefused` while an opt-out is under it
    only (it would stop blocking texts). The number deleted."""
    await refuse_retire(sessions, version)
    deleted = 0
    while True:
        async with sessions() as session, session.begin():
            keys = (
                (
                    await session.execute(
                        sa.select(SMS_OPT_OUT.c.phone_key)
                        .where(SMS_OPT_OUT.c.version == version)
                        .limit(batch)
                    )
                )
                .scalars()
                .all()
            )
            if not keys:
                return deleted
            await session.execute(SMS_OPT_OUT.delete().where(SMS_OPT_OUT.c.phone_key.in_(keys)))
            deleted += len(keys)
