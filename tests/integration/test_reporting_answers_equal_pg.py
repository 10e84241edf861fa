"""On PostgreSQL (bigint sums, percentile_cont, GROUPING SETS, two connections side by side):
today's metrics answers are the ones the code before issue 15's second speed round gave
(tests/unit/test_reporting_answers_equal.py asks it on SQLite)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.db import create_engine
from tests.reporting_world import reporting_world
from tests.unit.test_dashboard_questions import NOW, history
from tests.unit.test_reporting_answers_equal import assert_same_answers

pytestmark = pytest.mark.integration


async def test_answers_are_what_the_code_before_gave_on_postgres(
    postgres_url: str, tmp_path: Path
) -> None:
    prefix = f"it{uuid.uuid4().hex[:8]}_"
    try:
        async with reporting_world(
            tmp_path, now=NOW, database_url=postgres_url, db_schema_prefix=prefix
        ) as world:
            await world.deliver(history().envelopes, batch=50)
            await assert_same_answers(world)
    finally:
        engine = create_engine(postgres_url, service="admin", schema="public")
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{prefix}reporting" CASCADE'))
        await engine.dispose()
