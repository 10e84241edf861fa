"""Kafka's side of a database backup and restore.

A backup of PostgreSQL holds every service's domain rows, outbox and inbox as of one moment
(the dump's snapshot). Kafka is not restored with it, so a restore must put the consumers
back where the restored database was:

- **Before the dump**, `take_position` records every PORTline consumer group's committed
  offsets and every topic's end offsets (`portline consumers position`). An offset is
  committed only after the effects of the records before it committed, so everything before
  those offsets is in the dump.
- **After the restore** (services stopped), `rewind` commits those offsets again: every
  record consumed after the backup is delivered again. What the dump already holds is a
  duplicate to the inbox and is skipped; what it lacks is applied. The restored outbox
  publishes again the rows that were not yet marked published, under their own event ids,
  which the inboxes also skip.
- **Ghosts.** A service that derives its events from other events (the scheduler: cases and
  tasks from reports and activity, and from its timers) makes them again when it replays its
  inputs, under new ids. The versions it published after the backup, before the disaster,
  are still on Kafka: its consumers would apply both. `mark_ghosts` finds them (records of
  such a topic after the backup's end offsets whose event id is not in the producer's
  restored outbox) and records them in each consumer's inbox, so they are skipped.

Events from the edge (partners' reports, the team's actions over HTTP) are never made again,
so they are replayed, not skipped: that is how nothing acknowledged after the backup is lost
downstream either (docs/deploy.md#backups-and-restore says what is).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.inbox import INBOX
from shared.kafka import KafkaConnection, kafka_connection
from shared.outbox import OUTBOX
from shared.settings import ServiceName
from shared.topics import SCHEDULER_CASES

__all__ = [
    "REGENERATED_TOPICS",
    "KafkaPosition",
    "ghost_candidates",
    "known_event_ids",
    "mark_ghosts",
    "rewind",
    "take_position",
]

REGENERATED_TOPICS: Mapping[str, ServiceName] = {SCHEDULER_CASES.name: "scheduler"}
"""Topics whose events their producer makes again after a restore, when it replays the events
and fires the timers they came from; by producing service. (intake's topics come from
partners and outreach's from the team: never made again, so always replayed.)"""


@dataclass
class KafkaPosition:
    """Where every consumer group and every topic stood just before a backup."""

    taken_at: str
    groups: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)
    """group -> topic -> partition -> committed offset."""
    ends: dict[str, dict[int, int]] = field(default_factory=dict)
    """topic -> partition -> end offset (the next record's offset)."""

    def to_json(self) -> str:
        return json.dumps(
            {"taken_at": self.taken_at, "groups": self.groups, "ends": self.ends}, indent=2
        )

    @classmethod
    def from_json(cls, text: str) -> KafkaPosition:
        raw = json.loads(text)

        def ints(m: Mapping[str, Any]) -> dict[int, int]:
            return {int(p): int(o) for p, o in m.items()}

        return cls(
            taken_at=str(raw["taken_at"]),
            groups={
                g: {t: ints(parts) for t, parts in topics.items()}
                for g, topics in raw["groups"].items()
            },
            ends={t: ints(parts) for t, parts in raw["ends"].items()},
        )


async def _partitions(
    bootstrap_servers: str | KafkaConnection, topics: Iterable[str]
) -> list[TopicPartition]:
    """The partitions of the topics that exist."""
    wanted = sorted(set(topics))
    if not wanted:
        return []
    admin = AIOKafkaAdminClient(
        **kafka_connection(bootstrap_servers).options(), client_id="portline-backup"
    )
    await admin.start()
    try:
        described = await admin.describe_topics(wanted)
    finally:
        await admin.close()
    found: list[TopicPartition] = []
    for topic in described:
        if topic.get("error_code", 0) != 0:
            continue  # not there (yet): nothing to record or move
        found.extend(
            TopicPartition(topic["topic"], p["partition"])
            for p in sorted(topic["partitions"], key=lambda p: int(p["partition"]))
        )
    return found


async def take_position(
    bootstrap_servers: str | KafkaConnection, groups: Mapping[str, Sequence[str]], *, now: datetime
) -> KafkaPosition:
    """Every group's committed offsets (of the topics it reads) and the topics' end offsets."""
    position = KafkaPosition(taken_at=now.isoformat())
    admin = AIOKafkaAdminClient(
        **kafka_connection(bootstrap_servers).options(), client_id="portline-backup"
    )
    await admin.start()
    try:
        for group, topics in groups.items():
            committed = await admin.list_consumer_group_offsets(group)
            by_topic: dict[str, dict[int, int]] = {}
            for tp, meta in committed.items():
                if tp.topic in topics and meta.offset >= 0:
                    by_topic.setdefault(tp.topic, {})[tp.partition] = meta.offset
            position.groups[group] = by_topic
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        **kafka_connection(bootstrap_servers).options(), enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = await _partitions(bootstrap_servers, {t for ts in groups.values() for t in ts})
        ends = await consumer.end_offsets(partitions)
        for tp, offset in ends.items():
            position.ends.setdefault(tp.topic, {})[tp.partition] = offset
    finally:
        await consumer.stop()
    return position


async def rewind(
    bootstrap_servers: str | KafkaConnection,
    position: KafkaPosition,
    groups: Mapping[str, Sequence[str]],
    *,
    starts: Mapping[str, Literal["earliest", "latest"]] | None = None,
) -> dict[str, int]:
    """Commit each group's offsets as the position recorded them; partitions moved per group.
    A partition a group had not committed at the backup starts where the group's start policy
    said then (`starts`, earliest by default): its first retained record, or (latest) the
    topic's end at the backup. Kafka refuses this while a group has members: stop the
    services first."""
    moved: dict[str, int] = {}
    for group, topics in groups.items():
        start = (starts or {}).get(group, "earliest")
        consumer = AIOKafkaConsumer(
            **kafka_connection(bootstrap_servers).options(),
            group_id=group,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            partitions = await _partitions(bootstrap_servers, topics)
            if not partitions:
                moved[group] = 0
                continue
            consumer.assign(partitions)
            first = await consumer.beginning_offsets(partitions)
            saved = position.groups.get(group, {})
            offsets: dict[TopicPartition, int] = {}
            for tp in partitions:
                unsaved = first[tp]
                if start == "latest":
                    unsaved = position.ends.get(tp.topic, {}).get(tp.partition, first[tp])
                offsets[tp] = max(saved.get(tp.topic, {}).get(tp.partition, unsaved), first[tp])
            await consumer.commit(offsets)
            moved[group] = len(offsets)
        finally:
            await consumer.stop()
    return moved


async def ghost_candidates(
    bootstrap_servers: str | KafkaConnection, topic: str, since: Mapping[int, int]
) -> set[str]:
    """The event ids of the topic's records from `since` (per partition) to its end now."""
    consumer = AIOKafkaConsumer(
        **kafka_connection(bootstrap_servers).options(),
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    ids: set[str] = set()
    try:
        partitions = await _partitions(bootstrap_servers, [topic])
        ends = await consumer.end_offsets(partitions)
        todo = {tp for tp in partitions if ends[tp] > since.get(tp.partition, ends[tp])}
        if not todo:
            return ids
        consumer.assign(sorted(todo, key=lambda tp: tp.partition))
        for tp in todo:
            consumer.seek(tp, since[tp.partition])
        while todo:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp] and record.value is not None:
                        event_id = _event_id(record.value)
                        if event_id is not None:
                            ids.add(event_id)
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
    finally:
        await consumer.stop()
    return ids


def _event_id(value: bytes) -> str | None:
    try:
        raw = json.loads(value)
    except ValueError:
        return None
    event_id = raw.get("id") if isinstance(raw, dict) else None
    return event_id if isinstance(event_id, str) and 0 < len(event_id) <= 64 else None


async def known_event_ids(
    sessions: async_sessionmaker[AsyncSession], candidates: Iterable[str]
) -> set[str]:
    """Which of the event ids the producer's (restored) outbox holds."""
    wanted = sorted(candidates)
    known: set[str] = set()
    async with sessions() as session:
        for start in range(0, len(wanted), 1000):
            chunk = wanted[start : start + 1000]
            rows = await session.execute(
                sa.select(OUTBOX.c.event_id).where(OUTBOX.c.event_id.in_(chunk))
            )
            known.update(rows.scalars())
    return known


async def mark_ghosts(
    sessions: async_sessionmaker[AsyncSession],
    consumer: str,
    ghosts: Iterable[str],
    *,
    now: datetime,
) -> int:
    """Record ghost events as applied in one consumer's inbox, so it skips them; how many
    were not there yet."""
    wanted = sorted(ghosts)
    added = 0
    async with sessions() as session, session.begin():
        for start in range(0, len(wanted), 1000):
            chunk = wanted[start : start + 1000]
            present = set(
                (
                    await session.execute(
                        sa.select(INBOX.c.event_id).where(
                            INBOX.c.consumer == consumer, INBOX.c.event_id.in_(chunk)
                        )
                    )
                ).scalars()
            )
            rows = [
                {"consumer": consumer, "event_id": e, "processed_at": now}
                for e in chunk
                if e not in present
            ]
            if rows:
                await session.execute(INBOX.insert(), rows)
                added += len(rows)
    return added
