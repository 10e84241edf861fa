"""The plans PostgreSQL keeps for the hottest reads, made while the tables were empty.

asyncpg prepares every statement, and after five executions PostgreSQL may switch a prepared
statement to a generic plan, made once and kept until the table is next analyzed. A new
schema's tables have no statistics until autovacuum first analyzes them, a minute or more
after they fill. So a plan made when a table was nearly empty can serve it at thousands of
rows. Two such plans put the scheduler behind 200 reports/s in `make bench`:

- the key-holder lookup started from person: every person of the program, each probed for the
  keys (39-45 ms a query at about 500 people, against under 2 ms);
- the relay's held-row test probed every waiting row with a scan of the whole outbox.

Each test prepares the statement on empty tables (autovacuum off, so they never get
statistics), forces the generic plan, fills the tables and runs it, as the services would."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.scheduler.batch import key_holders
from services.scheduler.models import PERSON, PERSON_KEY
from shared.migrations import upgrade
from shared.outbox import _OLDEST_WAITING, OUTBOX, _next_rows

pytestmark = pytest.mark.integration

PEOPLE = 500
KINDS = ("name_dob", "phone", "dob", "name", "name_sound")
OUTBOX_ROWS = 20_000
WAITING = 200


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _literal(value: object) -> str:
    if isinstance(value, int):
        return str(value)
    assert isinstance(value, str)
    return "'" + value.replace("'", "''") + "'"


class Prepared:
    """One statement prepared on a connection and held to its generic plan."""

    def __init__(self, conn: AsyncConnection, name: str, query: sa.Executable) -> None:
        compiled = query.compile(
            dialect=asyncpg.dialect(), compile_kwargs={"render_postcompile": True}
        )
        self._conn = conn
        self._name = name
        self._sql = str(compiled)
        values = [compiled.params[key] for key in compiled.positiontup or ()]
        self._arguments = f"({', '.join(map(_literal, values))})" if values else ""

    async def prepare(self) -> None:
        """Prepare it and make its generic plan now (the tables as they are)."""
        await self._conn.execute(sa.text("SET plan_cache_mode = force_generic_plan"))
        await self._conn.exec_driver_sql(f"PREPARE {self._name} AS {self._sql}")
        await self._conn.exec_driver_sql(f"EXPLAIN EXECUTE {self._name}{self._arguments}")

    async def run(self) -> list[dict[str, Any]]:
        """Run it with the plan made at prepare(): the nodes, with their actual loops."""
        found = await self._conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {self._name}{self._arguments}"
        )
        raw = found.scalar_one()
        document = json.loads(raw) if isinstance(raw, str) else raw
        return list(_nodes(document[0]["Plan"]))


@pytest.fixture
async def schema(pg_engine: AsyncEngine, pg_schema: str) -> AsyncEngine:
    """A scheduler schema whose person, person_key and outbox never get statistics."""
    await upgrade(pg_engine, service="scheduler", schema=pg_schema)
    async with pg_engine.begin() as conn:
        for table in ("person", "person_key", "outbox"):
            await conn.execute(sa.text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
    return pg_engine


async def _no_statistics(conn: AsyncConnection) -> None:
    analyzed = await conn.execute(
        sa.text(
            "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = current_schema()"
            " AND relname IN ('person', 'person_key', 'outbox')"
            " AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)"
        )
    )
    assert analyzed.scalar_one() == 0


async def test_key_holders_look_the_keys_up_once_not_per_person(schema: AsyncEngine) -> None:
    pairs = [(kind, f"{kind}-{n}") for n in range(0, PEOPLE, 20) for kind in KINDS]
    pairs += [("phone", f"nobody-{n}") for n in range(20)]
    async with schema.connect() as conn:
        holders = Prepared(conn, "holders", key_holders({"demo"}, pairs))
        await holders.prepare()
        people = [uuid.uuid4() for _ in range(PEOPLE)]
        now = datetime.now(UTC)
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
        await conn.commit()
        await _no_statistics(conn)

        nodes = await holders.run()
    key_reads = [n for n in nodes if n.get("Relation Name") == "person_key"]
    assert key_reads
    # Once for the whole batch, not once per person of the program.
    assert all(n["Actual Loops"] == 1 for n in key_reads), key_reads
    assert nodes[0]["Actual Rows"] == len(range(0, PEOPLE, 20))


async def test_the_relay_reads_only_what_waits(schema: AsyncEngine) -> None:
    async with schema.connect() as conn:
        next_rows = Prepared(conn, "next_rows", _next_rows(WAITING))
        oldest = Prepared(conn, "oldest", _OLDEST_WAITING)
        await next_rows.prepare()
        await oldest.prepare()
        now = datetime.now(UTC)
        await conn.execute(
            OUTBOX.insert(),
            [
                {
                    "event_id": f"e-{n}",
                    "topic": "port.test",
                    "key": f"k-{n}",
                    "payload": "{}",
                    "created_at": now,
                    "published_at": now if n < OUTBOX_ROWS - WAITING else None,
                }
                for n in range(OUTBOX_ROWS)
            ],
        )
        await conn.commit()
        await _no_statistics(conn)

        for statement in (next_rows, oldest):
            nodes = await statement.run()
            # No node reads more outbox rows than wait, however often it runs (the held-row
            # test runs once per waiting row: a scan of the table there reads it 200 times).
            read = [
                (n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"]
                for n in nodes
                if n.get("Relation Name") == "outbox"
            ]
            assert read
            assert max(read) <= WAITING, nodes
