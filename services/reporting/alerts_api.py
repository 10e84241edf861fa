"""The alerts and feeds API: the program's spike alerts (`GET /v1/alerts`), a lead's
acknowledgement or dismissal of one, with a note, and each partner feed's health
(`GET /v1/feeds`).

Analysts, team leads and admins read; only team leads and admins decide, and only they see
the notes. The routes call `alerts.list_alerts`, `alerts.decide` and `feeds.feed_health`,
which a dashboard panel can call the same way.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from services.reporting.alerts import (
    AlertDecided,
    AlertNotFound,
    AlertStatus,
    AlertView,
    Decision,
    decide,
    list_alerts,
)
from services.reporting.feeds import FeedHealth, FeedState, feed_health
from services.reporting.programs import ProgramBook
from services.reporting.watch import Watch
from shared.auth import Principal
from shared.edge import DateTimeText, EdgeRoute, guard
from shared.http import ApiError, ErrorResponse
from shared.runtime import Runtime
from shared.sealing import Sealer

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["alerts"], route_class=EdgeRoute)

Reader = Annotated[Principal, Depends(guard("analyst", "team_lead", "admin"))]
Lead = Annotated[Principal, Depends(guard("team_lead", "admin"))]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422)
}
NOTE_ROLES = ("team_lead", "admin")


class Alert(BaseModel):
    alert_id: uuid.UUID
    county: str
    state: str | None
    detector: Literal["ewma", "odmap"] = Field(
        description="ewma: NSSP-ESSENCE's EWMA on overdoses per day; odmap: N in 24 hours."
    )
    level: Literal["warning", "alert"]
    status: Literal["open", "acknowledged", "dismissed"]
    window_start: datetime = Field(description="EWMA: the local day's start; ODMAP: the first.")
    window_end: datetime = Field(description="EWMA: the next day's start; ODMAP: the last.")
    observed: float = Field(description="Overdoses in the window.")
    expected: float | None = Field(description="EWMA: the baseline's mean per day.")
    p_value: float | None = Field(description="EWMA only.")
    threshold: int | None = Field(description="ODMAP only: the N of N in 24 hours.")
    detected_at: datetime
    updated_at: datetime
    decided_at: datetime | None
    decided_by: str | None = Field(description="The lead's token subject.")
    note: str | None = Field(description="The lead's note: team leads and admins only.")

    @classmethod
    def of(cls, view: AlertView) -> Alert:
        return cls.model_validate(view, from_attributes=True)


class AlertsAnswer(BaseModel):
    program: str
    alerts: list[Alert]


class DecisionBody(BaseModel):
    model_config = {"extra": "forbid"}

    note: str | None = Field(
        default=None,
        max_length=2000,
        description="Why, in the lead's words. Stored sealed; never published.",
    )


class Feed(BaseModel):
    source_org: str = Field(description="The partner organization.")
    source_kind: str
    state: FeedState = Field(
        description="ok; silent (quiet far longer than usual); rejects_rising; learning "
        "(seen for less than a week: nothing raised yet)."
    )
    since: datetime | None = Field(description="When the current alert was raised.")
    first_message_at: datetime
    last_message_at: datetime
    last_report_at: datetime | None
    last_rejected_at: datetime | None
    usual_per_hour: float = Field(description="Its usual messages per hour at this hour of week.")
    quiet_hours: float = Field(description="Hours since its last message.")
    expected_since_last: float = Field(description="Messages usual since its last one.")
    recent_messages: int = Field(description="Messages in the reject window (1 h).")
    recent_rejected: int
    usual_reject_share: float

    @classmethod
    def of(cls, health: FeedHealth) -> Feed:
        return cls.model_validate(health, from_attributes=True)


class FeedsAnswer(BaseModel):
    program: str
    as_of: datetime
    feeds: list[Feed]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _sealer(request: Request) -> Sealer:
    sealer: Sealer = request.app.state.sealer
    return sealer


@router.get(
    "/alerts",
    summary="The program's spike alerts, newest first",
    description="Each alert: county, detector, observed, expected, level, window, status. "
    "Team leads and admins also see the notes on decided alerts.",
    response_model=AlertsAnswer,
    responses=ERRORS,
)
async def alerts(
    principal: Reader,
    request: Request,
    status: Annotated[AlertStatus | None, Query(description="Only alerts in this state.")] = None,
    since: Annotated[
        DateTimeText | None, Query(description="Only alerts detected since (ISO 8601 with offset).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> AlertsAnswer:
    if since is not None and since.tzinfo is None:
        raise ApiError(422, "naive_datetime", "Give `since` with its offset, e.g. ...T00:00Z.")
    sealer = _sealer(request) if principal.role in NOTE_ROLES else None
    async with _runtime(request).sessions() as session:
        views = await list_alerts(
            session, principal.program, status=status, since=since, limit=limit, sealer=sealer
        )
    return AlertsAnswer(program=principal.program, alerts=[Alert.of(v) for v in views])


async def _decide(
    request: Request,
    principal: Principal,
    alert_id: uuid.UUID,
    decision: Decision,
    body: DecisionBody | None,
) -> Alert:
    runtime = _runtime(request)
    note = (body.note or "").strip() or None if body is not None else None
    async with runtime.uow() as uow:
        try:
            await decide(
                uow.session,
                principal.program,
                alert_id,
                decision=decision,
                by=principal.subject,
                at=runtime.clock.now(),
                note=note,
                sealer=_sealer(request),
            )
        except AlertNotFound as error:
            raise ApiError(404, "alert_not_found", str(error)) from None
        except AlertDecided as error:
            raise ApiError(409, "alert_decided", str(error)) from None
        await uow.commit()
    async with runtime.sessions() as session:
        (view,) = await list_alerts(
            session, principal.program, alert_id=alert_id, sealer=_sealer(request)
        )
    return Alert.of(view)


@router.post(
    "/alerts/{alert_id}/acknowledge",
    summary="A lead acknowledges an open alert: the team is on it",
    response_model=Alert,
    responses=ERRORS,
)
async def acknowledge(
    alert_id: uuid.UUID, principal: Lead, request: Request, body: DecisionBody | None = None
) -> Alert:
    return await _decide(request, principal, alert_id, "acknowledged", body)


@router.post(
    "/alerts/{alert_id}/dismiss",
    summary="A lead dismisses an open alert: not a real spike",
    response_model=Alert,
    responses=ERRORS,
)
async def dismiss(
    alert_id: uuid.UUID, principal: Lead, request: Request, body: DecisionBody | None = None
) -> Alert:
    return await _decide(request, principal, alert_id, "dismissed", body)


@router.get(
    "/feeds",
    summary="Each partner's feed: last message, usual rate, state",
    response_model=FeedsAnswer,
    responses=ERRORS,
)
async def feeds(principal: Reader, request: Request) -> FeedsAnswer:
    runtime = _runtime(request)
    programs: ProgramBook = request.app.state.programs
    watch: Watch = request.app.state.watch
    now = runtime.clock.now()
    async with runtime.sessions() as session:
        health = await feed_health(
            session, programs.for_program(principal.program), watch.feeds, now
        )
    return FeedsAnswer(program=principal.program, as_of=now, feeds=[Feed.of(h) for h in health])
