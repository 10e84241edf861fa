"""What the dashboard shows besides figures: open spike alerts and each partner feed's health.

The dashboard reads them through `Signals`. Spike alerts (`GET /v1/alerts`) and feed health
(`GET /v1/feeds`) come from reporting's own tables through `LiveSignals`, which the service
uses; `NOT_YET_BUILT` answers None for both (the panels then say they are not available), for
tests of the page alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from services.reporting.alerts import list_alerts
from services.reporting.feeds import FeedRules, feed_health
from services.reporting.programs import ProgramBook

__all__ = ["NOT_YET_BUILT", "AlertView", "FeedView", "LiveSignals", "NotYetBuilt", "Signals"]


@dataclass(frozen=True, slots=True)
class AlertView:
    """An open spike alert, as the dashboard lists it."""

    county: str
    detector: str
    """e.g. `ewma` or `odmap`."""
    level: str
    """`alert` or `warning`."""
    observed: int
    expected: float | None
    window_start: datetime
    window_end: datetime


@dataclass(frozen=True, slots=True)
class FeedView:
    """One partner feed's health, as the dashboard lists it."""

    partner: str
    source_kind: str
    status: str
    """`ok`, `silent` or `rejects_rising`."""
    last_message_at: datetime | None
    detail: str = ""


class Signals(Protocol):
    async def open_alerts(self, program_id: str) -> Sequence[AlertView] | None:
        """The program's open alerts, newest first; None when alerts are not available."""
        ...

    async def feeds(self, program_id: str) -> Sequence[FeedView] | None:
        """The program's partner feeds; None when feed health is not available."""
        ...


class NotYetBuilt:
    """Neither spike alerts nor feed health exist yet: both panels say so."""

    async def open_alerts(self, program_id: str) -> Sequence[AlertView] | None:
        return None

    async def feeds(self, program_id: str) -> Sequence[FeedView] | None:
        return None


NOT_YET_BUILT = NotYetBuilt()


class LiveSignals:
    """Spike alerts and feed health from reporting's own tables (services.reporting.alerts
    and .feeds), as `GET /v1/alerts?status=open` and `GET /v1/feeds` answer them."""

    def __init__(
        self,
        sessions: Callable[[], AbstractAsyncContextManager[AsyncSession]],
        programs: ProgramBook,
        feeds: FeedRules,
        now: Callable[[], datetime],
    ) -> None:
        self._sessions = sessions
        self._programs = programs
        self._feeds = feeds
        self._now = now

    async def open_alerts(self, program_id: str) -> Sequence[AlertView] | None:
        async with self._sessions() as session:
            alerts = await list_alerts(session, program_id, status="open")
        return [
            AlertView(
                county=a.county,
                detector=a.detector,
                level=a.level,
                observed=int(a.observed),
                expected=a.expected,
                window_start=a.window_start,
                window_end=a.window_end,
            )
            for a in alerts
        ]

    async def feeds(self, program_id: str) -> Sequence[FeedView] | None:
        async with self._sessions() as session:
            health = await feed_health(
                session, self._programs.for_program(program_id), self._feeds, self._now()
            )
        return [
            FeedView(
                partner=h.source_org,
                source_kind=h.source_kind,
                status=h.state,
                last_message_at=h.last_message_at,
                detail=f"quiet {h.quiet_hours:.1f} h; usual {h.usual_per_hour:.2f} an hour",
            )
            for h in health
        ]
