"""Tracing across real processes, Kafka and PostgreSQL: intake, the scheduler and outreach
export their spans over OTLP/HTTP to a collector this test runs on loopback, and one overdose
sent over MLLP is one trace from the frame to outreach's task projection, with nothing of
the person in any span."""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from shared.envelope import Envelope
from shared.topics import INTAKE_OVERDOSES, SCHEDULER_CASES
from tests.e2e.conftest import (
    PORTLINE,
    IntakeProcess,
    _start,
    _stop,
    _until_consuming,
    _until_outreach_consumes,
    _wait_ready,
    free_port,
    intake_deployment,
)
from tests.hl7_builder import ack_fields, adt, framed, hl7_time
from tests.support import read_topic

pytestmark = pytest.mark.e2e


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, str]


@dataclass
class Collector:
    """An OTLP/HTTP traces endpoint on loopback that keeps every span it receives."""

    spans: list[Span] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/traces"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (
                        line.decode().partition(":") for line in head.split(b"\r\n")[1:] if line
                    )
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                self.keep(body)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                    b"Content-Length: 0\r\n\r\n"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def keep(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource.scope_spans:
                for s in scope.spans:
                    self.spans.append(
                        Span(
                            service,
                            s.name,
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            {
                                a.key: str(a.value.string_value or a.value.int_value)
                                for a in s.attributes
                            },
                        )
                    )


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    found = Collector()
    found.server = await asyncio.start_server(found.handle, "127.0.0.1", 0)
    try:
        yield found
    finally:
        found.server.close()
        await found.server.wait_closed()


async def _run(env: dict[str, str], service: str, port_setting: str) -> tuple[Any, str]:
    await asyncio.to_thread(
        subprocess.run,
        [PORTLINE, "migrate", service],
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
    )
    log = Path(env["PORTLINE_VAR_DIR"]) / f"{service}.log"
    proc = await asyncio.to_thread(_start, env, log, service)
    base = f"http://127.0.0.1:{env[port_setting]}"
    await _wait_ready(proc, base, log)
    return proc, base


async def test_an_mllp_overdose_is_one_trace_from_the_frame_to_outreachs_task(
    postgres_url: str,
    runtime_postgres_url: str,
    kafka_bootstrap: str,
    tmp_path: Path,
    collector: Collector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PORTLINE_OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    async with intake_deployment(
        postgres_url, kafka_bootstrap, tmp_path, runtime_url=runtime_postgres_url
    ) as intake:
        env = {
            **intake.env,
            "PORTLINE_SCHEDULER_PORT": str(free_port()),
            "PORTLINE_OUTREACH_PORT": str(free_port()),
            "PORTLINE_KAFKA_CONSUMER_START": "latest",
        }
        assert env["PORTLINE_OTEL_EXPORTER_OTLP_ENDPOINT"] == collector.endpoint
        started: list[Any] = []
        try:
            proc, _ = await _run(env, "scheduler", "PORTLINE_SCHEDULER_PORT")
            started.append(proc)
            await _until_consuming(env)
            proc, outreach = await _run(env, "outreach", "PORTLINE_OUTREACH_PORT")
            started.append(proc)
            await _until_outreach_consumes(env, outreach)
            await _overdose_is_one_trace(intake, kafka_bootstrap, collector)
        finally:
            for proc in reversed(started):
                await _stop(proc)


async def _overdose_is_one_trace(
    intake: IntakeProcess, kafka_bootstrap: str, collector: Collector
) -> None:
    ref = f"TRC-{uuid.uuid4().hex[:10]}"
    family, given, dob = f"Tracy{uuid.uuid4().hex[:6]}", "Oberholzer", "19810214"
    incident = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    (ack,) = await intake.mllp(
        framed(
            adt(
                ref,
                family=family,
                given=given,
                dob=dob,
                visit=f"V-{ref}",
                admit=hl7_time(incident),
            )
        )
    )
    assert ack_fields(ack)[0] == "AA"

    (reported,) = await read_topic(
        kafka_bootstrap,
        INTAKE_OVERDOSES.name,
        where=lambda r: Envelope.from_bytes(r.value).data.get("source_ref") == ref,
        expect=1,
    )
    headers = dict(reported.headers)
    assert "traceparent" in headers, "the report's record carries no trace context"
    trace_id = headers["traceparent"].decode().split("-")[1]
    report_id = Envelope.from_bytes(reported.value).data["report_id"]

    (linked,) = await read_topic(
        kafka_bootstrap,
        SCHEDULER_CASES.name,
        where=lambda r: Envelope.from_bytes(r.value).data.get("report_id") == report_id,
        expect=1,
        timeout=60,
    )
    case_id = Envelope.from_bytes(linked.value).data["case_id"]
    (scheduled,) = await read_topic(
        kafka_bootstrap,
        SCHEDULER_CASES.name,
        where=lambda r: (
            (e := Envelope.from_bytes(r.value)).type == "TaskScheduled"
            and e.data["case_id"] == case_id
        ),
        expect=1,
    )
    assert dict(scheduled.headers)["traceparent"].decode().split("-")[1] == trace_id

    wanted = {
        ("portline-intake", "mllp frame"),
        ("portline-scheduler", f"process {INTAKE_OVERDOSES.name}"),
        ("portline-outreach", f"process {INTAKE_OVERDOSES.name}"),
        ("portline-outreach", f"process {SCHEDULER_CASES.name}"),
    }
    deadline = time.monotonic() + 60  # spans leave in batches, every few seconds
    while time.monotonic() < deadline:
        trace = [s for s in collector.spans if s.trace_id == trace_id]
        if wanted <= {(s.service, s.name) for s in trace} and any(
            s.attributes.get("portline.event_type") == "TaskScheduled" for s in trace
        ):
            break
        await asyncio.sleep(0.5)
    else:
        seen = sorted({(s.service, s.name) for s in collector.spans if s.trace_id == trace_id})
        raise AssertionError(f"the trace is incomplete: {seen}")

    by_id = {s.span_id: s for s in trace}
    (frame_span,) = [s for s in trace if s.name == "mllp frame"]
    assert frame_span.parent_id == ""  # the trace starts at the frame
    (task_span,) = [s for s in trace if s.attributes.get("portline.event_type") == "TaskScheduled"]
    assert task_span.service == "portline-outreach"
    scheduler_span = by_id[task_span.parent_id]
    assert scheduler_span.service == "portline-scheduler"
    assert by_id[scheduler_span.parent_id] is frame_span

    phi = {family, given, dob, f"V-{ref}", f"MRNV-{ref}"}
    for s in collector.spans:
        texts = [s.name, *s.attributes, *s.attributes.values()]
        assert not [t for t in texts for value in phi if value in t], s
