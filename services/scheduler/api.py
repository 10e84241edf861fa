"""The scheduler's HTTP API for team leads: the policy in force, a case's timeline, the
uncertain person matches waiting for a decision (confirming one merges two people: the
handlers do it, and publish PersonsMerged), and the audit log of who read them.

Every role, admins included, sees only its own program: another program's records are "not
found" (404), never "forbidden". Every read of a person's data, and every match decision, is
written to the scheduler's append-only audit log (services.scheduler.audit)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from services.scheduler.audit import Reader
from services.scheduler.handlers import (
    MatchDecidedError,
    MatchDecision,
    MatchNotFoundError,
    PolicyBook,
    Scheduler,
)
from services.scheduler.models import AUDIT, CASE, EPISODE, POSSIBLE_MATCH, REPORT_LINK, TASK
from services.scheduler.timers import TIMER
from shared.auth import Principal
from shared.edge import Cursor, EdgeRoute, Instant, Page, PageQuery, guard, keyset_page
from shared.http import ApiError, ErrorResponse
from shared.runtime import Runtime

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["scheduler"], route_class=EdgeRoute)

Lead = Annotated[Principal, Depends(guard("team_lead", "admin"))]
Anyone = Annotated[Principal, Depends(guard())]
Admin = Annotated[Principal, Depends(guard("admin"))]
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}
MATCH_CURSOR: Cursor[tuple[datetime, uuid.UUID]] = Cursor(tuple[Instant, uuid.UUID])
"""The possible matches' sort key of a page's last match: created_at, id."""
AUDIT_CURSOR: Cursor[tuple[int]] = Cursor(tuple[Annotated[int, Field(gt=-(2**63), le=-1)]])
"""The audit log's position of a page's last entry, negated (newest first)."""


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
    kind: Literal["case", "report", "episode", "task", "timer"] = Field(
        description="case: the case opened, or closed (with the reason: a lead's conclusion, "
        "or a duplicate after two people were merged)."
    )
    id: str
    detail: dict[str, Any]


class Timeline(BaseModel):
    case_id: uuid.UUID
    status: str
    close_reason: str | None = Field(
        default=None, description="Why the case closed (a conclusion's reason), once it has."
    )
    priority: int
    items: list[TimelineItem] = Field(
        description="Every report, episode, task and timer, in order."
    )


@router.get(
    "/cases/{case_id}/timeline",
    summary="Why is this due now: the case's opening and closing, and every report, episode, "
    "task and timer of it, in order",
    description="Audited: the read is written to the audit log (send `X-Purpose` to say why).",
    responses={**ERRORS, 503: {"model": ErrorResponse}},
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
        items = [
            TimelineItem(
                at=case.opened_at, kind="case", id=str(case.id), detail={"event": "opened"}
            )
        ]
        if case.closed_at is not None:
            closed = {"event": "closed", "reason": case.close_reason}
            items.append(
                TimelineItem(at=case.closed_at, kind="case", id=str(case.id), detail=closed)
            )
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
    return Timeline(
        case_id=case.id,
        status=case.status,
        close_reason=case.close_reason,
        priority=case.priority,
        items=items,
    )


class PossibleMatchOut(BaseModel):
    id: uuid.UUID
    report_id: uuid.UUID
    person_id: uuid.UUID = Field(description="The person created for the report.")
    candidate_id: uuid.UUID = Field(description="The existing person it may be.")
    reasons: list[str]
    status: Literal["open", "confirmed", "split"]
    level: Literal["review", "flag"] = Field(
        default="review",
        description="review: the evidence is between the program's thresholds; flag: low "
        "priority, the reports look like one overdose (an EMS run and the ED visit at the "
        "hospital it transported to, or a run that transported without naming where and an "
        "ED visit within 3 hours after it, whatever the names) but little else agrees.",
    )
    weight: float | None = Field(
        default=None, description="The match weight in bits (docs/linking.md)."
    )
    explanation: dict[str, Any] | None = Field(
        default=None,
        description="Every piece of evidence with its level, weight in bits and reason, the "
        "doubts that kept it from an automatic link, and the thresholds in force; "
        "`unnamed_transport` when an EMS run transported the person without naming where and "
        "the ED visit began within 3 hours after it (flagged whatever the names). No "
        "identifying values. Kept with the decision.",
    )
    created_at: datetime


def _match_out(m: MatchDecision | Any, status: str | None = None) -> PossibleMatchOut:
    """A decided match (the handler's), or a stored row."""
    if isinstance(m, MatchDecision):
        reasons, explanation = m.reasons, m.explanation
    else:
        reasons = json.loads(m.reasons)
        explanation = json.loads(m.explanation) if m.explanation else None
    return PossibleMatchOut(
        id=m.id,
        report_id=m.report_id,
        person_id=m.person_id,
        candidate_id=m.candidate_id,
        reasons=reasons,
        status=status or m.status,
        level=m.level,
        weight=m.weight,
        explanation=explanation,
        created_at=m.created_at,
    )


@router.get(
    "/possible-matches",
    summary="Uncertain person matches, for a team lead to confirm or split (oldest first)",
    description="A page like every list (`{items, next_cursor}`); before this release the "
    "matches were a bare array. Each item carries the explanation of its match weight: every "
    "piece of evidence (names, date of birth, phone, the overdose itself, ...) with its weight "
    "and reason. A lead's confirm or split is kept with that explanation, so the weights can be "
    "re-estimated from the program's own decisions. Audited: the read is written to the audit "
    "log, one entry per match.",
    responses={**ERRORS, 503: {"model": ErrorResponse}},
)
async def list_possible_matches(
    principal: Lead,
    request: Request,
    page: Annotated[PageQuery, Query()],
    status: Literal["open", "confirmed", "split"] = "open",
) -> Page[PossibleMatchOut]:
    reader = Reader.of(request, principal, "review possible matches")
    query = sa.select(POSSIBLE_MATCH).where(
        POSSIBLE_MATCH.c.program_id == principal.program, POSSIBLE_MATCH.c.status == status
    )
    async with _runtime(request).sessions() as s:
        rows, next_cursor = await keyset_page(
            s,
            query,
            keys=[POSSIBLE_MATCH.c.created_at, POSSIBLE_MATCH.c.id],
            key_of=lambda m: (m.created_at, m.id),
            cursor=MATCH_CURSOR,
            page=page,
        )
        await reader.audit(s, "read", "possible_match", [(r.id, None) for r in rows])
        await s.commit()
    return Page[PossibleMatchOut](items=[_match_out(r) for r in rows], next_cursor=next_cursor)


@router.post(
    "/possible-matches/{match_id}/{decision}",
    summary="Confirm (the two are one person: merge) or split (two people: keep apart)",
    description="Confirming merges the report's person into the candidate: their cases become "
    "one (the other open case closes as a duplicate), and a do-not-contact request or a "
    "decline of either person holds for the one who stays. Published as `PersonsMerged`. "
    "Audited, as a change of the match.",
    responses={**ERRORS, 409: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def decide_possible_match(
    match_id: uuid.UUID,
    decision: Literal["confirm", "split"],
    principal: Lead,
    request: Request,
) -> PossibleMatchOut:
    scheduler: Scheduler = request.app.state.scheduler
    reader = Reader.of(request, principal, f"{decision} a possible match")
    async with _runtime(request).uow() as uow:
        try:
            decided = await scheduler.decide_match(
                uow, match_id=match_id, program_id=principal.program, confirm=decision == "confirm"
            )
        except MatchNotFoundError:
            raise ApiError(404, "not_found", "No such possible match in your program.") from None
        except MatchDecidedError as exc:
            raise ApiError(
                409, "already_decided", f"This match was already {exc.status}."
            ) from None
        await reader.audit(uow.session, "update", "possible_match", [(match_id, None)])
        await uow.commit()
    return _match_out(decided)


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


class AuditQuery(PageQuery):
    limit: int = Field(default=100, ge=1, le=500)
    actor_id: str | None = Field(default=None, max_length=128)
    case_id: uuid.UUID | None = None
    resource: Literal["case_timeline", "possible_match"] | None = None
    since: Instant | None = None
    until: Instant | None = None


@router.get(
    "/audit",
    summary="Who read or decided whose records here, when and why (admins; newest first)",
    description="Append-only: nobody can edit or delete an entry. Only the caller's program. "
    "A page like every list (`{items, next_cursor}`).",
    responses={503: {"model": ErrorResponse}},
)
async def read_audit(
    principal: Admin, request: Request, query: Annotated[AuditQuery, Query()]
) -> Page[AuditEntry]:
    reader = Reader.of(request, principal, "review the audit log")
    q = sa.select(AUDIT).where(AUDIT.c.program_id == principal.program)
    if query.actor_id:
        q = q.where(AUDIT.c.actor_id == query.actor_id)
    if query.case_id:
        q = q.where(AUDIT.c.case_id == query.case_id)
    if query.resource:
        q = q.where(AUDIT.c.resource == query.resource)
    if query.since:
        q = q.where(AUDIT.c.at >= query.since)
    if query.until:
        q = q.where(AUDIT.c.at < query.until)
    async with _runtime(request).sessions() as s:
        rows, next_cursor = await keyset_page(
            s,
            q,
            keys=[-AUDIT.c.id],
            key_of=lambda entry: (-entry.id,),
            cursor=AUDIT_CURSOR,
            page=query,
        )
    items = [
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
        for r in rows
    ]
    return Page[AuditEntry](items=items, next_cursor=next_cursor)
