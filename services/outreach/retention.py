"""What outreach prunes besides the plumbing: its audit log, only when PORTLINE_AUDIT_PRUNE
allows it and only through `portline prune --audit-log` (see shared/retention.py)."""

from __future__ import annotations

from services.outreach.models import AUDIT
from shared.retention import RetentionRule

__all__ = ["RULES"]

RULES: tuple[RetentionRule, ...] = (
    RetentionRule(
        "audit_log",
        AUDIT,
        "at",
        lambda s: s.audit_retention_days,
        "PORTLINE_AUDIT_RETENTION_DAYS",
        append_only=True,
    ),
)
