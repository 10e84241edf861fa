"""The plans PostgreSQL makes for the hottest reads before a table has statistics.

A new schema's tables have none until autovacuum first analyzes them (a minute or more after
they fill). PostgreSQL then guesses: a program holds 0.5 % of the people, nearly every outbox
row is parked. With those guesses the scheduler's key-holder lookup once walked every person of
the program (about 40 ms a batch at 500 people, against 2 ms) and the relay hashed the whole
outbox on every pass; the scheduler fell behind 200 reports/s. These tests fill the tables
with autovacuum off, so they never have statistics, and read the plans."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler.batch import key_holders
from services.scheduler.models import PERSON, PERSON_KEY
from shared.migrations import upgrade
from shared.outbox import _OLDEST_WAITING, OUTBOX, _next_rows

pytestmark = pytest.mark.integration

PEOPLE = 500
KINDS = ("name_dob", "phone", "dob", "name", "name_sound")


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


async def _plan(engine: AsyncEngine, query: sa.Executable) -> list[dict[str, Any]]:
    """The nodes of the plan PostgreSQL ran, with their actual loops."""
    sql = query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    async with engine.connect() as conn:
        found = await conn.execute(sa.text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}"))
        raw = found.scalar_one()
    document = json.loads(raw) if isinstance(raw, str) else raw
    return list(_nodes(document[0]["Plan"]))


def _seq_scanned(nodes: list[dict[str, Any]]) -> set[str]:
    return {n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"}


@pytest.fixture
async def schema(pg_engine: AsyncEngine, pg_schema: str) -> AsyncEngine:
    """A scheduler schema whose person, person_key and outbox hold rows and no statistics."""
    await upgrade(pg_engine, service="scheduler", schema=pg_schema)
    now = datetime.now(UTC)
    people = [uuid.uuid4() for _ in range(PEOPLE)]
    async with pg_engine.begin() as conn:
        for table in ("person", "person_key", "outbox"):
            await conn.execute(sa.text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
        await conn.execute(
            PERSON.insert(),
            [
                {"id": p, "program_id": "demo", "do_not_contact": False, "created_at": now}
                for p in people
            ],
        )
        await conn.execute(
            PERSON_KEY.insert(),
            [
                {"person_id": p, "kind": kind, "value": f"{kind}-{n}"}
                for n, p in enumerate(people)
                for kind in KINDS
            ],
        )
        await conn.execute(
            OUTBOX.insert(),
            [
                {
                    "event_id": f"e-{n}",
                    "topic": "port.test",
                    "key": f"k-{n % 50}",
                    "payload": "{}",
                    "created_at": now,
                    "published_at": now if n < 19_950 else None,
                }
                for n in range(20_000)
            ],
        )
        analyzed = await conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = current_schema()"
                " AND relname IN ('person', 'person_key', 'outbox')"
                " AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)"
            )
        )
        assert analyzed.scalar_one() == 0
    return pg_engine


async def test_key_holders_look_the_keys_up_before_the_people(schema: AsyncEngine) -> None:
    pairs = [(kind, f"{kind}-{n}") for n in range(0, PEOPLE, 20) for kind in KINDS]
    pairs += [("phone", f"nobody-{n}") for n in range(20)]
    nodes = await _plan(schema, key_holders({"demo"}, pairs))
    key_reads = [n for n in nodes if n.get("Relation Name") == "person_key"]
    assert key_reads
    # Once for the whole batch, not once per person of the program.
    assert all(n["Actual Loops"] == 1 for n in key_reads), key_reads
    assert nodes[0]["Actual Rows"] == len(range(0, PEOPLE, 20))


async def test_the_relay_s_reads_use_the_outbox_indexes(schema: AsyncEngine) -> None:
    for query in (_next_rows(200), _OLDEST_WAITING):
        nodes = await _plan(schema, query)
        assert "outbox" not in _seq_scanned(nodes), nodes
