"""Hot-spot outreach: the policy's [hot_spot] section, the scheduler opening (and not
duplicating) a hot-spot task from a spike alert, outreach's queue and a lead's conclusion,
and reporting counting what was distributed."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.reporting.rebuild import Progress, RebuildResult, replay, set_state, start_fresh
from services.scheduler.handlers import PolicyBook, Scheduler
from services.scheduler.hot_spots import plan_hot_spot
from services.scheduler.models import HOT_SPOT_TASK
from services.scheduler.policy import (
    Policy,
    PolicyError,
    default_policy,
    hot_spot_due,
    parse_policy,
)
from shared.clock import ManualClock
from shared.db import create_engine, session_factory
from shared.envelope import Envelope, Event
from shared.events import (
    FeedSilenceDetected,
    HotSpotConcluded,
    HotSpotTaskScheduled,
    SpikeDetected,
)
from shared.inbox import IncomingMessage
from shared.migrations import upgrade
from shared.outbox import OUTBOX
from shared.sealing import Keyring, Sealer
from shared.uow import UnitOfWork
from tests.outreach_world import World as OutreachWorld
from tests.outreach_world import outreach_world
from tests.reporting_world import History, reporting_world

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
MINIMAL = 'program_id = "demo"\ntimezone = "America/New_York"\n'


def spike(
    *,
    county: str = "Guilford",
    level: str = "alert",
    detected_at: datetime = NOW,
    alert_id: uuid.UUID | None = None,
    program: str = "demo",
) -> SpikeDetected:
    return SpikeDetected(
        alert_id=alert_id or uuid.uuid4(),
        program_id=program,
        county=county,
        state="NC",
        detector="ewma",
        level=level,  # type: ignore[arg-type]
        observed=7,
        expected=0.8,
        p_value=0.001,
        window_start=detected_at - timedelta(days=1),
        window_end=detected_at,
        detected_at=detected_at,
    )


# -- the policy -------------------------------------------------------------------------------


def test_by_default_an_alert_opens_a_task_due_in_48_hours_and_a_warning_does_not() -> None:
    rules = default_policy("demo").hot_spot
    assert rules.enabled
    assert rules.opens_for("alert")
    assert not rules.opens_for("warning")
    assert rules.due_hours == 48


def test_a_program_may_act_on_warnings_with_its_own_time_box() -> None:
    policy = parse_policy(MINIMAL + '[hot_spot]\nlevels = ["warning", "alert"]\ndue_hours = 12\n')
    assert policy.hot_spot.opens_for("warning")
    assert hot_spot_due(policy, detected_at=NOW) == NOW + timedelta(hours=12)
    off = parse_policy(MINIMAL + "[hot_spot]\nenabled = false\n")
    assert not off.hot_spot.opens_for("alert")
    assert off.version != default_policy("demo").version


@pytest.mark.parametrize(
    ("snippet", "fragment"),
    [
        ('levels = ["panic"]', "hot_spot.levels.0: Input should be 'warning' or 'alert'"),
        ('levels = ["alert", "alert"]', "hot_spot.levels: must not repeat a level"),
        ("due_hours = 0", "hot_spot.due_hours: Input should be greater than 0"),
        ("due_hours = 400", "hot_spot.due_hours: Input should be less than or equal to 336"),
        ('enabled = "yes"', "hot_spot.enabled: Input should be a valid boolean"),
        ("radius_km = 5", "hot_spot.radius_km: unknown key"),
    ],
)
def test_a_bad_hot_spot_section_names_the_key(snippet: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy(MINIMAL + "[hot_spot]\n" + snippet + "\n", source="demo.toml")
    assert fragment in str(raised.value)


def test_a_later_alert_extends_the_due_time_and_an_earlier_one_never_shortens_it() -> None:
    policy = default_policy("demo")
    first = spike()
    opened = plan_hot_spot(policy, first, open_alert_ids=None, open_due_at=None, now=NOW)
    assert opened is not None
    assert opened.kind == "open"
    assert opened.due_at == NOW + timedelta(hours=48)

    later = spike(detected_at=NOW + timedelta(hours=10))
    attached = plan_hot_spot(
        policy, later, open_alert_ids=opened.alert_ids, open_due_at=opened.due_at, now=NOW
    )
    assert attached is not None
    assert attached.kind == "attach"
    assert attached.alert_ids == (first.alert_id, later.alert_id)
    assert attached.due_at == NOW + timedelta(hours=58)

    earlier = spike(detected_at=NOW - timedelta(hours=10))
    kept = plan_hot_spot(
        policy, earlier, open_alert_ids=opened.alert_ids, open_due_at=opened.due_at, now=NOW
    )
    assert kept is not None
    assert kept.due_at == opened.due_at

    again = plan_hot_spot(
        policy, first, open_alert_ids=opened.alert_ids, open_due_at=opened.due_at, now=NOW
    )
    assert again is None
    warning = spike(level="warning")
    assert plan_hot_spot(policy, warning, open_alert_ids=None, open_due_at=None, now=NOW) is None
    # read after its own time box (a first start reads the topic from its start): stale
    stale = spike(detected_at=NOW - timedelta(hours=48))
    assert plan_hot_spot(policy, stale, open_alert_ids=None, open_due_at=None, now=NOW) is None


# -- the scheduler ----------------------------------------------------------------------------


class SchedulerWorld:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], policy: Policy | None) -> None:
        self.sessions = sessions
        self.clock = ManualClock(NOW + timedelta(minutes=1))
        book = PolicyBook({"demo": policy} if policy else None)
        self.scheduler = Scheduler(sealer=Sealer(Keyring({"t": b"s" * 32}, "t")), policies=book)

    async def deliver(self, handler: Any, event: Event) -> None:
        envelope = Envelope.wrap(event, source="/test", subject="demo", time=self.clock.now())
        async with UnitOfWork(self.sessions, clock=self.clock, source="/test") as uow:
            await handler(uow, envelope)
            await uow.commit()

    async def alert(self, event: Event) -> None:
        await self.deliver(self.scheduler.hot_spots.on_alert, event)

    async def rows(self) -> list[Any]:
        async with self.sessions() as s:
            return list(
                await s.execute(sa.select(HOT_SPOT_TASK).order_by(HOT_SPOT_TASK.c.opened_at))
            )

    async def published(self) -> list[dict[str, Any]]:
        async with self.sessions() as s:
            rows = (await s.execute(sa.select(OUTBOX.c.payload).order_by(OUTBOX.c.id))).scalars()
            return [json.loads(r) for r in rows]


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/s.db", service="scheduler")
    await upgrade(engine, service="scheduler")
    yield session_factory(engine)
    await engine.dispose()


async def test_an_alert_opens_a_hot_spot_task_that_names_no_person(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    world = SchedulerWorld(sessions, None)
    alert = spike()
    await world.alert(alert)

    (row,) = await world.rows()
    assert (row.county, row.status) == ("Guilford", "open")
    (event,) = await world.published()
    assert event["type"] == "HotSpotTaskScheduled"
    assert event["subject"] == str(row.id)
    data = event["data"]
    assert data["kind"] == "hot_spot"
    assert data["alert_ids"] == [str(alert.alert_id)]
    assert data["detector"] == "ewma"
    assert datetime.fromisoformat(data["due_at"]) == NOW + timedelta(hours=48)
    assert not {"person_id", "case_id", "episode_id", "identity"} & set(data)


async def test_a_second_alert_for_the_county_extends_the_open_task_instead_of_opening_another(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    world = SchedulerWorld(sessions, None)
    first = spike()
    await world.alert(first)
    await world.alert(first)  # the same alert again (an upgrade repeats its id): no change
    later = spike(detected_at=NOW + timedelta(hours=6))
    await world.alert(later)
    await world.alert(spike(county="Forsyth"))

    rows = await world.rows()
    assert sorted(r.county for r in rows) == ["Forsyth", "Guilford"]
    guilford = next(r for r in rows if r.county == "Guilford")
    assert json.loads(guilford.alert_ids) == [str(first.alert_id), str(later.alert_id)]
    events = [e["data"] for e in await world.published()]
    assert len(events) == 3
    extended = events[1]
    assert extended["task_id"] == events[0]["task_id"]
    assert datetime.fromisoformat(extended["due_at"]) == NOW + timedelta(hours=54)


async def test_warnings_and_feed_alerts_open_nothing_by_default(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    world = SchedulerWorld(sessions, None)
    await world.alert(spike(level="warning"))
    await world.alert(
        FeedSilenceDetected(
            alert_id=uuid.uuid4(),
            program_id="demo",
            source_org="demo-hospital",
            source_kind="ed",
            last_message_at=NOW - timedelta(hours=9),
            quiet_hours=9,
            expected_messages=20,
            raised_at=NOW,
        )
    )
    assert await world.rows() == []
    assert await world.published() == []


async def test_a_program_acting_on_warnings_opens_on_one_and_a_disabled_one_never(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    eager = parse_policy(MINIMAL + '[hot_spot]\nlevels = ["warning", "alert"]\n')
    world = SchedulerWorld(sessions, eager)
    warning = spike(level="warning")
    await world.alert(warning)
    await world.alert(spike(level="alert", alert_id=warning.alert_id))  # the upgrade
    (row,) = await world.rows()
    assert json.loads(row.alert_ids) == [str(warning.alert_id)]

    off = SchedulerWorld(sessions, parse_policy(MINIMAL + "[hot_spot]\nenabled = false\n"))
    await off.alert(spike(county="Rockingham"))
    assert [r.county for r in await off.rows()] == ["Guilford"]


async def test_once_a_lead_concludes_it_the_countys_next_alert_opens_a_new_task(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    world = SchedulerWorld(sessions, None)
    await world.alert(spike())
    (row,) = await world.rows()
    concluded = HotSpotConcluded(
        task_id=row.id,
        program_id="demo",
        county="Guilford",
        naloxone_kits=10,
        test_strips=50,
        warnings_given=4,
        contacts_checked=3,
        concluded_at=NOW + timedelta(hours=20),
    )
    await world.deliver(world.scheduler.on_activity, concluded)
    await world.alert(spike(detected_at=NOW + timedelta(days=2)))

    rows = await world.rows()
    assert [r.status for r in rows] == ["concluded", "open"]
    assert rows[0].closed_at == NOW + timedelta(hours=20)
    assert rows[1].id != rows[0].id


# -- outreach ---------------------------------------------------------------------------------


def scheduled(
    task_id: uuid.UUID, *alert_ids: uuid.UUID, due_hours: int = 48
) -> HotSpotTaskScheduled:
    return HotSpotTaskScheduled(
        task_id=task_id,
        program_id="demo",
        county="Guilford",
        state="NC",
        alert_ids=list(alert_ids) or [uuid.uuid4()],
        detector="odmap",
        level="alert",
        observed=6,
        expected=None,
        window_start=NOW - timedelta(hours=24),
        window_end=NOW,
        priority=5,
        opened_at=NOW,
        due_at=NOW + timedelta(hours=due_hours),
        policy_version="sha256:abc",
    )


@pytest.fixture
async def team(tmp_path: Path) -> AsyncIterator[OutreachWorld]:
    async with outreach_world(tmp_path) as w:
        yield w


async def test_the_queue_shows_the_hot_spot_with_its_county_and_alert_and_no_person(
    team: OutreachWorld,
) -> None:
    task_id, first, second = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await team.feed(scheduled(task_id, first), str(task_id))
    await team.feed(scheduled(task_id, first, second, due_hours=60), str(task_id))

    r = await team.client.get("/v1/tasks", headers=team.auth("peer"))
    assert r.status_code == 200, r.text
    (spot,) = r.json()["hot_spots"]
    assert spot["id"] == str(task_id)
    assert (spot["kind"], spot["county"], spot["detector"]) == ("hot_spot", "Guilford", "odmap")
    assert spot["alert_ids"] == [str(first), str(second)]
    assert datetime.fromisoformat(spot["due_at"]) == NOW + timedelta(hours=60)
    assert "naloxone" in spot["guidance"]
    assert not {"person", "case_id", "person_id"} & set(spot)

    for path in ("/v1/tasks", f"/v1/hot-spots/{task_id}"):
        denied = await team.client.get(path, headers=team.auth("deputy"))
        assert denied.status_code == 403, path


async def test_a_lead_concludes_it_with_what_was_distributed(team: OutreachWorld) -> None:
    task_id = uuid.uuid4()
    await team.feed(scheduled(task_id), str(task_id))
    body = {
        "naloxone_kits": 40,
        "test_strips": 200,
        "warnings_given": 65,
        "contacts_checked": 12,
        "note": "Outside the shelter on Elm St",
    }
    url = f"/v1/hot-spots/{task_id}/conclude"
    peer = await team.client.post(url, json=body, headers=team.auth("peer"))
    assert peer.status_code == 403

    r = await team.client.post(url, json=body, headers=team.auth("team_lead"))
    assert r.status_code == 200, r.text
    view = r.json()
    assert (view["status"], view["naloxone_kits"], view["note"]) == (
        "concluded",
        40,
        "Outside the shelter on Elm St",
    )
    (event,) = await team.events("HotSpotConcluded")
    assert event["subject"] == str(task_id)
    assert event["data"]["naloxone_kits"] == 40
    assert event["data"]["test_strips"] == 200
    assert "Elm St" not in json.dumps(event)

    again = await team.client.post(url, json=body, headers=team.auth("team_lead"))
    assert (again.status_code, again.json()["error"]["code"]) == (409, "hot_spot_concluded")
    queue = await team.client.get("/v1/tasks", headers=team.auth("team_lead"))
    assert queue.json()["hot_spots"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"naloxone_kits": -1, "test_strips": 0, "warnings_given": 0, "contacts_checked": 0},
        {"naloxone_kits": "3", "test_strips": 0, "warnings_given": 0, "contacts_checked": 0},
        {"naloxone_kits": 1.5, "test_strips": 0, "warnings_given": 0, "contacts_checked": 0},
        {"naloxone_kits": 100_001, "test_strips": 0, "warnings_given": 0, "contacts_checked": 0},
        {"naloxone_kits": 1, "test_strips": 0, "warnings_given": 0},
        {"naloxone_kits": 1, "test_strips": 0, "warnings_given": 0, "contacts_checked": 0, "x": 1},
        {
            "naloxone_kits": 1,
            "test_strips": 0,
            "warnings_given": 0,
            "contacts_checked": 0,
            "note": "n" * 4001,
        },
    ],
)
async def test_a_bad_conclusion_is_a_422_and_changes_nothing(
    team: OutreachWorld, body: dict[str, Any]
) -> None:
    task_id = uuid.uuid4()
    await team.feed(scheduled(task_id), str(task_id))
    r = await team.client.post(
        f"/v1/hot-spots/{task_id}/conclude", json=body, headers=team.auth("team_lead")
    )
    assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_error")
    assert await team.events("HotSpotConcluded") == []


async def test_a_hot_spot_of_another_program_or_none_at_all_is_a_404(team: OutreachWorld) -> None:
    task_id = uuid.uuid4()
    await team.feed(scheduled(task_id), str(task_id))
    body = {"naloxone_kits": 1, "test_strips": 0, "warnings_given": 0, "contacts_checked": 0}
    for url, program in (
        (f"/v1/hot-spots/{task_id}/conclude", "other"),
        (f"/v1/hot-spots/{uuid.uuid4()}/conclude", "demo"),
    ):
        r = await team.client.post(url, json=body, headers=team.auth("team_lead", program))
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")


# -- reporting --------------------------------------------------------------------------------

REPORTING_NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)


def history() -> History:
    h = History()
    base = datetime(2025, 3, 3, 14, tzinfo=UTC)
    episode = h.overdose(at=base, county="Guilford")
    h.attempt(episode, at=base + timedelta(hours=3), outcome="reached")
    h.services(episode, at=base + timedelta(hours=4), naloxone=2, strips=5)
    h.hot_spot(at=base + timedelta(days=1), county="Guilford", naloxone=30, strips=100)
    h.hot_spot(at=base + timedelta(days=40), county="Forsyth", naloxone=12, strips=0)
    return h


async def messages(envelopes: list[Envelope]) -> AsyncIterator[list[IncomingMessage]]:
    """The history as the rebuild reads it from the topics: one batch."""
    yield [
        IncomingMessage(
            topic=type(e.event()).topic,
            partition=0,
            offset=i,
            key=e.subject.encode(),
            value=e.to_bytes(),
        )
        for i, e in enumerate(envelopes)
    ]


def by_group(rows: Iterable[dict[str, Any]], metric: str) -> dict[tuple[Any, ...], Any]:
    return {tuple(r["group"].values()): r["value"] for r in rows if r["metric"] == metric}


async def test_reporting_counts_hot_spot_kits_and_strips_by_month_and_county(
    tmp_path: Path,
) -> None:
    async with reporting_world(tmp_path, now=REPORTING_NOW) as world:
        h = history()
        await world.deliver(h.envelopes)
        f = await world.figures("2025-03-01", "2025-05-31")
        assert f["naloxone_kits_distributed"]["value"] == 2 + 30 + 12
        assert f["naloxone_kits_distributed"]["version"] == 2
        assert f["test_strips_distributed"]["value"] == 5 + 100
        assert f["overdoses_reported"]["value"] == 1  # a hot spot is no overdose

        rows = (
            await world.metrics(
                "2025-03-01", "2025-05-31", by=["month", "county"], view="internal", role="admin"
            )
        )["rows"]
        kits = by_group(rows, "naloxone_kits_distributed")
        assert kits[("2025-03", "Guilford")] == 32
        assert kits[("2025-04", "Forsyth")] == 12

        published = await world.metrics("2025-03-01", "2025-05-31", by=["month"])
        strips = {
            r["group"]["month"]: r
            for r in published["rows"]
            if r["metric"] == "test_strips_distributed"
        }
        assert (strips["2025-03"]["value"], strips["2025-03"]["suppressed"]) == (105, False)

        live = await world.metrics(
            "2025-03-01", "2025-05-31", by=["month", "county"], view="internal", role="admin"
        )
        sessions, clock = world.runtime.sessions, world.clock
        await start_fresh(sessions, clock)
        result = RebuildResult()
        await replay(
            messages(h.envelopes),
            world.processor(),
            Progress(len(h.envelopes), out=io.StringIO()),
            asyncio.Event(),
            result,
        )
        assert result.outcomes == {"applied": len(h.envelopes)}
        await set_state(sessions, clock, "done", result.events)
        rebuilt = await world.metrics(
            "2025-03-01", "2025-05-31", by=["month", "county"], view="internal", role="admin"
        )
        assert rebuilt["rows"] == live["rows"]
