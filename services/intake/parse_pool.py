"""The full hl7apy parse, off the event loop.

It costs milliseconds per message, and only overdose candidates need it; run inline it would
stall every partner connection while it works. A one-process pool puts it on another core.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
from datetime import tzinfo

from services.intake.hl7 import Screened, parse_adt
from services.intake.records import AdtMessage

__all__ = ["ParsePool", "parse_inline"]


async def parse_inline(message: str, screened: Screened, default_tz: tzinfo) -> AdtMessage:
    return parse_adt(message, screened, default_tz=default_tz)


def _parse(message: str, screened: Screened, default_tz: tzinfo) -> AdtMessage:
    return parse_adt(message, screened, default_tz=default_tz)


class ParsePool:
    def __init__(self, workers: int = 1) -> None:
        self._workers = workers
        self._pool = self._new()

    def _new(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            self._workers, mp_context=multiprocessing.get_context("spawn")
        )

    async def __call__(self, message: str, screened: Screened, default_tz: tzinfo) -> AdtMessage:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, _parse, message, screened, default_tz)
        except concurrent.futures.process.BrokenProcessPool:
            self._pool = self._new()  # a crashed worker: the next message gets a fresh one
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
