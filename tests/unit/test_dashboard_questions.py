"""The board's own questions (services/reporting/dashboard/questions.py) give the board that
four full questions to Reporting I's `measure` give: the same figures, the same hidden ones,
the same groups (a group without an overdose included), for the period, each county, both
views. tests/integration/test_dashboard_questions_pg.py asks the same on PostgreSQL."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.reporting.dashboard.board import Board, Filters, assemble, gather
from services.reporting.dashboard.questions import board_sessions
from services.reporting.programs import ProgramRules
from services.reporting.query import Dimension, Scope, measure
from shared.events import Consent
from tests.reporting_world import History, Person, World, reporting_world

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
START, END = date(2025, 1, 1), date(2025, 5, 31)


def history(seed: int = 7) -> History:
    """Counties from many overdoses to a few, four sources, first attempts at all hours,
    people with more than one overdose, and groups with no overdose at all."""
    rng = random.Random(seed)
    h = History()
    base = datetime(2025, 1, 2, 13, tzinfo=UTC)
    counties = ["Guilford"] * 8 + ["Wake"] * 4 + ["Forsyth", "Orange"]
    sources = ["ems", "ems", "law_enforcement"]  # ED only in reports of the same overdose
    people = [Person() for _ in range(70)]
    for i, person in enumerate(people):
        at = base + timedelta(days=rng.randrange(140), hours=rng.randrange(24))
        source = rng.choice(sources)
        episode = h.overdose(
            person,
            at=at,
            county=rng.choice(counties),
            source=source,
            org=f"demo-{source}",
            consent=Consent.DECLINED if i % 17 == 0 else Consent.ACCEPTED,
            fatal=i % 23 == 0,
        )
        if i % 5 == 0:
            h.also_reported(episode, received_at=at + timedelta(hours=rng.randrange(1, 100)))
        if i % 17 and i % 23 and rng.random() < 0.8:
            h.attempt(episode, at=at + timedelta(hours=rng.uniform(0.5, 90)), outcome="reached")
            if i % 3 == 0:
                h.referral(episode, at=at + timedelta(hours=100))
        if i % 9 == 0:
            h.overdose(person, at=at + timedelta(days=rng.randrange(1, 30)), county="Wake")
    for day in (10, 40, 41):  # no overdose: a referral that was not about one
        h.community(at=base + timedelta(days=day), overdose=False, county="Alamance")
    h.community(at=base + timedelta(days=50))
    h.report(at=base + timedelta(days=60), deidentified=True, county="Orange")
    return h


async def four_measures(
    sessions: async_sessionmaker[AsyncSession], rules: ProgramRules, filters: Filters
) -> Board:
    """The board as it was first built: four full questions to `measure`."""
    scope = Scope(rules.program_id, filters.start, filters.end, NOW)
    weekly: tuple[Dimension, ...] = (
        ("week", "source") if filters.county is None else ("week", "county")
    )
    exact: tuple[tuple[Dimension, ...], ...] = (
        ((), ("month",)) if filters.county is None else (("county",),)
    )
    return assemble(
        await measure(sessions, scope, weekly, margins=True),
        await measure(sessions, scope, ("month", "county"), margins=True),
        {dims: await measure(sessions, scope, dims, margins=True) for dims in exact},
        program_id=rules.program_id,
        filters=filters,
        as_of=NOW,
        rules=rules,
    )


FILTERS = [
    Filters(START, END, county, view)
    for county in (None, "Guilford", "Wake", "Forsyth", "Alamance", "Nowhere")
    for view in ("published", "internal")
] + [Filters(date(2025, 2, 10), date(2025, 3, 20)), Filters(date(2025, 3, 1), date(2025, 3, 9))]


async def assert_same_boards(world: World) -> None:
    """The board's sessions (in-memory sorts, no parallel workers, on PostgreSQL) for the
    board; the service's own for the four measures."""
    sessions = world.runtime.sessions
    reads = board_sessions(world.runtime.engine)
    rules = world.app.state.programs.for_program("demo")
    hidden = 0
    for filters in FILTERS:
        board = await gather(reads, rules, filters, as_of=NOW)
        assert board == await four_measures(sessions, rules, filters), filters
        hidden += sum(chart.hidden for chart in board.charts)
    assert hidden > 0  # suppression was at work
    # the history has what the board draws: overdoses by week, first attempts, medians
    year = await gather(reads, rules, FILTERS[0], as_of=NOW)
    assert [t.display for t in year.tiles if t.metric == "overdoses_reported"] != ["0"]
    assert "Alamance" in year.counties  # seen without an overdose


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with reporting_world(tmp_path, now=NOW) as w:
        await w.deliver(history().envelopes)
        yield w


async def test_the_board_is_what_four_full_measures_give(world: World) -> None:
    await assert_same_boards(world)


async def test_the_boards_sessions_read_with_their_own_settings_on_postgres_only(
    world: World,
) -> None:
    """SQLite has no such settings: the board's sessions read there as any other."""
    async with board_sessions(world.runtime.engine)() as session:
        assert (await session.execute(sa.text("SELECT 1"))).scalar_one() == 1
