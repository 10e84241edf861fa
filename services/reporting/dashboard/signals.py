"""What the dashboard shows besides figures: open spike alerts and each partner feed's health.

The dashboard reads them through `Signals`. Spike alerts (`GET /v1/alerts`) and feed health
(`GET /v1/feeds`) are the second half of issue 16; until they are built, `NOT_YET_BUILT`
answers None for both and the dashboard says that these panels are not available yet.
Plugging them in means writing a `Signals` over their read models and passing it to
`create_app` (`app.state.signals`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = ["NOT_YET_BUILT", "AlertView", "FeedView", "NotYetBuilt", "Signals"]


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
