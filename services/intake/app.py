"""The intake service's application: HTTP routes, the MLLP listener and their batchers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.intake.api import PARTNER_SECURITY_SCHEMES, IntakeState, router
from services.intake.batching import MicroBatcher, Overloaded, Reply
from services.intake.ems_json import EmsRunReportBatch, EmsRunReportIn
from services.intake.le_json import LeOverdoseReportIn
from services.intake.mllp_listener import MllpListener, MllpPeer
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
from services.intake.pipeline.law_enforcement import LawEnforcementIntake
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
    "to `POST /v1/ems/run-reports`; law-enforcement agencies send their overdose reports to "
    "`POST /v1/le/overdose-reports` (one way: nothing is read back). Every message is "
    "screened, classified against the "
    "program's overdose definition with machine-readable reasons, and, when it is an "
    "overdose, published as `OverdoseReported` with identity sealed. Nothing is "
    "acknowledged before it is durably stored. Partners authenticate with an API key "
    "(`Authorization: Bearer <key>`); MLLP connections by a TLS client certificate and/or "
    "their source network, before any message is read. MSH-4 must then be one of that "
    "partner's facilities."
)

log = logging.getLogger(__name__)


# The partner routes read the raw request themselves: served past FastAPI's routing.
DIRECT_ROUTES = (("POST", "/v1/ems/run-reports"), ("POST", "/v1/hl7"))


def _tls(settings: Settings) -> ssl.SSLContext | None:
    """TLS 1.2 or later for MLLP; with a client CA, mutual TLS (a client certificate is asked
    for and verified; a partner that must show one is authenticated by its fingerprint)."""
    if settings.intake_mllp_tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.intake_mllp_tls_cert, settings.intake_mllp_tls_key)
    if settings.intake_mllp_tls_client_ca is not None:
        context.load_verify_locations(cafile=settings.intake_mllp_tls_client_ca)
        context.verify_mode = ssl.CERT_OPTIONAL  # network-only partners show none
    return context


async def _check_mllp_can_authenticate(
    settings: Settings, directory: PartnerDirectory, tls: ssl.SSLContext | None
) -> None:
    """Production refuses to start an MLLP listener that can authenticate nobody, unless an
    explicit setting says so (and then it says so loudly)."""
    if settings.env != "production":
        return
    try:
        rules = await directory.mllp_rules()
    except Exception as exc:
        log.warning(
            "cannot read the MLLP partner rules at start; every connection is refused until "
            "they can be read",
            extra={"error": type(exc).__name__},
        )
        return
    client_certificates = tls is not None and settings.intake_mllp_tls_client_ca is not None
    if rules.authenticates_anyone(client_certificates=client_certificates):
        return
    if settings.intake_mllp_start_unauthenticated:
        log.error(
            "MLLP listener started although no hospital can be authenticated on it "
            "(PORTLINE_INTAKE_MLLP_START_UNAUTHENTICATED=true): every message is refused until "
            "a partner has a network or client certificate"
        )
        return
    raise RuntimeError(
        "no hospital can be authenticated on the MLLP listener: register a source network "
        "(portline partners add-network) or a client certificate (add-certificate, with "
        "PORTLINE_INTAKE_MLLP_TLS_CLIENT_CA set), or set "
        "PORTLINE_INTAKE_MLLP_START_UNAUTHENTICATED=true to start anyway"
    )


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
            max_pending=settings.intake_queue_max,
        )
        ems_batcher: MicroBatcher[list[EmsSubmission], list[EmsOutcome]] = MicroBatcher(
            ems_batch,
            max_batch=64,
            max_concurrent=settings.intake_batch_concurrency,
            max_pending=settings.intake_queue_max,
        )
        hl7_batcher.start()
        ems_batcher.start()

        async def submit_hl7(submission: HL7Submission) -> str:
            # Prepared as it arrives, so that it overlaps the commit in flight; committed
            # with whatever else is waiting (services.intake.batching). Refusals need no
            # commit, and a full queue answers "busy" at once.
            prepared = await hl7.prepare(submission)
            answer = hl7.answered(prepared)
            if answer is not None:
                return answer
            try:
                return await hl7_batcher.submit(prepared)
            except Overloaded:
                return hl7.busy(prepared)

        async def on_frame(payload: bytes, partners: frozenset[str]) -> str:
            return await submit_hl7(HL7Submission(payload, Channel.MLLP, partners))

        async def authenticate(peer: MllpPeer) -> frozenset[str]:
            rules = await directory.mllp_rules()
            return rules.partners_for(peer.address, peer.fingerprint)

        listener: MllpListener | None = None
        if not settings.runs_mllp:
            # Another worker listens for MLLP, and this one may answer /readyz first: the
            # service is ready only once the MLLP port accepts connections.
            runtime.add_readiness_check(
                "mllp", lambda: _mllp_accepting(settings.host, settings.mllp_port)
            )
        else:
            tls = _tls(settings)
            await _check_mllp_can_authenticate(settings, directory, tls)
            listener = MllpListener(
                on_frame,
                authenticate=authenticate,
                host=settings.host,
                port=settings.mllp_port,
                now=runtime.clock.now,
                max_message_bytes=settings.intake_max_message_bytes,
                ssl_context=tls,
                idle_timeout=settings.intake_mllp_idle_timeout_seconds,
                frame_timeout=settings.intake_mllp_frame_timeout_seconds,
                max_connections=settings.intake_mllp_max_connections,
                max_connections_per_partner=settings.intake_mllp_max_connections_per_partner,
            )
            await listener.start()
        app.state.intake = IntakeState(
            directory=directory,
            submit_hl7=submit_hl7,
            hl7=hl7_batcher,
            ems=ems_batcher,
            le=LawEnforcementIntake(
                store=store,
                protector=protector,
                clock=runtime.clock,
                source=runtime.source,
                max_event_bytes=settings.kafka_max_event_bytes,
            ),
            uow=runtime.uow,
            clock=runtime.clock,
            max_message_bytes=settings.intake_max_message_bytes,
            max_ems_bytes=settings.intake_max_ems_bytes,
            consent_element=settings.intake_consent_element,
            leave_behind_element=settings.intake_leave_behind_element,
            idempotency_lease_seconds=settings.intake_idempotency_lease_seconds,
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
        app,
        [EmsRunReportIn, EmsRunReportBatch, LeOverdoseReportIn],
        security_schemes=PARTNER_SECURITY_SCHEMES,
    )
    return app
