"""Writing facts and deriving outcomes, set by set: the database side of applying events.

Per batch of events, each table is read once (the rows its new facts merge into) and written
once (one upsert); then the outcomes of the cases, people and reports the batch touched are
derived again from their facts (`summary.py`) and only the rows whose outcome changed are
written. Both SQLite and PostgreSQL take the same statements (`INSERT ... ON CONFLICT`).

Merging is what makes the facts order-tolerant: a report's own event and the scheduler's link
of it may come in either order, a task's closing before its scheduling, a later revision
before an earlier one; each table's merge gives the same row whatever the order.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from services.reporting.models import (
    ATTEMPT,
    CASE,
    CASE_DECISION,
    CONTACT,
    COUNTY,
    DAY,
    DEATH,
    EPISODE,
    EPISODE_OUTCOMES,
    PARTNER,
    PROGRAM,
    REFERRAL,
    REFERRAL_STATUS,
    REJECTED,
    REPORT,
    SERVICE,
    TASK,
    VISIT,
)
from services.reporting.summary import CaseFacts, next_overdose_hours, summarize_case

__all__ = [
    "blank_row",
    "derive_cases",
    "derive_deidentified",
    "derive_people",
    "lock_read_models",
    "write_facts",
]

T = TypeVar("T")
Row = dict[str, Any]
Merge = Callable[[Row, Row], Row]

_CHUNK = 500


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _dialect(session: AsyncSession) -> str:
    bind = session.bind
    assert bind is not None, "reporting sessions are bound to the service's engine"
    return bind.dialect.name


def _insert(session: AsyncSession, table: sa.Table) -> Any:
    if _dialect(session) == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def lock_read_models(session: AsyncSession) -> None:
    """One writer of the read models at a time (live consumers, replicas and a rebuild): a
    case's outcomes are derived from everything its transaction can see, so two at once could
    each miss the other's new fact. PostgreSQL: a transaction-level advisory lock for this
    schema. SQLite has one writer anyway, and a transaction whose reads went stale fails to
    write (WAL: SQLITE_BUSY_SNAPSHOT) and is retried."""
    if _dialect(session) == "postgresql":
        await session.execute(
            sa.text(
                "SELECT pg_advisory_xact_lock("
                "hashtextextended('portline-reporting:' || current_schema(), 0))"
            )
        )


def _default(column: sa.Column[Any]) -> Any:
    server_default = column.server_default
    if server_default is None:
        return None
    arg = getattr(server_default, "arg", None)
    if isinstance(arg, str):
        return int(arg)
    return False  # sa.false()


def blank_row(table: sa.Table) -> Row:
    """A row of every column at its default, for rows merged into before they exist."""
    return {column.name: _default(column) for column in table.columns}


def _coalesce(old: Row, new: Row) -> Row:
    return {**old, **{k: v for k, v in new.items() if v is not None}}


def _merge_report(old: Row, new: Row) -> Row:
    """A report's own event (revision ≥ 1) says what the report is, the latest revision
    winning; the scheduler's link (revision 0) adds the episode and fills what is missing."""
    if old["revision"] is None or new["revision"] >= old["revision"]:
        merged = _coalesce(old, new)
    else:
        merged = _coalesce(new, old)
        merged["revision"] = old["revision"]
    for key in ("episode_id", "match", "late_by_policy"):
        merged[key] = new[key] if new[key] is not None else old[key]
    return merged


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


def _merge_partner(old: Row, new: Row) -> Row:
    merged = _coalesce(old, new)
    if old["first_message_at"] is not None:
        merged["first_message_at"] = min(old["first_message_at"], new["first_message_at"])
    for key in ("last_message_at", "last_report_at", "last_rejected_at"):
        merged[key] = _later(old[key], new[key])
    return merged


def _merge_program(old: Row, new: Row) -> Row:
    if old["first_seen_at"] is None:
        return new
    return {**old, "first_seen_at": min(old["first_seen_at"], new["first_seen_at"])}


_MERGED: dict[sa.Table, Merge] = {
    REPORT: _merge_report,
    EPISODE: _coalesce,
    CASE: _coalesce,
    TASK: _coalesce,
    VISIT: _coalesce,
    REFERRAL: _coalesce,
    PARTNER: _merge_partner,
    PROGRAM: _merge_program,
}
"""Tables whose facts arrive in parts (or again, revised), with how the parts combine."""

_INSERTED = (
    ATTEMPT,
    CONTACT,
    SERVICE,
    REFERRAL_STATUS,
    CASE_DECISION,
    DEATH,
    REJECTED,
    COUNTY,
    DAY,
)
"""Tables whose facts arrive whole, once: a second arrival changes nothing."""


def _key(table: sa.Table, row: Row) -> tuple[Any, ...]:
    return tuple(row[c.name] for c in table.primary_key)


async def _upsert(session: AsyncSession, table: sa.Table, rows: Sequence[Row]) -> None:
    if not rows:
        return
    stmt = _insert(session, table)
    keys = [c.name for c in table.primary_key]
    stmt = stmt.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
    )
    for chunk in _chunks(rows):
        await session.execute(stmt, list(chunk))


async def _insert_new(session: AsyncSession, table: sa.Table, rows: Sequence[Row]) -> None:
    unique = list({_key(table, r): r for r in reversed(rows)}.values())  # the first wins
    stmt = _insert(session, table).on_conflict_do_nothing()
    for chunk in _chunks(unique):
        await session.execute(stmt, list(chunk))


async def _merge_into(
    session: AsyncSession, table: sa.Table, rows: Sequence[Row], merge: Merge
) -> None:
    (pk,) = table.primary_key.columns
    keys = list(dict.fromkeys(r[pk.name] for r in rows))
    merged: dict[Any, Row] = {}
    for chunk in _chunks(keys):
        for found in await session.execute(sa.select(table).where(pk.in_(chunk))):
            merged[found._mapping[pk.name]] = dict(found._mapping)
    blank = blank_row(table)
    for row in rows:
        key = row[pk.name]
        merged[key] = merge(merged.get(key) or {**blank, **row}, row)
    await _upsert(session, table, list(merged.values()))


async def write_facts(session: AsyncSession, rows: dict[sa.Table, list[Row]]) -> None:
    """Every table's new facts: one read and one write per table that has any."""
    for table, merge in _MERGED.items():
        if rows.get(table):
            await _merge_into(session, table, rows[table], merge)
    for table in _INSERTED:
        if rows.get(table):
            await _insert_new(session, table, rows[table])


# -- deriving outcomes -----------------------------------------------------------------------


async def _rows_of(
    session: AsyncSession, table: sa.Table, column: str, ids: Sequence[Any], *columns: str
) -> list[Any]:
    selected = [table.c[c] for c in columns] if columns else [table]
    found: list[Any] = []
    for chunk in _chunks(ids):
        found.extend(await session.execute(sa.select(*selected).where(table.c[column].in_(chunk))))
    return found


def _by_id(key: Any, values: Row) -> Row:
    """The parameters of one row of an executemany UPDATE (bound names may not be columns')."""
    return {"b_id": key, **{f"v_{k}": v for k, v in values.items()}}


_CASE_FACTS: tuple[tuple[str, sa.Table, tuple[str, ...]], ...] = (
    ("tasks", TASK, ("case_id", "task_id", "episode_id", "kind")),
    ("attempts", ATTEMPT, ("case_id", "task_id", "outcome", "occurred_at")),
    ("contacts", CONTACT, ("case_id", "task_id", "occurred_at")),
    ("visits", VISIT, ("case_id", "task_id", "completed_at", "reached")),
    ("services", SERVICE, ("case_id", "kind", "count", "occurred_at")),
    ("referrals", REFERRAL, ("case_id", "referral_id", "made_at", "episode_id", "care_started")),
    ("referral_statuses", REFERRAL_STATUS, ("case_id", "referral_id", "status")),
    ("decisions", CASE_DECISION, ("case_id", "decision", "reason", "occurred_at")),
    ("deaths", DEATH, ("case_id", "episode_id")),
)

_EPISODE_COLUMNS = (
    "case_id",
    "episode_id",
    "incident_at",
    "windows_from",
    "fatal_reported",
    *EPISODE_OUTCOMES,
)


async def derive_cases(session: AsyncSession, case_ids: Iterable[uuid.UUID]) -> None:
    """Derive the outcomes of these cases' episodes and referrals again; write what changed."""
    ids = sorted(case_ids, key=str)
    if not ids:
        return
    facts: dict[uuid.UUID, CaseFacts] = {case_id: CaseFacts() for case_id in ids}
    for row in await _rows_of(session, EPISODE, "case_id", ids, *_EPISODE_COLUMNS):
        facts[row.case_id].episodes.append(row)
    for name, table, columns in _CASE_FACTS:
        for row in await _rows_of(session, table, "case_id", ids, *columns):
            getattr(facts[row.case_id], name).append(row)

    episode_updates: list[Row] = []
    referral_updates: list[Row] = []
    for case in facts.values():
        outcomes, referrals = summarize_case(case)
        for episode in case.episodes:
            derived = outcomes[episode.episode_id].columns()
            if any(getattr(episode, k) != v for k, v in derived.items()):
                episode_updates.append(_by_id(episode.episode_id, derived))
        for referral in case.referrals:
            episode_id, care_started = referrals[referral.referral_id]
            if (referral.episode_id, referral.care_started) != (episode_id, care_started):
                referral_updates.append(
                    _by_id(
                        referral.referral_id,
                        {"episode_id": episode_id, "care_started": care_started},
                    )
                )
    if episode_updates:
        await session.execute(
            EPISODE.update()
            .where(EPISODE.c.episode_id == sa.bindparam("b_id"))
            .values({k: sa.bindparam(f"v_{k}") for k in EPISODE_OUTCOMES}),
            episode_updates,
        )
    if referral_updates:
        await session.execute(
            REFERRAL.update()
            .where(REFERRAL.c.referral_id == sa.bindparam("b_id"))
            .values(
                episode_id=sa.bindparam("v_episode_id"), care_started=sa.bindparam("v_care_started")
            ),
            referral_updates,
        )


async def derive_people(session: AsyncSession, people: Iterable[uuid.UUID]) -> None:
    """Each of these people's overdoses: the hours until their next one."""
    ids = sorted(people, key=str)
    if not ids:
        return
    episodes = await _rows_of(
        session,
        EPISODE,
        "person_id",
        ids,
        "episode_id",
        "person_id",
        "incident_at",
        "overdose",
        "next_overdose_hours",
    )
    gaps = next_overdose_hours(episodes)
    changed = [
        _by_id(e.episode_id, {"next_overdose_hours": gaps.get(e.episode_id)})
        for e in episodes
        if gaps.get(e.episode_id) != e.next_overdose_hours
    ]
    if changed:
        await session.execute(
            EPISODE.update()
            .where(EPISODE.c.episode_id == sa.bindparam("b_id"))
            .values(next_overdose_hours=sa.bindparam("v_next_overdose_hours")),
            changed,
        )


def _deidentified_episode(report: Any) -> Row:
    late = report.late_by_policy if report.late_by_policy is not None else report.late_by_age
    return {
        **blank_row(EPISODE),
        "episode_id": report.report_id,
        "program_id": report.program_id,
        "deidentified": True,
        "incident_at": report.incident_at,
        "day": report.day,
        "week": report.week,
        "month": report.month,
        "quarter": report.quarter,
        "received_at": report.received_at,
        "county": report.county,
        "state": report.state,
        "source_kind": report.source_kind,
        "source_org": report.source_org,
        "overdose": report.overdose,
        "fatal_reported": report.fatal,
        "fatal": report.fatal,
        "late": bool(late),
        "repeat": False,
        "consent_declined": report.consent == "declined",
    }


async def derive_deidentified(session: AsyncSession, report_ids: Iterable[uuid.UUID]) -> None:
    """A report without a name or phone is an overdose the scheduler counts but never links:
    it is an episode of its own here (keyed by the report id), until a link says otherwise."""
    ids = sorted(report_ids, key=str)
    if not ids:
        return
    wanted: list[Row] = []
    unwanted: list[uuid.UUID] = []
    for report in await _rows_of(session, REPORT, "report_id", ids):
        if report.deidentified and report.episode_id is None and report.incident_at is not None:
            wanted.append(_deidentified_episode(report))
        else:
            unwanted.append(report.report_id)
    await _upsert(session, EPISODE, wanted)
    for chunk in _chunks(unwanted):
        await session.execute(
            EPISODE.delete().where(EPISODE.c.episode_id.in_(chunk), EPISODE.c.deidentified)
        )
