"""The scheduler's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

__all__ = ["TIMERS_OVERDUE", "TIMER_LATENESS"]

TIMER_LATENESS = Histogram(
    "portline_scheduler_timer_lateness_seconds",
    "How long after its due time each timer fired (a task's due, overdue and expiry)",
    buckets=(1, 5, 15, 30, 60, 120, 300, 900, 3600, 14400),
)
TIMERS_OVERDUE = Gauge(
    "portline_scheduler_oldest_due_timer_seconds",
    "How long the oldest timer a runner pass found due had been waiting (0 when none was)",
    multiprocess_mode="livemax",
)
