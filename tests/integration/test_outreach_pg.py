"""Outreach on real PostgreSQL and Kafka: concurrent edits, the outbox to Kafka, and an audit
log the database itself keeps append-only."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from services.outreach.models import AUDIT
from shared.db import create_engine
from shared.envelope import Envelope
from shared.topics import OUTREACH_ACTIVITY
from tests.outreach_world import outreach_world
from tests.support import ensure_topic, read_topic

pytestmark = pytest.mark.integration


async def test_outreach_on_postgres_and_kafka(
    postgres_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    await ensure_topic(kafka_bootstrap, OUTREACH_ACTIVITY.name)
    prefix = f"it{uuid.uuid4().hex[:8]}_"
    try:
        async with outreach_world(
            tmp_path,
            database_url=postgres_url,
            db_schema_prefix=prefix,
            kafka_bootstrap_servers=kafka_bootstrap,
            kafka_consumer_start="latest",
        ) as world:
            for member in ("peer-1", "peer-2"):
                await world.member(member)
            seeded = await world.seed_case()
            first = await world.client.get(
                f"/v1/tasks/{seeded.task_id}", headers=world.auth("peer")
            )
            etag = first.headers["ETag"]

            # Two peers claim the same task at once with the same ETag: exactly one wins.
            claims = await asyncio.gather(
                *(
                    world.client.post(
                        f"/v1/tasks/{seeded.task_id}/claim",
                        headers=world.auth("peer", subject=who) | {"If-Match": etag},
                    )
                    for who in ("peer-1", "peer-2")
                )
            )
            codes = sorted(r.status_code for r in claims)
            assert codes[0] == 200
            assert codes[1] in (409, 412)
            winner = next(r for r in claims if r.status_code == 200).json()["assignee_id"]

            # An attempt reaches Kafka through the outbox, without its notes.
            attempt = await world.client.post(
                f"/v1/tasks/{seeded.task_id}/attempts",
                json={"channel": "phone", "outcome": "no_answer", "notes": "Jordan's aunt"},
                headers=world.auth("peer", subject=winner),
            )
            assert attempt.status_code == 201, attempt.text
            attempt_id = attempt.json()["id"]
            (record,) = await read_topic(
                kafka_bootstrap,
                OUTREACH_ACTIVITY.name,
                where=lambda r: Envelope.from_bytes(r.value).data.get("attempt_id") == attempt_id,
                expect=1,
            )
            event = Envelope.from_bytes(record.value)
            assert event.type == "AttemptLogged"
            assert record.key == str(seeded.case_id).encode()
            assert b"aunt" not in record.value
            assert b"Jordan" not in record.value

            # The audit log refuses edits, deletes and truncation on PostgreSQL.
            engine = world.runtime.engine
            async with engine.connect() as conn:
                count = (await conn.execute(sa.select(sa.func.count()).select_from(AUDIT))).one()
            assert count[0] >= 3
            for statement in (
                AUDIT.update().values(purpose="x"),
                AUDIT.delete(),
                sa.text("TRUNCATE audit_log"),
            ):
                async with engine.begin() as conn:
                    with pytest.raises(DBAPIError, match="append-only"):
                        await conn.execute(statement)
    finally:
        engine = create_engine(postgres_url, service="admin", schema="public")
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{prefix}outreach" CASCADE'))
        await engine.dispose()
