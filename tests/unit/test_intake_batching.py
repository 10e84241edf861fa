"""The group-commit batcher: order, per-caller results, early replies and failures."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.intake.batching import MicroBatcher, Overloaded, Reply


async def test_callers_get_their_own_results_and_waiting_items_share_the_next_batch() -> None:
    batches: list[list[int]] = []
    gate = asyncio.Event()

    async def process(items: Sequence[int], _reply: Reply[int]) -> list[int]:
        batches.append(list(items))
        await gate.wait()
        return [i * 10 for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(process, max_batch=3, max_concurrent=1)
    batcher.start()
    try:
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.01)  # the first batch is in flight with one item
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(2, 7)]
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(first, *rest)
    finally:
        await batcher.stop()
    assert results == [10, 20, 30, 40, 50, 60]
    assert batches == [[1], [2, 3, 4], [5, 6]]


async def test_a_reply_answers_its_caller_before_the_batch_is_over() -> None:
    release_rest = asyncio.Event()

    async def process(items: Sequence[str], reply: Reply[str]) -> list[str]:
        reply(items.index("fast"), "early")
        await release_rest.wait()
        return [f"late {i}" for i in items]

    batcher: MicroBatcher[str, str] = MicroBatcher(process, max_concurrent=1)
    batcher.start()
    try:
        # both are queued before the worker runs: they form one batch
        slow = asyncio.create_task(batcher.submit("slow"))
        fast = asyncio.create_task(batcher.submit("fast"))
        assert await asyncio.wait_for(fast, 5) == "early"
        assert not slow.done()
        release_rest.set()
        assert await asyncio.wait_for(slow, 5) == "late slow"
    finally:
        await batcher.stop()


async def test_a_failed_batch_fails_every_caller_in_it_and_the_next_batch_still_runs() -> None:
    calls = 0

    async def process(items: Sequence[int], _reply: Reply[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database down")
        return list(items)

    batcher: MicroBatcher[int, int] = MicroBatcher(process)
    batcher.start()
    try:
        with pytest.raises(ConnectionError):
            await batcher.submit(1)
        assert await batcher.submit(2) == 2
    finally:
        await batcher.stop()


async def test_submitting_to_a_stopped_batcher_is_refused() -> None:
    async def process(items: Sequence[int], _reply: Reply[int]) -> list[int]:
        return list(items)

    batcher: MicroBatcher[int, int] = MicroBatcher(process)
    with pytest.raises(RuntimeError):
        await batcher.submit(1)


async def test_a_full_queue_refuses_at_once_and_the_queued_callers_are_still_answered() -> None:
    gate = asyncio.Event()

    async def process(items: Sequence[int], _reply: Reply[int]) -> list[int]:
        await gate.wait()
        return [i * 10 for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(
        process, max_batch=8, max_concurrent=1, max_pending=2
    )
    batcher.start()
    try:
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.01)  # in its batch, held
        # 2 is taken for the next batch (waiting for the commit slot); 3 and 4 fill the queue
        queued = [asyncio.create_task(batcher.submit(2))]
        await asyncio.sleep(0.01)
        queued += [asyncio.create_task(batcher.submit(i)) for i in (3, 4)]
        await asyncio.sleep(0.01)
        assert batcher.pending() == 2
        with pytest.raises(Overloaded):
            await batcher.submit(5)
        gate.set()
        assert await asyncio.gather(first, *queued) == [10, 20, 30, 40]
        assert batcher.pending() == 0
        assert await batcher.submit(6) == 60  # room again
    finally:
        await batcher.stop()


async def test_stopping_cancels_the_callers_still_queued() -> None:
    gate = asyncio.Event()

    async def process(items: Sequence[int], _reply: Reply[int]) -> list[int]:
        await gate.wait()
        return list(items)

    batcher: MicroBatcher[int, int] = MicroBatcher(process, max_concurrent=1)
    batcher.start()
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(batcher.submit(2))  # waits for the only commit slot
    await asyncio.sleep(0.01)
    gate.set()
    await batcher.stop()
    assert await first == 1
    (outcome,) = await asyncio.gather(second, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError) or outcome == 2
