"""The scheduler's sealed columns, for `portline keys reseal` (shared/reseal.py)."""

from __future__ import annotations

from services.scheduler.audit import PURPOSE
from services.scheduler.models import AUDIT, Person
from shared.reseal import SealedColumn

__all__ = ["COLUMNS"]

COLUMNS: tuple[SealedColumn, ...] = (
    SealedColumn(Person.__table__, "identity_sealed", ("identity",)),  # type: ignore[attr-defined]
    SealedColumn(AUDIT, "purpose_sealed", (PURPOSE,), append_only=True),
)
