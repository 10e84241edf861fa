"""Feed health through the reporting service (SQLite, its real consumer path, a clock the
tests move): a feed that stops raises FeedSilenceDetected and one that resumes clears it; a feed
quiet when it is always quiet raises nothing; rejects that rise raise FeedRejectSpikeDetected;
a new partner is still learning. And the usual rate by hour of week, on its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from services.reporting.feeds import FeedRules, UsualRate, expected_between, rejects_rising
from services.reporting.programs import ProgramBook
from shared.envelope import Envelope
from shared.outbox import OUTBOX
from shared.topics import REPORTING_ALERTS
from tests.reporting_world import History, World, reporting_world

NEW_YORK = ZoneInfo("America/New_York")
NOW = datetime(2025, 6, 4, 14, 30, tzinfo=NEW_YORK).astimezone(UTC)  # a Wednesday afternoon


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with reporting_world(tmp_path, now=NOW) as w:
        yield w


def hourly(h: History, org: str, *, days: int, until: datetime, office_hours: bool = False) -> None:
    """One message an hour from `days` ago until `until` (office hours: weekdays 9-17)."""
    at = until - timedelta(days=days)
    while at <= until:
        local = at.astimezone(NEW_YORK)
        if not office_hours or (local.weekday() < 5 and 9 <= local.hour < 17):
            h.report(
                at=at - timedelta(minutes=30),
                received_at=at,
                org=org,
                county=None,
                deidentified=True,
            )
        at += timedelta(hours=1)


async def watch(world: World) -> None:
    await world.app.state.watch.run_once(world.runtime.uow)


async def feeds(world: World) -> dict[str, dict[str, Any]]:
    r = await world.client.get("/v1/feeds", headers=world.auth("analyst"))
    assert r.status_code == 200, r.text
    return {f["source_org"]: f for f in r.json()["feeds"]}


async def published(world: World) -> list[Envelope]:
    async with world.runtime.sessions() as session:
        rows = await session.execute(
            sa.select(OUTBOX.c.payload)
            .where(OUTBOX.c.topic == REPORTING_ALERTS.name)
            .order_by(OUTBOX.c.id)
        )
        return [Envelope.from_bytes(r.payload) for r in rows]


async def test_a_feed_that_stops_is_silent_and_clears_when_it_resumes(world: World) -> None:
    h = History()
    hourly(h, "busy-ems", days=21, until=NOW - timedelta(minutes=20))
    await world.deliver(h.envelopes, batch=500)
    await watch(world)
    assert (await feeds(world))["busy-ems"]["state"] == "ok"

    world.clock.advance(timedelta(hours=1, minutes=30))  # quiet 1 h 50: not yet
    await watch(world)
    feed = (await feeds(world))["busy-ems"]
    assert feed["state"] == "ok"
    assert feed["usual_per_hour"] == pytest.approx(1.0)

    world.clock.advance(timedelta(hours=6))  # quiet almost 8 h in a feed busy every hour
    await watch(world)
    feed = (await feeds(world))["busy-ems"]
    assert feed["state"] == "silent"
    assert feed["expected_since_last"] >= 7
    assert datetime.fromisoformat(feed["since"]) == world.clock.now()
    (silent,) = await published(world)
    assert silent.type == "FeedSilenceDetected"
    assert silent.data["source_org"] == "busy-ems"
    assert silent.data["quiet_hours"] == pytest.approx(7 + 50 / 60, abs=0.01)

    await watch(world)  # still silent: raised once
    assert len(await published(world)) == 1

    h.envelopes.clear()
    h.report(at=world.clock.now(), received_at=world.clock.now(), org="busy-ems", county=None)
    await world.deliver(h.envelopes)
    await watch(world)
    assert (await feeds(world))["busy-ems"]["state"] == "ok"
    silent, recovered = await published(world)
    assert recovered.type == "FeedRecovered"
    assert recovered.data["alert_id"] == silent.data["alert_id"]
    assert recovered.data["kind"] == "silent"


async def test_a_feed_quiet_when_it_is_always_quiet_is_not_silent(world: World) -> None:
    """Office hours only: from 17:00 to 09:00, and all weekend, silence is usual."""
    h = History()
    friday_evening = datetime(2025, 6, 6, 16, 30, tzinfo=NEW_YORK).astimezone(UTC)
    hourly(h, "office-ed", days=21, until=friday_evening, office_hours=True)
    await world.deliver(h.envelopes, batch=500)
    world.clock.set(datetime(2025, 6, 9, 8, 50, tzinfo=NEW_YORK).astimezone(UTC))
    await watch(world)  # quiet 64 hours, over the weekend
    feed = (await feeds(world))["office-ed"]
    assert feed["state"] == "ok"
    assert feed["quiet_hours"] > 60
    assert feed["expected_since_last"] < 1
    world.clock.set(datetime(2025, 6, 9, 12, 0, tzinfo=NEW_YORK).astimezone(UTC))
    await watch(world)  # three quiet office hours on a Monday: 3 messages usual, not yet
    assert (await feeds(world))["office-ed"]["state"] == "ok"
    world.clock.set(datetime(2025, 6, 9, 16, 45, tzinfo=NEW_YORK).astimezone(UTC))
    await watch(world)  # a whole working day without the usual 7 or 8
    assert (await feeds(world))["office-ed"]["state"] == "silent"


async def test_rejects_that_rise_raise_a_warning(world: World) -> None:
    h = History()
    hourly(h, "busy-ed", days=14, until=NOW - timedelta(minutes=10))
    for minutes in range(5, 55, 6):  # 9 rejected in the last hour
        h.rejected(at=NOW - timedelta(minutes=minutes), org="busy-ed")
    await world.deliver(h.envelopes, batch=500)
    await watch(world)
    feed = (await feeds(world))["busy-ed"]
    assert feed["state"] == "rejects_rising"
    assert (feed["recent_rejected"], feed["recent_messages"]) == (9, 10)
    (event,) = await published(world)
    assert event.type == "FeedRejectSpikeDetected"
    assert (event.data["rejected"], event.data["messages"]) == (9, 10)

    world.clock.advance(timedelta(minutes=70))
    h.envelopes.clear()
    h.report(at=world.clock.now(), received_at=world.clock.now(), org="busy-ed", county=None)
    await world.deliver(h.envelopes)
    await watch(world)
    assert (await feeds(world))["busy-ed"]["state"] == "ok"
    assert [e.type for e in await published(world)] == ["FeedRejectSpikeDetected", "FeedRecovered"]


async def test_a_new_partner_is_learning_and_raises_nothing(world: World) -> None:
    h = History()
    hourly(h, "new-ems", days=3, until=NOW - timedelta(hours=20))
    await world.deliver(h.envelopes, batch=500)
    await watch(world)
    assert (await feeds(world))["new-ems"]["state"] == "learning"
    assert await published(world) == []


async def test_feeds_are_the_callers_program_s_and_readers_only(world: World) -> None:
    h = History()
    hourly(h, "busy-ems", days=8, until=NOW)
    other = History(program="other")
    other.report(at=NOW, org="other-ems")
    await world.deliver([*h.envelopes, *other.envelopes], batch=500)
    assert set(await feeds(world)) == {"busy-ems"}
    for role in ("peer", "deputy"):
        r = await world.client.get("/v1/feeds", headers=world.auth(role))
        assert r.status_code == 403


def test_the_usual_rate_is_per_hour_of_week_on_the_program_s_clock() -> None:
    rules = ProgramBook().for_program("demo")
    start = datetime(2025, 5, 5, tzinfo=NEW_YORK)  # a Monday, midnight
    end = start + timedelta(weeks=2)
    times = [start + timedelta(weeks=w, hours=10, minutes=m) for w in range(2) for m in (5, 40)]
    rate = UsualRate.learn(times, start, end, rules)
    assert rate.per_hour[10] == pytest.approx(2.0)  # Mondays 10:00-11:00
    assert sum(rate.per_hour) == pytest.approx(2.0)
    monday_ten = start + timedelta(weeks=2, hours=10)
    assert expected_between(rate, monday_ten, monday_ten + timedelta(minutes=30), rules) == (
        pytest.approx(1.0)
    )


def test_a_few_rejects_are_not_a_rise() -> None:
    feeds = FeedRules()
    assert rejects_rising(4, 4, 0, 500, feeds)[0] is False  # fewer than 5
    assert rejects_rising(6, 100, 100, 1000, feeds)[0] is False  # as usual (10 %)
    assert rejects_rising(6, 10, 5, 1000, feeds)[0] is True
