"""What the scheduler prunes besides the plumbing: its audit log, only when
PORTLINE_AUDIT_PRUNE allows it and only through `portline prune --audit-log`
(see shared/retention.py)."""

from __future__ import annotations

from services.scheduler.models import AUDIT
from shared.retention import RetentionRule, audit_rule

__all__ = ["RULES"]

RULES: tuple[RetentionRule, ...] = (audit_rule(AUDIT),)
