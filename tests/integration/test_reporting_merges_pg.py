"""People a lead merged, through the real consumer on Kafka and PostgreSQL: the merges
published before the merged people's own events still count them once."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shared.bus import KafkaPublisher, ensure_topics
from shared.outbox import OutgoingMessage
from shared.topics import TopicLayout
from tests.reporting_world import World, reporting_world
from tests.unit.test_reporting_merges import NOW, RANGE, one_person_known_as_three

pytestmark = pytest.mark.integration


async def _figures(world: World, program: str) -> dict[str, Any]:
    params = [("from", RANGE[0]), ("to", RANGE[1]), ("view", "internal")]
    r = await world.client.get(
        "/v1/metrics", params=params, headers=world.auth("admin", program=program)
    )
    assert r.status_code == 200, r.text
    return {row["metric"]: row for row in r.json()["rows"]}


async def test_merges_before_the_merged_peoples_events_count_them_once(
    postgres_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    await ensure_topics(kafka_bootstrap, TopicLayout())
    program = f"it{uuid.uuid4().hex[:8]}"
    h, merges = one_person_known_as_three(program)
    async with reporting_world(tmp_path / "expected", now=NOW) as lite:
        await lite.deliver(h.envelopes)
        expected = await _figures(lite, program)
    assert expected["people_referred"]["value"] == 2

    prefix = f"it{uuid.uuid4().hex[:8]}_"
    overrides = {
        "database_url": postgres_url,
        "db_schema_prefix": prefix,
        "kafka_bootstrap_servers": kafka_bootstrap,
    }
    publisher = KafkaPublisher(kafka_bootstrap, client_id="reporting-merges-it")
    await publisher.start()
    try:
        async with reporting_world(tmp_path / "live", now=NOW, **overrides) as world:
            rest = [e for e in h.envelopes if e not in merges]
            for part in (list(reversed(merges)), rest):
                await publisher.publish(
                    [
                        OutgoingMessage(type(e.event()).topic, e.subject.encode(), e.to_bytes())
                        for e in part
                    ]
                )
            deadline = time.monotonic() + 120
            while await _figures(world, program) != expected:
                assert time.monotonic() < deadline, "the live consumer never caught up"
                await asyncio.sleep(0.5)
    finally:
        await publisher.stop()
        from shared.db import create_engine

        engine = create_engine(postgres_url, service="admin", schema="public")
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{prefix}reporting" CASCADE'))
        await engine.dispose()
