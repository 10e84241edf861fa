"""Group commit: requests that arrive while transactions are in flight share the next one.

Every partner connection waits for its own durable ACK, so without batching the intake rate
is bounded by one commit per message. The batcher hands the processing function everything
that queued up meanwhile and resolves each caller's future with its own result. A few batches
may be in flight at once (`max_concurrent`), so the database is never idle while a batch
is being prepared; each caller still gets its results only after its own batch committed.

`process` may also answer some callers before it returns, through the `reply(index, result)`
callback it is given: a batch whose parts commit separately releases each part as soon as it
is durable.

The queue is bounded (`max_pending`): when it is full, `submit` raises :class:`Overloaded` at
once instead of queueing, and the edge answers "busy, resend" (MLLP AE, HTTP 503 with
Retry-After). Memory stays flat however fast partners send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["MicroBatcher", "Overloaded", "Reply"]

T = TypeVar("T")
R = TypeVar("R")

Reply = Callable[[int, R], None]
"""Answers the caller of the batch's item at `index` now, before `process` returns."""

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """Too many submissions are already waiting: the caller should resend later."""


class MicroBatcher(Generic[T, R]):
    """Runs `process` over batches of submitted items, in submission order."""

    def __init__(
        self,
        process: Callable[[Sequence[T], Reply[R]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 256,
        max_concurrent: int = 1,
        max_pending: int = 0,
    ) -> None:
        self._process = process
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(max_concurrent)
        # A plain deque and one wake-up future, not an asyncio.Queue (its task counts and
        # getter and putter futures serve nothing here). Not measurably faster: simpler.
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._max_pending = max_pending
        self._arrived: asyncio.Future[None] | None = None
        """Set while the worker waits for the queue to be non-empty."""
        self._worker: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def pending(self) -> int:
        """Submissions waiting for a batch (not yet in one)."""
        return len(self._queue)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=10)
        while self._queue:
            _item, future = self._queue.popleft()
            if not future.done():
                future.cancel()

    async def submit(self, item: T) -> R:
        if self._worker is None:
            raise RuntimeError("batcher is not running")
        if 0 < self._max_pending <= len(self._queue):
            raise Overloaded("too many submissions are waiting")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        arrived = self._arrived
        if arrived is not None and not arrived.done():
            arrived.set_result(None)
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            while not queue:
                self._arrived = loop.create_future()
                try:
                    await self._arrived
                finally:
                    self._arrived = None
            first = queue.popleft()  # taken, as a queue's get() would: it no longer counts
            try:
                await self._slots.acquire()  # while every slot is busy, the next batch grows
                await asyncio.sleep(0)  # let callers woken by the last batch enqueue too
            except asyncio.CancelledError:
                queue.appendleft(first)  # stopped: stop() answers it with the rest
                raise
            batch = [first]
            while len(batch) < self._max_batch and queue:
                batch.append(queue.popleft())
            task = asyncio.create_task(self._complete(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _complete(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        def reply(index: int, result: R) -> None:
            future = batch[index][1]
            if not future.done():
                future.set_result(result)

        try:
            results = await self._process([item for item, _ in batch], reply)
        except Exception as exc:
            for _item, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._slots.release()
        for (_item, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
