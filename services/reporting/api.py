"""The reporting API: metric definitions, figures (suppressed unless a lead asks for the
internal view), and exports as CSV and XLSX.

Every figure is of the caller's own program (the token's). Analysts, team leads and admins may
read; only team leads and admins may see the internal, unsuppressed view.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.reporting.answers import Question, QuestionError, answer, parse_breakdown
from services.reporting.exports import (
    export_name,
    metrics_table,
    quarterly_table,
    to_csv,
    to_xlsx,
)
from services.reporting.figures import Figures, View
from services.reporting.metrics import METRICS, METRICS_BY_ID
from services.reporting.programs import ProgramBook
from shared.auth import Principal
from shared.edge import EdgeRoute, guard
from shared.http import ApiError, ErrorResponse
from shared.runtime import Runtime

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["reporting"], route_class=EdgeRoute)

Reader = Annotated[Principal, Depends(guard("analyst", "team_lead", "admin"))]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 422)
}
INTERNAL_ROLES = ("team_lead", "admin")

CSV = "text/csv; charset=utf-8"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


class FastJSONResponse(JSONResponse):
    """The same bytes as JSONResponse (compact, UTF-8) from a compiled encoder: an answer by
    month and county is thousands of rows (ADR 0028)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class MetricDefinition(BaseModel):
    id: str
    version: int
    title: str
    definition: str = Field(description="A sentence a funder can read.")
    unit: Literal["count", "rate", "hours"]
    numerator: str | None = Field(description="Rates: what the numerator counts.")
    denominator: str | None = Field(description="Rates: what the denominator counts.")
    computation: str = Field(description="How it is computed.")


class Figure(BaseModel):
    metric: str
    version: int
    group: dict[str, str] = Field(description="The breakdowns' values; {} without `by`.")
    value: float | None = Field(
        description="The figure (a rate as a fraction); null where suppressed or not applicable."
    )
    numerator: int | None = Field(description="Rates; null for counts or where suppressed.")
    denominator: int | None = Field(
        description="Rates: the denominator; hours: how many values the median is of."
    )
    suppressed: bool
    unstable: bool = Field(description="A rate on 20 events or fewer (CDC WISQARS).")
    display: str = Field(description='What a published table prints, e.g. "<10".')


class MetricsAnswer(BaseModel):
    program: str
    from_: date = Field(alias="from")
    to: date
    by: list[str]
    view: Literal["published", "internal"] = Field(
        description="internal: unsuppressed, for the program's own use, not for publication."
    )
    as_of: datetime = Field(description="Follow-up windows not passed by then are left out.")
    rows: list[Figure]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _programs(request: Request) -> ProgramBook:
    programs: ProgramBook = request.app.state.programs
    return programs


def _question(principal: Principal, start: date, end: date, by: list[str], view: View) -> Question:
    if view == "internal" and principal.role not in INTERNAL_ROLES:
        raise ApiError(
            403,
            "internal_view_forbidden",
            "Only team leads and admins may see the internal (unsuppressed) view.",
        )
    try:
        return Question(principal.program, start, end, parse_breakdown(by), view)
    except QuestionError as error:
        raise ApiError(422, error.code, error.message) from None


async def _answer(request: Request, question: Question) -> Figures:
    runtime = _runtime(request)
    return await answer(runtime.sessions, _programs(request), question, as_of=runtime.clock.now())


From = Annotated[date, Query(alias="from", description="First incident date, program's clock.")]
To = Annotated[date, Query(description="Last incident date (included).")]
By = Annotated[
    list[str],
    Query(
        description="day, week, month, quarter, county, source, partner or referral_kind; "
        "one or two (at most one period), repeated or comma-separated."
    ),
]
ViewParam = Annotated[
    View, Query(description="internal: unsuppressed (team leads and admins only).")
]


@router.get(
    "/metrics/definitions",
    summary="Every metric: id, version, title, a definition a funder can read, unit",
    responses=ERRORS,
)
async def definitions(principal: Reader) -> list[MetricDefinition]:
    return [
        MetricDefinition(
            id=m.id,
            version=m.version,
            title=m.title,
            definition=m.definition,
            unit=m.unit,
            numerator=m.numerator_label,
            denominator=m.denominator_label,
            computation=m.computation,
        )
        for m in METRICS
    ]


@router.get(
    "/metrics",
    summary="The program's figures for a range of incident dates, optionally broken down",
    description="One row per metric (and group, with `by`). Small cells are suppressed "
    "(primary and complementary) unless a team lead or admin asks for `view=internal`.",
    response_model=MetricsAnswer,
    responses=ERRORS,
)
async def metrics(
    principal: Reader,
    request: Request,
    start: From,
    to: To,
    by: By = [],  # noqa: B006 - FastAPI copies query defaults
    view: ViewParam = "published",
) -> Response:
    figures = await _answer(request, _question(principal, start, to, by, view))
    body = {
        "program": figures.program_id,
        "from": figures.start.isoformat(),
        "to": figures.end.isoformat(),
        "by": list(figures.dims),
        "view": figures.view,
        "as_of": figures.as_of.isoformat(),
        "rows": figures.rows,
    }
    return FastJSONResponse(body)


def _download(content: bytes, media_type: str, filename: str) -> Response:
    return Response(
        content,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _quarter(value: str | None) -> tuple[date, date, str]:
    try:
        if value is None:
            raise ValueError
        year_text, quarter_text = value.upper().split("-Q")
        year, quarter = int(year_text), int(quarter_text)
        if not 1 <= quarter <= 4 or not 1900 <= year <= 9999:
            raise ValueError
    except ValueError:
        raise ApiError(
            422, "invalid_quarter", "Name the quarter as YYYY-Qn, for example 2025-Q1."
        ) from None
    start = date(year, 3 * quarter - 2, 1)
    following = date(year + 1, 1, 1) if quarter == 4 else date(year, 3 * quarter + 1, 1)
    return start, following - timedelta(days=1), f"{year}-Q{quarter}"


async def _export(
    request: Request,
    principal: Principal,
    name: str,
    extension: Literal["csv", "xlsx"],
    *,
    start: date | None,
    end: date | None,
    by: list[str],
    view: View,
    quarter: str | None,
) -> Response:
    media = CSV if extension == "csv" else XLSX
    if name == "metrics":
        if start is None or end is None:
            raise ApiError(422, "range_required", "Give `from` and `to` (incident dates).")
        figures = await _answer(request, _question(principal, start, end, by, view))
        header, rows = metrics_table(figures)
        period = f"{start.isoformat()}_{end.isoformat()}"
        if figures.dims:
            period += "_by-" + "-".join(figures.dims)
        sheet = "Figures"
        metrics_in = figures.metrics
    elif name == "quarterly":
        first, last, period = _quarter(quarter)
        figures = await _answer(request, _question(principal, first, last, [], view))
        by_kind = await _answer(request, _question(principal, first, last, ["referral_kind"], view))
        header, rows = quarterly_table(figures, by_kind)
        sheet = "Report"
        metrics_in = figures.metrics
        name = "funder-report"
    else:
        raise ApiError(404, "unknown_export", "The exports are metrics and quarterly.")
    filename = export_name(figures, name, period, extension)
    if extension == "csv":
        return _download(to_csv(header, rows), media, filename)
    content = to_xlsx(
        figures,
        sheet=sheet,
        header=header,
        rows=rows,
        metrics=[METRICS_BY_ID[m.id] for m in metrics_in],
        period=period.replace("_", " "),
    )
    return _download(content, media, filename)


ExportFrom = Annotated[
    date | None, Query(alias="from", description="metrics: the first incident date.")
]
ExportTo = Annotated[date | None, Query(description="metrics: the last incident date.")]
Quarter = Annotated[str | None, Query(description="quarterly: the quarter, as YYYY-Qn.")]
EXPORT_DESCRIPTION = (
    "`metrics`: any metrics question (`from`, `to`, `by`, `view`), one row per figure. "
    "`quarterly`: the funder report for a `quarter` (YYYY-Qn), laid out description | count "
    "| numerator | denominator | percent, referrals by kind at the end. Suppressed unless a "
    "team lead or admin asks for `view=internal` (then marked INTERNAL in name and content)."
)


@router.get(
    "/exports/{name}.csv",
    summary="An export as CSV",
    description=EXPORT_DESCRIPTION,
    responses={**ERRORS, 200: {"content": {"text/csv": {}}}},
    response_class=Response,
)
async def export_csv(
    name: str,
    principal: Reader,
    request: Request,
    start: ExportFrom = None,
    to: ExportTo = None,
    by: By = [],  # noqa: B006
    view: ViewParam = "published",
    quarter: Quarter = None,
) -> Response:
    return await _export(
        request, principal, name, "csv", start=start, end=to, by=by, view=view, quarter=quarter
    )


@router.get(
    "/exports/{name}.xlsx",
    summary="An export as XLSX, with a definitions sheet and a suppression note",
    description=EXPORT_DESCRIPTION,
    responses={**ERRORS, 200: {"content": {XLSX: {}}}},
    response_class=Response,
)
async def export_xlsx(
    name: str,
    principal: Reader,
    request: Request,
    start: ExportFrom = None,
    to: ExportTo = None,
    by: By = [],  # noqa: B006
    view: ViewParam = "published",
    quarter: Quarter = None,
) -> Response:
    return await _export(
        request, principal, name, "xlsx", start=start, end=to, by=by, view=view, quarter=quarter
    )
