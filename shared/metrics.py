"""Prometheus metrics that the plumbing records for every service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CONSUMER_LAG",
    "EVENTS_CONSUMED",
    "EVENTS_PUBLISHED",
    "HTTP_REQUESTS",
    "HTTP_SECONDS",
    "OUTBOX_OLDEST_UNPUBLISHED",
    "OUTBOX_PARKED",
    "OUTBOX_PARKED_ROWS",
    "READY",
]

EVENTS_PUBLISHED = Counter(
    "portline_outbox_published_total", "Events the outbox relay published", ["service", "topic"]
)
OUTBOX_PARKED = Counter(
    "portline_outbox_parked_total",
    "Outbox rows the relay parked because they can never be published as they are",
    ["service"],
)
OUTBOX_PARKED_ROWS = Gauge(
    "portline_outbox_parked_rows",
    "Outbox rows parked now, waiting for an operator to fix their cause and retry them",
    ["service"],
    multiprocess_mode="livemax",  # as below
)
OUTBOX_OLDEST_UNPUBLISHED = Gauge(
    "portline_outbox_oldest_unpublished_seconds",
    "Age of the oldest outbox row still to be published (parked rows excluded, rows held "
    "behind them included); 0 when none",
    ["service"],
    # With worker processes, only the one holding the publishing lock knows; the others
    # report 0, so the largest value of the live workers is the answer.
    multiprocess_mode="livemax",
)
EVENTS_CONSUMED = Counter(
    "portline_inbox_events_total",
    "Events a consumer handled, by outcome (applied, duplicate, dead_lettered)",
    ["service", "consumer", "outcome"],
)
HTTP_REQUESTS = Counter(
    "portline_http_requests_total", "HTTP requests served", ["service", "method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "portline_http_request_seconds", "HTTP request latency", ["service", "method", "route"]
)
CONSUMER_LAG = Gauge(
    "portline_consumer_lag_records",
    "Records of a partition not yet applied by this consumer (the broker's high watermark "
    "minus the consumer's committed offset), as of its last fetch",
    ["service", "consumer", "topic", "partition"],
    multiprocess_mode="livemax",
)
READY = Gauge(
    "portline_ready",
    "1 when the service's readiness check passes (what /readyz answers), 0 when it does not, "
    "by check (database, kafka, and the service's own)",
    ["service", "check"],
    multiprocess_mode="livemin",
)
