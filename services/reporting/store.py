"""Writing facts and deriving outcomes, set by set: the database side of applying events.

Per batch of events, each table is read once (the rows its new facts merge into) and written
once (one upsert); then the outcomes of the cases, people and reports the batch touched are
derived again from their facts (`summary.py`) and only the rows whose outcome changed are
written. Both SQLite and PostgreSQL take `INSERT ... ON CONFLICT`; on PostgreSQL a table's
rows go as one JSON document (`json_to_recordset`) instead of an executemany (ADR 0028).

Merging is what makes the facts order-tolerant: a report's own event and the scheduler's link
of it may come in either order, a task's closing before its scheduling, a later revision
before an earlier one; each table's merge gives the same row whatever the order.
"""

from __future__ import annotations

import collections
import functools
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
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
    HOT_SPOT,
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
from shared.db import UTCDateTime

__all__ = [
    "among",
    "blank_row",
    "derive_cases",
    "derive_deidentified",
    "derive_people",
    "insert_new",
    "lock_read_models",
    "rows_of",
    "write_facts",
]

T = TypeVar("T")
Row = dict[str, Any]

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


def among(session: AsyncSession, column: sa.ColumnElement[Any], values: Sequence[Any]) -> Any:
    """`column IN values`. On PostgreSQL as `= ANY(array)`: one parameter, so the statement's
    text (and asyncpg's prepared statement) is the same however many values there are."""
    if _dialect(session) == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


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
    return {c.name: _default(c) for c in table.columns if c.computed is None}


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


def _key(table: sa.Table, row: Row) -> tuple[Any, ...]:
    return tuple(row[c.name] for c in table.primary_key)


def _pk(table: sa.Table) -> list[str]:
    return [c.name for c in table.primary_key]


async def _upsert(
    session: AsyncSession,
    table: sa.Table,
    rows: Sequence[Row],
    set_: Callable[[Any], dict[str, Any]] | None = None,
) -> None:
    """Insert rows, or update the existing ones: by default every column the rows give."""
    if not rows:
        return
    keys = _pk(table)
    given = [c for c in rows[0] if c not in keys]
    if set_ is None and _dialect(session) == "postgresql":
        await _insert_rows(session, table, rows, update=tuple(given))
        return
    stmt = _insert(session, table)
    values = set_(stmt) if set_ else {c: stmt.excluded[c] for c in given}
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_=values)
    for chunk in _chunks(rows):
        await session.execute(stmt, list(chunk))


async def insert_new(session: AsyncSession, table: sa.Table, rows: Sequence[Row]) -> None:
    """Facts that arrive whole, once: a second arrival changes nothing."""
    unique = list({_key(table, r): r for r in reversed(rows)}.values())  # the first wins
    if _dialect(session) == "postgresql":
        await _insert_rows(session, table, unique, update=None)
        return
    stmt = _insert(session, table).on_conflict_do_nothing()
    for chunk in _chunks(unique):
        await session.execute(stmt, list(chunk))


@functools.cache
def _insert_statement(
    table: sa.Table, columns: tuple[str, ...], update: tuple[str, ...] | None
) -> sa.TextClause:
    """`INSERT ... SELECT FROM json_to_recordset(rows) ON CONFLICT`: the rows as one JSON
    document, in one execution. An executemany runs the statement once per row in the
    database and processes every value in Python first (so do a driver's arrays, one per
    column); orjson writes the document in C, and the database reads it in one pass."""
    keys = ", ".join(_pk(table))
    if update:
        action = "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in update)
    else:
        action = "DO NOTHING"
    # only the table's own names go into the text; every value is bound
    return sa.text(
        f"INSERT INTO {table.name} ({', '.join(columns)}) "  # noqa: S608
        f"SELECT * FROM {_recordset(table, columns)} ON CONFLICT ({keys}) {action}"
    )


async def _insert_rows(
    session: AsyncSession, table: sa.Table, rows: Sequence[Row], *, update: tuple[str, ...] | None
) -> None:
    """PostgreSQL: insert rows (one per key), updating the `update` columns of those that
    exist, or leaving them as they are when there are none."""
    if not rows:
        return
    columns = tuple(rows[0])
    statement = _insert_statement(table, columns, update or None)
    for chunk in _chunks(rows, 5_000):
        await session.execute(statement, {"rows": _json_rows(chunk)})


async def _fill(session: AsyncSession, table: sa.Table, rows: Sequence[Row]) -> None:
    """Facts that arrive in parts, each part setting its own columns (a task's scheduling,
    its closing): each part is upserted setting only its columns, so the parts combine in
    any order and nothing needs reading first. Columns no part sets keep their default."""
    parts: dict[frozenset[str], dict[tuple[Any, ...], Row]] = {}
    for row in rows:
        given = {k: v for k, v in row.items() if v is not None}
        same = parts.setdefault(frozenset(given), {})
        key = _key(table, given)
        same[key] = {**same.get(key, {}), **given}
    for part in parts.values():
        await _upsert(session, table, list(part.values()))


def _earlier(table: sa.Table, stmt: Any, column: str) -> Any:
    new, old = stmt.excluded[column], table.c[column]
    return sa.case((new.is_(None), old), (old.is_(None), new), (new < old, new), else_=old)


def _later(table: sa.Table, stmt: Any, column: str) -> Any:
    new, old = stmt.excluded[column], table.c[column]
    return sa.case((new.is_(None), old), (old.is_(None), new), (new > old, new), else_=old)


async def _partners(session: AsyncSession, rows: Sequence[Row]) -> None:
    """Each partner's first and last message, report and rejection: the earliest and the
    latest whatever the order."""
    merged: dict[tuple[Any, ...], Row] = {}
    for row in rows:
        key = _key(PARTNER, row)
        old = merged.get(key)
        if old is None:
            merged[key] = dict(row)
            continue
        merged[key] = {
            **_coalesce(old, row),
            "first_message_at": min(old["first_message_at"], row["first_message_at"]),
            **{
                k: max((v for v in (old[k], row[k]) if v is not None), default=None)
                for k in ("last_message_at", "last_report_at", "last_rejected_at")
            },
        }

    def set_(stmt: Any) -> dict[str, Any]:
        return {
            "program_id": sa.func.coalesce(stmt.excluded.program_id, PARTNER.c.program_id),
            "source_kind": stmt.excluded.source_kind,
            "first_message_at": _earlier(PARTNER, stmt, "first_message_at"),
            **{
                k: _later(PARTNER, stmt, k)
                for k in ("last_message_at", "last_report_at", "last_rejected_at")
            },
        }

    await _upsert(session, PARTNER, list(merged.values()), set_)


async def _programs(session: AsyncSession, rows: Sequence[Row]) -> None:
    first: dict[str, Row] = {}
    for row in rows:
        old = first.get(row["program_id"])
        if old is None or row["first_seen_at"] < old["first_seen_at"]:
            first[row["program_id"]] = row
    await _upsert(
        session,
        PROGRAM,
        list(first.values()),
        lambda stmt: {"first_seen_at": _earlier(PROGRAM, stmt, "first_seen_at")},
    )


async def _reports(session: AsyncSession, rows: Sequence[Row]) -> list[Row]:
    """A report's revisions and its link, merged with what is stored (read first: which
    revision wins depends on both). Returns the merged reports."""
    (pk,) = REPORT.primary_key.columns
    keys = list(dict.fromkeys(r["report_id"] for r in rows))
    merged: dict[Any, Row] = {}
    for chunk in _chunks(keys):
        for found in await session.execute(sa.select(REPORT).where(among(session, pk, chunk))):
            merged[found.report_id] = dict(found._mapping)
    for row in rows:
        key = row["report_id"]
        merged[key] = _merge_report(merged.get(key) or row, row)
    result = list(merged.values())
    await _upsert(session, REPORT, result)
    return result


_FILLED = (EPISODE, CASE, TASK, VISIT, REFERRAL)
"""Tables whose facts arrive in parts (see _fill)."""

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
    HOT_SPOT,
)
"""Tables whose facts arrive whole, once."""


async def write_facts(session: AsyncSession, rows: dict[sa.Table, list[Row]]) -> list[Row]:
    """Every table's new facts, one write per table (and one read, for reports); returns the
    reports as merged."""
    reports = await _reports(session, rows[REPORT]) if rows.get(REPORT) else []
    for table in _FILLED:
        if rows.get(table):
            await _fill(session, table, rows[table])
    if rows.get(PARTNER):
        await _partners(session, rows[PARTNER])
    if rows.get(PROGRAM):
        await _programs(session, rows[PROGRAM])
    for table in _INSERTED:
        if rows.get(table):
            await insert_new(session, table, rows[table])
    return reports


# -- deriving outcomes -----------------------------------------------------------------------


async def rows_of(
    session: AsyncSession, table: sa.Table, column: str, ids: Sequence[Any], *columns: str
) -> list[Any]:
    selected = [table.c[c] for c in columns] if columns else [table]
    found: list[Any] = []
    for chunk in _chunks(ids):
        query = sa.select(*selected).where(among(session, table.c[column], chunk))
        found.extend(await session.execute(query))
    return found


@functools.cache
def _fact_statement(table: sa.Table, column: str, columns: tuple[str, ...]) -> tuple[str, Any]:
    """The driver's text of `rows_of`'s query, and a named tuple for its rows."""
    key_type = _pg_type(table.c[column])
    text = (
        f"SELECT {', '.join(columns)} FROM {table.name} "  # noqa: S608 - the table's own names
        f"WHERE {column} = ANY($1::{key_type}[])"
    )
    return text, collections.namedtuple(f"{table.name}_row", columns)


async def _facts_of(
    session: AsyncSession, table: sa.Table, column: str, ids: Sequence[Any], *columns: str
) -> list[Any]:
    """`rows_of` for deriving outcomes, which reads thousands of rows a batch: on PostgreSQL
    through the driver itself, rows as named tuples of the same values (asyncpg's, as
    SQLAlchemy hands them on: aware UTC datetimes, the driver's uuids), without SQLAlchemy's
    statement and result machinery. Only inside a transaction a statement began (`apply_all`
    locks the read models first): the driver's own query would not begin one."""
    if _dialect(session) != "postgresql":
        return await rows_of(session, table, column, ids, *columns)
    text, row = _fact_statement(table, column, columns)
    connection = await (await session.connection()).get_raw_connection()
    driver = connection.driver_connection
    assert driver is not None
    found: list[Any] = []
    for chunk in _chunks(ids):
        found.extend(map(row._make, await driver.fetch(text, list(chunk))))
    return found


_PG_TYPES: tuple[tuple[type[Any], str], ...] = (
    (UTCDateTime, "timestamptz"),
    (sa.Uuid, "uuid"),
    (sa.Boolean, "boolean"),
    (sa.Float, "float8"),
    (sa.BigInteger, "bigint"),
    (sa.Integer, "integer"),
    (sa.Date, "date"),
    (sa.String, "text"),
)


def _pg_type(column: sa.Column[Any]) -> str:
    """The PostgreSQL type of a column's values."""
    return next(name for kind, name in _PG_TYPES if isinstance(column.type, kind))


def _recordset(table: sa.Table, columns: Sequence[str]) -> str:
    """The rows of the JSON parameter `rows` as a relation `v` of these columns."""
    typed = ", ".join(f"{c} {_pg_type(table.c[c])}" for c in columns)
    return f"json_to_recordset(CAST(:rows AS json)) AS v({typed})"


def _other_uuid(value: object) -> str:
    """The driver's own uuids (rows read back and written again) are uuid.UUID subclasses,
    which orjson leaves to this."""
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a column value")


_JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS


def _json_rows(rows: Sequence[Row]) -> str:
    """Rows as a JSON array of objects: uuids, dates and datetimes (aware; UTC if naive, as
    the driver takes them) as PostgreSQL reads them back; column names as plain strings."""
    return orjson.dumps(list(rows), default=_other_uuid, option=_JSON_OPTIONS).decode()


async def _update_rows(
    session: AsyncSession, table: sa.Table, key: str, columns: Sequence[str], rows: list[Row]
) -> None:
    """Set `columns` of each row, found by `key`, to the row's values. On PostgreSQL one
    statement for them all (`UPDATE ... FROM json_to_recordset(rows)`: one execution instead
    of one per row); elsewhere an executemany."""
    if not rows:
        return
    if _dialect(session) != "postgresql":
        await session.execute(
            table.update()
            .where(table.c[key] == sa.bindparam("b_id"))
            .values({c: sa.bindparam(f"v_{c}") for c in columns}),
            [{"b_id": r[key], **{f"v_{c}": r[c] for c in columns}} for r in rows],
        )
        return
    sets = ", ".join(f"{n} = v.{n}" for n in columns)
    # only the table's own names go into the text; every value is bound
    statement = sa.text(
        f"UPDATE {table.name} AS t SET {sets} "  # noqa: S608
        f"FROM {_recordset(table, [key, *columns])} WHERE t.{key} = v.{key}"
    )
    for chunk in _chunks(rows, 5_000):
        await session.execute(statement, {"rows": _json_rows(chunk)})


_REFERRAL_GROUPS = ("day", "week", "month", "quarter", "county", "source_kind", "source_org")
"""The groups of a referral's episode, copied onto the referral."""

_CASE_FACTS: tuple[tuple[str, sa.Table, tuple[str, ...]], ...] = (
    ("tasks", TASK, ("case_id", "task_id", "episode_id", "kind")),
    ("attempts", ATTEMPT, ("case_id", "task_id", "outcome", "occurred_at")),
    ("contacts", CONTACT, ("case_id", "task_id", "occurred_at")),
    ("visits", VISIT, ("case_id", "task_id", "completed_at", "reached")),
    ("services", SERVICE, ("case_id", "kind", "count", "occurred_at")),
    (
        "referrals",
        REFERRAL,
        ("case_id", "referral_id", "made_at", "episode_id", "care_started", *_REFERRAL_GROUPS),
    ),
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
    *_REFERRAL_GROUPS,
    *EPISODE_OUTCOMES,
)


async def derive_cases(session: AsyncSession, case_ids: Iterable[uuid.UUID]) -> None:
    """Derive the outcomes of these cases' episodes and referrals again; write what changed."""
    ids = sorted(case_ids, key=str)
    if not ids:
        return
    facts: dict[uuid.UUID, CaseFacts] = {case_id: CaseFacts() for case_id in ids}
    for row in await _facts_of(session, EPISODE, "case_id", ids, *_EPISODE_COLUMNS):
        facts[row.case_id].episodes.append(row)
    for name, table, columns in _CASE_FACTS:
        for row in await _facts_of(session, table, "case_id", ids, *columns):
            getattr(facts[row.case_id], name).append(row)

    episode_updates: list[Row] = []
    referral_updates: list[Row] = []
    for case in facts.values():
        outcomes, referrals = summarize_case(case)
        for episode in case.episodes:
            derived = outcomes[episode.episode_id].columns()
            if any(getattr(episode, k) != v for k, v in derived.items()):
                episode_updates.append({"episode_id": episode.episode_id, **derived})
        episodes = {e.episode_id: e for e in case.episodes}
        for referral in case.referrals:
            episode_id, care_started = referrals[referral.referral_id]
            episode = episodes.get(episode_id) if episode_id is not None else None
            wanted = {
                "episode_id": episode_id,
                "care_started": care_started,
                **{k: getattr(episode, k) if episode else None for k in _REFERRAL_GROUPS},
            }
            if any(getattr(referral, k) != v for k, v in wanted.items()):
                referral_updates.append({"referral_id": referral.referral_id, **wanted})
    await _update_rows(session, EPISODE, "episode_id", EPISODE_OUTCOMES, episode_updates)
    await _update_rows(
        session,
        REFERRAL,
        "referral_id",
        ("episode_id", "care_started", *_REFERRAL_GROUPS),
        referral_updates,
    )


async def derive_people(session: AsyncSession, people: Iterable[uuid.UUID]) -> None:
    """Each of these people's episodes: how many they have, and the hours from each overdose
    to their next one."""
    ids = sorted(people, key=str)
    if not ids:
        return
    episodes = await _facts_of(
        session,
        EPISODE,
        "person_id",
        ids,
        "episode_id",
        "person_id",
        "incident_at",
        "overdose",
        "next_overdose_hours",
        "person_episodes",
    )
    gaps = next_overdose_hours(episodes)
    counts = Counter(e.person_id for e in episodes)
    changed = [
        {"episode_id": e.episode_id, **wanted}
        for e in episodes
        if (
            wanted := {
                "next_overdose_hours": gaps.get(e.episode_id),
                "person_episodes": counts[e.person_id],
            }
        )
        != {"next_overdose_hours": e.next_overdose_hours, "person_episodes": e.person_episodes}
    ]
    await _update_rows(
        session, EPISODE, "episode_id", ("next_overdose_hours", "person_episodes"), changed
    )


def _deidentified_episode(report: Row) -> Row:
    late = report["late_by_policy"]
    if late is None:
        late = report["late_by_age"]
    return {
        **blank_row(EPISODE),
        "episode_id": report["report_id"],
        "program_id": report["program_id"],
        "deidentified": True,
        "incident_at": report["incident_at"],
        **{k: report[k] for k in ("day", "week", "month", "quarter", "received_at")},
        **{k: report[k] for k in ("county", "state", "source_kind", "source_org", "overdose")},
        "fatal_reported": report["fatal"],
        "fatal": report["fatal"],
        "late": bool(late),
        "repeat": False,
        "consent_declined": report["consent"] == "declined",
    }


async def derive_deidentified(session: AsyncSession, reports: Iterable[Row]) -> None:
    """A report without a name or phone is an overdose the scheduler counts but never links:
    it is an episode of its own here (keyed by the report id), until a link says otherwise.
    `reports` are the merged reports a batch touched."""
    wanted: list[Row] = []
    unwanted: list[uuid.UUID] = []
    for report in reports:
        if (
            report["deidentified"]
            and report["episode_id"] is None
            and report["incident_at"] is not None
        ):
            wanted.append(_deidentified_episode(report))
        else:
            unwanted.append(report["report_id"])
    await _upsert(session, EPISODE, wanted)
    for chunk in _chunks(unwanted):
        await session.execute(
            EPISODE.delete().where(
                among(session, EPISODE.c.episode_id, chunk), EPISODE.c.deidentified
            )
        )
