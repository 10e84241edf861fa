"""The full hl7apy parse, off the event loop.

It costs milliseconds per message, and only overdose candidates need it; run inline it would
stall every partner connection while it works. A one-process pool puts it on another core.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
from datetime import UTC, tzinfo

from services.intake.hl7 import Screened, parse_adt, screen
from services.intake.records import AdtMessage

__all__ = ["ParsePool", "parse_inline"]

log = logging.getLogger(__name__)


async def parse_inline(message: str, screened: Screened, default_tz: tzinfo) -> AdtMessage:
    return parse_adt(message, screened, default_tz=default_tz)


def _parse(message: str, screened: Screened, default_tz: tzinfo) -> AdtMessage:
    return parse_adt(message, screened, default_tz=default_tz)


_WARM_UP_MESSAGE = (
    "MSH|^~\\&|PORTLINE|WARMUP|PORTLINE|WARMUP|20260101000000||ADT^A04^ADT_A01|WARMUP|P|2.5.1\r"
    "EVN|A04|20260101000000\r"
    "PID|1||0^^^WARMUP^MR||WARMUP^WARMUP\r"
    "PV1|1|E\r"
    "DG1|1||T40.1X1A^Poisoning by heroin, accidental^I10"
)


def _warm_up() -> bool:
    """Parse a made-up message: loads hl7apy and its structures in the worker process."""
    _parse(_WARM_UP_MESSAGE, screen(_WARM_UP_MESSAGE), UTC)
    return True


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

    async def warm_up(self) -> bool:
        """Start the worker and load the parser now, so that the first overdose after start
        does not wait for a process spawn and hl7apy's imports (about 0.1 s idle, more
        under load)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, _warm_up)
        except concurrent.futures.process.BrokenProcessPool:
            self._pool = self._new()
        except Exception:  # best effort: the first real parse starts the worker instead
            log.warning("parse pool warm-up failed", exc_info=True)
        return False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
