"""On PostgreSQL (bigint sums, percentile_cont, GROUPING SETS, two connections side by side):
today's metrics answers are the ones the code before issue 15's second speed round gave
(tests/unit/test_reporting_answers_equal.py asks it on SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reporting_world import postgres_reporting_world
from tests.unit.test_dashboard_questions import NOW, history
from tests.unit.test_reporting_answers_equal import assert_same_answers

pytestmark = pytest.mark.integration


async def test_answers_are_what_the_code_before_gave_on_postgres(
    postgres_url: str, tmp_path: Path
) -> None:
    async with postgres_reporting_world(tmp_path, postgres_url, now=NOW) as world:
        await world.deliver(history().envelopes, batch=50)
        await assert_same_answers(world)
