"""The sealed identity: what it holds, how it is sealed, and the blind keys that match it.

Every service that learns who someone is (intake from partners; outreach from the community
referrals the team enters) seals the identity the same way, so the scheduler and outreach can
open it, and computes the same blind keys, so the scheduler can match the person across
sources. Every field of :class:`Identity` is PHI: it exists only in memory, and leaves a
service only sealed (``Protector.seal_identity``) or as blind indexes.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

from shared.events import BlindKeys, Location
from shared.sealing import BlindIndexer, Sealer

__all__ = ["Address", "Identity", "Protector", "person_key"]


@dataclass(frozen=True, slots=True)
class Address:
    street: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    county: str | None = None
    """County name or FIPS code as the partner sent it."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a report is about. Every field here is PHI."""

    family: str | None = None
    given: str | None = None
    middle: str | None = None
    dob: date | None = None
    sex: str | None = None
    phones: tuple[str, ...] = ()
    address: Address | None = None
    mrn: str | None = None
    mrn_authority: str | None = None
    language: str | None = None

    @property
    def deidentified(self) -> bool:
        """No name and no phone: the report can be counted but nobody can be reached."""
        return not (self.family or self.given) and not self.phones


@dataclass(frozen=True, slots=True)
class Protector:
    """Seals identity and computes blind indexes: the only way PHI leaves a service."""

    sealer: Sealer
    indexer: BlindIndexer

    def seal_identity(self, identity: Identity) -> str | None:
        if identity.deidentified and identity.mrn is None and identity.dob is None:
            return None
        return self.sealer.seal_json(_identity_dict(identity), context="identity")

    def blind_fields(self, identity: Identity, *, facility: str | None) -> dict[str, Any]:
        """A report event's blind-key fields (``BlindKeyVersions``): the keys under the active
        version, that version, and the keys under every other version held."""
        return {
            "blind_keys": self.blind_keys(identity, facility=facility),
            "blind_keys_version": self.indexer.version,
            "other_blind_keys": self.other_blind_keys(identity, facility=facility),
        }

    def blind_keys(self, identity: Identity, *, facility: str | None) -> BlindKeys:
        """The blind keys under the active version (``indexer.version``)."""
        return _blind_keys(self.indexer, identity, facility)

    def other_blind_keys(self, identity: Identity, *, facility: str | None) -> dict[str, BlindKeys]:
        """The same blind keys under every other version held (during a key rotation), for
        an event's ``other_blind_keys``; empty when only one version is held."""
        return {
            indexer.version: _blind_keys(indexer, identity, facility)
            for indexer in self.indexer.held[1:]
        }

    def location(self, address: Address | None) -> Location:
        if address is None:
            return Location()
        sealed = None
        if address.street:
            sealed = self.sealer.seal_json(
                {
                    "street": address.street,
                    "city": address.city,
                    "postal_code": address.postal_code,
                },
                context="address",
            )
        return Location(county=address.county, state=address.state, address=sealed)


def _blind_keys(indexer: BlindIndexer, identity: Identity, facility: str | None) -> BlindKeys:
    name_dob = None
    if identity.family and identity.given and identity.dob:
        name_dob = indexer.name_dob(identity.family, identity.given, identity.dob)
    phone = next((k for k in (indexer.phone(p) for p in identity.phones) if k is not None), None)
    mrn = None
    if identity.mrn and facility:
        mrn = indexer.mrn(facility, identity.mrn)
    dob = indexer.dob(identity.dob) if identity.dob else None
    return BlindKeys(name_dob=name_dob, phone=phone, mrn=mrn, dob=dob)


def _identity_dict(identity: Identity) -> dict[str, Any]:
    data = asdict(identity)
    data["dob"] = identity.dob.isoformat() if identity.dob else None
    data["phones"] = list(identity.phones)
    return data


def person_key(blind: BlindKeys, report_id: uuid.UUID) -> str:
    """The Kafka key: one person's reports stay in order on one partition."""
    for value in (blind.name_dob, blind.phone, blind.mrn):
        if value:
            return value
    return f"report:{report_id}"
