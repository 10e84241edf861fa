"""The scheduler's HTTP API for team leads: the policy in force, a case's timeline, the
uncertain person matches waiting for a decision, and the audit log of who read them.

Every role, admins included, sees only its own program: another program's records are "not
found" (404), never "forbidden". Every read of a person's data, and every match decision, is
written to the scheduler's append-only audit log (services.scheduler.audit)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request
from pydantic import AwareDatetime, BaseModel, Field

from services.scheduler.audit import Reader
from services.scheduler.handlers import PolicyBook
from services.scheduler.models import (
    AUDIT,
    CASE,
    EPISODE,
    PERSON_KEY,
    POSSIBLE_MATCH,
    REPORT_LINK,
    TASK,
)
from services.scheduler.timers import TIMER
from shared.auth import Principal, require
from shared.http import ApiError, ErrorResponse
from shared.runtime import Runtime

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["scheduler"])

Lead = Annotated[Principal, Depends(require("team_lead", "admin"))]
Anyone = Annotated[Principal, Depends(require())]
Admin = Annotated[Principal, Depends(require("admin"))]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
}


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _policies(request: Request) -> PolicyBook:
    book: PolicyBook = request.app.state.policies
    return book


def _own_program(principal: Principal, program_id: str) -> None:
    """Another program's records do not exist for the caller, whatever their role: an admin
    administers their own program (its token names it), not every program."""
    if principal.program != program_id:
        raise ApiError(404, "not_found", "No such record in your program.")


@router.get(
    "/policy",
    summary="The outreach policy in force for the caller's program",
    description="Changes to a policy apply to tasks scheduled after the change, not "
    "retroactively; every task records the policy version that set its times. Only the "
    "caller's own program: another program is 404, for every role.",
    responses=ERRORS,
)
async def get_policy(
    principal: Anyone,
    request: Request,
    program: Annotated[
        str | None, Query(max_length=64, description="The caller's program (the default).")
    ] = None,
) -> dict[str, Any]:
    program_id = program or principal.program
    _own_program(principal, program_id)
    return _policies(request).for_program(program_id).describe()


def timing_note(episode: Any) -> str:
    """One sentence on what an episode's times count from, and why."""
    plan = json.loads(episode.plan_reasons)
    note = "Times count from the overdose."
    if "incident_time_after_receipt" in plan:
        note = (
            "The report gave an overdose time after its own receipt (a local time without its "
            "offset, or a skewed clock), so the receipt is taken as the overdose time."
        )
    if "too_old_for_outreach" in plan:
        return note + " It arrived too long after the overdose for outreach: counted, no task."
    received, start = episode.received_at, episode.windows_from
    if received is None or start is None or start == episode.incident_at:
        return note
    lag = received - episode.incident_at
    after = f"{lag.days} d {lag.seconds // 3600} h" if lag.days else f"{lag.seconds // 3600} h"
    if start == received:
        return (
            f"The report arrived {after} after the overdose, after its remote window would "
            "have closed, so its times count from its receipt (a late report)."
        )
    return (
        "The scheduler applied the report only after its windows would have closed, so its "
        "times count from when it was applied."
    )


class TimelineItem(BaseModel):
    at: datetime = Field(description="When this happened or is due.")
    kind: Literal["report", "episode", "task", "timer"]
    id: str
    detail: dict[str, Any]


class Timeline(BaseModel):
    case_id: uuid.UUID
    status: str
    priority: int
    items: list[TimelineItem] = Field(
        description="Every report, episode, task and timer, in order."
    )


@router.get(
    "/cases/{case_id}/timeline",
    summary="Why is this due now: every report, episode, task and timer of a case, in order",
    description="Audited: the read is written to the audit log (send `X-Purpose` to say why).",
    responses=ERRORS,
)
async def get_timeline(case_id: uuid.UUID, principal: Lead, request: Request) -> Timeline:
    runtime = _runtime(request)
    reader = Reader.of(request, principal, "review a case's timeline")
    async with runtime.sessions() as s:
        case = (
            await s.execute(
                sa.select(CASE).where(CASE.c.id == case_id, CASE.c.program_id == principal.program)
            )
        ).first()
        if case is None:
            raise ApiError(404, "not_found", "No such case in your program.")
        items: list[TimelineItem] = []
        episodes = list(await s.execute(sa.select(EPISODE).where(EPISODE.c.case_id == case_id)))
        for e in episodes:
            items.append(
                TimelineItem(
                    at=e.incident_at,
                    kind="episode",
                    id=str(e.id),
                    detail={
                        "sources": e.sources.split(","),
                        "repeat": e.repeat,
                        "consent": e.consent,
                        "plan": json.loads(e.plan_reasons),
                        "received_at": e.received_at.isoformat() if e.received_at else None,
                        "windows_from": (e.windows_from or e.incident_at).isoformat(),
                        "late": e.late,
                        "timing": timing_note(e),
                    },
                )
            )
        for r in await s.execute(
            sa.select(REPORT_LINK).where(REPORT_LINK.c.episode_id.in_([e.id for e in episodes]))
        ):
            items.append(
                TimelineItem(
                    at=r.linked_at,
                    kind="report",
                    id=str(r.report_id),
                    detail={
                        "episode_id": str(r.episode_id),
                        "source_kind": r.source_kind,
                        "revision": r.revision,
                        "match": r.match,
                    },
                )
            )
        tasks = list(await s.execute(sa.select(TASK).where(TASK.c.case_id == case_id)))
        for t in tasks:
            items.append(
                TimelineItem(
                    at=t.created_at,
                    kind="task",
                    id=str(t.id),
                    detail={
                        "task_kind": t.kind,
                        "status": t.status,
                        "priority": t.priority,
                        "window_opens_at": t.window_opens_at.isoformat(),
                        "due_at": t.due_at.isoformat(),
                        "expires_at": t.expires_at.isoformat(),
                        "failed_attempts": t.failed_attempts,
                        "outcome": t.outcome,
                        "policy_version": t.policy_version,
                        "late": t.late,
                    },
                )
            )
        for timer in await s.execute(
            sa.select(TIMER).where(TIMER.c.task_id.in_([t.id for t in tasks]))
        ):
            items.append(
                TimelineItem(
                    at=timer.due_at,
                    kind="timer",
                    id=timer.key,
                    detail={
                        "timer_kind": timer.kind,
                        "task_id": str(timer.task_id),
                        "fired_at": timer.fired_at.isoformat() if timer.fired_at else None,
                        "late": timer.late,
                        "cancelled": timer.cancelled_at is not None,
                    },
                )
            )
        await reader.audit(s, "read", "case_timeline", [(case.id, case.id)])
        await s.commit()
    items.sort(key=lambda i: (i.at, i.kind))
    return Timeline(case_id=case.id, status=case.status, priority=case.priority, items=items)


class PossibleMatchOut(BaseModel):
    id: uuid.UUID
    report_id: uuid.UUID
    person_id: uuid.UUID = Field(description="The person created for the report.")
    candidate_id: uuid.UUID = Field(description="The existing person it may be.")
    reasons: list[str]
    status: Literal["open", "confirmed", "split"]
    created_at: datetime


@router.get(
    "/possible-matches",
    summary="Uncertain person matches, for a team lead to confirm or split",
    description="Audited: the read is written to the audit log, one entry per match.",
    responses=ERRORS,
)
async def list_possible_matches(
    principal: Lead,
    request: Request,
    status: Literal["open", "confirmed", "split"] = "open",
) -> list[PossibleMatchOut]:
    reader = Reader.of(request, principal, "review possible matches")
    async with _runtime(request).sessions() as s:
        rows = list(
            await s.execute(
                sa.select(POSSIBLE_MATCH)
                .where(
                    POSSIBLE_MATCH.c.program_id == principal.program,
                    POSSIBLE_MATCH.c.status == status,
                )
                .order_by(POSSIBLE_MATCH.c.created_at)
            )
        )
        await reader.audit(s, "read", "possible_match", [(r.id, None) for r in rows])
        await s.commit()
        return [
            PossibleMatchOut(
                id=r.id,
                report_id=r.report_id,
                person_id=r.person_id,
                candidate_id=r.candidate_id,
                reasons=json.loads(r.reasons),
                status=r.status,
                created_at=r.created_at,
            )
            for r in rows
        ]


@router.post(
    "/possible-matches/{match_id}/{decision}",
    summary="Confirm (the two are one person: merge) or split (two people: keep apart)",
    description="Audited, as a change of the match.",
    responses={**ERRORS, 409: {"model": ErrorResponse}},
)
async def decide_possible_match(
    match_id: uuid.UUID,
    decision: Literal["confirm", "split"],
    principal: Lead,
    request: Request,
) -> PossibleMatchOut:
    runtime = _runtime(request)
    reader = Reader.of(request, principal, f"{decision} a possible match")
    async with runtime.uow() as uow:
        s = uow.session
        row = (
            await s.execute(sa.select(POSSIBLE_MATCH).where(POSSIBLE_MATCH.c.id == match_id))
        ).first()
        if row is None or row.program_id != principal.program:
            raise ApiError(404, "not_found", "No such possible match in your program.")
        if row.status != "open":
            raise ApiError(409, "already_decided", f"This match was already {row.status}.")
        now = uow.clock.now()
        status = "confirmed" if decision == "confirm" else "split"
        if decision == "confirm":
            # One person: the candidate keeps the identity keys; the report's cases move to it.
            keys = await s.execute(
                sa.select(PERSON_KEY).where(PERSON_KEY.c.person_id == row.person_id)
            )
            have = {
                (k.kind, k.value)
                for k in await s.execute(
                    sa.select(PERSON_KEY).where(PERSON_KEY.c.person_id == row.candidate_id)
                )
            }
            for k in keys:
                if (k.kind, k.value) not in have:
                    await s.execute(
                        PERSON_KEY.insert().values(
                            person_id=row.candidate_id, kind=k.kind, value=k.value
                        )
                    )
            await s.execute(PERSON_KEY.delete().where(PERSON_KEY.c.person_id == row.person_id))
            await s.execute(
                CASE.update()
                .where(CASE.c.person_id == row.person_id)
                .values(person_id=row.candidate_id)
            )
            await s.execute(
                EPISODE.update()
                .where(EPISODE.c.person_id == row.person_id)
                .values(person_id=row.candidate_id)
            )
        await s.execute(
            POSSIBLE_MATCH.update()
            .where(POSSIBLE_MATCH.c.id == match_id)
            .values(status=status, resolved_at=now)
        )
        await reader.audit(s, "update", "possible_match", [(match_id, None)], at=now)
        await uow.commit()
    return PossibleMatchOut(
        id=row.id,
        report_id=row.report_id,
        person_id=row.person_id,
        candidate_id=row.candidate_id,
        reasons=json.loads(row.reasons),
        status=status,
        created_at=row.created_at,
    )


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor_id: str
    role: str
    action: Literal["read", "update"]
    resource: Literal["case_timeline", "possible_match"]
    resource_id: str | None
    case_id: uuid.UUID | None
    purpose: str = Field(description="What the caller stated (X-Purpose), else the operation's.")


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )


@router.get(
    "/audit",
    summary="Who read or decided whose records here, when and why (admins; newest first)",
    description="Append-only: nobody can edit or delete an entry. Only the caller's program.",
    responses={**ERRORS, 400: {"model": ErrorResponse}},
)
async def read_audit(
    principal: Admin,
    request: Request,
    actor_id: Annotated[str | None, Query(max_length=128)] = None,
    case_id: uuid.UUID | None = None,
    resource: Literal["case_timeline", "possible_match"] | None = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> AuditPage:
    reader = Reader.of(request, principal, "review the audit log")
    query = sa.select(AUDIT).where(AUDIT.c.program_id == principal.program)
    if actor_id:
        query = query.where(AUDIT.c.actor_id == actor_id)
    if case_id:
        query = query.where(AUDIT.c.case_id == case_id)
    if resource:
        query = query.where(AUDIT.c.resource == resource)
    if since:
        query = query.where(AUDIT.c.at >= since)
    if until:
        query = query.where(AUDIT.c.at < until)
    if cursor:
        if not re.fullmatch(r"[0-9]{1,18}", cursor):
            raise ApiError(400, "invalid_cursor", "The cursor is not one this API gave out.")
        query = query.where(AUDIT.c.id < int(cursor))
    query = query.order_by(AUDIT.c.id.desc()).limit(limit + 1)
    async with _runtime(request).sessions() as s:
        rows = list(await s.execute(query))
    page = rows[:limit]
    return AuditPage(
        items=[
            AuditEntry(
                id=r.id,
                at=r.at,
                actor_id=r.actor_id,
                role=r.role,
                action=r.action,
                resource=r.resource,
                resource_id=r.resource_id,
                case_id=r.case_id,
                purpose=reader.stated(r.purpose_sealed) or r.purpose,
            )
            for r in page
        ],
        next_cursor=str(page[-1].id) if len(rows) > limit else None,
    )
