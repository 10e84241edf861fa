"""What one unit of work reads and writes, read once and written once.

:class:`Writes` collects a handler's new rows and inserts them at the end, one statement per
table, in the order the handler created them. A change to a row created in the same unit of
work is made to the collected row; a change to an older row goes to the database at once.
Until :meth:`Writes.flush`, the database does not hold the new rows, so a handler that writes
through it reads new rows only through it (``new()``), never by querying.

:class:`ReportBatch` is the working set of a batch of overdose reports. Applying reports one
at a time costs about twenty round trips each; instead the batch reads, with one query per kind of
row, the reports' links, every person holding one of the batch's blind keys (with all their
keys), those people's open cases and the cases' episodes. The handler then applies the
reports in order against that working set, which it keeps current as it goes: a person,
key, case, episode or link that one report creates is there for the next report, just as
after a commit. That is complete because a person can only become a candidate for a report
by holding one of its keys, and a person gains keys only by being linked, that is by being a
candidate already.

A person can also be a candidate because of the overdose itself: an episode of another report
kind (an EMS run for an ED visit) within the event window of a report's incident
(:data:`EVENT_WINDOW`). One more query reads those episodes for the whole batch (by program and
incident time, skipping episodes that already hold every kind the batch's reports are), and
their people join the one query for people. Episodes the batch itself creates are found the same
way in memory, so an EMS run and an ED visit in one batch meet too.

The working set is as fresh as row-at-a-time reads would be: nothing locked these rows
before either, and another consumer's changes (say, a do-not-contact request) may land a
moment before or after a report just the same.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.scheduler import timers
from services.scheduler.linking import EpisodeRef, PersonCandidate
from services.scheduler.matching import EVENT_KINDS
from services.scheduler.matching.comparisons import SAME_DAY_WINDOW
from services.scheduler.models import (
    CASE,
    EPISODE,
    PERSON,
    PERSON_KEY,
    POSSIBLE_MATCH,
    REPORT_LINK,
    TASK,
)
from services.scheduler.policy import effective_incident
from services.scheduler.reports import Report
from shared.events import BlindKeys
from shared.events.scheduler import TaskKind

__all__ = [
    "EVENT_WINDOW",
    "KEY_KINDS",
    "KnownCase",
    "KnownPerson",
    "ReportBatch",
    "Writes",
    "blind_pairs",
    "key_holders",
    "linking_fields",
    "report_pairs",
    "versioned_pairs",
]

KEY_KINDS = ("name_dob", "phone", "mrn", "dob")
"""The blind keys intake publishes."""
EVENT_WINDOW: timedelta = SAME_DAY_WINDOW
"""People with an episode of another report kind this close to a report's incident are its
candidates."""

# Insert order: a row never refers to one inserted after it.
_TABLES = (PERSON, PERSON_KEY, POSSIBLE_MATCH, CASE, EPISODE, REPORT_LINK, TASK, timers.TIMER)


def blind_pairs(blind: BlindKeys) -> list[tuple[str, str]]:
    """The report's blind keys as (kind, value) pairs, as person_key holds them."""
    return [(k, v) for k in KEY_KINDS if (v := getattr(blind, k))]


def versioned_pairs(report: Report) -> list[tuple[str, str, str]]:
    """(version, kind, value) of the report's blind keys under every version it carries."""
    return [
        (version, k, v) for version, blind in report.blind_sets() for k, v in blind_pairs(blind)
    ]


def report_pairs(report: Report) -> list[tuple[str, str]]:
    """The report's blind keys under every version it carries, as (kind, value) pairs: a
    person indexed under any of those versions holds one of them."""
    return [(k, v) for _, k, v in versioned_pairs(report)]


def key_holders(programs: Iterable[str], pairs: Iterable[tuple[str, str]]) -> sa.Select[uuid.UUID]:
    """The people of ``programs`` holding any of the (kind, value) ``pairs``, once each.

    The keys are looked up first, in a materialized CTE, and only the few people found are
    joined. Left to itself, PostgreSQL may plan the join the other way round: every person of
    the program, each probed for the keys. It did in a new schema, before its first analyze:
    it guessed that a program holds a few people, and a generic plan made then was kept as
    the table grew; at about 500 people each of a batch's two holder queries took about 40 ms
    instead of under 2 ms (tests/integration/test_query_plans_pg.py).
    """
    found = (
        sa.select(PERSON_KEY.c.person_id)
        .where(sa.tuple_(PERSON_KEY.c.kind, PERSON_KEY.c.value).in_(sorted(set(pairs))))
        .cte("key_found")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    return (
        sa.select(found.c.person_id)
        .join(PERSON, PERSON.c.id == found.c.person_id)
        .where(PERSON.c.program_id.in_(sorted(set(programs))))
        .distinct()
    )


def _key_of(table: sa.Table, row: dict[str, Any]) -> tuple[Any, ...]:
    """A new row's primary key; a new timer's unique key (its id comes from the database)."""
    if table is timers.TIMER:
        return (row["key"],)
    return tuple(row[c.name] for c in table.primary_key.columns)


class Writes:
    """New rows collected for one insert per table; changes to older rows written at once."""

    def __init__(self) -> None:
        self._new: dict[sa.Table, dict[tuple[Any, ...], dict[str, Any]]] = {t: {} for t in _TABLES}

    def insert(self, table: sa.Table, row: dict[str, Any]) -> None:
        self._new[table][_key_of(table, row)] = row

    def new(self, table: sa.Table) -> Iterable[dict[str, Any]]:
        """The rows collected for table, in the order they were inserted."""
        return self._new[table].values()

    def is_new(self, table: sa.Table, *key: Any) -> bool:
        return key in self._new[table]

    async def update(
        self, session: AsyncSession, table: sa.Table, *key: Any, **values: Any
    ) -> None:
        """Change one row by primary key: the collected row if it is new, else the database's
        (not for timers, whose changes have their own functions in ``timers``)."""
        row = self._new[table].get(key)
        if row is not None:
            row.update(values)
            return
        where = [c == k for c, k in zip(table.primary_key.columns, key, strict=True)]
        await session.execute(table.update().where(*where).values(**values))

    async def cancel_timers(
        self, session: AsyncSession, *, task_id: uuid.UUID, now: datetime
    ) -> None:
        """Cancel every pending timer of a task, collected or in the database."""
        for row in self._new[timers.TIMER].values():
            if row["task_id"] == task_id and row["cancelled_at"] is None:
                row["cancelled_at"] = now
        if not self.is_new(TASK, task_id):  # a new task's timers are all new
            await timers.cancel_for_task(session, task_id=task_id, now=now)

    async def flush(self, session: AsyncSession) -> None:
        """Insert the collected rows, one statement per table, and forget them."""
        for table, rows in self._new.items():
            if not rows:
                continue
            if table is timers.TIMER:
                await timers.schedule_many(session, list(rows.values()))
            else:
                await session.execute(table.insert(), list(rows.values()))
            rows.clear()


@dataclass(slots=True)
class KnownPerson:
    """A person the batch may link a report to, with every blind key they are known by."""

    id: uuid.UUID
    program_id: str
    identity_sealed: str | None
    do_not_contact: bool
    deceased: bool = False
    keys: set[tuple[str, str]] = field(default_factory=set)
    nearby: dict[uuid.UUID, EpisodeRef] = field(default_factory=dict)
    """Episodes near the batch's reports (the event query), whatever their case's status."""


@dataclass(slots=True)
class KnownCase:
    """A person's open case and its episodes."""

    id: uuid.UUID
    priority: int
    episodes: list[EpisodeRef] = field(default_factory=list)


OpenIdentity = Callable[[str], dict[str, Any]]
"""Opens a person's sealed identity."""

_IDENTITY_FIELDS = ("family", "given", "middle", "sex")


def linking_fields(identity: dict[str, Any]) -> dict[str, Any]:
    """What linking compares, from an opened identity (kept in memory only)."""
    dob = identity.get("dob")
    address = identity.get("address") or {}
    return {
        **{name: identity.get(name) for name in _IDENTITY_FIELDS},
        "dob": date.fromisoformat(dob) if dob else None,
        "postal_code": address.get("postal_code") if isinstance(address, dict) else None,
        "phones": tuple(identity.get("phones") or ()),
    }


def _near_episodes(reports: Sequence[Report]) -> sa.ColumnElement[bool] | None:
    """Episodes of a person within the event window of any report with an event, lacking at
    least one of those reports' kinds; None when no report has an event."""
    spans: list[tuple[datetime, datetime]] = []
    kinds: set[str] = set()
    for r in reports:
        if r.deidentified or r.source_kind not in EVENT_KINDS:
            continue
        at, _ = effective_incident(r.incident_at, r.received_at)
        spans.append((at - EVENT_WINDOW, at + EVENT_WINDOW))
        kinds.add(r.source_kind)
    if not spans:
        return None
    merged: list[list[datetime]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    wrapped = sa.literal(",") + EPISODE.c.sources + sa.literal(",")
    return sa.and_(
        EPISODE.c.program_id.in_({r.program_id for r in reports}),
        EPISODE.c.person_id.is_not(None),
        sa.or_(*(EPISODE.c.incident_at.between(start, end) for start, end in merged)),
        sa.or_(*(wrapped.not_like(f"%,{kind},%") for kind in sorted(kinds))),
    )


_EPISODE_REF = (
    EPISODE.c.id,
    EPISODE.c.incident_at,
    EPISODE.c.sources,
    EPISODE.c.fatal,
    EPISODE.c.county,
    EPISODE.c.hospital,
    EPISODE.c.transported,
)
"""The columns an :class:`EpisodeRef` is made of, in :func:`_episode_ref`'s order."""


def _episode_ref(row: Sequence[Any]) -> EpisodeRef:
    """An episode as linking weighs it, from the values of :data:`_EPISODE_REF`."""
    episode_id, incident_at, sources, fatal, county, hospital, transported = row
    return EpisodeRef(
        episode_id=episode_id,
        incident_at=incident_at,
        sources=frozenset(sources.split(",")),
        fatal=fatal,
        county=county,
        hospital=hospital,
        transported=transported,
    )


class ReportBatch:
    """The working set of a batch of reports (module docs); its writes go through ``writes``."""

    def __init__(self, open_identity: OpenIdentity) -> None:
        self.writes = Writes()
        self._open_identity = open_identity
        self._revisions: dict[uuid.UUID, int] = {}
        self._people: dict[uuid.UUID, KnownPerson] = {}
        self._cases: dict[uuid.UUID, KnownCase] = {}
        self._opened: dict[tuple[uuid.UUID, str | None], dict[str, Any]] = {}

    @classmethod
    async def load(
        cls,
        session: AsyncSession,
        reports: Sequence[Report],
        open_identity: OpenIdentity,
        lookups: Mapping[uuid.UUID, Iterable[tuple[str, str]]] | None = None,
    ) -> ReportBatch:
        """Read the batch's working set: one query per kind of row, none when there is none.

        ``lookups`` are more keys to find each report's candidates by (matching.blocking).
        """
        batch = cls(open_identity)
        links = await session.execute(
            sa.select(REPORT_LINK.c.report_id, REPORT_LINK.c.revision).where(
                REPORT_LINK.c.report_id.in_({r.report_id for r in reports})
            )
        )
        batch._revisions = {report_id: revision for report_id, revision in links.all()}
        pairs = {
            p
            for r in reports
            if not r.deidentified
            for p in (*report_pairs(r), *(lookups or {}).get(r.report_id, ()))
        }
        near: dict[uuid.UUID, list[EpisodeRef]] = {}
        near_filter = _near_episodes(reports)
        if near_filter is not None:
            found = await session.execute(
                sa.select(EPISODE.c.person_id, *_EPISODE_REF).where(near_filter)
            )
            for person_id, *ref in found:
                near.setdefault(person_id, []).append(_episode_ref(ref))
        if not pairs and not near:
            return batch
        programs = {r.program_id for r in reports}
        wanted: list[sa.ColumnElement[bool]] = []
        if pairs:
            wanted.append(PERSON.c.id.in_(key_holders(programs, pairs)))
        if near:
            wanted.append(PERSON.c.id.in_(list(near)))
        people = await session.execute(
            sa.select(
                PERSON.c.id,
                PERSON.c.program_id,
                PERSON.c.identity_sealed,
                PERSON.c.do_not_contact,
                PERSON.c.deceased_at,
                PERSON_KEY.c.kind,
                PERSON_KEY.c.value,
            )
            .outerjoin(PERSON_KEY, PERSON_KEY.c.person_id == PERSON.c.id)
            .where(sa.or_(*wanted))
            .order_by(PERSON.c.created_at, PERSON.c.id)
        )
        for pid, program_id, sealed, do_not_contact, deceased_at, kind, value in people.all():
            person = batch._people.get(pid)
            if person is None:
                person = KnownPerson(
                    pid, program_id, sealed, do_not_contact, deceased_at is not None
                )
                person.nearby = {e.episode_id: e for e in near.get(pid, ())}
                batch._people[pid] = person
            if kind is not None:
                person.keys.add((kind, value))
        if not batch._people:
            return batch
        cases = await session.execute(
            sa.select(CASE.c.id, CASE.c.person_id, CASE.c.priority)
            .where(CASE.c.person_id.in_(list(batch._people)), CASE.c.status == "open")
            .order_by(CASE.c.opened_at, CASE.c.id)
        )
        by_id: dict[uuid.UUID, KnownCase] = {}
        for case_id, person_id, priority in cases.all():
            if person_id not in batch._cases:
                batch._cases[person_id] = by_id[case_id] = KnownCase(case_id, priority)
        if by_id:
            episodes = await session.execute(
                sa.select(EPISODE.c.case_id, *_EPISODE_REF)
                .where(EPISODE.c.case_id.in_(list(by_id)))
                .order_by(EPISODE.c.created_at, EPISODE.c.id)
            )
            for case_id, *ref in episodes:
                by_id[case_id].episodes.append(_episode_ref(ref))
        return batch

    # --- links ---------------------------------------------------------------------------

    def revision(self, report_id: uuid.UUID) -> int | None:
        """The linked revision of a report; None when the report is not linked yet."""
        return self._revisions.get(report_id)

    async def revise(self, session: AsyncSession, report_id: uuid.UUID, revision: int) -> None:
        self._revisions[report_id] = revision
        await self.writes.update(session, REPORT_LINK, report_id, revision=revision)

    def link(self, row: dict[str, Any]) -> None:
        self._revisions[row["report_id"]] = row["revision"]
        self.writes.insert(REPORT_LINK, row)

    # --- people --------------------------------------------------------------------------

    def candidates(
        self,
        program_id: str,
        pairs: Iterable[tuple[str, str]],
        *,
        incident_at: datetime | None = None,
        source_kind: str | None = None,
    ) -> list[PersonCandidate]:
        """The program's people holding any of these keys, or with an episode of another
        report kind within the event window of ``incident_at``; oldest first."""
        wanted = set(pairs)
        event = (
            (incident_at, source_kind)
            if incident_at is not None and source_kind in EVENT_KINDS and source_kind
            else None
        )
        return [
            self._candidate(p)
            for p in self._people.values()
            if p.program_id == program_id
            and (not p.keys.isdisjoint(wanted) or (event is not None and self._near(p, *event)))
        ]

    def _episodes(self, person: KnownPerson) -> list[EpisodeRef]:
        """The person's episodes the batch knows: the open case's (current) and the nearby."""
        case = self._cases.get(person.id)
        current = list(case.episodes) if case is not None else []
        seen = {e.episode_id for e in current}
        return current + [e for e in person.nearby.values() if e.episode_id not in seen]

    def _near(self, person: KnownPerson, at: datetime, source_kind: str) -> bool:
        return any(
            source_kind not in e.sources and abs(e.incident_at - at) <= EVENT_WINDOW
            for e in self._episodes(person)
        )

    def _candidate(self, person: KnownPerson) -> PersonCandidate:
        sealed = person.identity_sealed
        opened = self._opened.get((person.id, sealed))
        if opened is None:
            opened = linking_fields(self._open_identity(sealed) if sealed else {})
            self._opened[(person.id, sealed)] = opened
        return PersonCandidate.holding(
            person.id, person.keys, episodes=self._episodes(person), **opened
        )

    def person(self, person_id: uuid.UUID) -> KnownPerson:
        return self._people[person_id]

    def known_person(self, person_id: uuid.UUID) -> KnownPerson | None:
        """The person, if this batch read or created them."""
        return self._people.get(person_id)

    def add_person(self, row: dict[str, Any]) -> KnownPerson:
        person = KnownPerson(
            row["id"], row["program_id"], row["identity_sealed"], row["do_not_contact"], False
        )
        self._people[person.id] = person
        self.writes.insert(PERSON, row)
        return person

    def remember_keys(self, person: KnownPerson, keys: Iterable[tuple[str, str, str]]) -> None:
        """Record the report's keys, (version, kind, value) (its blind keys under every version
        it carries and the keys derived from it), that the person is not known by yet."""
        for version, kind, value in keys:
            if (kind, value) not in person.keys:
                person.keys.add((kind, value))
                self.writes.insert(
                    PERSON_KEY,
                    {"person_id": person.id, "kind": kind, "value": value, "version": version},
                )

    async def reseal(self, session: AsyncSession, person: KnownPerson, sealed: str) -> None:
        """The person's identity, as the latest report gives it."""
        person.identity_sealed = sealed
        await self.writes.update(session, PERSON, person.id, identity_sealed=sealed)

    # --- cases and episodes ------------------------------------------------------------------

    def open_case(self, person_id: uuid.UUID) -> KnownCase | None:
        return self._cases.get(person_id)

    def open(self, row: dict[str, Any]) -> KnownCase:
        case = KnownCase(row["id"], row["priority"])
        self._cases[row["person_id"]] = case
        self.writes.insert(CASE, row)
        return case

    async def reprioritize(self, session: AsyncSession, case: KnownCase, priority: int) -> None:
        case.priority = priority
        await self.writes.update(session, CASE, case.id, priority=priority)

    def add_episode(self, case: KnownCase | None, row: dict[str, Any]) -> None:
        if case is not None:
            case.episodes.append(
                EpisodeRef(
                    episode_id=row["id"],
                    incident_at=row["incident_at"],
                    sources=frozenset(row["sources"].split(",")),
                    fatal=row["fatal"],
                    county=row.get("county"),
                    hospital=row.get("hospital"),
                    transported=bool(row.get("transported")),
                )
            )
        self.writes.insert(EPISODE, row)

    async def mark_fatal(self, session: AsyncSession, case: KnownCase, episode_id: Any) -> None:
        """The episode's overdose was fatal (a later report said so)."""
        for i, episode in enumerate(case.episodes):
            if episode.episode_id == episode_id:
                case.episodes[i] = dataclasses.replace(episode, fatal=True)
        await self.writes.update(session, EPISODE, episode_id, fatal=True)

    async def mark_deceased(self, session: AsyncSession, person: KnownPerson, at: datetime) -> None:
        person.deceased = True
        await self.writes.update(session, PERSON, person.id, deceased_at=at)

    async def merge_source(
        self,
        session: AsyncSession,
        case: KnownCase,
        episode: EpisodeRef,
        source_kind: str,
        hospital: str | None = None,
        *,
        transported: bool = False,
    ) -> None:
        """The report joins the episode: its source kind joins the episode's sources, its
        hospital becomes the episode's when the episode had none, and a run that transported
        marks the episode transported."""
        merged = dataclasses.replace(
            episode,
            sources=episode.sources | {source_kind},
            hospital=episode.hospital or hospital,
            transported=episode.transported or transported,
        )
        case.episodes[case.episodes.index(episode)] = merged
        changes: dict[str, Any] = {"sources": ",".join(sorted(merged.sources))}
        if merged.hospital != episode.hospital:
            changes["hospital"] = merged.hospital
        if merged.transported != episode.transported:
            changes["transported"] = True
        await self.writes.update(session, EPISODE, episode.episode_id, **changes)

    def is_new_case(self, case: KnownCase) -> bool:
        """Whether the case was opened in this batch (so the database holds none of its rows)."""
        return self.writes.is_new(CASE, case.id)

    def new_tasks(
        self, case_id: uuid.UUID, kinds: Sequence[TaskKind] | None = None
    ) -> list[dict[str, Any]]:
        """The case's open tasks (of these kinds) created in this batch, oldest first."""
        wanted = {k.value for k in kinds} if kinds else None
        return [
            t
            for t in self.writes.new(TASK)
            if t["case_id"] == case_id
            and t["status"] == "open"
            and (wanted is None or t["kind"] in wanted)
        ]
