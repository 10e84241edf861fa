"""What intake prunes besides the plumbing: Idempotency-Key records, and the sealed raw text of
rejected messages once their replay window is over (see shared/retention.py)."""

from __future__ import annotations

from services.intake.models import IDEMPOTENCY, INBOUND, InboundStatus
from shared.retention import RetentionRule

__all__ = ["RULES"]

RULES: tuple[RetentionRule, ...] = (
    RetentionRule(
        "idempotency_keys",
        IDEMPOTENCY,
        "created_at",
        lambda s: s.retention_idempotency_days,
        "PORTLINE_RETENTION_IDEMPOTENCY_DAYS",
    ),
    RetentionRule(
        "rejected_raw",
        INBOUND,
        "received_at",
        lambda s: s.retention_rejected_days,
        "PORTLINE_RETENTION_REJECTED_DAYS",
        # Replayed ones too: their raw text was kept for the same window.
        when=lambda t: t.c.status.in_([InboundStatus.REJECTED.value, InboundStatus.REPLAYED.value]),
        action="clear",
        column="raw_sealed",
    ),
)
