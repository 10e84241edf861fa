"""The consumer loop with a fake consumer: what it applies together, what it commits, where it
fetches again after a transient failure."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from shared.bus import ConsumerLoop
from shared.inbox import IncomingMessage, Outcome

TOPIC = "t"


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes = b"{}"
    headers: tuple[tuple[str, bytes], ...] = ()


class FakeConsumer:
    """Hands out one fetch, then stops the loop; records commits and seeks."""

    def __init__(self, fetched: dict[TopicPartition, list[Record]], stop: asyncio.Event) -> None:
        self._fetched = fetched
        self._stop = stop
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: dict[TopicPartition, int] = {}
        self.highwaters: dict[TopicPartition, int] = {}

    async def getmany(self, **_kwargs: Any) -> dict[TopicPartition, list[Record]]:
        fetched, self._fetched = self._fetched, {}
        if not fetched:
            self._stop.set()
        return fetched

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    def assignment(self) -> set[TopicPartition]:
        return set(self.highwaters)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters.get(tp)


class FakeProcessor:
    consumer = "test.consumer"

    def __init__(self, fail_on_batch: int | None = None) -> None:
        self.batches: list[list[tuple[int, int]]] = []
        self._fail_on_batch = fail_on_batch

    async def process_batch(self, messages: Sequence[IncomingMessage]) -> list[Outcome]:
        if len(self.batches) == self._fail_on_batch:
            raise sa.exc.OperationalError("select 1", {}, ConnectionError("database down"))
        self.batches.append([(m.partition, m.offset) for m in messages])
        return [Outcome.APPLIED for _ in messages]


def fetch(**partitions: range) -> dict[TopicPartition, list[Record]]:
    return {
        TopicPartition(TOPIC, int(p.removeprefix("p"))): [
            Record(TOPIC, int(p.removeprefix("p")), o) for o in offsets
        ]
        for p, offsets in partitions.items()
    }


async def run(consumer: FakeConsumer, processor: FakeProcessor, batch_size: int) -> None:
    loop = ConsumerLoop(
        consumer,  # type: ignore[arg-type]
        processor,  # type: ignore[arg-type]
        retry_backoff=0,
        batch_size=batch_size,
    )
    await loop.run(consumer._stop)


async def test_a_batch_holds_several_partitions_records_each_in_order() -> None:
    stop = asyncio.Event()
    consumer = FakeConsumer(fetch(p0=range(10, 13), p1=range(5, 7)), stop)
    processor = FakeProcessor()
    await run(consumer, processor, batch_size=4)
    assert processor.batches == [[(0, 10), (0, 11), (0, 12), (1, 5)], [(1, 6)]]
    p0, p1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    assert consumer.commits == [{p0: 13, p1: 6}, {p1: 7}]  # each after its batch committed


async def test_a_transient_failure_fetches_every_partition_again_from_its_first_unapplied() -> None:
    stop = asyncio.Event()
    consumer = FakeConsumer(fetch(p0=range(0, 3), p1=range(7, 10)), stop)
    processor = FakeProcessor(fail_on_batch=1)
    await run(consumer, processor, batch_size=2)
    assert processor.batches == [[(0, 0), (0, 1)]]
    p0, p1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    assert consumer.commits == [{p0: 2}]
    assert consumer.seeks == {p0: 2, p1: 7}


async def test_a_fetch_is_at_least_as_large_as_a_batch() -> None:
    stop = asyncio.Event()
    asked: list[int] = []

    class Recording(FakeConsumer):
        async def getmany(self, **kwargs: Any) -> dict[TopicPartition, list[Record]]:
            asked.append(kwargs["max_records"])
            return await super().getmany(**kwargs)

    consumer = Recording(fetch(p0=range(0, 1000)), stop)
    processor = FakeProcessor()
    await run(consumer, processor, batch_size=1000)
    assert asked[0] == 1000
    assert [len(b) for b in processor.batches] == [1000]
    stop.clear()
    await run(Recording(fetch(p0=range(0, 3)), stop), FakeProcessor(), batch_size=50)
    assert asked[-1] == 200  # the default fetch stays as it was


async def test_the_lag_is_the_high_watermark_less_the_committed_offset() -> None:
    stop = asyncio.Event()
    consumer = FakeConsumer(fetch(p0=range(0, 3), p1=range(7, 10)), stop)
    p0, p1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    consumer.highwaters = {p0: 8, p1: 10}
    processor = FakeProcessor()
    processor.consumer = "test.lagging"
    await run(consumer, processor, batch_size=10)

    def lag(partition: int) -> float | None:
        return REGISTRY.get_sample_value(
            "portline_consumer_lag_records",
            {
                "service": "test",
                "consumer": "test.lagging",
                "topic": TOPIC,
                "partition": str(partition),
            },
        )

    assert lag(0) == 5  # applied up to offset 2 of 8
    assert lag(1) == 0
