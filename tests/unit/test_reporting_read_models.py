"""The read models do not depend on the order events arrive in (topics interleave at will),
and a rebuild from the topics gives the figures the live consumer gave."""

from __future__ import annotations

import asyncio
import io
import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.reporting.rebuild import Progress, RebuildResult, replay, set_state, start_fresh
from services.reporting.summary import CaseFacts, next_overdose_hours, summarize_case
from shared.envelope import Envelope
from shared.events import Consent
from shared.inbox import IncomingMessage
from tests.reporting_world import History, Person, World, reporting_world, shuffled_across_topics

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
RANGE = ("2025-01-01", "2025-05-31")


def history(program: str = "demo") -> History:
    h = History(program)
    base = datetime(2025, 1, 3, 14, tzinfo=UTC)
    people = [Person() for _ in range(6)]
    for i, person in enumerate(people):
        at = base + timedelta(days=7 * i)
        episode = h.overdose(person, at=at, county=["Guilford", "Forsyth"][i % 2])
        if i % 3 == 0:
            h.also_reported(episode, received_at=at + timedelta(hours=90))
        h.attempt(episode, at=at + timedelta(hours=5 + i))
        if i % 2 == 0:
            h.attempt(episode, at=at + timedelta(hours=30), outcome="reached")
            h.services(episode, at=at + timedelta(hours=31), naloxone=i + 1, strips=2)
            h.referral(episode, at=at + timedelta(hours=31), care_started_at=at + timedelta(days=4))
        else:
            h.visit(episode, at=at + timedelta(hours=50), reached=i == 3)
        if i == 5:
            h.do_not_contact(episode, at=at + timedelta(hours=60))
        if i < 2:
            h.overdose(person, at=at + timedelta(days=20))
    h.overdose(at=base + timedelta(days=3), consent=Consent.DECLINED)
    h.overdose(at=base + timedelta(days=4), fatal=True)
    h.report(at=base + timedelta(days=5), deidentified=True, received_at=base + timedelta(days=9))
    h.community(at=base + timedelta(days=6))
    h.rejected(at=base)
    return h


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with reporting_world(tmp_path / "live", now=NOW) as w:
        yield w


async def answers(world: World) -> list[Any]:
    return [
        await world.figures(*RANGE),
        (await world.metrics(*RANGE, by=["month", "county"], view="internal", role="admin"))[
            "rows"
        ],
        (await world.metrics(*RANGE, by=["partner"]))["rows"],
    ]


async def test_the_figures_of_a_history_are_what_its_events_say(world: World) -> None:
    await world.deliver(history().envelopes)
    f = await world.figures(*RANGE)
    assert f["overdoses_reported"]["value"] == 11  # 6 + 2 repeats + declined + no name + community
    assert f["overdose_deaths_reported"]["value"] == 1
    assert f["naloxone_kits_distributed"]["value"] == 1 + 3 + 5
    assert f["in_person_visits_completed"]["value"] == 3
    assert f["do_not_contact_requests"]["value"] == 1


@pytest.mark.parametrize(("seed", "batch"), [(1, 50), (2, 1), (3, 7), (4, 200), (5, 13)])
async def test_the_order_across_topics_does_not_change_the_figures(
    tmp_path: Path, seed: int, batch: int
) -> None:
    h = history()
    async with reporting_world(tmp_path / "in-order", now=NOW) as in_order:
        await in_order.deliver(h.envelopes)
        expected = await answers(in_order)
    async with reporting_world(tmp_path / "shuffled", now=NOW) as shuffled:
        await shuffled.deliver(shuffled_across_topics(h.envelopes, seed), batch=batch)
        assert await answers(shuffled) == expected


def _facts(draw: Any) -> CaseFacts:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    episodes = [
        SimpleNamespace(
            episode_id=uuid.UUID(int=i + 1),
            incident_at=base + timedelta(days=10 * i),
            windows_from=None,
            fatal_reported=False,
        )
        for i in range(draw(st.integers(1, 3)))
    ]
    kinds = ["remote_contact", "in_person_visit", "follow_up", "family_support"]
    tasks = [
        SimpleNamespace(
            task_id=uuid.UUID(int=100 + i),
            episode_id=draw(st.sampled_from(episodes)).episode_id,
            kind=draw(st.sampled_from(kinds)),
        )
        for i in range(draw(st.integers(0, 4)))
    ]
    hours = st.integers(0, 40 * 24).map(lambda h: base + timedelta(hours=h))
    facts = CaseFacts(episodes=episodes, tasks=tasks)
    for _ in range(draw(st.integers(0, 6))):
        facts.attempts.append(
            SimpleNamespace(
                task_id=draw(st.sampled_from([t.task_id for t in tasks] or [uuid.UUID(int=999)])),
                outcome=draw(st.sampled_from(["reached", "no_answer", "declined"])),
                occurred_at=draw(hours),
            )
        )
    for _ in range(draw(st.integers(0, 3))):
        facts.services.append(
            SimpleNamespace(
                kind=draw(st.sampled_from(["naloxone_kit", "fentanyl_test_strips"])),
                count=draw(st.integers(1, 5)),
                occurred_at=draw(hours),
            )
        )
    for i in range(draw(st.integers(0, 2))):
        facts.referrals.append(
            SimpleNamespace(referral_id=uuid.UUID(int=500 + i), made_at=draw(hours))
        )
        facts.referral_statuses.append(
            SimpleNamespace(referral_id=uuid.UUID(int=500 + i), status="care_started")
        )
    for _ in range(draw(st.integers(0, 2))):
        facts.decisions.append(
            SimpleNamespace(
                decision=draw(st.sampled_from(["declined", "do_not_contact", "concluded"])),
                reason="engaged",
                occurred_at=draw(hours),
            )
        )
    return facts


@settings(deadline=None)
@given(st.data(), st.randoms(use_true_random=False))
def test_a_cases_outcomes_do_not_depend_on_the_order_of_its_facts(
    data: st.DataObject, rng: Any
) -> None:
    facts = _facts(data.draw)
    expected = summarize_case(facts)
    for name in ("episodes", "tasks", "attempts", "services", "referrals", "decisions"):
        rng.shuffle(getattr(facts, name))
    assert summarize_case(facts) == expected


def test_the_next_overdose_of_each_person() -> None:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    a, b = uuid.uuid4(), uuid.uuid4()

    def ep(n: int, person: uuid.UUID | None, day: int, overdose: bool = True) -> Any:
        return SimpleNamespace(
            episode_id=uuid.UUID(int=n),
            person_id=person,
            incident_at=base + timedelta(days=day),
            overdose=overdose,
        )

    episodes = [ep(1, a, 0), ep(2, a, 10), ep(3, b, 3), ep(4, a, 5, overdose=False), ep(5, None, 1)]
    for ordering in itertools.permutations(episodes):
        assert next_overdose_hours(ordering) == {
            uuid.UUID(int=1): 240.0,
            uuid.UUID(int=2): None,
            uuid.UUID(int=3): None,
        }


def _batches(envelopes: Sequence[Envelope], size: int) -> AsyncIterator[list[IncomingMessage]]:
    async def gen() -> AsyncIterator[list[IncomingMessage]]:
        for start in range(0, len(envelopes), size):
            yield [
                IncomingMessage(
                    topic=type(e.event()).topic,
                    partition=0,
                    offset=start + i,
                    key=e.subject.encode(),
                    value=e.to_bytes(),
                )
                for i, e in enumerate(envelopes[start : start + size])
            ]

    return gen()


async def test_a_rebuild_gives_the_figures_of_the_live_read_models(world: World) -> None:
    h = history()
    await world.deliver(h.envelopes)
    live = await answers(world)

    sessions, clock = world.runtime.sessions, world.clock
    await start_fresh(sessions, clock)
    assert (await world.figures(*RANGE))["overdoses_reported"]["value"] == 0
    ready = await world.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["read_models"].startswith("unavailable: rebuild running")

    out = io.StringIO()
    result = RebuildResult()
    progress = Progress(len(h.envelopes), out=out)
    await replay(
        _batches(shuffled_across_topics(h.envelopes, 9), 17),
        world.processor(),
        progress,
        asyncio.Event(),
        result,
    )
    progress.finish()
    await set_state(sessions, clock, "done", result.events)
    assert result.finished
    assert result.events == len(h.envelopes)
    assert result.outcomes == {"applied": len(h.envelopes)}
    assert await answers(world) == live
    assert f"{len(h.envelopes):,}/{len(h.envelopes):,} events" in out.getvalue()


async def test_a_stopped_rebuild_says_the_read_models_are_incomplete(world: World) -> None:
    h = history()
    sessions, clock = world.runtime.sessions, world.clock
    await start_fresh(sessions, clock)
    stop = asyncio.Event()
    stop.set()  # Ctrl-C during the first batch: that batch is finished, no more
    result = RebuildResult()
    await replay(
        _batches(h.envelopes, 10), world.processor(), Progress(99, out=io.StringIO()), stop, result
    )
    assert (result.events, result.finished) == (10, False)
    await set_state(sessions, clock, "interrupted", result.events)
    ready = await world.client.get("/readyz")
    assert ready.json()["checks"]["read_models"] == (
        "unavailable: rebuild interrupted; run `portline reporting rebuild`"
    )

    # --resume: the whole history again; the inbox skips the ten already applied
    await set_state(sessions, clock, "running", 0)
    result = RebuildResult()
    await replay(
        _batches(h.envelopes, 25),
        world.processor(),
        Progress(99, out=io.StringIO()),
        asyncio.Event(),
        result,
    )
    await set_state(sessions, clock, "done", result.events)
    assert result.outcomes == {"duplicate": 10, "applied": len(h.envelopes) - 10}
    assert (await world.client.get("/readyz")).json()["checks"]["read_models"] == "ok"
    assert (await world.figures(*RANGE))["overdoses_reported"]["value"] == 11


def test_the_progress_bar_shows_events_and_rate() -> None:
    ticks = iter([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    out = io.StringIO()
    bar = Progress(1000, out=out, now=lambda: next(ticks), width=10)
    bar.advance(500)
    bar.finish()
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("rebuild [#####.....] 500/1,000 events  50.0%")
    assert "events/s" in lines[-1]


def test_the_collector_is_set_up_for_applying_batches() -> None:
    import gc

    from services.reporting.app import tune_collector

    before = gc.get_threshold()
    try:
        tune_collector()
        assert gc.get_threshold() == (20_000, 50, 100)
        assert gc.get_freeze_count() > 0  # what lived before is out of the collector's sight
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
