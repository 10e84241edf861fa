"""Value types shared by several events."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

__all__ = ["BlindKeys", "Consent", "DecisionReason", "SealedToken"]

SealedToken = Annotated[str, StringConstraints(pattern=r"^v1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_=-]+$")]
"""A value sealed by shared.sealing; plaintext PHI never travels in an event."""


class Consent(StrEnum):
    """The person's answer at the scene to "may a peer follow up with you?"."""

    ACCEPTED = "accepted"
    DECLINED = "declined"
    UNKNOWN = "unknown"


class BlindKeys(BaseModel):
    """HMAC blind indexes of normalized identifiers, for matching without plaintext."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name_dob: str | None = None
    phone: str | None = None
    mrn: str | None = None
    dob: str | None = None
    """Date of birth alone: only for finding candidates whose sealed names are compared."""

    @property
    def any(self) -> bool:
        return bool(self.name_dob or self.phone or self.mrn)  # dob alone identifies nobody


class DecisionReason(BaseModel):
    """One machine-readable reason behind an overdose decision."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    source: str
    detail: str
