"""Intake's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["BATCH_SIZE", "INTAKE_MESSAGES", "MLLP_CONNECTIONS"]

INTAKE_MESSAGES = Counter(
    "portline_intake_messages_total",
    "Messages and run reports received, by feed and outcome",
    ["feed", "outcome"],
)
BATCH_SIZE = Histogram(
    "portline_intake_batch_size",
    "Messages per group-commit batch (stored by one or two commits: routine, and the rest)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
MLLP_CONNECTIONS = Counter(
    "portline_intake_mllp_connections_total", "MLLP connections accepted or refused", ["outcome"]
)
