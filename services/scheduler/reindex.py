"""Re-indexing people under a new blind-index key version, so that an old version can retire.

During a blind-index key rotation (ADR 0026) every report carries its keys under both versions,
and the scheduler records a person under every version the report carries. People linked
before the rotation hold only the old version's keys. `portline keys reindex` computes their
keys under the active version from their sealed identity (name + date of birth, every phone,
the date of birth, the name and name sound keys: what ``shared.identity`` and
``matching.blocking`` compute) and adds them beside the old ones.

Safe while the scheduler runs and safe to stop at any moment, as `portline keys reseal` is:

- each batch of people is its own short transaction; a key the scheduler added meanwhile is
  kept (the insert skips what is there);
- the work left is found again by what it is (people with keys, none of them under the active
  version), so a restarted run carries on where the last one stopped and a finished run finds
  nothing; a person whose identity gives no key under the active version is passed over and
  counted, never retried in the same run;
- it is throttled to a number of people per second.

What cannot be recomputed: an MRN key (intake indexes an MRN with the sending facility, which
the sealed identity does not keep) and the keys of an older report's identity (a phone number
the person no longer gives). Those stay under the old version and go when it retires; the
person is still found by the keys above, and their next ED report brings the MRN key again.

`usage` counts people by version; `retire` deletes a version's keys, and refuses while any
person holds keys under that version only.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler.matching import blocking
from services.scheduler.models import PERSON, PERSON_KEY
from shared.reseal import Progress
from shared.sealing import BlindIndexer, Sealer, SealingError

__all__ = [
    "ReindexReport",
    "RetireRefused",
    "VersionUsage",
    "person_keys",
    "reindex",
    "retire",
    "usage",
]


class RetireRefused(Exception):
    """People still hold keys under the version only; run `portline keys reindex` first."""


@dataclass
class ReindexReport:
    reindexed: int = 0
    """People given keys under the active version."""
    passed_over: int = 0
    """People whose sealed identity gives no key under it (none sealed, or nothing to index)."""
    failed: int = 0
    """People whose identity opened under no sealing key held."""


@dataclass(frozen=True)
class VersionUsage:
    total: int
    """People holding any key."""
    people: dict[str, int]
    """People holding at least one key under each version."""
    only: dict[str, int]
    """People holding keys under that version and no other."""


def person_keys(indexer: BlindIndexer, identity: dict[str, Any]) -> set[tuple[str, str]]:
    """The (kind, value) keys of an opened identity under one version: its blind keys (every
    phone) and the derived name keys."""
    family, given = identity.get("family"), identity.get("given")
    dob = date.fromisoformat(identity["dob"]) if identity.get("dob") else None
    keys: set[tuple[str, str]] = set()
    if family and given and dob and (k := indexer.name_dob(family, given, dob)):
        keys.add(("name_dob", k))
    for phone in identity.get("phones") or ():
        if k := indexer.phone(phone):
            keys.add(("phone", k))
    if dob is not None and (k := indexer.dob(dob)):
        keys.add(("dob", k))
    keys.update(blocking.stored_keys(indexer, family=family, given=given))
    return keys


def _to_do(version: str) -> sa.Select[Any]:
    """People with keys, none of them under ``version``."""
    under = sa.select(PERSON_KEY.c.person_id).where(PERSON_KEY.c.version == version)
    holders = sa.select(PERSON_KEY.c.person_id)
    return sa.select(PERSON.c.id, PERSON.c.identity_sealed).where(
        PERSON.c.id.in_(holders), PERSON.c.id.not_in(under)
    )


def _insert_new(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(PERSON_KEY).on_conflict_do_nothing()


async def reindex(
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    indexer: BlindIndexer,
    *,
    rate: float,
    batch: int = 200,
    progress: Progress | None = None,
    sleep: Callable[[float], Any] = asyncio.sleep,
) -> ReindexReport:
    """Give every person the keys of their sealed identity under the active version
    (``indexer.version``), `rate` people a second at most (module docs)."""
    version = indexer.version
    report = ReindexReport()
    label = f"scheduler person_key {version}"
    async with sessions() as session:
        total = int(
            await session.scalar(sa.select(sa.func.count()).select_from(_to_do(version).subquery()))
            or 0
        )
    done = 0
    after: uuid.UUID | None = None
    while True:
        started = time.monotonic()
        query = _to_do(version)
        if after is not None:  # people passed over stay to do: never read twice in a run
            query = query.where(PERSON.c.id > after)
        async with sessions() as session, session.begin():
            people = (await session.execute(query.order_by(PERSON.c.id).limit(batch))).all()
            rows: list[dict[str, Any]] = []
            for person_id, sealed in people:
                try:
                    opened = sealer.open_json(sealed, context="identity") if sealed else {}
                except SealingError:
                    report.failed += 1
                    continue
                keys = person_keys(indexer, opened)
                if not keys:
                    report.passed_over += 1
                    continue
                report.reindexed += 1
                rows += [
                    {"person_id": person_id, "kind": k, "value": v, "version": version}
                    for k, v in sorted(keys)
                ]
            if rows:
                dialect = session.get_bind().dialect.name
                await session.execute(_insert_new(dialect), rows)
        if not people:
            break
        after = people[-1][0]
        done += len(people)
        if progress is not None:
            progress.update(label, done, max(total, done))
        wait = len(people) / rate - (time.monotonic() - started)
        if wait > 0:
            await sleep(wait)
    if progress is not None:
        progress.update(label, done, max(total, done), final=True)
    return report


async def usage(sessions: async_sessionmaker[AsyncSession]) -> VersionUsage:
    """People by version, and people under one version only."""
    async with sessions() as session:
        people = await session.execute(
            sa.select(PERSON_KEY.c.version, sa.func.count(sa.distinct(PERSON_KEY.c.person_id)))
            .group_by(PERSON_KEY.c.version)
            .order_by(PERSON_KEY.c.version)
        )
        by_person = (
            sa.select(
                PERSON_KEY.c.person_id,
                sa.func.min(PERSON_KEY.c.version).label("version"),
            )
            .group_by(PERSON_KEY.c.person_id)
            .having(sa.func.count(sa.distinct(PERSON_KEY.c.version)) == 1)
            .subquery()
        )
        only = await session.execute(
            sa.select(by_person.c.version, sa.func.count()).group_by(by_person.c.version)
        )
        total = await session.scalar(sa.select(sa.func.count(sa.distinct(PERSON_KEY.c.person_id))))
        return VersionUsage(
            total=int(total or 0),
            people={str(v): int(n) for v, n in people.all()},
            only={str(v): int(n) for v, n in only.all()},
        )


async def retire(
    sessions: async_sessionmaker[AsyncSession], version: str, *, batch: int = 5000
) -> int:
    """Delete every key under ``version``; `RetireRefused` while a person holds keys under it
    and no other version (they would be found by no key at all). The number deleted."""
    found = await usage(sessions)
    left = found.only.get(version, 0)
    if left:
        raise RetireRefused(
            f"{left} person(s) hold blind keys under {version} only: run `portline keys "
            f"reindex` with the new version active (people it passes over have no sealed "
            "identity to reindex from)"
        )
    deleted = 0
    while True:
        async with sessions() as session, session.begin():
            chunk = (
                sa.select(PERSON_KEY.c.person_id, PERSON_KEY.c.kind, PERSON_KEY.c.value)
                .where(PERSON_KEY.c.version == version)
                .limit(batch)
            )
            keys = (await session.execute(chunk)).all()
            if not keys:
                return deleted
            await session.execute(
                PERSON_KEY.delete().where(
                    sa.tuple_(PERSON_KEY.c.person_id, PERSON_KEY.c.kind, PERSON_KEY.c.value).in_(
                        [tuple(k) for k in keys]
                    )
                )
            )
            deleted += len(keys)
