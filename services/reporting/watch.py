"""When reporting looks for spikes and checks the feeds: right after a batch of reports is
applied (spikes, in the counties the batch touched, in the batch's own unit of work), and
on a timer (spikes in every county, and every feed, program by program).

Both hold the read models' lock (`store.lock_read_models`) while they write alerts, so two
replicas, or the consumer and the timer, never raise one alert twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from services.reporting.alerts import detect_program
from services.reporting.facts import UNKNOWN
from services.reporting.feeds import FeedHealth, FeedRules, check_feeds
from services.reporting.gauges import (
    FEED_QUIET,
    FEED_REJECTS_RISING,
    FEED_SILENT,
    SPIKE_ALERTS,
    SPIKE_SECONDS,
)
from services.reporting.models import EPISODE, PROGRAM, REPORT
from services.reporting.programs import ProgramBook
from services.reporting.store import lock_read_models
from shared.events import SpikeDetected
from shared.uow import UnitOfWork

__all__ = ["Watch"]

log = logging.getLogger(__name__)

RECENT = timedelta(days=2)
"""A batch's overdoses older than this (by local day) cannot change today's or yesterday's
test, so they start no detection (a backlog or a replay of history stays cheap)."""


class Watch:
    """Spike detection and feed checks for every program reporting knows."""

    def __init__(self, programs: ProgramBook, feeds: FeedRules) -> None:
        self.programs = programs
        self.feeds = feeds

    async def after_batch(
        self, uow: UnitOfWork, rows: dict[sa.Table, list[dict[str, Any]]]
    ) -> None:
        """Look at once at the counties whose recent overdoses this batch brought (the
        batch's episodes and reports), inside its unit of work."""
        now = uow.clock.now()
        touched: dict[str, set[str]] = {}
        for row in (*rows.get(EPISODE, ()), *rows.get(REPORT, ())):
            day, county = row.get("day"), row.get("county")
            if day is None or county in (None, UNKNOWN) or not row.get("overdose", True):
                continue
            rules = self.programs.for_program(row["program_id"])
            if rules.local_date(now) - day <= RECENT:
                touched.setdefault(rules.program_id, set()).add(county)
        for program_id, counties in sorted(touched.items()):
            rules = self.programs.for_program(program_id)
            _count(await detect_program(uow, rules, sorted(counties)))

    async def program_ids(self, uow_factory: Callable[[], UnitOfWork]) -> list[str]:
        async with uow_factory() as uow:
            return list((await uow.session.execute(sa.select(PROGRAM.c.program_id))).scalars())

    async def run_once(self, uow_factory: Callable[[], UnitOfWork]) -> dict[str, list[FeedHealth]]:
        """One pass over every program: spikes in all its counties, then its feeds. Each
        program commits on its own. Returns the feeds' health by program."""
        health: dict[str, list[FeedHealth]] = {}
        for program_id in sorted(await self.program_ids(uow_factory)):
            rules = self.programs.for_program(program_id)
            async with uow_factory() as uow:
                await lock_read_models(uow.session)
                started = time.perf_counter()
                published = await detect_program(uow, rules)
                SPIKE_SECONDS.labels(program_id).set(time.perf_counter() - started)
                health[program_id] = await check_feeds(uow, rules, self.feeds)
                await uow.commit()
            _count(published)
            _gauge(program_id, health[program_id])
        return health

    async def run(
        self, uow_factory: Callable[[], UnitOfWork], stop: asyncio.Event, interval: float
    ) -> None:
        """Every `interval` seconds until `stop`; a failed pass is logged and retried."""
        while not stop.is_set():
            try:
                await self.run_once(uow_factory)
            except Exception:
                log.exception("spike and feed watch failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


def _count(published: Iterable[SpikeDetected]) -> None:
    for event in published:
        SPIKE_ALERTS.labels(event.program_id, event.detector, event.level).inc()


def _gauge(program_id: str, health: Iterable[FeedHealth]) -> None:
    for feed in health:
        FEED_SILENT.labels(program_id, feed.source_org).set(int(feed.state == "silent"))
        FEED_REJECTS_RISING.labels(program_id, feed.source_org).set(
            int(feed.state == "rejects_rising")
        )
        FEED_QUIET.labels(program_id, feed.source_org).set(feed.quiet_hours * 3600)
