"""Reporting's Prometheus metrics for operators: open spike alerts, and each partner feed's
state (one series per program and partner organization, never anything about a person)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["FEED_QUIET", "FEED_REJECTS_RISING", "FEED_SILENT", "SPIKE_ALERTS", "SPIKE_SECONDS"]

SPIKE_ALERTS = Counter(
    "portline_reporting_spike_alerts_total",
    "SpikeDetected events published (raised, or a warning raised to an alert)",
    ["program", "detector", "level"],
)
SPIKE_SECONDS = Gauge(
    "portline_reporting_spike_detection_seconds",
    "How long the last timed detection pass over every county of a program took",
    ["program"],
    multiprocess_mode="livemax",
)
FEED_SILENT = Gauge(
    "portline_feed_silent",
    "1 while a partner's feed is silent (quiet far longer than its usual rate allows), else 0",
    ["program", "partner"],
    multiprocess_mode="livemax",
)
FEED_REJECTS_RISING = Gauge(
    "portline_feed_reject_spike",
    "1 while a partner's recent rejects are far beyond its usual share, else 0",
    ["program", "partner"],
    multiprocess_mode="livemax",
)
FEED_QUIET = Gauge(
    "portline_feed_quiet_seconds",
    "Seconds since a partner's last message (report or rejected)",
    ["program", "partner"],
    multiprocess_mode="livemax",
)
