"""On PostgreSQL (percentile_cont, ROLLUP, the union of the tables' groups): the board from the
dashboard's own questions is the board four full questions to `measure` give
(tests/unit/test_dashboard_questions.py asks it on SQLite)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

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
    finally:
        engine = create_engine(postgres_url, service="admin", schema="public")
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{prefix}reporting" CASCADE'))
        await engine.dispose()
