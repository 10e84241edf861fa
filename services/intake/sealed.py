"""Intake's sealed columns, for `portline keys reseal` (shared/reseal.py): the raw text of
rejected messages, kept for replay."""

from __future__ import annotations

from services.intake.models import INBOUND
from shared.reseal import SealedColumn

__all__ = ["COLUMNS"]

COLUMNS: tuple[SealedColumn, ...] = (SealedColumn(INBOUND, "raw_sealed", ("inbound",)),)
