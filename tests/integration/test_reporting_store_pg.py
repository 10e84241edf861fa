"""On PostgreSQL, reporting's writes go as one JSON document per table and batch
(`json_to_recordset`): what is read back is exactly what was written, for every kind of
column (aware datetimes in any zone, uuids the driver itself returned, floats, dates, nulls),
an upsert updates what it gives, a fact that arrives again changes nothing, and derived
columns are set row by row."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.reporting import store
from services.reporting.models import ATTEMPT, EPISODE
from shared.db import session_factory
from shared.migrations import upgrade

pytestmark = pytest.mark.integration

EASTERN = timezone(timedelta(hours=-5))


@pytest.fixture
async def sessions(pg_engine: AsyncEngine, pg_schema: str) -> async_sessionmaker[AsyncSession]:
    await upgrade(pg_engine, service="reporting", schema=pg_schema)
    return session_factory(pg_engine)


def episode(**given: object) -> store.Row:
    incident = datetime(2025, 3, 9, 1, 30, 0, 123456, tzinfo=EASTERN)  # a DST night, not UTC
    return {
        **store.blank_row(EPISODE),
        "episode_id": uuid.uuid4(),
        "program_id": "demo",
        "case_id": uuid.uuid4(),
        "person_id": None,
        "deidentified": False,
        "incident_at": incident,
        "day": date(2025, 3, 9),
        "week": date(2025, 3, 3),
        "month": date(2025, 3, 1),
        "quarter": date(2025, 1, 1),
        "windows_from": None,
        "received_at": incident + timedelta(hours=80),
        "county": 'Guilford — Ünïcode "quoted"',
        "state": None,
        "source_kind": "ems",
        "source_org": "demo-ems",
        "overdose": True,
        "fatal_reported": False,
        "late": True,
        "repeat": False,
        "consent_declined": False,
        "first_attempt_hours": 0.1 + 0.2,  # not a short decimal
        "next_overdose_hours": 1e-7,
        **given,
    }


async def read(sessions: async_sessionmaker[AsyncSession], ids: list[object]) -> list[store.Row]:
    async with sessions() as session:
        found = await store.rows_of(session, EPISODE, "episode_id", ids)
    by_id = {
        row.episode_id: {k: v for k, v in row._mapping.items() if k != "flags"} for row in found
    }
    return [by_id[i] for i in ids]


async def test_written_rows_read_back_exactly(sessions: async_sessionmaker[AsyncSession]) -> None:
    rows = [episode(), episode(person_id=uuid.uuid4(), naloxone_kits=3), episode(state="NC")]
    async with sessions() as session:
        await store.insert_new(session, EPISODE, rows)
        await session.commit()
    ids = [r["episode_id"] for r in rows]
    assert await read(sessions, ids) == rows  # aware datetimes compare as instants

    # written again from what the driver returned (its own uuid type): an upsert of changes
    again = await read(sessions, ids)
    for row in again:
        row["county"], row["late"] = "Wake", False
    async with sessions() as session:
        await store._upsert(session, EPISODE, again)
        await store.insert_new(session, EPISODE, [{**rows[0], "county": "Ignored"}])
        await store._update_rows(
            session,
            EPISODE,
            "episode_id",
            ("first_attempt_hours", "reached_at"),
            [{"episode_id": ids[1], "first_attempt_hours": None, "reached_at": datetime.now(UTC)}],
        )
        await session.commit()
    after = await read(sessions, ids)
    assert [(r["county"], r["late"]) for r in after] == [("Wake", False)] * 3
    assert after[0] == again[0]
    assert after[2] == again[2]
    assert after[1]["first_attempt_hours"] is None
    assert after[1]["reached_at"] is not None


async def test_a_fact_that_arrives_again_changes_nothing(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    row = {
        "attempt_id": uuid.uuid4(),
        "program_id": "demo",
        "case_id": uuid.uuid4(),
        "task_id": uuid.uuid4(),
        "channel": "phone",
        "outcome": "reached",
        "occurred_at": datetime(2025, 6, 1, 12, tzinfo=UTC),
    }
    async with sessions() as session:
        await store.insert_new(session, ATTEMPT, [row])
        await store.insert_new(session, ATTEMPT, [{**row, "outcome": "no_answer"}])
        await session.commit()
        found = (await session.execute(sa.select(ATTEMPT.c.outcome))).scalars().all()
    assert found == ["reached"]
