"""The services' database role reads and writes rows, and nothing more: it cannot edit or
empty an audit log, nor take away what stops that. Migrations run as the owner."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from shared.db import create_engine

pytestmark = pytest.mark.integration

PORTLINE = str(Path(sys.executable).parent / "portline")
AUDITED = ("outreach", "scheduler")


@pytest.fixture
async def schemas(postgres_url: str, runtime_postgres_url: str) -> AsyncIterator[str]:
    """Every service migrated by `portline migrate` as the owner, granting the runtime role;
    yields the schema prefix."""
    prefix = f"roles{uuid.uuid4().hex[:8]}_"
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
            [PORTLINE, "migrate"],
            env=env,
            timeout=180,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        runtime = make_url(runtime_postgres_url).username
        assert f"scheduler: at scheduler_0013; {runtime} may read and write rows" in done.stdout
        yield prefix
    finally:
        engine = create_engine(postgres_url, service="admin", schema="public")
        async with engine.begin() as conn:
            for service in ("intake", "scheduler", "outreach", "reporting"):
                await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{prefix}{service}" CASCADE'))
        await engine.dispose()


def _audit_row() -> dict[str, object]:
    return {
        "at": datetime.now(UTC),
        "actor_id": "lead-ana",
        "role": "team_lead",
        "program_id": "demo",
        "action": "read",
        "resource": "case_timeline",
        "purpose": "test",
    }


async def _refused(engine: sa.ext.asyncio.AsyncEngine, statement: str) -> str:
    """Run a statement in a transaction of its own; returns why the database refused it."""
    with pytest.raises(DBAPIError) as refused:
        async with engine.begin() as conn:
            await conn.execute(sa.text(statement))
    return str(refused.value.orig)


@pytest.mark.parametrize("service", AUDITED)
async def test_the_runtime_role_cannot_edit_an_audit_log_or_its_protections(
    schemas: str, postgres_url: str, runtime_postgres_url: str, service: str
) -> None:
    schema = f"{schemas}{service}"
    app = create_engine(runtime_postgres_url, service=service, schema=schema)
    owner = create_engine(postgres_url, service=service, schema=schema)
    try:
        insert = sa.text(
            "INSERT INTO audit_log (at, actor_id, role, program_id, action, resource, purpose) "
            "VALUES (:at, :actor_id, :role, :program_id, :action, :resource, :purpose)"
        )
        async with app.begin() as conn:  # what the service does: append, and read back
            await conn.execute(insert, _audit_row())
            assert (await conn.execute(sa.text("SELECT count(*) FROM audit_log"))).scalar() == 1

        denied = {
            "UPDATE audit_log SET purpose = 'covered up'": "permission denied",
            "DELETE FROM audit_log": "permission denied",
            "TRUNCATE audit_log": "permission denied",
            "DROP TRIGGER audit_log_no_update ON audit_log": "must be owner",
            "ALTER TABLE audit_log DISABLE TRIGGER USER": "must be owner",
            "DROP FUNCTION audit_log_append_only() CASCADE": "must be owner",
            "DROP TABLE audit_log": "must be owner",
            "ALTER TABLE audit_log OWNER TO CURRENT_USER": "must be owner",
            "CREATE TABLE shadow_audit (id int)": "permission denied",
            "SET session_replication_role = replica": "permission denied",
            "UPDATE alembic_version SET version_num = 'x'": "permission denied",
        }
        for statement, reason in denied.items():
            why = await _refused(app, statement)
            assert reason in why, f"{statement}: {why}"
        # Nor can it grant itself what it lacks (PostgreSQL only warns, and grants nothing).
        role = make_url(runtime_postgres_url).username
        async with app.begin() as conn:
            await conn.execute(sa.text(f'GRANT UPDATE, DELETE ON audit_log TO "{role}"'))
        assert "permission denied" in await _refused(app, "DELETE FROM audit_log")

        # The owner could, but the triggers still refuse it: the rows are as written.
        assert "append-only" in await _refused(owner, "UPDATE audit_log SET purpose = 'x'")
        assert "append-only" in await _refused(owner, "DELETE FROM audit_log")
        async with app.connect() as conn:
            purposes = (await conn.execute(sa.text("SELECT purpose FROM audit_log"))).scalars()
            assert list(purposes) == ["test"]
    finally:
        await app.dispose()
        await owner.dispose()


async def test_the_runtime_role_reads_and_writes_the_rows_of_every_other_table(
    schemas: str, runtime_postgres_url: str
) -> None:
    engine = create_engine(runtime_postgres_url, service="scheduler", schema=f"{schemas}scheduler")
    try:
        async with engine.begin() as conn:
            values = {"p": "demo", "m": "peer-ana", "at": datetime.now(UTC)}
            await conn.execute(
                sa.text(
                    "INSERT INTO team_access (program_id, member_id, active, changed_at) "
                    "VALUES (:p, :m, false, :at)"
                ),
                values,
            )
            await conn.execute(
                sa.text("UPDATE team_access SET active = true WHERE member_id = :m"), values
            )
            await conn.execute(sa.text("DELETE FROM team_access WHERE member_id = :m"), values)
            # A bigint serial key: the role may draw from the sequence.
            await conn.execute(
                sa.text(
                    "INSERT INTO outbox (event_id, topic, key, payload, created_at) "
                    "VALUES ('e1', 't', 'k', '{}', :at)"
                ),
                values,
            )
            version = await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            assert version.scalar() == "scheduler_0013"
    finally:
        await engine.dispose()
