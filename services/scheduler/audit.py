"""The scheduler's audit log: who read a person's data here (a case's timeline, the possible
matches), or decided a match, when and why; as outreach's audit log does for its records.

Entries are written in the same transaction as the read or change they record, and the log is
append-only: the database refuses UPDATE, DELETE and TRUNCATE on it (migration
scheduler_0008), and the services' database role may only INSERT and SELECT it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from services.scheduler.models import AUDIT
from shared.auth import Principal
from shared.clock import Clock
from shared.sealing import Sealer

__all__ = ["PURPOSE", "AuditAction", "Reader"]

PURPOSE = "scheduler.purpose"
"""Sealing context of the purpose a caller states (X-Purpose): free text, so it may name
the person."""
AuditAction = Literal["read", "update"]


@dataclass(frozen=True)
class Reader:
    """One request's caller and the purpose of what they do, as the audit log records it."""

    principal: Principal
    purpose: str
    """The operation's own purpose ("review a case's timeline"): fixed text, in the clear."""
    stated_purpose: str | None
    """What the caller said (X-Purpose): free text, stored sealed."""
    request_id: str | None
    sealer: Sealer
    clock: Clock

    @classmethod
    def of(cls, request: Request, principal: Principal, purpose: str) -> Reader:
        stated = (request.headers.get("x-purpose") or "").strip()[:200]
        return cls(
            principal=principal,
            purpose=purpose,
            stated_purpose=stated or None,
            request_id=request.headers.get("x-request-id", "")[:64] or None,
            sealer=request.app.state.sealer,
            clock=request.app.state.runtime.clock,
        )

    async def audit(
        self,
        session: AsyncSession,
        action: AuditAction,
        resource: str,
        targets: Sequence[tuple[object, uuid.UUID | None]],
        *,
        at: datetime | None = None,
    ) -> None:
        """Append an entry per (resource id, case id); they commit with the caller's work."""
        if not targets:
            return
        stated = (
            None
            if self.stated_purpose is None
            else self.sealer.seal(self.stated_purpose, context=PURPOSE)
        )
        now = at or self.clock.now()
        await session.execute(
            AUDIT.insert(),
            [
                {
                    "at": now,
                    "actor_id": self.principal.subject,
                    "role": self.principal.role,
                    "program_id": self.principal.program,
                    "action": action,
                    "resource": resource,
                    "resource_id": str(resource_id),
                    "case_id": case_id,
                    "purpose": self.purpose,
                    "purpose_sealed": stated,
                    "request_id": self.request_id,
                }
                for resource_id, case_id in targets
            ],
        )

    def stated(self, token: str | None) -> str | None:
        """An entry's stated purpose, opened."""
        return None if token is None else self.sealer.open(token, context=PURPOSE)
