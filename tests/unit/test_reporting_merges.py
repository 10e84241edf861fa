"""People a lead merged (PersonsMerged) count once in every person-level figure, whatever the
order their events arrive in, however often, and after a rebuild; cases stay cases."""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from services.reporting.merges import final_person
from services.reporting.models import EPISODE, PERSON_MERGE
from services.reporting.rebuild import Progress, RebuildResult, replay, set_state, start_fresh
from shared.envelope import Envelope
from shared.inbox import IncomingMessage
from tests.reporting_world import History, Person, World, reporting_world, shuffled_across_topics

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
RANGE = ("2025-01-01", "2025-05-31")
BASE = datetime(2025, 1, 6, 14, tzinfo=UTC)
PEOPLE_FIGURES = (
    "people_referred",
    "people_with_outreach_task",
    "people_attempted",
    "people_reached",
    "people_engaged",
)


def _values(figures: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: figures[name]["value"] for name in names}


def people(worked: int) -> dict[str, int]:
    """The person-level figures when `worked` people were reached (and one more never was)."""
    return {
        "people_referred": worked + 1,
        "people_with_outreach_task": worked + 1,
        "people_attempted": worked,
        "people_reached": worked,
        "people_engaged": worked,
    }


def _rate(figures: dict[str, Any], name: str) -> tuple[int, int]:
    return figures[name]["numerator"], figures[name]["denominator"]


def one_person_known_as_three(program: str = "demo") -> tuple[History, list[Envelope]]:
    """One person's three overdoses, ten days apart, each taken for a new person (a, b, c),
    each reached and given a kit; then a lead merges a into b, and b into c. Returns the
    history and its two merges."""
    h = History(program)
    a, b, c = Person(), Person(), Person()
    for i, person in enumerate((a, b, c)):
        at = BASE + timedelta(days=10 * i)
        episode = h.overdose(person, at=at, county=["Guilford", "Forsyth"][i % 2])
        h.attempt(episode, at=at + timedelta(hours=3), outcome="reached")
        h.services(episode, at=at + timedelta(hours=4), naloxone=1, strips=0)
    merges = [
        h.merge(b, a, at=BASE + timedelta(days=25)),
        h.merge(c, b, at=BASE + timedelta(days=26)),
    ]
    # someone else, never merged
    h.overdose(Person(), at=BASE + timedelta(days=3), county="Guilford")
    return h, merges


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with reporting_world(tmp_path / "live", now=NOW) as w:
        yield w


async def answers(world: World) -> list[Any]:
    return [
        await world.figures(*RANGE),
        await world.figures(*RANGE, by=["month", "county"]),
        (await world.metrics(*RANGE, by=["month"]))["rows"],
    ]


def test_a_person_counts_as_the_end_of_their_chain_of_merges() -> None:
    a, b, c, d = (Person().person_id for _ in range(4))
    merges = {a: b, b: c}
    assert final_person(merges, a) == c
    assert final_person(merges, b) == c
    assert final_person(merges, c) == c
    assert final_person(merges, d) == d
    assert final_person({a: b, b: a}, a) in {a, b}  # never loops


async def test_merged_people_count_once_and_their_overdoses_stay_apart(world: World) -> None:
    h, merges = one_person_known_as_three()
    before = [e for e in h.envelopes if e not in merges]
    await world.deliver(before)
    apart = await world.figures(*RANGE)
    assert _values(apart, *PEOPLE_FIGURES) == people(3)
    assert _rate(apart, "repeat_overdose_30d") == (0, 4)

    await world.deliver(merges)
    merged = await world.figures(*RANGE)
    assert _values(merged, *PEOPLE_FIGURES) == people(1)
    # the person's overdoses 10 and 10 days apart: a repeat within 30 days, of one person
    assert _rate(merged, "repeat_overdose_30d") == (1, 2)
    assert _values(merged, "overdoses_reported", "naloxone_kits_distributed") == {
        "overdoses_reported": 4,
        "naloxone_kits_distributed": 3,
    }
    async with world.runtime.sessions() as session:
        persons = set((await session.execute(sa.select(EPISODE.c.person_id))).scalars())
        stored = list(await session.execute(sa.select(PERSON_MERGE)))
    assert len(persons) == 2
    assert len(stored) == 2


async def test_a_merge_applied_again_changes_nothing(world: World) -> None:
    h, merges = one_person_known_as_three()
    await world.deliver(h.envelopes)
    once = await answers(world)
    again = [
        Envelope.wrap(m.event(), source="/test", subject=m.subject, time=m.time) for m in merges
    ]
    await world.deliver(again + list(reversed(again)), batch=1)
    assert await answers(world) == once


async def test_events_of_a_merged_person_after_the_merge_count_as_the_person(
    world: World,
) -> None:
    h, merges = one_person_known_as_three()
    rest = [e for e in h.envelopes if e not in merges]
    await world.deliver(reversed(merges))  # B into C first, then A into B, before anything
    await world.deliver(rest)
    late = await world.figures(*RANGE)
    assert _values(late, *PEOPLE_FIGURES) == people(1)
    assert _rate(late, "repeat_overdose_30d") == (1, 2)


async def _figures_after(tmp_path: Path, envelopes: Sequence[Envelope], batch: int) -> list[Any]:
    async with reporting_world(tmp_path, now=NOW) as w:
        await w.deliver(envelopes, batch=batch)
        return await answers(w)


@settings(
    max_examples=6,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # a failing order is shown, whole
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 30))
async def test_any_order_of_the_events_gives_the_same_figures(
    tmp_path: Path, seed: int, batch: int
) -> None:
    h, _merges = one_person_known_as_three()
    expected = await _figures_after(Path(tempfile.mkdtemp(dir=tmp_path)), h.envelopes, 50)
    # each (topic, key) in its order, as Kafka keeps it; merges travel under the kept
    # person's case, so they interleave at will with the merged person's events
    shuffled = shuffled_across_topics(h.envelopes, seed)
    fresh = Path(tempfile.mkdtemp(dir=tmp_path))  # examples share tmp_path: a database each
    assert await _figures_after(fresh, shuffled, batch) == expected


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


async def test_a_rebuild_gives_the_merged_figures(world: World) -> None:
    h, _merges = one_person_known_as_three()
    await world.deliver(h.envelopes)
    live = await answers(world)
    sessions, clock = world.runtime.sessions, world.clock
    await start_fresh(sessions, clock)
    result = RebuildResult()
    await replay(
        _batches(h.envelopes, 7),
        world.processor(),
        Progress(len(h.envelopes), out=io.StringIO()),
        asyncio.Event(),
        result,
    )
    await set_state(sessions, clock, "done", result.events)
    assert result.finished
    assert await answers(world) == live
