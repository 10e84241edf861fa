"""How every outreach request reaches a person's record: scoped to the caller's program,
written to the audit log, and guarded by versions (ETag / If-Match).

A record in another program is "not found" (404), never "forbidden": the API does not say
whether another program's person exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, cast

import sqlalchemy as sa
from fastapi import Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from services.outreach.models import AUDIT, CASE, TASK, TEAM_MEMBER, VISIT
from services.outreach.rules import CaseState, RuleViolation, TaskState
from shared.auth import Principal
from shared.http import ApiError
from shared.runtime import Runtime
from shared.sealing import Sealer

__all__ = [
    "PURPOSE",
    "Access",
    "V",
    "apply_rule",
    "case_state",
    "etag",
    "not_found",
    "require_match",
    "rowcount",
    "set_etag",
    "tagged",
    "task_state",
]

T = TypeVar("T")
PURPOSE = "outreach.purpose"
"""Sealing context of the purpose a caller states (X-Purpose): free text, so it may name
the person."""
AuditAction = Literal["read", "create", "update"]


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"No such {what} in your program.")


def apply_rule(check: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a rule from services.outreach.rules; a violation becomes an API error."""
    try:
        return check(*args, **kwargs)
    except RuleViolation as exc:
        raise ApiError(exc.status, exc.code, exc.message, details=exc.details) from None


def etag(version: int) -> str:
    return f'"{version}"'


def rowcount(result: Any) -> int:
    return int(cast(sa.CursorResult[Any], result).rowcount)


@dataclass(frozen=True)
class Access:
    """One request's view of the store: who asks, why, and with which keys."""

    principal: Principal
    runtime: Runtime
    sealer: Sealer
    purpose: str
    """The operation's own purpose ("log an attempt"): fixed text, stored in the clear."""
    stated_purpose: str | None
    """What the caller said (X-Purpose): free text, stored sealed."""
    request_id: str | None

    @classmethod
    def of(cls, request: Request, principal: Principal, default_purpose: str) -> Access:
        stated = (request.headers.get("x-purpose") or "").strip()[:200]
        return cls(
            principal=principal,
            runtime=request.app.state.runtime,
            sealer=request.app.state.sealer,
            purpose=default_purpose,
            stated_purpose=stated or None,
            request_id=request.headers.get("x-request-id", "")[:64] or None,
        )

    @property
    def actor(self) -> str:
        return self.principal.subject

    @property
    def program(self) -> str:
        return self.principal.program

    @property
    def is_lead(self) -> bool:
        return self.principal.role == "team_lead"

    async def audit(
        self,
        session: AsyncSession,
        action: AuditAction,
        resource: str,
        targets: list[tuple[object | None, uuid.UUID | None]],
    ) -> None:
        """Append audit entries (resource id, case id); they commit with the unit of work."""
        if not targets:
            return
        now = self.runtime.clock.now()
        stated = self.seal(self.stated_purpose, PURPOSE)
        await session.execute(
            AUDIT.insert(),
            [
                {
                    "at": now,
                    "actor_id": self.actor,
                    "role": self.principal.role,
                    "program_id": self.program,
                    "action": action,
                    "resource": resource,
                    "resource_id": None if rid is None else str(rid),
                    "case_id": case_id,
                    "purpose": self.purpose,
                    "purpose_sealed": stated,
                    "request_id": self.request_id,
                }
                for rid, case_id in targets
            ],
        )

    def seal(self, text: str | None, context: str) -> str | None:
        return None if text is None else self.sealer.seal(text, context=context)

    def open(self, token: str | None, context: str) -> str | None:
        return None if token is None else self.sealer.open(token, context=context)

    async def case(self, session: AsyncSession, case_id: uuid.UUID) -> Any:
        row = (
            await session.execute(
                sa.select(CASE).where(CASE.c.id == case_id, CASE.c.program_id == self.program)
            )
        ).first()
        if row is None:
            raise not_found("case")
        return row

    async def task(self, session: AsyncSession, task_id: uuid.UUID) -> Any:
        row = (
            await session.execute(
                sa.select(TASK).where(TASK.c.id == task_id, TASK.c.program_id == self.program)
            )
        ).first()
        if row is None:
            raise not_found("task")
        return row

    async def member(self, session: AsyncSession, member_id: str) -> None:
        """Refuse anyone who is not an active member of the caller's team."""
        active = (
            await session.execute(
                sa.select(TEAM_MEMBER.c.active).where(
                    TEAM_MEMBER.c.id == member_id, TEAM_MEMBER.c.program_id == self.program
                )
            )
        ).scalar_one_or_none()
        if not active:
            raise ApiError(
                422, "unknown_team_member", f"{member_id!r} is not an active member of your team."
            )

    async def visit(self, session: AsyncSession, visit_id: uuid.UUID) -> Any:
        row = (
            await session.execute(
                sa.select(VISIT).where(VISIT.c.id == visit_id, VISIT.c.program_id == self.program)
            )
        ).first()
        if row is None:
            raise not_found("visit")
        return row


def case_state(row: Any) -> CaseState:
    return CaseState(status=row.status, do_not_contact=row.do_not_contact, declined=row.declined)


def task_state(row: Any) -> TaskState:
    return TaskState(
        status=row.status,
        kind=row.kind,
        assignee_id=row.assignee_id,
        expires_at=row.expires_at,
        deputy=row.deputy,
    )


def require_match(header: str | None, version: int) -> None:
    """Edits of shared records need If-Match with the version last read (`header`). `If-Match:
    *` is refused: it would overwrite whatever is there, which is what If-Match is here to stop."""
    if header is None:
        raise ApiError(
            428,
            "precondition_required",
            "Send If-Match with the ETag you last read, so nobody's change is overwritten.",
        )
    wanted = {v.strip().removeprefix("W/").strip('"') for v in header.split(",")}
    if "*" in wanted:
        raise ApiError(
            428,
            "etag_required",
            "If-Match: * would overwrite whatever is there; send the ETag you last read.",
        )
    if str(version) not in wanted:
        raise ApiError(
            412,
            "version_mismatch",
            "Someone changed this record since you read it; read it again and retry.",
            details=[{"current_etag": etag(version)}],
            headers={"ETag": etag(version)},
        )


def set_etag(response: Response, version: int) -> None:
    response.headers["ETag"] = etag(version)


V = TypeVar("V", bound="_Versioned")


class _Versioned(Protocol):
    version: int


def tagged(response: Response, view: V) -> V:
    """The view, with its version as the response's ETag."""
    set_etag(response, view.version)
    return view
