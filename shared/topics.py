"""Kafka topic names, their partition keys and their creation settings: written once, here.

Every topic is created by `portline topics create` (`shared.bus.ensure_topics`) with explicit
settings, none left to the broker's defaults: its partitions, replication factor,
``min.insync.replicas``, ``compression.type``, ``cleanup.policy`` and retention. The
deployment's choices come from settings (:class:`TopicLayout`, ``PORTLINE_KAFKA_*``); what is
particular to a topic (the team topic is compacted, one partition) is its :class:`TopicSpec`.

Retention: the four fact topics keep their events for good by default (``retention.ms=-1``):
reporting's rebuild replays them from the start, so it can rebuild every figure only while
they hold every event. A program that must shorten that sets
``PORTLINE_KAFKA_FACT_RETENTION_DAYS``, and its snapshot is then reporting's own schema
(backed up with the database): a rebuild reaches back only as far as the topics do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ALL_TOPICS",
    "COMPRESSION",
    "INTAKE_OVERDOSES",
    "INTAKE_REJECTED",
    "OUTREACH_ACTIVITY",
    "OUTREACH_TEAM",
    "REPORTING_ALERTS",
    "SCHEDULER_CASES",
    "TopicLayout",
    "TopicSpec",
]

Compression = Literal["gzip", "none"]
COMPRESSION: dict[str, str] = {"gzip": "gzip", "none": "uncompressed"}
"""A compression setting as the broker's topic config takes it (the producer compresses with
the same codec, so the broker stores the batches as they come). gzip is the one codec the
Kafka client compresses with without another library."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    """What the message key is; one key's events stay in order on one partition."""
    partitions: int | None = None
    """None: the deployment's partition count (TopicLayout.partitions)."""
    compact: bool = False
    """Keep the latest event of every key for good (cleanup.policy=compact) instead of
    deleting events after the retention: the topic is then a table of current states."""
    retention_days: int | None = None
    """None: the deployment's fact retention (TopicLayout.fact_retention_days)."""


@dataclass(frozen=True)
class TopicLayout:
    """The deployment's topic settings (PORTLINE_KAFKA_PARTITIONS, _REPLICATION,
    _MIN_INSYNC_REPLICAS, _COMPRESSION and _FACT_RETENTION_DAYS)."""

    partitions: int = 6
    replication: int = 1
    min_insync_replicas: int = 1
    compression: Compression = "gzip"
    fact_retention_days: int = 0
    """0: keep fact events for good."""

    def partitions_of(self, spec: TopicSpec) -> int:
        return spec.partitions or self.partitions

    def configs(self, spec: TopicSpec) -> dict[str, str]:
        """The topic's settings as the broker takes them."""
        configs = {
            "min.insync.replicas": str(self.min_insync_replicas),
            "compression.type": COMPRESSION[self.compression],
        }
        if spec.compact:
            return {**configs, "cleanup.policy": "compact"}
        days = self.fact_retention_days if spec.retention_days is None else spec.retention_days
        retention = str(days * 24 * 3600 * 1000) if days else "-1"
        return {**configs, "cleanup.policy": "delete", "retention.ms": retention}


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

REPORTING_ALERTS = TopicSpec("port.reporting.alerts.v1", key="program id", partitions=1)
"""Spikes in a county's overdoses and partner feeds gone quiet or rejected: few events, one
program's in order."""

ALL_TOPICS: tuple[TopicSpec, ...] = (
    INTAKE_OVERDOSES,
    INTAKE_REJECTED,
    SCHEDULER_CASES,
    OUTREACH_ACTIVITY,
    OUTREACH_TEAM,
    REPORTING_ALERTS,
)
