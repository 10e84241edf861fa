"""The reporting service's HTTP application: one consumer of every topic into the read
models, the watch over spikes and feeds (after each batch, and on a timer), and the API."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta

import sqlalchemy as sa
from fastapi import FastAPI

from services.reporting.alerts_api import router as alerts_router
from services.reporting.api import router
from services.reporting.dashboard.render import SvgRenderer
from services.reporting.dashboard.signals import LiveSignals, Signals
from services.reporting.dashboard.views import router as dashboard_router
from services.reporting.feeds import FeedRules
from services.reporting.handlers import ReadModels
from services.reporting.models import REBUILD
from services.reporting.programs import ProgramBook
from services.reporting.watch import Watch
from shared.clock import Clock
from shared.runtime import ConsumerSpec, Runtime, create_service_app
from shared.sealing import load_keys
from shared.settings import Settings
from shared.topics import INTAKE_OVERDOSES, INTAKE_REJECTED, OUTREACH_ACTIVITY, SCHEDULER_CASES

__all__ = ["BATCH", "CONSUMER", "FACT_TOPICS", "create_app", "read_models", "tune_collector"]

FACT_TOPICS = (INTAKE_OVERDOSES, INTAKE_REJECTED, SCHEDULER_CASES, OUTREACH_ACTIVITY)
"""The topics whose events become facts (the team topic is read by the runtime's own
team-access consumer, not into the read models)."""

CONSUMER = "events"
"""Reporting's one consumer (of every topic); its inbox key is `reporting.events`."""
BATCH = 1000
"""Events applied per transaction at most: a batch costs a few statements per table whatever
its size, so under a backlog large batches apply several times faster (tests/bench)."""

DESCRIPTION = (
    "The program's read models and its numbers: metrics defined as versioned code (every "
    "figure carries its metric's id and version, and its numerator and denominator where it "
    "is a rate), with small-cell suppression (primary, complementary, unstable rates) unless a "
    "team lead or admin asks for the internal view, and exports as CSV and XLSX, including the "
    "quarterly funder report; the dashboard (`GET /dashboard`). Spike alerts on each county's "
    "overdoses (NSSP-ESSENCE's EWMA and the ODMAP rule), which leads acknowledge or dismiss, "
    "and each partner feed's health. Aggregates only: reporting never stores or shows who "
    "anyone is."
)


def read_models(
    settings: Settings, programs: ProgramBook | None = None, watch: Watch | None = None
) -> ReadModels:
    return ReadModels(
        programs or ProgramBook.from_settings(settings),
        late_after=timedelta(hours=settings.reporting_late_after_hours),
        watch=watch,
    )


def tune_collector() -> None:
    """Set up CPython's cyclic garbage collector for applying batches. A batch makes tens of
    thousands of short-lived objects (rows, parameters, results); at the default thresholds
    the collector runs every 700 of them and keeps walking the long-lived heap (measured: a
    fifth of the apply path's CPU). What lives from start-up is frozen out of its sight, and
    the youngest generation is collected every 20,000 allocations. Objects are still freed by
    reference counting as before; only reference cycles wait a little longer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def create_app(
    settings: Settings, *, clock: Clock | None = None, signals: Signals | None = None
) -> FastAPI:
    """`clock` replaces the system clock (tests move it); `signals` gives the dashboard its
    open alerts and feed health (by default, reporting's own: `LiveSignals`)."""
    programs = ProgramBook.from_settings(settings)
    watch = Watch(programs, FeedRules.from_settings(settings))
    models = read_models(settings, programs, watch)

    def consumers(_runtime: Runtime) -> Sequence[ConsumerSpec]:
        topics = [t.name for t in FACT_TOPICS]
        return [
            ConsumerSpec(
                CONSUMER, topics, models.apply, batch_handler=models.apply_all, batch_size=BATCH
            )
        ]

    @asynccontextmanager
    async def extension(app: FastAPI, runtime: Runtime) -> AsyncIterator[None]:
        app.state.programs = programs
        app.state.watch = watch
        app.state.sealer, _ = load_keys(settings)  # seals the leads' notes on alerts
        app.state.signals = signals or LiveSignals(
            runtime.sessions, programs, watch.feeds, runtime.clock.now
        )
        app.state.renderer = renderer = SvgRenderer()
        await renderer.warm()  # the first chart would otherwise take a second or more
        tune_collector()

        async def rebuilt() -> str:
            async with runtime.sessions() as session:
                state = (
                    await session.execute(sa.select(REBUILD.c.state).where(REBUILD.c.id == 1))
                ).scalar_one_or_none()
            if state in (None, "done"):
                return "ok"
            return f"unavailable: rebuild {state}; run `portline reporting rebuild`"

        runtime.add_readiness_check("read_models", rebuilt)
        stop = asyncio.Event()
        timer = asyncio.create_task(
            watch.run(runtime.uow, stop, settings.reporting_watch_interval_seconds),
            name="reporting-watch",
        )
        try:
            yield
        finally:
            stop.set()
            await timer
            renderer.close()

    return create_service_app(
        "reporting",
        settings,
        title="PORTline reporting",
        description=DESCRIPTION,
        routers=[router, alerts_router, dashboard_router],
        consumers=consumers,
        extension=extension,
        runtime_factory=lambda: Runtime("reporting", settings, clock=clock),
    )
