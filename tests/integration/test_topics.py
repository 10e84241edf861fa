"""Topics on the real broker: created with the layout's settings, and set again when they change."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared.bus import ensure_topics, make_admin
from shared.topics import TopicLayout, TopicSpec

pytestmark = pytest.mark.integration

WATCHED = ("cleanup.policy", "retention.ms", "min.insync.replicas", "compression.type")


async def topic_configs(bootstrap: str, name: str) -> dict[str, Any]:
    admin = make_admin(bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, configs=None)]
        )
        described = await admin.describe_topics([name])
    finally:
        await admin.close()
    (resource,) = response.resources
    entries = {entry[0]: entry[1] for entry in resource[4]}
    return {
        **{key: entries[key] for key in WATCHED},
        "partitions": len(described[0]["partitions"]),
    }


async def test_topics_are_created_with_explicit_settings_and_kept_in_line(
    kafka_bootstrap: str,
) -> None:
    facts = TopicSpec(f"port.test.facts.{uuid.uuid4().hex[:8]}", key="k")
    table = TopicSpec(
        f"port.test.table.{uuid.uuid4().hex[:8]}", key="k", partitions=1, compact=True
    )
    week = TopicLayout(partitions=3, fact_retention_days=7)

    assert await ensure_topics(kafka_bootstrap, week, [facts, table]) == (
        [facts.name, table.name],
        [],
    )
    assert await topic_configs(kafka_bootstrap, facts.name) == {
        "cleanup.policy": "delete",
        "retention.ms": str(7 * 86_400_000),
        "min.insync.replicas": "1",
        "compression.type": "gzip",
        "partitions": 3,
    }
    assert (await topic_configs(kafka_bootstrap, table.name))["cleanup.policy"] == "compact"

    # The program decides to keep its facts for good: the next run sets it on the topic.
    forever = TopicLayout(partitions=12, fact_retention_days=0)
    assert await ensure_topics(kafka_bootstrap, forever, [facts]) == ([], [facts.name])
    after = await topic_configs(kafka_bootstrap, facts.name)
    assert after["retention.ms"] == "-1"
    assert after["partitions"] == 3  # partition counts are never changed by it
