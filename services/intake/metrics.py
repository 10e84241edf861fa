"""Intake's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["BATCH_SIZE", "INTAKE_MESSAGES", "INTAKE_REFUSED", "MLLP_CONNECTIONS"]

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
INTAKE_REFUSED = Counter(
    "portline_intake_refused_total",
    "Messages refused because their sender may not speak for the facility they name (or is "
    "not authenticated at all); nothing of them is stored",
    ["channel", "reason"],
)
