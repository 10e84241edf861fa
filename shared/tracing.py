"""OpenTelemetry tracing: one trace follows an overdose from the partner to the team's task.

The chain: intake's HTTP request or MLLP frame (a server span) → the outbox row (which keeps
the W3C ``traceparent`` of the span that published it) → the Kafka record (the relay sends it
as the ``traceparent`` header) → the consumer (a consumer span continuing that trace) → the
events it publishes in turn (their outbox rows carry the consumer span's context on).

Tracing is off unless ``PORTLINE_OTEL_EXPORTER_OTLP_ENDPOINT`` is set: then no span records and
no row or record carries a trace context. Spans are named after routes, topics and consumers,
and their attributes come from one allow-list (:data:`SAFE_ATTRIBUTES`): ids and names of the
plumbing, never a payload, a key or anything a partner sent (see docs/architecture.md).

A partner's own ``traceparent`` header is not continued: a trace id chosen outside the program
could tie its requests to a person's events; intake starts a new trace per request or frame.

Exceptions::

    ConfigurationError (shared.settings)   export asked for, but the OTLP exporter is missing
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.settings import ConfigurationError, Settings

__all__ = [
    "SAFE_ATTRIBUTES",
    "TRACEPARENT",
    "Context",
    "Span",
    "SpanKind",
    "configure",
    "context_from_headers",
    "context_from_traceparent",
    "current_traceparent",
    "enabled",
    "in_context",
    "provider_with",
    "set_attributes",
    "shutdown",
    "span",
    "start_span",
    "tracer",
    "use_context",
    "use_provider",
]

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
"""The W3C Trace Context header: the Kafka record header and the outbox column's name."""

SAFE_ATTRIBUTES = frozenset(
    {
        "http.request.method",
        "http.route",
        "http.response.status_code",
        "messaging.system",
        "messaging.operation.type",
        "messaging.destination.name",
        "messaging.destination.partition.id",
        "messaging.kafka.offset",
        "messaging.consumer.group.name",
        "messaging.message.id",
        "portline.service",
        "portline.channel",
        "portline.event_type",
        "portline.outcome",
        "portline.messages",
    }
)
"""The only span attributes PORTline sets: plumbing names, event ids (random UUIDs) and counts.
Kafka keys (derived from blind indexes), payloads, paths with ids and anything a partner sent
are not among them."""

_PROPAGATOR = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None


def tracer() -> Tracer:
    """PORTline's tracer: a recording one once :func:`configure` (or a test) set a provider,
    a non-recording one otherwise."""
    if _provider is None:
        return trace.NoOpTracer()
    return _provider.get_tracer("portline")


def enabled() -> bool:
    """Whether spans record in this process: a hot path (one MLLP frame) skips the span's
    set-up altogether when they do not."""
    return _provider is not None


def configure(settings: Settings, service: str) -> TracerProvider | None:
    """Export this process's spans over OTLP/HTTP when the settings ask for it; None (tracing
    off) otherwise. Call once at start-up; shut the provider down when the service stops."""
    global _provider
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return None
    if _provider is not None:  # several services in one process (tests): the first's
        return _provider
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigurationError(
            "PORTLINE_OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not "
            "installed: install portline[otlp] (the container image has it)"
        ) from exc
    provider = provider_with(
        OTLPSpanExporter(endpoint=endpoint), service=service, ratio=settings.otel_sample_ratio
    )
    _provider = provider
    log.info("tracing on: spans are exported over OTLP", extra={"service": service})
    return provider


def provider_with(
    exporter: SpanExporter, *, service: str, ratio: float = 1.0, batch: bool = True
) -> TracerProvider:
    """A provider that sends this service's spans to `exporter` (in batches, or each as it
    ends: tests). A trace is kept or dropped whole: `ratio` decides at its root (intake),
    and every later span follows its parent's decision, carried in the traceparent."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"portline-{service}"}),
        sampler=ParentBased(TraceIdRatioBased(ratio)),
    )
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return provider


def shutdown() -> None:
    """Send the spans still buffered and stop recording (the service is stopping)."""
    global _provider
    provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()


@contextlib.contextmanager
def use_provider(provider: TracerProvider | None) -> Iterator[None]:
    """Record spans with `provider` inside the block (tests: an in-memory exporter)."""
    global _provider
    before, _provider = _provider, provider
    try:
        yield
    finally:
        _provider = before


def _safe(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    if not attributes:
        return {}
    unknown = set(attributes) - SAFE_ATTRIBUTES
    if unknown:
        raise ValueError(f"span attributes not on the allow-list: {sorted(unknown)}")
    return {k: v for k, v in attributes.items() if v is not None}


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: Context | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """A span, current inside the block; `parent` None continues the current context.
    An exception leaving the block is recorded by its type only (its text may hold data)."""
    with tracer().start_as_current_span(
        name,
        context=parent,
        kind=kind,
        attributes=_safe(attributes),
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            if current.is_recording():
                current.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            raise


def start_span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: Context | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Span:
    """A span that is not made current; the caller ends it."""
    return tracer().start_span(name, context=parent, kind=kind, attributes=_safe(attributes))


def set_attributes(target: Span, attributes: Mapping[str, Any]) -> None:
    """Set allow-listed attributes on a span that is already running."""
    if target.is_recording():
        target.set_attributes(_safe(attributes))


@contextlib.contextmanager
def use_context(ctx: Context | None) -> Iterator[None]:
    """Make `ctx` current inside the block (nothing changes for None)."""
    if ctx is None:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, or None when nothing is being traced."""
    if _provider is None:
        # Tracing off: every span is the invalid one (NoOpTracer), so none has a traceparent.
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(TRACEPARENT)


def context_from_traceparent(traceparent: str | None) -> Context | None:
    """The context a stored traceparent continues; None for none (or an unreadable one)."""
    if not traceparent:
        return None
    ctx = _PROPAGATOR.extract({TRACEPARENT: traceparent})
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def context_from_headers(headers: Sequence[tuple[str, bytes]]) -> Context | None:
    """The context a Kafka record's ``traceparent`` header continues, or None."""
    for name, value in headers:
        if name == TRACEPARENT:
            try:
                return context_from_traceparent(value.decode("ascii"))
            except UnicodeDecodeError:
                return None
    return None


def in_context(ctx: Context, target: Span) -> Context:
    """`ctx` with `target` as its current span (the parent of what is published inside)."""
    return trace.set_span_in_context(target, ctx)
