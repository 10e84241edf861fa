"""Events reporting publishes on port.reporting.alerts.v1, keyed by program: a spike in a
county's overdoses, and a partner's feed gone quiet, rejected, or back to normal.

They carry aggregates only: a county, counts and times; never a person, a report or a
note (a lead's note on an alert stays in reporting, sealed).
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import AwareDatetime, Field

from shared.envelope import Event
from shared.topics import REPORTING_ALERTS

__all__ = ["FeedRecovered", "FeedRejectSpikeDetected", "FeedSilenceDetected", "SpikeDetected"]


class _AlertEvent(Event):
    topic = REPORTING_ALERTS.name

    alert_id: uuid.UUID = Field(description="The alert; an upgrade repeats it.")
    program_id: str = Field(max_length=64)


class SpikeDetected(_AlertEvent):
    """A county's overdoses rose beyond what its own history leads to expect (EWMA), or
    reached the program's "N in 24 hours" (ODMAP). Published when the alert is raised, and
    again, with the same `alert_id`, when a warning becomes an alert."""

    event_type = "SpikeDetected"

    county: str = Field(max_length=64)
    state: str | None = Field(default=None, max_length=16)
    detector: Literal["ewma", "odmap"]
    level: Literal["warning", "alert"]
    observed: float = Field(ge=0, description="Overdoses in the window.")
    expected: float | None = Field(
        default=None, description="EWMA: the baseline's mean per day; null for ODMAP."
    )
    p_value: float | None = Field(default=None, description="EWMA only.")
    threshold: int | None = Field(default=None, description="ODMAP only: the N of N in 24 h.")
    window_start: AwareDatetime
    window_end: AwareDatetime
    detected_at: AwareDatetime


class _FeedEvent(_AlertEvent):
    source_org: str = Field(max_length=100, description="The partner organization.")
    source_kind: str = Field(max_length=32)


class FeedSilenceDetected(_FeedEvent):
    """A partner's feed has been quiet far longer than its usual rate at this hour of the
    week allows."""

    event_type = "FeedSilenceDetected"

    last_message_at: AwareDatetime
    quiet_hours: float = Field(ge=0)
    expected_messages: float = Field(
        ge=0, description="Messages the partner usually sends in so long a quiet spell."
    )
    raised_at: AwareDatetime


class FeedRejectSpikeDetected(_FeedEvent):
    """Far more of a partner's recent messages were rejected than usual."""

    event_type = "FeedRejectSpikeDetected"

    rejected: int = Field(ge=0, description="Rejected messages in the window.")
    messages: int = Field(ge=0, description="All messages in the window.")
    usual_share: float = Field(ge=0, le=1, description="The usual share rejected.")
    window_hours: float = Field(gt=0)
    raised_at: AwareDatetime


class FeedRecovered(_FeedEvent):
    """A feed alert cleared: the partner sends again (`silent`), or its rejects fell back
    (`rejects_rising`)."""

    event_type = "FeedRecovered"

    kind: Literal["silent", "rejects_rising"]
    raised_at: AwareDatetime
    cleared_at: AwareDatetime
