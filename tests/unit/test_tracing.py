"""Tracing: one overdose is one trace, from intake's request or MLLP frame through the outbox,
the Kafka headers and the scheduler to outreach's task projection; and no span says anything
about the person.

The services run in process on SQLite files; the relays publish into an in-memory publisher
whose messages (with their headers) are handed to the next service's inbox, as Kafka would.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.intake.mllp import frame
from services.outreach.models import TASK
from services.outreach.projection import on_case_event
from services.scheduler.handlers import PolicyBook, Scheduler
from shared import tracing
from shared.bus import InMemoryPublisher
from shared.clock import SystemClock
from shared.db import create_engine, session_factory
from shared.envelope import Envelope
from shared.events import InboundRejected
from shared.inbox import InboxProcessor, IncomingMessage, Outcome
from shared.migrations import upgrade
from shared.outbox import OUTBOX, OutboxRelay, OutgoingMessage
from shared.outbox_rows import outbox_row
from shared.sealing import load_keys
from shared.settings import ConfigurationError, Settings
from shared.topics import INTAKE_OVERDOSES, SCHEDULER_CASES
from shared.uow import UnitOfWork
from tests.hl7_builder import adt
from tests.unit.test_intake_api import Intake, running_intake

PEOPLE = [
    {"family": "Quintanilla", "given": "Marisol", "dob": "19870312", "phone": "3365550177"},
    {"family": "Abernathy", "given": "Thaddeus", "dob": "19790704", "phone": "3365550188"},
]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = tracing.provider_with(exporter, service="test", batch=False)
    with tracing.use_provider(provider):
        yield exporter
    provider.shutdown()


def _admit() -> str:
    return (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y%m%d%H%M+0000")


def _message(person: dict[str, str], n: int) -> str:
    return adt(
        f"TRACE{n}",
        visit=f"VT{n}",
        family=person["family"],
        given=person["given"],
        dob=person["dob"],
        phone=f"^PRN^PH^^^{person['phone'][:3]}^{person['phone'][3:]}",
        mrn=f"MRT{n}",
        admit=_admit(),
    )


async def _relay(sessions: Any) -> list[OutgoingMessage]:
    """Publish a service's outbox as its relay would; the messages with their headers."""
    publisher = InMemoryPublisher()
    relay = OutboxRelay(sessions, publisher, clock=SystemClock(), service="test")
    while await relay.run_once():
        pass
    return publisher.sent


def _incoming(messages: Sequence[OutgoingMessage], topic: str) -> list[IncomingMessage]:
    return [
        IncomingMessage(topic, 0, offset, m.key, m.value, m.headers)
        for offset, m in enumerate(m for m in messages if m.topic == topic)
    ]


class _Service:
    """One service's database and inbox, on SQLite in `path`."""

    def __init__(self, path: Path, service: str) -> None:
        self.engine = create_engine(f"sqlite+aiosqlite:///{path}/{service}.db", service=service)
        self.sessions = session_factory(self.engine)
        self.service = service

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self.sessions, clock=SystemClock(), source=f"/portline/{self.service}")


async def _chain(tmp_path: Path, intake: Intake, *, batch: bool) -> dict[str, Any]:
    """Relay intake's outbox to the scheduler, the scheduler's to outreach."""
    settings = Settings(env="development", var_dir=tmp_path)
    sealer, _ = load_keys(settings)
    scheduler = _Service(tmp_path, "scheduler")
    outreach = _Service(tmp_path, "outreach")
    try:
        await upgrade(scheduler.engine, service="scheduler")
        await upgrade(outreach.engine, service="outreach")
        from_intake = await _relay(intake.app.state.runtime.sessions)
        s = Scheduler(sealer=sealer, policies=PolicyBook())
        inbox = InboxProcessor(
            "scheduler.overdoses", scheduler.uow, s.on_overdose, batch_handler=s.on_overdoses
        )
        reports = _incoming(from_intake, INTAKE_OVERDOSES.name)
        if batch:
            assert await inbox.process_batch(reports) == [Outcome.APPLIED] * len(reports)
        else:
            assert [await inbox.process(m) for m in reports] == [Outcome.APPLIED] * len(reports)
        from_scheduler = await _relay(scheduler.sessions)
        cases = InboxProcessor("outreach.cases", outreach.uow, on_case_event)
        for m in _incoming(from_scheduler, SCHEDULER_CASES.name):
            assert await cases.process(m) == Outcome.APPLIED
        async with outreach.sessions() as session:
            tasks = (await session.execute(sa.select(sa.func.count()).select_from(TASK))).scalar()
        return {"intake": from_intake, "scheduler": from_scheduler, "tasks": tasks}
    finally:
        await scheduler.engine.dispose()
        await outreach.engine.dispose()


def _by_trace(spans: Sequence[ReadableSpan]) -> dict[int, list[ReadableSpan]]:
    traces: dict[int, list[ReadableSpan]] = {}
    for s in spans:
        assert s.context is not None
        traces.setdefault(s.context.trace_id, []).append(s)
    return traces


def _event_type(message: OutgoingMessage) -> str:
    return str(json.loads(message.value)["type"])


def _traceparent(message: OutgoingMessage) -> str | None:
    return dict(message.headers).get(tracing.TRACEPARENT, b"").decode() or None


def _assert_no_phi(spans: Sequence[ReadableSpan]) -> None:
    """No span name, attribute or event holds anything of the people reported."""
    phi = {v for p in PEOPLE for v in p.values()} | {"MRT0", "MRT1", "VT0", "VT1"}
    for s in spans:
        texts = [s.name, *(str(v) for v in (s.attributes or {}).values())]
        texts += [str(k) for k in (s.attributes or {})]
        texts += [e.name for e in s.events] + [str(v) for e in s.events for v in e.attributes]
        assert not [t for t in texts for value in phi if value in t], s.name
        assert set(s.attributes or {}) <= tracing.SAFE_ATTRIBUTES


@pytest.mark.parametrize("batch", [True, False], ids=["scheduler-batch", "scheduler-single"])
async def test_each_overdose_is_one_trace_from_the_http_request_to_outreach_task(
    tmp_path: Path, spans: InMemorySpanExporter, batch: bool
) -> None:
    async with running_intake(tmp_path) as intake:
        for n, person in enumerate(PEOPLE):
            response = await intake.post_hl7(_message(person, n))
            assert "|AA|" in response.text
        chain = await _chain(tmp_path, intake, batch=batch)
    assert chain["tasks"] == len(PEOPLE)

    reports = [m for m in chain["intake"] if _event_type(m) == "OverdoseReported"]
    scheduled = [m for m in chain["scheduler"] if _event_type(m) == "TaskScheduled"]
    assert len(reports) == len(scheduled) == len(PEOPLE)
    # Every record carries a trace context in its headers, each report its own trace.
    assert all(_traceparent(m) for m in chain["intake"] + chain["scheduler"])
    report_traces = {_traceparent(m).split("-")[1] for m in reports}  # type: ignore[union-attr]
    assert len(report_traces) == len(PEOPLE)

    traces = _by_trace(spans.get_finished_spans())
    for trace_hex in report_traces:
        trace = traces[int(trace_hex, 16)]
        by_name = {s.name: s for s in trace}
        request = by_name["POST /v1/hl7"]
        assert request.kind == SpanKind.SERVER
        assert request.parent is None  # the trace starts at intake
        scheduler = by_name[f"process {INTAKE_OVERDOSES.name}"]
        assert scheduler.kind == SpanKind.CONSUMER
        assert scheduler.parent is not None
        assert scheduler.parent.span_id == request.context.span_id  # type: ignore[union-attr]
        outreach = [s for s in trace if s.name == f"process {SCHEDULER_CASES.name}"]
        assert outreach, "outreach's task projection is not in the overdose's trace"
        assert {s.attributes["portline.event_type"] for s in outreach} >= {  # type: ignore[index]
            "TaskScheduled"
        }
        assert all(s.parent.span_id == scheduler.context.span_id for s in outreach)  # type: ignore[union-attr]
    _assert_no_phi(spans.get_finished_spans())


async def test_an_mllp_frame_starts_the_trace_its_report_carries(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    async with running_intake(tmp_path) as intake:
        reader, writer = await asyncio.open_connection("127.0.0.1", intake.mllp_port)
        try:
            writer.write(frame(_message(PEOPLE[0], 0).encode()))
            await writer.drain()
            ack = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 20)
        finally:
            writer.close()
        assert b"|AA|" in ack
        chain = await _chain(tmp_path, intake, batch=True)
    assert chain["tasks"] == 1
    (report,) = [m for m in chain["intake"] if _event_type(m) == "OverdoseReported"]
    trace_id = int(_traceparent(report).split("-")[1], 16)  # type: ignore[union-attr]
    names = [s.name for s in _by_trace(spans.get_finished_spans())[trace_id]]
    assert "mllp frame" in names
    assert f"process {INTAKE_OVERDOSES.name}" in names
    assert f"process {SCHEDULER_CASES.name}" in names
    _assert_no_phi(spans.get_finished_spans())


async def test_with_tracing_off_no_row_or_record_carries_a_trace(tmp_path: Path) -> None:
    async with running_intake(tmp_path) as intake:
        response = await intake.post_hl7(_message(PEOPLE[0], 0))
        assert "|AA|" in response.text
        async with intake.app.state.runtime.sessions() as session:
            stored = (await session.execute(sa.select(OUTBOX.c.traceparent))).scalars().all()
        chain = await _chain(tmp_path, intake, batch=True)
    assert stored
    assert set(stored) == {None}
    assert chain["tasks"] == 1
    assert not [m for m in chain["intake"] + chain["scheduler"] if _traceparent(m)]


def test_a_span_attribute_off_the_allow_list_is_refused(spans: InMemorySpanExporter) -> None:
    with (
        pytest.raises(ValueError, match="allow-list"),
        tracing.span("x", attributes={"name": "Jo"}),
    ):
        pass
    assert not spans.get_finished_spans()


def test_with_tracing_off_a_span_has_no_traceparent_and_on_it_has_one() -> None:
    """Off (no provider), MLLP frames skip the span altogether; on, each frame's span gives the
    traceparent its events carry."""
    assert not tracing.enabled()
    with tracing.span("mllp frame", kind=tracing.SpanKind.SERVER):
        assert tracing.current_traceparent() is None
    exporter = InMemorySpanExporter()
    provider = tracing.provider_with(exporter, service="test", batch=False)
    with tracing.use_provider(provider):
        assert tracing.enabled()
        with tracing.span("mllp frame", kind=tracing.SpanKind.SERVER) as current:
            traceparent = tracing.current_traceparent()
        assert traceparent is not None
        assert traceparent.split("-")[2] == f"{current.get_span_context().span_id:016x}"
    provider.shutdown()
    assert not tracing.enabled()


def test_an_unreadable_traceparent_starts_no_trace() -> None:
    assert tracing.context_from_headers([("traceparent", b"not-a-trace")]) is None
    assert tracing.context_from_headers([("traceparent", b"\xff\xfe")]) is None
    assert tracing.context_from_headers([]) is None


def test_the_outbox_row_keeps_the_traceparent_it_is_given() -> None:
    envelope = Envelope.wrap(
        InboundRejected(
            inbound_id=uuid.uuid4(),
            source_kind="ed",
            source_org="p",
            reason_code="x",
            reason="y",
            received_at=datetime.now(UTC),
        ),
        source="/t",
        subject="p",
        time=datetime.now(UTC),
    )
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert outbox_row(envelope, traceparent=parent)["traceparent"] == parent
    assert outbox_row(envelope)["traceparent"] is None


def test_export_is_off_by_default_and_on_with_an_endpoint() -> None:
    assert Settings(env="development").otel_exporter_otlp_endpoint is None
    assert tracing.configure(Settings(env="development"), "intake") is None
    provider = tracing.configure(
        Settings(env="development", otel_exporter_otlp_endpoint="http://127.0.0.1:9/v1/traces"),
        "intake",
    )
    try:
        assert provider is not None
        assert provider.resource.attributes["service.name"] == "portline-intake"
        assert tracing.tracer().start_span("probe").is_recording()
    finally:
        tracing.shutdown()
    assert not tracing.tracer().start_span("probe").is_recording()


def test_export_without_the_otlp_extra_stops_the_service_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(ConfigurationError, match=r"portline\[otlp\]"):
        tracing.configure(
            Settings(env="development", otel_exporter_otlp_endpoint="http://127.0.0.1:9/x"),
            "intake",
        )
