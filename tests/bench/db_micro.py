"""What one group-commit transaction costs, by client stack (evidence for tuning intake).

    DATABASE_URL=postgresql://... python -m tests.bench.db_micro [--transactions 2000]

Each variant runs the write intake's HL7 batch does for B messages, one transaction at a
time (as the MicroBatcher does): look the dedupe keys up, insert B inbound rows, commit.
Durable commits throughout. Reported: transactions/s, messages/s and this process's CPU per
transaction, for B = 4 (what 8 lock-step MLLP connections produce) and B = 32.

Runs in its own schema, ``bench_micro``, dropped afterwards. Not part of `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import sqlalchemy as sa

from services.intake.models import INBOUND
from shared.db import create_engine, session_factory

SCHEMA = "bench_micro"
ACK = "MSH|^~\\&|PORTLINE|PORT|EPIC|DEMO_HOSPITAL|20261120||ACK^A04^ACK|x|P|2.5.1\rMSA|AA|M1"


def _rows(prefix: str, n: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {
            "id": uuid.uuid4(),
            "channel": "mllp",
            "partner_id": "demo-hospital",
            "dedupe_key": hashlib.sha256(f"{prefix}{i}".encode()).hexdigest(),
            "received_at": now,
            "status": "not_overdose",
            "reason_code": None,
            "reason": None,
            "ack": ACK,
            "report_id": None,
            "revision": None,
            "raw_sealed": None,
            "replayed_at": None,
        }
        for i in range(n)
    ]


async def measure(
    name: str, batch: int, count: int, one: Callable[[list[dict[str, Any]]], Awaitable[None]]
) -> None:
    await one(_rows(f"{name}{batch}warm", batch))
    wall, cpu = time.perf_counter(), time.process_time()
    for t in range(count):
        await one(_rows(f"{name}{batch}:{t}:", batch))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"  {name:<44} B={batch:<3} {count / wall:8,.0f} tx/s {count * batch / wall:8,.0f} msg/s"
        f"   {cpu / count * 1e6:7.0f} us CPU/tx"
    )


async def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.db_micro")
    p.add_argument("--transactions", type=int, default=2000)
    args = p.parse_args(argv)
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        print("db_micro: set DATABASE_URL to a PostgreSQL URL", file=sys.stderr)
        return 2
    admin = create_engine(url, service="admin", schema="public")
    async with admin.begin() as conn:
        await conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        await conn.execute(sa.text(f"CREATE SCHEMA {SCHEMA}"))
    engine = create_engine(url, service="bench", schema=SCHEMA)  # pool_pre_ping, as intake
    async with engine.begin() as conn:
        await conn.run_sync(INBOUND.create)
    sessions = session_factory(engine)
    dsn = "postgresql://" + url.split("://", 1)[1]
    raw = await asyncpg.connect(dsn, server_settings={"search_path": SCHEMA})
    columns = list(_rows("x", 1)[0])
    insert = (
        f"INSERT INTO inbound_message ({', '.join(columns)}) "
        f"VALUES ({', '.join(f'${i + 1}' for i in range(len(columns)))})"
    )
    upsert = (
        "INSERT INTO inbound_message (id, channel, partner_id, dedupe_key, received_at, status, "
        "ack) SELECT u.id, 'mllp', 'demo-hospital', u.k, $3, 'not_overdose', u.a "
        "FROM unnest($1::uuid[], $2::text[], $4::text[]) AS u(id, k, a) "
        "ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key"
    )

    async def orm(rows: list[dict[str, Any]]) -> None:
        async with sessions() as session:
            keys = [r["dedupe_key"] for r in rows]
            await session.execute(
                sa.select(INBOUND.c.dedupe_key, INBOUND.c.ack).where(INBOUND.c.dedupe_key.in_(keys))
            )
            await session.execute(INBOUND.insert(), rows)
            await session.commit()

    async def core(rows: list[dict[str, Any]]) -> None:
        async with engine.begin() as conn:
            keys = [r["dedupe_key"] for r in rows]
            await conn.execute(
                sa.select(INBOUND.c.dedupe_key, INBOUND.c.ack).where(INBOUND.c.dedupe_key.in_(keys))
            )
            await conn.execute(INBOUND.insert(), rows)

    async def asyncpg_tx(rows: list[dict[str, Any]]) -> None:
        async with raw.transaction():
            await raw.fetch(
                "SELECT dedupe_key, ack FROM inbound_message WHERE dedupe_key = any($1::text[])",
                [r["dedupe_key"] for r in rows],
            )
            await raw.executemany(insert, [tuple(r.values()) for r in rows])

    async def asyncpg_one(rows: list[dict[str, Any]]) -> None:
        await raw.fetch(
            upsert,
            [r["id"] for r in rows],
            [r["dedupe_key"] for r in rows],
            rows[0]["received_at"],
            [r["ack"] for r in rows],
        )

    print(f"one durable transaction per batch, {args.transactions} transactions each")
    try:
        for batch in (4, 32):
            await measure("SQLAlchemy AsyncSession (as intake)", batch, args.transactions, orm)
            await measure("SQLAlchemy Core, engine.begin()", batch, args.transactions, core)
            await measure(
                "asyncpg: tx + select + executemany", batch, args.transactions, asyncpg_tx
            )
            await measure(
                "asyncpg: one INSERT..ON CONFLICT..RETURNING", batch, args.transactions, asyncpg_one
            )
    finally:
        await raw.close()
        await engine.dispose()
        async with admin.begin() as conn:
            await conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        await admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
