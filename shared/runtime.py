"""A service's running parts, built in the app's lifespan and torn down with it.

Nothing connects at import time: the engine, the Kafka producer, the outbox relay and the
consumers are created here when the service starts. Kafka being down at start is not fatal:
the service serves /healthz, reports not-ready, and keeps trying to connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import sqlalchemy as sa
from fastapi import APIRouter, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared import tracing
from shared.auth import TeamIdentity, document_roles, takes_team_tokens
from shared.bus import ConsumerLoop, KafkaPublisher, make_consumer
from shared.clock import Clock, SystemClock
from shared.db import create_engine, session_factory
from shared.devtokens import DEV_ISSUER, DevelopmentKey
from shared.envelope import Envelope
from shared.http import direct_routes, install_common_routes, install_error_handlers
from shared.inbox import InboxProcessor, Outcome
from shared.metrics import EVENTS_CONSUMED, READY
from shared.oidc import ClaimNames, KeySource, ProviderKeys, StaticKeys, TokenVerifier
from shared.outbox import OutboxRelay
from shared.settings import ConfigurationError, ServiceName, Settings
from shared.team_access import (
    DeactivatedMembers,
    TeamAccess,
    apply_team_event,
    deactivated_in_table,
)
from shared.topics import OUTREACH_TEAM
from shared.uow import UnitOfWork

__all__ = ["ConsumerSpec", "Runtime", "create_service_app"]

log = logging.getLogger(__name__)

READINESS_REPORT_SECONDS = 15.0
"""How often a service refreshes portline_ready on its own (a probe refreshes it too)."""


@dataclass(frozen=True)
class ConsumerSpec:
    """A consumer a service runs: its name (also its inbox key and group id) and handler, and
    optionally a batch handler with the same effect (see shared/inbox.py)."""

    name: str
    topics: Sequence[str]
    handler: Callable[[UnitOfWork, Envelope], Awaitable[None]]
    batch_handler: Callable[[UnitOfWork, Sequence[Envelope]], Awaitable[None]] | None = None
    batch_size: int = 50
    """The most records applied in one unit of work (a batch handler makes large ones pay)."""
    start: Literal["earliest", "latest"] | None = None
    """Where a new consumer group starts; None: PORTLINE_KAFKA_CONSUMER_START. A consumer
    that must never skip an event (the team's deactivations) says `earliest`."""


class _CountingProcessor(InboxProcessor[UnitOfWork]):
    def __init__(self, service: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._service = service

    async def process(self, message: Any) -> Outcome:
        outcome = await super().process(message)
        EVENTS_CONSUMED.labels(self._service, self.consumer, outcome.value).inc()
        return outcome

    async def process_batch(self, messages: Any) -> list[Outcome]:
        outcomes = await super().process_batch(messages)
        if len(messages) > 1:  # single messages went through process(), already counted
            for outcome in outcomes:
                EVENTS_CONSUMED.labels(self._service, self.consumer, outcome.value).inc()
        return outcomes


class Runtime:
    """Engine, sessions, publisher, relay and consumers of one service."""

    def __init__(
        self,
        service: ServiceName,
        settings: Settings,
        *,
        clock: Clock | None = None,
        schema: str | None = None,
    ) -> None:
        self.service = service
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.engine: AsyncEngine = create_engine(
            settings.db_url, service=service, schema=schema or settings.schema_for(service)
        )
        self.sessions: async_sessionmaker[AsyncSession] = session_factory(self.engine)
        self.publisher = KafkaPublisher(
            settings.kafka_bootstrap_servers, client_id=f"portline-{service}"
        )
        self.relay = OutboxRelay(
            self.sessions,
            self.publisher,
            clock=self.clock,
            batch_size=settings.relay_batch_size,
            poll_interval=settings.relay_poll_interval_seconds,
            min_interval=settings.relay_min_interval_seconds,
            service=service,
        )
        self.consumers: list[ConsumerSpec] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._kafka_ready = asyncio.Event()
        self._readiness_checks: dict[str, Callable[[], Awaitable[str]]] = {}

    @property
    def source(self) -> str:
        return f"/portline/{self.service}"

    def uow(self) -> UnitOfWork:
        return UnitOfWork(
            self.sessions, clock=self.clock, source=self.source, on_published=self.relay.wake
        )

    def add_readiness_check(self, name: str, check: Callable[[], Awaitable[str]]) -> None:
        """A service's own readiness condition: `check` answers "ok" or why not."""
        self._readiness_checks[name] = check

    def add_consumer(self, spec: ConsumerSpec) -> None:
        self.consumers.append(spec)

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._connect_kafka(), name="kafka-connect"))
        self._tasks.append(asyncio.create_task(self._watch_readiness(), name="readiness"))

    async def _connect_kafka(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                await self.publisher.start()
                break
            except Exception as exc:
                log.warning(
                    "kafka not reachable; retrying",
                    extra={"service": self.service, "error": type(exc).__name__, "retry_in": delay},
                )
                await self.publisher.stop()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, 10.0)
        if self._stop.is_set():
            return
        self._kafka_ready.set()
        self._tasks.append(asyncio.create_task(self.relay.run(self._stop), name="outbox-relay"))
        for spec in self.consumers:
            self._tasks.append(
                asyncio.create_task(self._consume(spec), name=f"consumer-{spec.name}")
            )

    async def _consume(self, spec: ConsumerSpec) -> None:
        processor = _CountingProcessor(
            self.service,
            f"{self.service}.{spec.name}",
            self.uow,
            spec.handler,
            max_attempts=self.settings.inbox_max_attempts,
            backoff_seconds=self.settings.inbox_retry_backoff_seconds,
            batch_handler=spec.batch_handler,
        )
        while not self._stop.is_set():
            consumer = make_consumer(
                self.settings.kafka_bootstrap_servers,
                # The schema prefix separates deployments (and test runs) sharing one broker.
                group_id=f"portline-{self.settings.db_schema_prefix}{self.service}-{spec.name}",
                topics=spec.topics,
                start=spec.start or self.settings.kafka_consumer_start,
            )
            try:
                await consumer.start()
                await ConsumerLoop(consumer, processor, batch_size=spec.batch_size).run(self._stop)
            except Exception:
                log.exception("consumer crashed; restarting", extra={"consumer": spec.name})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 2.0)
            finally:
                await consumer.stop()

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            async with self.engine.connect() as conn:
                await conn.execute(sa.text("select 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        checks["kafka"] = "ok" if self._kafka_ready.is_set() else "unavailable: connecting"
        for name, check in self._readiness_checks.items():
            try:
                checks[name] = await check()
            except Exception as exc:
                checks[name] = f"unavailable: {type(exc).__name__}"
        for name, state in checks.items():
            READY.labels(self.service, name).set(1 if state == "ok" else 0)
        return checks

    async def _watch_readiness(self) -> None:
        """Keep portline_ready current between probes: alerts read it, not /readyz."""
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                await self.readiness()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), READINESS_REPORT_SECONDS)

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
            except Exception:
                log.exception("task failed during shutdown", extra={"task": task.get_name()})
        await self.publisher.stop()
        await self.engine.dispose()


def create_service_app(
    service: ServiceName,
    settings: Settings,
    *,
    title: str,
    description: str,
    version: str = "0.1.0",
    routers: Sequence[APIRouter] = (),
    consumers: Callable[[Runtime], Sequence[ConsumerSpec]] | None = None,
    extension: Callable[[FastAPI, Runtime], AbstractAsyncContextManager[None]] | None = None,
    runtime_factory: Callable[[], Runtime] | None = None,
    direct: Sequence[tuple[str, str]] = (),
    team_roster: DeactivatedMembers | None = None,
) -> FastAPI:
    """A FastAPI app whose lifespan owns a Runtime (available as app.state.runtime).

    `extension` is the service's own start-up and shutdown (listeners, batchers, seeds),
    entered after the runtime started and left before it closes. `direct` names hot
    (method, path) routes served past FastAPI's routing (see `shared.http.direct_routes`).

    A service whose routes admit team users (`require`) takes team tokens: it verifies them
    against the program's provider (`shared.oidc`) and refuses deactivated members
    (`shared.team_access`), which it learns from port.outreach.team.v1 into its own
    `team_access` table, unless it owns the roster and reads it itself (`team_roster`:
    outreach). Outside development such a service does not start without a provider.
    """
    team = takes_team_tokens(routers)
    if team and (problem := settings.team_identity_problem(service)):
        raise ConfigurationError(problem)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = runtime_factory() if runtime_factory else Runtime(service, settings)
        app.state.runtime = runtime
        for spec in consumers(runtime) if consumers else ():
            runtime.add_consumer(spec)
        async with contextlib.AsyncExitStack() as stack:  # left in reverse order
            if tracing.configure(settings, service) is not None:
                stack.callback(tracing.shutdown)  # last: the spans of the shutdown too
            stack.push_async_callback(runtime.close)
            if team:
                app.state.team_identity = await stack.enter_async_context(
                    _team_identity(service, settings, runtime, team_roster)
                )
            await runtime.start()
            if extension is not None:
                await stack.enter_async_context(extension(app, runtime))
            yield

    app = FastAPI(title=title, description=description, version=version, lifespan=lifespan)
    install_error_handlers(app)
    for router in routers:
        document_roles(router)
        app.include_router(router)
    if direct:
        direct_routes(app, routers, direct)

    async def readiness() -> dict[str, str]:
        runtime: Runtime | None = getattr(app.state, "runtime", None)
        if runtime is None:
            return {"runtime": "unavailable: starting"}
        return await runtime.readiness()

    install_common_routes(app, service=service, readiness=readiness)
    return app


@asynccontextmanager
async def _team_identity(
    service: ServiceName,
    settings: Settings,
    runtime: Runtime,
    roster: DeactivatedMembers | None,
) -> AsyncIterator[TeamIdentity]:
    """The token verifier and the deactivated members, for as long as the service runs."""
    access = TeamAccess(
        runtime.sessions,
        roster or deactivated_in_table,
        refresh_seconds=settings.team_access_refresh_seconds,
    )
    if roster is None:
        runtime.add_consumer(
            ConsumerSpec("team", [OUTREACH_TEAM.name], apply_team_event, start="earliest")
        )
    runtime.add_readiness_check("team_access", access.readiness)
    async with httpx.AsyncClient(follow_redirects=False) as client:
        issuers: dict[str, KeySource] = {}
        if settings.oidc_issuer:
            issuers[settings.oidc_issuer] = ProviderKeys(
                settings.oidc_issuer,
                client=client,
                jwks_url=settings.oidc_jwks_url,
                ttl=settings.oidc_jwks_cache_seconds,
                min_interval=settings.oidc_jwks_refetch_seconds,
                timeout=settings.oidc_http_timeout_seconds,
            )
        if settings.is_development:
            issuers[DEV_ISSUER] = StaticKeys(DevelopmentKey.load(settings.var_dir).jwks)
        verifier = TokenVerifier(
            issuers=issuers,
            audience=settings.token_audience(service),
            algorithms=settings.token_algorithms,
            leeway=settings.oidc_leeway_seconds,
            claims=ClaimNames(role=settings.oidc_role_claim, program=settings.oidc_program_claim),
        )
        with contextlib.suppress(Exception):  # not fatal: the loop below keeps trying
            await access.refresh()
        stop = asyncio.Event()
        task = asyncio.create_task(access.run(stop), name="team-access")
        try:
            yield TeamIdentity(verifier=verifier, access=access)
        finally:
            stop.set()
            await task
