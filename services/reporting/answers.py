"""Answering a metrics question: which figures, for which program and period, by what.

The API and the exports both ask here, so a CSV carries exactly what `GET /v1/metrics`
answers for the same question.

Exceptions:

    QuestionError - the question cannot be answered as asked (a stable code and a sentence)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import cast

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.reporting.figures import Figures, View, build_figures
from services.reporting.programs import ProgramBook
from services.reporting.query import DIMENSIONS, TIME_DIMENSIONS, Dimension, Scope, measure

__all__ = ["MAX_DAYS", "MAX_DAYS_BY_DAY", "Question", "QuestionError", "answer", "parse_breakdown"]

MAX_DAYS = 3 * 366 + 1
"""The longest range one answer covers (about three years)."""
MAX_DAYS_BY_DAY = 366
"""The longest range broken down by day."""


class QuestionError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Question:
    program_id: str
    start: date
    end: date
    dims: tuple[Dimension, ...] = ()
    view: View = "published"

    def __post_init__(self) -> None:
        if self.start > self.end:
            raise QuestionError("invalid_range", "`from` must not be after `to`.")
        days = (self.end - self.start).days + 1
        if days > MAX_DAYS:
            raise QuestionError(
                "range_too_large", f"A range covers at most {MAX_DAYS} days; ask in parts."
            )
        if "day" in self.dims and days > MAX_DAYS_BY_DAY:
            raise QuestionError(
                "range_too_large",
                f"By day, a range covers at most {MAX_DAYS_BY_DAY} days; ask by week or month.",
            )


def parse_breakdown(values: Sequence[str]) -> tuple[Dimension, ...]:
    """`by` as given: repeated (`by=month&by=county`) or comma-separated (`by=month,county`)."""
    dims = [v.strip() for value in values for v in value.split(",") if v.strip()]
    unknown = [d for d in dims if d not in DIMENSIONS]
    if unknown:
        raise QuestionError(
            "invalid_breakdown",
            f"Unknown breakdown {unknown[0]!r}; choose from {', '.join(DIMENSIONS)}.",
        )
    if len(set(dims)) != len(dims) or len(dims) > 2:
        raise QuestionError(
            "invalid_breakdown", "Break down by one or two different things at most."
        )
    if sum(d in TIME_DIMENSIONS for d in dims) > 1:
        raise QuestionError(
            "invalid_breakdown", "Break down by one period at most (day, week, month or quarter)."
        )
    return cast(tuple[Dimension, ...], tuple(dims))


async def answer(
    sessions: async_sessionmaker[AsyncSession],
    programs: ProgramBook,
    question: Question,
    *,
    as_of: datetime,
) -> Figures:
    scope = Scope(question.program_id, question.start, question.end, as_of)
    levels = await measure(sessions, scope, question.dims, margins=question.view == "published")
    return build_figures(
        levels,
        program_id=question.program_id,
        start=question.start,
        end=question.end,
        dims=question.dims,
        view=question.view,
        as_of=as_of,
        rules=programs.for_program(question.program_id),
    )
