"""Kafka topic names, their partition keys and their creation settings: written once, here."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ALL_TOPICS",
    "INTAKE_OVERDOSES",
    "INTAKE_REJECTED",
    "OUTREACH_ACTIVITY",
    "OUTREACH_TEAM",
    "SCHEDULER_CASES",
    "TopicSpec",
]


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    """What the message key is; one key's events stay in order on one partition."""
    partitions: int = 6
    retention_ms: int = 30 * 24 * 3600 * 1000
    compact: bool = False
    """Keep the latest event of every key for good (cleanup.policy=compact) instead of
    deleting events after `retention_ms`: the topic is then a table of current states."""

    @property
    def configs(self) -> dict[str, str]:
        """The topic's settings as the broker takes them."""
        if self.compact:
            return {"cleanup.policy": "compact"}
        return {"retention.ms": str(self.retention_ms)}


INTAKE_OVERDOSES = TopicSpec(
    "port.intake.overdoses.v1", key="person key (blind index) or report id if de-identified"
)
INTAKE_REJECTED = TopicSpec("port.intake.rejected.v1", key="partner organization id")
SCHEDULER_CASES = TopicSpec("port.scheduler.cases.v1", key="case id")
OUTREACH_ACTIVITY = TopicSpec("port.outreach.activity.v1", key="case id")
OUTREACH_TEAM = TopicSpec(
    "port.outreach.team.v1",
    key="program id and member id ('<program>/<member>')",
    partitions=1,
    compact=True,
)
"""Whether each team member may use the team APIs: a service that starts years later still
learns every deactivation."""

ALL_TOPICS: tuple[TopicSpec, ...] = (
    INTAKE_OVERDOSES,
    INTAKE_REJECTED,
    SCHEDULER_CASES,
    OUTREACH_ACTIVITY,
    OUTREACH_TEAM,
)
