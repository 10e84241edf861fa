"""Applying events to the read models: facts first, then the outcomes they change.

One path for every caller: the live consumer (the inbox's unit of work, a batch at a time),
and `portline reporting rebuild`, which feeds the same handler from the start of each topic.
Each batch is: the facts of its events (`facts.py`), with people merged by a lead counted as
the person who stays (`merges.py`), merged into their tables (`store.py`),
then the outcomes of the cases, people and reports they touched derived again; then, for the
live consumer, the spike detectors on the counties whose recent overdoses it brought
(`watch.py`), so an alert commits with the report that raised it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from services.reporting.facts import FactContext, facts_of
from services.reporting.merges import apply_merges
from services.reporting.models import COUNTY, DAY
from services.reporting.programs import ProgramBook
from services.reporting.store import (
    derive_cases,
    derive_deidentified,
    derive_people,
    lock_read_models,
    write_facts,
)
from services.reporting.watch import Watch
from shared.envelope import Envelope
from shared.uow import UnitOfWork

__all__ = ["ReadModels"]


class ReadModels:
    """The handler (and batch handler) of reporting's consumer."""

    def __init__(
        self,
        programs: ProgramBook,
        *,
        late_after: timedelta = timedelta(hours=72),
        watch: Watch | None = None,
    ):
        """`watch`: detect spikes after each batch (the live consumer; a rebuild does not:
        the timer looks at every county once it is done)."""
        self._context = FactContext(programs=programs, late_after=late_after)
        self._watch = watch
        self._dimensions_written: set[tuple[str, tuple[object, ...]]] = set()

    async def apply(self, uow: UnitOfWork, envelope: Envelope) -> None:
        await self.apply_all(uow, [envelope])

    async def apply_all(self, uow: UnitOfWork, envelopes: Sequence[Envelope]) -> None:
        """Apply events (any topics, any order) with one read and one write per table."""
        batch = facts_of(list(envelopes), self._context)
        if not batch.rows:
            return
        session = uow.session
        await lock_read_models(session)
        await apply_merges(session, batch)
        fresh = self._new_dimensions(batch.rows)
        if fresh:  # remembered once they are committed, not before

            def committed(_session: object) -> None:
                self._dimensions_written |= fresh

            sa.event.listen(session.sync_session, "after_commit", committed, once=True)
        reports = await write_facts(session, batch.rows)
        await derive_deidentified(session, reports)
        await derive_cases(session, batch.cases)
        await derive_people(session, batch.people)
        if self._watch is not None:
            await self._watch.after_batch(uow, batch.rows)

    def _new_dimensions(self, rows: dict[sa.Table, list[dict[str, Any]]]) -> set[Any]:
        """Leave out the days and counties this process has written already (every batch
        names them again); returns those it is about to write. Should a rebuild elsewhere
        empty the tables meanwhile, it writes them again itself from the same events."""
        fresh: set[Any] = set()
        for table in (DAY, COUNTY):
            kept = []
            for row in rows.get(table, []):
                key = (table.name, tuple(row[c.name] for c in table.primary_key))
                if key not in self._dimensions_written:
                    kept.append(row)
                    fresh.add(key)
            if table in rows:
                rows[table] = kept
        return fresh
