"""Reporting on real PostgreSQL and Kafka: the same figures as on SQLite (GROUPING SETS and
the per-subset queries agree), the live consumer of every topic, and a rebuild from the
topics that gives the live figures while the service keeps consuming."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from services.reporting.models import REBUILD
from services.reporting.rebuild import rebuild
from shared.bus import KafkaPublisher, create_topics
from shared.outbox import OutgoingMessage
from shared.settings import Settings
from tests.reporting_world import World, reporting_world
from tests.unit.test_reporting_read_models import NOW, RANGE, answers, history

pytestmark = pytest.mark.integration


async def _drop(postgres_url: str, prefix: str) -> None:
    from shared.db import create_engine

    engine = create_engine(postgres_url, service="admin", schema="public")
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{prefix}reporting" CASCADE'))
    await engine.dispose()


async def test_postgres_and_sqlite_give_the_same_figures(postgres_url: str, tmp_path: Path) -> None:
    h = history()
    async with reporting_world(tmp_path / "sqlite", now=NOW) as lite:
        await lite.deliver(h.envelopes)
        expected = await answers(lite)
    prefix = f"it{uuid.uuid4().hex[:8]}_"
    try:
        async with reporting_world(
            tmp_path / "pg", now=NOW, database_url=postgres_url, db_schema_prefix=prefix
        ) as pg:
            await pg.deliver(h.envelopes, batch=37)
            assert await answers(pg) == expected
            # other breakdowns, published (with their margins) and internal, agree too
            for by in (["week", "source"], ["referral_kind"], ["quarter", "partner"]):
                for view in ("published", "internal"):
                    got = await pg.metrics(*RANGE, by=by, view=view, role="admin")
                    want = await _metrics_on_sqlite(
                        tmp_path / f"{view}-{'-'.join(by)}", h, by, view
                    )
                    assert got["rows"] == want, (by, view)
    finally:
        await _drop(postgres_url, prefix)


async def _metrics_on_sqlite(path: Path, h: Any, by: list[str], view: str) -> Any:
    async with reporting_world(path, now=NOW) as lite:
        await lite.deliver(h.envelopes)
        return (await lite.metrics(*RANGE, by=by, view=view, role="admin"))["rows"]


async def test_the_live_consumer_and_a_rebuild_from_kafka(
    postgres_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    await create_topics(kafka_bootstrap, replication=1)
    program = f"it{uuid.uuid4().hex[:8]}"
    h = history(program)  # a program of its own: the broker is shared with other tests
    async with reporting_world(tmp_path / "expected", now=NOW) as lite:
        await lite.deliver(h.envelopes)
        expected = await _answers_of(lite, program)

    prefix = f"it{uuid.uuid4().hex[:8]}_"
    overrides = {
        "database_url": postgres_url,
        "db_schema_prefix": prefix,
        "kafka_bootstrap_servers": kafka_bootstrap,
    }
    publisher = KafkaPublisher(kafka_bootstrap, client_id="reporting-it")
    await publisher.start()
    try:
        async with reporting_world(tmp_path / "live", now=NOW, **overrides) as world:
            await publisher.publish(
                [
                    OutgoingMessage(type(e.event()).topic, e.subject.encode(), e.to_bytes())
                    for e in h.envelopes
                ]
            )
            deadline = time.monotonic() + 120
            while await _answers_of(world, program) != expected:
                assert time.monotonic() < deadline, "the live consumer never caught up"
                await asyncio.sleep(0.5)

            settings = Settings(env="development", var_dir=tmp_path, **overrides)
            out = io.StringIO()
            result = await rebuild(settings, out=out, batch_size=200)
            assert result.finished
            assert result.outcomes.get("dead_lettered", 0) == 0
            assert result.events >= len(h.envelopes)
            assert "events/s" in out.getvalue()
            async with world.runtime.sessions() as session:
                state = (await session.execute(sa.select(REBUILD.c.state))).scalar_one()
            assert state == "done"
            assert await _answers_of(world, program) == expected
            assert (await world.client.get("/readyz")).json()["checks"]["read_models"] == "ok"
    finally:
        await publisher.stop()
        await _drop(postgres_url, prefix)


async def _answers_of(world: World, program: str) -> list[Any]:
    figures = []
    for by in ((), ("month", "county")):
        params: list[tuple[str, str]] = [("from", RANGE[0]), ("to", RANGE[1]), ("view", "internal")]
        params += [("by", b) for b in by]
        r = await world.client.get(
            "/v1/metrics", params=params, headers=world.auth("admin", program=program)
        )
        assert r.status_code == 200, r.text
        figures.append(r.json()["rows"])
    return figures
