"""The intake service's application: HTTP routes, the MLLP listener and their batchers."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.intake.api import PARTNER_SECURITY_SCHEMES, IntakeState, router
from services.intake.batching import MicroBatcher, Reply
from services.intake.ems_json import EmsRunReportBatch, EmsRunReportIn
from services.intake.mllp_listener import MllpListener
from services.intake.models import Channel
from services.intake.parse_pool import ParsePool, parse_inline
from services.intake.partners import PartnerDirectory
from services.intake.pipeline import (
    EmsIntake,
    EmsOutcome,
    EmsSubmission,
    HL7Intake,
    HL7Submission,
    PreparedSubmission,
)
from services.intake.reports import Protector
from services.intake.store.factory import open_store
from shared.http import add_openapi_schemas
from shared.runtime import Runtime, create_service_app
from shared.sealing import load_keys
from shared.settings import Settings

__all__ = ["create_app"]

DESCRIPTION = (
    "The partner-facing edge. Hospitals send HL7 v2 ADT (A01/A03/A04/A08) over MLLP "
    "(port 2575) or `POST /v1/hl7`; EMS agencies send NEMSIS v3.5 XML or JSON run reports "
    "to `POST /v1/ems/run-reports`. Every message is screened, classified against the "
    "program's overdose definition with machine-readable reasons, and, when it is an "
    "overdose, published as `OverdoseReported` with identity sealed. Nothing is "
    "acknowledged before it is durably stored. Partners authenticate with an API key "
    "(`Authorization: Bearer <key>`); MLLP senders by their allowed sending facility (MSH-4)."
)


# The partner routes read the raw request themselves: served past FastAPI's routing.
DIRECT_ROUTES = (("POST", "/v1/ems/run-reports"), ("POST", "/v1/hl7"))


def _tls(settings: Settings) -> ssl.SSLContext | None:
    if settings.intake_mllp_tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.intake_mllp_tls_cert, settings.intake_mllp_tls_key)
    return context


async def _mllp_accepting(host: str, port: int, timeout: float = 1.0) -> str:
    """Whether the MLLP port takes a TCP connection (closed again at once, before any TLS
    handshake or frame)."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - the wildcard address we may listen on
        host = "127.0.0.1"
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return "unavailable: not listening yet"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return "ok"


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def extension(app: FastAPI, runtime: Runtime) -> AsyncIterator[None]:
        sealer, indexer = load_keys(settings)
        protector = Protector(sealer, indexer)
        directory = PartnerDirectory(
            runtime.sessions, ttl_seconds=settings.intake_partner_cache_seconds
        )
        store = open_store(
            settings, runtime.engine, runtime.sessions, on_published=runtime.relay.wake
        )
        parse_pool = (
            ParsePool(settings.intake_parse_workers) if settings.intake_parse_workers else None
        )
        if parse_pool is not None:
            warming = asyncio.create_task(parse_pool.warm_up(), name="parse-pool-warm-up")
        hl7 = HL7Intake(
            store=store,
            directory=directory,
            protector=protector,
            clock=runtime.clock,
            source=runtime.source,
            full_parse=parse_pool or parse_inline,
            max_event_bytes=settings.kafka_max_event_bytes,
        )
        ems = EmsIntake(
            store=store,
            protector=protector,
            clock=runtime.clock,
            source=runtime.source,
            max_event_bytes=settings.kafka_max_event_bytes,
        )

        async def hl7_batch(items: Sequence[PreparedSubmission], reply: Reply[str]) -> list[str]:
            return await hl7.commit(items, reply=reply)

        async def ems_batch(
            requests: Sequence[list[EmsSubmission]], _reply: Reply[list[EmsOutcome]]
        ) -> list[list[EmsOutcome]]:
            outcomes = await ems.receive([s for r in requests for s in r])
            split: list[list[EmsOutcome]] = []
            start = 0
            for r in requests:
                split.append(outcomes[start : start + len(r)])
                start += len(r)
            return split

        hl7_batcher: MicroBatcher[PreparedSubmission, str] = MicroBatcher(
            hl7_batch,
            max_batch=settings.intake_batch_max,
            max_concurrent=settings.intake_batch_concurrency,
        )
        ems_batcher: MicroBatcher[list[EmsSubmission], list[EmsOutcome]] = MicroBatcher(
            ems_batch, max_batch=64, max_concurrent=settings.intake_batch_concurrency
        )
        hl7_batcher.start()
        ems_batcher.start()

        async def submit_hl7(submission: HL7Submission) -> str:
            # Prepared as it arrives, so that it overlaps the commit in flight; committed
            # with whatever else is waiting (services.intake.batching).
            return await hl7_batcher.submit(await hl7.prepare(submission))

        async def on_frame(payload: bytes) -> str:
            return await submit_hl7(HL7Submission(payload, Channel.MLLP))

        listener: MllpListener | None = None
        if not settings.runs_mllp:
            # Another worker listens for MLLP, and this one may answer /readyz first: the
            # service is ready only once the MLLP port accepts connections.
            runtime.add_readiness_check(
                "mllp", lambda: _mllp_accepting(settings.host, settings.mllp_port)
            )
        else:
            listener = MllpListener(
                on_frame,
                host=settings.host,
                port=settings.mllp_port,
                now=runtime.clock.now,
                max_message_bytes=settings.intake_max_message_bytes,
                ssl_context=_tls(settings),
            )
            await listener.start()
        app.state.intake = IntakeState(
            directory=directory,
            submit_hl7=submit_hl7,
            ems=ems_batcher,
            uow=runtime.uow,
            clock=runtime.clock,
            max_message_bytes=settings.intake_max_message_bytes,
            max_ems_bytes=settings.intake_max_ems_bytes,
            consent_element=settings.intake_consent_element,
            leave_behind_element=settings.intake_leave_behind_element,
        )
        app.state.mllp = listener
        try:
            yield
        finally:
            if listener is not None:
                await listener.stop()
            await hl7_batcher.stop()
            await ems_batcher.stop()
            await store.close()
            if parse_pool is not None:
                warming.cancel()
                parse_pool.close()

    app = create_service_app(
        "intake",
        settings,
        title="PORTline intake",
        description=DESCRIPTION,
        routers=[router],
        extension=extension,
        direct=DIRECT_ROUTES,
    )
    add_openapi_schemas(
        app, [EmsRunReportIn, EmsRunReportBatch], security_schemes=PARTNER_SECURITY_SCHEMES
    )
    return app
