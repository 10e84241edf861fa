"""`portline migrate` gives each service its own schema on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.db import create_engine

pytestmark = pytest.mark.integration

PORTLINE = str(Path(sys.executable).parent / "portline")


async def test_migrate_creates_a_schema_per_service_and_is_idempotent(postgres_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": postgres_url, "PORTLINE_ENV": "development"}
    for _ in range(2):
        done = await asyncio.to_thread(
            subprocess.run,
            [PORTLINE, "migrate"],
            env=env,
            check=True,
            timeout=120,
            capture_output=True,
            text=True,
        )
    assert "scheduler: at scheduler_" in done.stdout

    engine = create_engine(postgres_url, service="admin", schema="public")
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "select table_schema, table_name from information_schema.tables "
                "where table_name in ('outbox', 'inbox', 'dead_letter', 'alembic_version')"
            )
        )
        tables = {(s, t) for s, t in rows.all()}
    await engine.dispose()
    for service in ("intake", "scheduler", "outreach", "reporting"):
        for table in ("outbox", "inbox", "dead_letter", "alembic_version"):
            assert (service, table) in tables
