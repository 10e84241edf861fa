"""On PostgreSQL (percentile_cont, ROLLUP, the union of the tables' groups): the board from the
dashboard's own questions is the board four full questions to `measure` give
(tests/unit/test_dashboard_questions.py asks it on SQLite)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.reporting.dashboard.questions import BOARD_WORK_MEM, board_sessions
from shared.db import create_engine
from tests.reporting_world import reporting_world
from tests.unit.test_dashboard_questions import NOW, assert_same_boards, history

pytestmark = pytest.mark.integration


async def test_the_board_is_what_four_full_measures_give_on_postgres(
    postgres_url: str, tmp_path: Path
) -> None:
    prefix = f"it{uuid.uuid4().hex[:8]}_"
    try:
        async with reporting_world(
            tmp_path, now=NOW, database_url=postgres_url, db_schema_prefix=prefix
        ) as world:
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
    finally:
        engine = create_engine(postgres_url, service="admin", schema="public")
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{prefix}reporting" CASCADE'))
        await engine.dispose()
