"""Spike alerts and feed health on real PostgreSQL and Kafka: an alert raised by the consumer
reaches port.reporting.alerts.v1 through the outbox relay; passes of the watch that run at once
raise it once; a feed that stops is silent, and clears when it resumes; a lead's decision
commits on PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from services.reporting.models import ALERT, FEED_ALERT
from shared.bus import ensure_topics, make_consumer
from shared.envelope import Envelope
from shared.topics import REPORTING_ALERTS, TopicLayout
from tests.reporting_world import History, World, postgres_reporting_world
from tests.unit.test_reporting_alerts import NOW, baseline, spike
from tests.unit.test_reporting_feeds import hourly

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(postgres_url: str, kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[World]:
    await ensure_topics(kafka_bootstrap, TopicLayout(), [REPORTING_ALERTS])
    async with postgres_reporting_world(
        tmp_path,
        postgres_url,
        now=NOW,
        kafka_bootstrap_servers=kafka_bootstrap,
        # the relay publishes to the broker; the world delivers the events itself, and its
        # live consumer skips what other tests left on the topics
        kafka_consumer_start="latest",
    ) as w:
        yield w


async def _from_kafka(bootstrap: str, alert_ids: set[str], timeout: float = 60) -> list[Envelope]:
    consumer = make_consumer(
        bootstrap,
        group_id=f"it-alerts-{uuid.uuid4().hex[:8]}",
        topics=[REPORTING_ALERTS.name],
        start="earliest",
    )
    await consumer.start()
    found: list[Envelope] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and {e.data["alert_id"] for e in found} != alert_ids:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    envelope = Envelope.from_bytes(record.value)
                    if envelope.data.get("alert_id") in alert_ids:
                        found.append(envelope)
    finally:
        await consumer.stop()
    return found


async def _count(world: World, table: Any) -> int:
    async with world.runtime.sessions() as session:
        return int(
            (await session.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()
        )


async def test_an_alert_reaches_kafka_once_however_many_passes_run(
    world: World, kafka_bootstrap: str
) -> None:
    h = History()
    baseline(h)
    await world.deliver(h.envelopes, batch=200)
    # passes at once (two timers, as two replicas would run them) while the spike arrives
    h.envelopes.clear()
    spike(h, 8)
    watch = world.app.state.watch
    await asyncio.gather(
        world.deliver(h.envelopes),
        watch.run_once(world.runtime.uow),
        watch.run_once(world.runtime.uow),
    )
    await watch.run_once(world.runtime.uow)
    assert await _count(world, ALERT) == 2  # Guilford: EWMA and ODMAP
    r = await world.client.get("/v1/alerts", headers=world.auth("analyst"))
    ids = {a["alert_id"] for a in r.json()["alerts"]}
    events = await _from_kafka(kafka_bootstrap, ids)
    assert sorted(e.type for e in events) == ["SpikeDetected", "SpikeDetected"]
    assert all(e.subject == "demo" for e in events)

    alert_id = next(iter(ids))
    r = await world.client.post(
        f"/v1/alerts/{alert_id}/acknowledge",
        json={"note": "outreach van sent"},
        headers=world.auth("team_lead"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["note"] == "outreach van sent"
    again = await world.client.post(
        f"/v1/alerts/{alert_id}/dismiss", headers=world.auth("team_lead")
    )
    assert again.status_code == 409


async def test_a_feed_that_stops_and_resumes_on_postgres(world: World) -> None:
    h = History()
    hourly(h, "busy-ems", days=10, until=NOW - timedelta(minutes=20))
    await world.deliver(h.envelopes, batch=500)
    watch = world.app.state.watch
    await watch.run_once(world.runtime.uow)
    world.clock.advance(timedelta(hours=9))
    await watch.run_once(world.runtime.uow)
    r = await world.client.get("/v1/feeds", headers=world.auth("team_lead"))
    feeds = {f["source_org"]: f for f in r.json()["feeds"]}
    assert feeds["busy-ems"]["state"] == "silent"
    h.envelopes.clear()
    h.report(at=world.clock.now(), received_at=world.clock.now(), org="busy-ems", county=None)
    await world.deliver(h.envelopes)
    await watch.run_once(world.runtime.uow)
    r = await world.client.get("/v1/feeds", headers=world.auth("team_lead"))
    feeds = {f["source_org"]: f for f in r.json()["feeds"]}
    assert feeds["busy-ems"]["state"] == "ok"
    async with world.runtime.sessions() as session:
        (row,) = await session.execute(
            sa.select(FEED_ALERT).where(FEED_ALERT.c.source_org == "busy-ems")
        )
    assert row.kind == "silent"
    assert row.cleared_at == world.clock.now()
