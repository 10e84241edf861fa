"""Prometheus metrics that the plumbing records for every service."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["EVENTS_CONSUMED", "EVENTS_PUBLISHED", "HTTP_REQUESTS", "HTTP_SECONDS"]

EVENTS_PUBLISHED = Counter(
    "portline_outbox_published_total", "Events the outbox relay published", ["service", "topic"]
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
