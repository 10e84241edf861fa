"""The parse pool: the full hl7apy parse in another process, started before it is needed."""

from __future__ import annotations

from datetime import UTC

from services.intake.hl7 import screen
from services.intake.parse_pool import ParsePool, parse_inline
from tests.hl7_builder import adt


async def test_warm_up_starts_the_worker_and_parses_there_like_inline() -> None:
    pool = ParsePool(1)
    try:
        assert await pool.warm_up() is True
        message = adt("POOL-1", family="Poolson")
        screened = screen(message)
        assert await pool(message, screened, UTC) == await parse_inline(message, screened, UTC)
    finally:
        pool.close()
