"""The report book: the overdose reports a batch touches, read once and written once.

A report is keyed by its source (partner, facility and visit, or partner and PCR number).
The first message about it creates it; a later one whose content differs revises it
(revision + 1); one with the same content changes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from services.intake.store import ReportRow, StoredReport
from shared.events import OverdoseReported

__all__ = ["ReportBook", "ReportState"]


@dataclass(slots=True)
class ReportState:
    report_id: uuid.UUID
    revision: int
    content_hash: str
    exists: bool
    opioid: bool = False
    any_drug: bool = False
    row: ReportRow | None = None
    """The row to write (set once the batch creates or revises the report)."""


class ReportBook:
    """The reports a batch touches; :meth:`pending` gives the rows to write."""

    def __init__(self, stored: dict[str, StoredReport]) -> None:
        self._states = {
            key: ReportState(r.report_id, r.revision, r.content_hash, True, r.opioid, r.any_drug)
            for key, r in stored.items()
        }

    def get(self, source_key: str) -> ReportState | None:
        return self._states.get(source_key)

    def put(
        self, source_key: str, partner_id: str, kind: str, event: OverdoseReported, digest: str
    ) -> None:
        """The report as ``event`` publishes it (a new report, or a revision)."""
        state = self._states.get(source_key)
        if state is None:
            state = ReportState(event.report_id, event.revision, digest, exists=False)
            self._states[source_key] = state
        state.revision = event.revision
        state.content_hash = digest
        state.opioid, state.any_drug = event.opioid, event.any_drug
        state.row = ReportRow(
            id=event.report_id,
            source_key=source_key,
            partner_id=partner_id,
            source_kind=kind,
            revision=event.revision,
            content_hash=digest,
            opioid=event.opioid,
            any_drug=event.any_drug,
        )

    def pending(self) -> tuple[list[ReportRow], list[ReportRow]]:
        """(new reports, revised reports) as rows to write; each report once, as last put."""
        new: list[ReportRow] = []
        revised: list[ReportRow] = []
        for state in self._states.values():
            if state.row is not None:
                (revised if state.exists else new).append(state.row)
        return new, revised
