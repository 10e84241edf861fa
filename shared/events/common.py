"""Value types shared by several events."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "BlindKeyVersion",
    "BlindKeyVersions",
    "BlindKeys",
    "Consent",
    "DecisionReason",
    "SealedToken",
]

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


BlindKeyVersion = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
"""The version of the blind-index key a set of blind keys was computed with (``b1``, ``b2``)."""


class BlindKeyVersions(BaseModel):
    """The fields a report event adds when blind-index keys have versions (a key rotation).

    ``blind_keys`` holds the keys under the sender's active version, named here; during a
    rotation the sender also holds the other version, and sends the same identifiers indexed
    under it, so a reader matches people indexed under either.
    """

    blind_keys_version: BlindKeyVersion = Field(
        default="b1",
        description="The blind-index key version of blind_keys (b1 before versions existed).",
    )
    other_blind_keys: dict[BlindKeyVersion, BlindKeys] = Field(
        default_factory=dict,
        description="The same identifiers under the other versions the sender holds during a "
        "rotation, by version; empty otherwise.",
    )

    def blind_key_sets(self, blind_keys: BlindKeys) -> tuple[tuple[str, BlindKeys], ...]:
        """Every (version, blind keys) the event carries, its ``blind_keys`` first."""
        return ((self.blind_keys_version, blind_keys), *self.other_blind_keys.items())


class DecisionReason(BaseModel):
    """One machine-readable reason behind an overdose decision."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    source: str
    detail: str
