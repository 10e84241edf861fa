"""The audit log: who read or changed whose record (admins read it; nobody edits it)."""

from __future__ import annotations

from services.outreach.deps import ADMINS, CurrentAccess, Operations, Uow
from services.outreach.schemas import AuditEntry, AuditFilter, Page
from services.outreach.service import team

__all__ = ["api"]

api = Operations("/v1", "audit")


@api.get("/audit", ADMINS, "review the audit log")
async def read_audit(query: AuditFilter, access: CurrentAccess, uow: Uow) -> Page[AuditEntry]:
    """Who read or changed whose record, when and why (admins; newest first)

    Append-only: nobody can edit or delete an entry.
    """
    return await team.read_audit(uow=uow, access=access, query=query)
