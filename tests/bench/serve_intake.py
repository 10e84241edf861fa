"""`portline run intake` with benchmark-only instrumentation and what-if experiments.

The benchmark starts this module instead of `portline run intake` only when asked to
(`--profile`, `--count-sql`, `--experiment`); product code is never changed, the hooks are
applied here, in this process, before the service starts. Environment variables:

* ``BENCH_PHASE_OUT=<dir>``: SIGUSR1 marks the start of the measured phase, SIGUSR2 its
  end; at the end the instruments below write their results into the directory.
* ``BENCH_PROFILE=1``: cProfile the measured phase by CPU time, not wall time, so that the
  load of other processes does not inflate it (``intake.prof``).
* ``BENCH_COUNT_SQL=1``: count SQL statements and commits in the measured phase
  (``sql-counts.json``), through SQLAlchemy engine events.
* ``BENCH_EXPERIMENTS=a,b``: what-if changes, each a hint for an optimisation, never a
  product setting:

  - ``uvloop``: run the service on uvloop (``shared.serve.serve`` calls ``asyncio.run``
    itself, so uvicorn's ``loop="auto"`` never applies);
  - ``no-relay-wake``: batches do not wake the outbox relay (it still polls every
    ``relay_poll_interval_seconds``), i.e. what waking it only for batches that wrote
    outbox rows would save;
  - ``no-pre-ping``: engines without ``pool_pre_ping`` (one ``SELECT 1`` round trip less
    per checkout);
  - ``async-commit``: ``synchronous_commit=off`` on intake's connections. NOT durable:
    shows how much of the time is the WAL flush, nothing more.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", re.IGNORECASE)
EXPERIMENTS = frozenset({"uvloop", "no-relay-wake", "no-pre-ping", "async-commit"})


def _apply_experiments(names: set[str]) -> None:
    unknown = names - EXPERIMENTS
    if unknown:
        raise SystemExit(f"serve_intake: unknown experiment(s) {sorted(unknown)}")
    if "uvloop" in names:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if "no-relay-wake" in names:
        from shared.outbox import OutboxRelay

        OutboxRelay.wake = lambda self: None  # type: ignore[method-assign]
    if names & {"no-pre-ping", "async-commit"}:
        import shared.db

        original = vars(shared.db)["create_async_engine"]

        def create_async_engine(url: Any, **kwargs: Any) -> Any:
            if "no-pre-ping" in names:
                kwargs["pool_pre_ping"] = False
            if "async-commit" in names and str(url).startswith("postgresql"):
                settings = kwargs.setdefault("connect_args", {}).setdefault("server_settings", {})
                settings["synchronous_commit"] = "off"
            return original(url, **kwargs)

        setattr(shared.db, "create_async_engine", create_async_engine)  # noqa: B010


class _SqlCounter:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.on = False
        import sqlalchemy as sa
        from sqlalchemy import event

        event.listen(sa.engine.Engine, "before_cursor_execute", self._statement)
        event.listen(sa.engine.Engine, "commit", self._commit)

    def _statement(
        self,
        _conn: Any,
        _cursor: Any,
        statement: str,
        _parameters: Any,
        _context: Any,
        executemany: bool,
    ) -> None:
        if self.on:
            kind = statement.split(None, 1)[0].upper() if statement.strip() else "?"
            table = _TABLE.search(statement)
            shape = f"{kind} {table.group(1)}" if table else " ".join(statement.split())[:40]
            self.counts[shape + (" (executemany)" if executemany else "")] += 1

    def _commit(self, _conn: Any) -> None:
        if self.on:
            self.counts["COMMIT"] += 1


def main() -> None:
    _apply_experiments({e for e in os.environ.get("BENCH_EXPERIMENTS", "").split(",") if e})

    from services.intake.app import create_app
    from shared.serve import serve

    out = Path(os.environ.get("BENCH_PHASE_OUT", "."))
    profiler = (
        cProfile.Profile(time.process_time) if os.environ.get("BENCH_PROFILE") == "1" else None
    )
    counter = _SqlCounter() if os.environ.get("BENCH_COUNT_SQL") == "1" else None

    def start(_signum: int, _frame: FrameType | None) -> None:
        if counter is not None:
            counter.counts.clear()
            counter.on = True
        if profiler is not None:
            profiler.enable()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(out / "intake.prof")
        if counter is not None:
            counter.on = False
            (out / "sql-counts.json").write_text(json.dumps(dict(counter.counts)))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    serve("intake", create_app)


if __name__ == "__main__":
    main()
