"""Today's metrics answers are the ones the code before issue 15's second speed round gave
(tests/reporting_reference.py): the same measures at every level, the same rows (values,
hidden cells, flags, displays), and GET /v1/metrics the same bytes, for breakdowns of every
kind, in both views. tests/integration/test_reporting_answers_equal_pg.py asks the same on
PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import pytest

from services.reporting.figures import build_figures
from services.reporting.query import Dimension, Scope, measure
from tests import reporting_reference as reference
from tests.reporting_world import World, reporting_world
from tests.unit.test_dashboard_questions import END, NOW, START, history

QUESTIONS: list[tuple[tuple[Dimension, ...], date, date]] = [
    ((), START, END),
    (("month",), START, END),
    (("county",), START, END),
    (("month", "county"), START, END),
    (("week", "source"), START, END),
    (("quarter", "partner"), START, END),
    (("county", "referral_kind"), START, END),
    (("day",), date(2025, 2, 10), date(2025, 3, 20)),
    (("source", "county"), date(2025, 3, 1), date(2025, 3, 9)),
]


def reference_body(figures: reference.Figures) -> bytes:
    """What GET /v1/metrics answered before: Starlette's JSONResponse of the same body."""
    body = {
        "program": figures.program_id,
        "from": figures.start.isoformat(),
        "to": figures.end.isoformat(),
        "by": list(figures.dims),
        "view": figures.view,
        "as_of": figures.as_of.isoformat(),
        "rows": figures.rows,
    }
    return json.dumps(
        body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


async def assert_same_answers(world: World) -> None:
    sessions = world.runtime.sessions
    rules = world.app.state.programs.for_program("demo")
    hidden = 0
    for dims, start, end in QUESTIONS:
        for view in ("published", "internal"):
            scope = Scope("demo", start, end, NOW)
            margins = view == "published"
            levels = await measure(sessions, scope, dims, margins=margins)
            before = await reference.measure(sessions, scope, dims, margins=margins)
            assert levels == before, (dims, view)
            common = {"program_id": "demo", "start": start, "end": end, "dims": dims}
            now = build_figures(levels, **common, view=view, as_of=NOW, rules=rules)
            then = reference.build_figures(before, **common, view=view, as_of=NOW, rules=rules)
            assert now.rows == then.rows, (dims, view)
            hidden += sum(row["suppressed"] for row in now.rows)
            query = {"from": start.isoformat(), "to": end.isoformat(), "view": view}
            answered = await world.client.get(
                "/v1/metrics",
                params=[*query.items(), *(("by", d) for d in dims)],
                headers=world.auth("team_lead"),
            )
            assert answered.status_code == 200
            assert answered.content == reference_body(then), (dims, view)
    assert hidden > 0  # suppression was at work


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with reporting_world(tmp_path, now=NOW) as w:
        await w.deliver(history().envelopes)
        yield w


async def test_answers_are_what_the_code_before_gave(world: World) -> None:
    await assert_same_answers(world)
