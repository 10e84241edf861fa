"""On PostgreSQL (percentile_cont, ROLLUP, the union of the tables' groups): the board from the
dashboard's own questions is the board four full questions to `measure` give
(tests/unit/test_dashboard_questions.py asks it on SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from services.reporting.dashboard.questions import BOARD_WORK_MEM, board_sessions
from tests.reporting_world import postgres_reporting_world
from tests.unit.test_dashboard_questions import NOW, assert_same_boards, history

pytestmark = pytest.mark.integration


async def test_the_board_is_what_four_full_measures_give_on_postgres(
    postgres_url: str, tmp_path: Path
) -> None:
    async with postgres_reporting_world(tmp_path, postgres_url, now=NOW) as world:
        await world.deliver(history().envelopes, batch=50)
        await assert_same_boards(world)
        async with board_sessions(world.runtime.engine)() as session:
            settings = sa.text(
                "SELECT current_setting('work_mem'), "
                "current_setting('max_parallel_workers_per_gather')"
            )
            assert tuple((await session.execute(settings)).one()) == (BOARD_WORK_MEM, "0")
        async with world.runtime.sessions() as session:  # the service's own: untouched
            assert (await session.execute(settings)).one()[1] != "0"
