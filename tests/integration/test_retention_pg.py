"""Retention on PostgreSQL: the services' maintenance loop, as the runtime role, prunes what is
past each rule's setting (composite keys too) and says so in its metrics; the audit log is
pruned only by `portline prune --audit-log`, as the owner, and stays append-only."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.exc import DBAPIError

from services.intake.models import IDEMPOTENCY
from services.outreach.models import AUDIT
from shared.clock import ManualClock
from shared.db import create_engine, session_factory
from shared.inbox import DEAD_LETTER, INBOX
from shared.outbox import OUTBOX
from shared.retention import Maintenance
from shared.settings import Settings

pytestmark = pytest.mark.integration

PORTLINE = str(Path(sys.executable).parent / "portline")


@pytest.fixture
async def prefix(postgres_url: str, runtime_postgres_url: str) -> AsyncIterator[str]:
    prefix = f"ret{uuid.uuid4().hex[:8]}_"
    env = {
        **os.environ,
        "PORTLINE_ENV": "development",
        "DATABASE_OWNER_URL": postgres_url,
        "DATABASE_URL": runtime_postgres_url,
        "PORTLINE_DB_SCHEMA_PREFIX": prefix,
    }
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [PORTLINE, "migrate", "intake", "outreach"],
            env=env,
            timeout=180,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        yield prefix
    finally:
        engine = create_engine(postgres_url, service="admin", schema="public")
        async with engine.begin() as conn:
            for service in ("intake", "outreach"):
                await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{prefix}{service}" CASCADE'))
        await engine.dispose()


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_maintenance_loop_prunes_as_the_runtime_role(
    prefix: str, runtime_postgres_url: str
) -> None:
    clock = ManualClock(datetime.now(UTC))
    now = clock.now()
    old, recent = now - timedelta(days=100), now - timedelta(hours=1)
    engine = create_engine(runtime_postgres_url, service="intake", schema=f"{prefix}intake")
    try:
        async with engine.begin() as conn:
            await conn.execute(
                OUTBOX.insert(),
                [
                    {"event_id": f"e{n}", "topic": "t", "key": "k", "payload": "{}",
                     "created_at": at, "published_at": published}
                    for n, (at, published) in enumerate([(old, old), (old, None), (recent, recent)])
                ],
            )  # fmt: skip
            await conn.execute(
                INBOX.insert(),
                [
                    {"consumer": "intake.team", "event_id": f"i{n}", "processed_at": at}
                    for n, at in enumerate([old, old, recent])
                ],
            )
            await conn.execute(
                IDEMPOTENCY.insert(),
                [
                    {"partner_id": "p", "key": f"k{n}", "request_hash": "h", "status_code": 202,
                     "response": "{}", "created_at": at}
                    for n, at in enumerate([old, recent])
                ],
            )  # fmt: skip
            await conn.execute(
                DEAD_LETTER.insert(),
                [
                    {"consumer": "intake.team", "topic": "t", "partition": 0, "offset": n,
                     "payload": b"{}", "error": "x", "attempts": 1, "created_at": old,
                     "resolved_at": resolved}
                    for n, resolved in enumerate([old, None, None])
                ],
            )  # fmt: skip
        before = _sample("portline_retention_pruned_rows_total", service="intake", rule="inbox")
        maintenance = Maintenance(
            "intake",
            session_factory(engine),
            # fact topics kept 30 days, so inbox ids may go after 60 (kept for good otherwise)
            Settings(env="development", kafka_fact_retention_days=30, retention_inbox_days=60),
            clock=clock,
        )
        stop = asyncio.Event()
        loop = asyncio.create_task(maintenance.run(stop))
        try:
            for _ in range(100):
                if _sample("portline_retention_last_success_timestamp_seconds", service="intake"):
                    break
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await loop
        async with engine.connect() as conn:
            outbox = set((await conn.execute(sa.select(OUTBOX.c.event_id))).scalars())
            inbox = set((await conn.execute(sa.select(INBOX.c.event_id))).scalars())
            keys = set((await conn.execute(sa.select(IDEMPOTENCY.c.key))).scalars())
            letters = await conn.scalar(sa.select(sa.func.count()).select_from(DEAD_LETTER))
    finally:
        await engine.dispose()
    assert outbox == {"e1", "e2"}  # the unpublished one stays, however old
    assert inbox == {"i2"}
    assert keys == {"k1"}
    assert letters == 2  # open dead letters are never pruned
    after = _sample("portline_retention_pruned_rows_total", service="intake", rule="inbox")
    assert after == before + 2
    assert _sample(
        "portline_retention_last_success_timestamp_seconds", service="intake"
    ) == pytest.approx(now.timestamp())
    assert _sample("portline_dead_letters", service="intake", consumer="intake.team") == 2


async def test_the_audit_log_goes_only_on_request_as_its_owner(
    prefix: str, postgres_url: str, runtime_postgres_url: str
) -> None:
    schema = f"{prefix}outreach"
    owner = create_engine(postgres_url, service="outreach", schema=schema)
    row = {"actor_id": "a", "role": "team_lead", "program_id": "demo", "action": "read",
           "resource": "case", "purpose": "p"}  # fmt: skip
    async with owner.begin() as conn:
        await conn.execute(
            AUDIT.insert(),
            [{**row, "at": datetime.now(UTC) - timedelta(days=days)} for days in (2500, 2200, 3)],
        )
    env = {
        **os.environ,
        "PORTLINE_ENV": "development",
        "DATABASE_OWNER_URL": postgres_url,
        "DATABASE_URL": runtime_postgres_url,
        "PORTLINE_DB_SCHEMA_PREFIX": prefix,
    }

    def prune(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PORTLINE, "prune", "--service", "outreach", "--audit-log"],
            env={**env, **extra},
            timeout=120,
            capture_output=True,
            text=True,
            check=False,
        )

    refused = await asyncio.to_thread(prune, {})
    assert refused.returncode == 2
    # As the runtime role it cannot, even when allowed: only the owner lifts the triggers.
    as_runtime = await asyncio.to_thread(
        prune, {"PORTLINE_AUDIT_PRUNE": "true", "DATABASE_OWNER_URL": runtime_postgres_url}
    )
    assert as_runtime.returncode == 1
    done = await asyncio.to_thread(prune, {"PORTLINE_AUDIT_PRUNE": "true"})
    assert done.returncode == 0, done.stderr
    assert ["outreach", "audit_log", "2"] in [line.split() for line in done.stdout.splitlines()]
    try:
        async with owner.connect() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(AUDIT)) == 1
        with pytest.raises(DBAPIError, match="append-only"):
            async with owner.begin() as conn:
                await conn.execute(sa.delete(AUDIT))
    finally:
        await owner.dispose()
