"""The scheduler service's application: its consumers, its timer runner and its API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

from services.scheduler.api import router
from services.scheduler.handlers import PolicyBook, Scheduler
from services.scheduler.policy import load_policies
from services.scheduler.timers import TimerRunner
from shared.runtime import ConsumerSpec, Runtime, create_service_app
from shared.sealing import BlindIndexer, Sealer, load_keys
from shared.settings import Settings
from shared.topics import INTAKE_OVERDOSES, OUTREACH_ACTIVITY, REPORTING_ALERTS

__all__ = ["create_app"]

DESCRIPTION = (
    "The program's clock and policy. Links each overdose report to a person (match weights "
    "under the seal: names, date of birth, phone and the overdose itself, each with a reason; "
    "uncertain matches held for a team lead with their explanation) and to an "
    "episode (an EMS and an ED report of one overdose are one episode), opens a case per "
    "person, and turns episodes into time-boxed outreach tasks from the program's policy: "
    "remote contact first, an in-person visit when that fails, follow-ups after contact. "
    "Durable timers fire exactly once however many replicas run. Declined is honoured and a "
    "do-not-contact request is final. A spike alert from reporting opens a hot-spot task for "
    "its county (no person named). Team leads read a case's timeline and decide possible "
    "matches here; the task queue itself is outreach's."
)


def create_app(settings: Settings) -> FastAPI:
    policies = PolicyBook(
        load_policies(settings.scheduler_policy_dir) if settings.scheduler_policy_dir else {}
    )
    holder: dict[str, Scheduler] = {}
    loaded: list[tuple[Sealer, BlindIndexer]] = []

    def keys() -> tuple[Sealer, BlindIndexer]:
        if not loaded:  # keys are read when the service starts, not when the app is built
            loaded.append(load_keys(settings))
        return loaded[0]

    def sealer() -> Sealer:
        return keys()[0]

    def scheduler() -> Scheduler:
        if "scheduler" not in holder:
            holder["scheduler"] = Scheduler(
                sealer=sealer(),
                policies=policies,
                episode_window=timedelta(hours=settings.scheduler_episode_window_hours),
                indexer=keys()[1],
            )
        return holder["scheduler"]

    def consumers(_runtime: Runtime) -> Sequence[ConsumerSpec]:
        s = scheduler()
        return [
            ConsumerSpec(
                "overdoses", [INTAKE_OVERDOSES.name], s.on_overdose, batch_handler=s.on_overdoses
            ),
            ConsumerSpec("activity", [OUTREACH_ACTIVITY.name], s.on_activity),
            # from the start: no alert is missed while the group joins; stale ones are skipped
            ConsumerSpec("alerts", [REPORTING_ALERTS.name], s.hot_spots.on_alert, start="earliest"),
        ]

    @asynccontextmanager
    async def extension(app: FastAPI, runtime: Runtime) -> AsyncIterator[None]:
        app.state.policies = policies
        app.state.scheduler = scheduler()
        app.state.sealer = sealer()  # the audit log seals what callers state
        runner = TimerRunner(
            runtime.uow,
            scheduler().on_timer,
            replica=f"{socket.gethostname()}-{os.getpid()}",
            batch_size=settings.scheduler_timer_batch,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop), name="timers")
        try:
            yield
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=10)

    return create_service_app(
        "scheduler",
        settings,
        title="PORTline scheduler",
        description=DESCRIPTION,
        routers=[router],
        consumers=consumers,
        extension=extension,
    )
