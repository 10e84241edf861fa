"""Partners and how they prove who they are: API keys for HTTP, sending facilities for MLLP.

An API key looks like ``plk_<key id>_<secret>``. Only a SHA-256 hash of the secret is
stored: the secret is 256 random bits, so a slow password hash would add nothing but latency.
Lookups are cached for a short time (``PORTLINE_INTAKE_PARTNER_CACHE_SECONDS``), so a revoked
key or a removed facility stops working within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.intake.models import API_KEY, PARTNER, PARTNER_FACILITY, PROGRAM

__all__ = [
    "IssuedKey",
    "PartnerContext",
    "PartnerDirectory",
    "add_facility",
    "create_partner",
    "create_program",
    "facility_key",
    "issue_key",
    "list_partners",
    "remove_facility",
    "revoke_key",
    "set_disabled",
]

_PREFIX = "plk"


@dataclass(frozen=True, slots=True)
class PartnerContext:
    """What intake needs to know about the partner a message came from."""

    partner_id: str
    program_id: str
    kind: str
    definition: str
    timezone: str


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key_id: str
    api_key: str
    """Shown once; only its hash is stored."""


def facility_key(msh4: str, component_separator: str = "^") -> str:
    """The allow-list form of an MSH-4 value: its first component, trimmed, upper-cased."""
    return msh4.split(component_separator, 1)[0].strip().upper()


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _split_key(api_key: str) -> tuple[str, str] | None:
    parts = api_key.strip().split("_")
    if len(parts) != 3 or parts[0] != _PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


async def create_program(
    session: AsyncSession, *, program_id: str, name: str, timezone: str, definition: str
) -> None:
    """Create or update a program."""
    row = (await session.execute(sa.select(PROGRAM.c.id).where(PROGRAM.c.id == program_id))).first()
    values = {"name": name, "timezone": timezone, "definition": definition}
    if row is None:
        await session.execute(PROGRAM.insert().values(id=program_id, **values))
    else:
        await session.execute(PROGRAM.update().where(PROGRAM.c.id == program_id).values(**values))


async def create_partner(
    session: AsyncSession, *, partner_id: str, program_id: str, name: str, kind: str, now: datetime
) -> None:
    """Create a partner (an EMS agency or a hospital) of a program."""
    if kind not in ("ems", "hospital"):
        raise ValueError("kind must be 'ems' or 'hospital'")
    taken = await session.execute(sa.select(PARTNER.c.id).where(PARTNER.c.id == partner_id))
    if taken.first() is not None:
        raise ValueError(f"partner {partner_id!r} already exists")
    program = await session.execute(sa.select(PROGRAM.c.id).where(PROGRAM.c.id == program_id))
    if program.first() is None:
        raise LookupError(f"no program {program_id!r}")
    await session.execute(
        PARTNER.insert().values(
            id=partner_id, program_id=program_id, name=name, kind=kind, created_at=now
        )
    )


async def add_facility(session: AsyncSession, *, partner_id: str, facility: str) -> str:
    """Allow a hospital partner to send over MLLP as this MSH-4 sending facility.

    Idempotent for the same partner; a facility already allowed for another partner is an
    error (a message's facility must name one partner)."""
    key = facility_key(facility)
    if not key:
        raise ValueError("facility must not be empty")
    partner = await session.execute(sa.select(PARTNER.c.kind).where(PARTNER.c.id == partner_id))
    row = partner.first()
    if row is None:
        raise LookupError(f"no partner {partner_id!r}")
    if row.kind != "hospital":
        raise ValueError("only hospital partners send HL7")
    owner = (
        await session.execute(
            sa.select(PARTNER_FACILITY.c.partner_id).where(PARTNER_FACILITY.c.facility == key)
        )
    ).scalar_one_or_none()
    if owner == partner_id:
        return key
    if owner is not None:
        raise ValueError(f"facility {key} already belongs to partner {owner!r}")
    await session.execute(PARTNER_FACILITY.insert().values(facility=key, partner_id=partner_id))
    return key


async def remove_facility(session: AsyncSession, *, partner_id: str, facility: str) -> bool:
    """Stop a partner sending as this facility; False when it was not allowed anyway."""
    result = await session.execute(
        PARTNER_FACILITY.delete().where(
            PARTNER_FACILITY.c.facility == facility_key(facility),
            PARTNER_FACILITY.c.partner_id == partner_id,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def set_disabled(
    session: AsyncSession, *, partner_id: str, disabled: bool, now: datetime
) -> bool:
    """Disable a partner (every key and facility stops working) or enable it again."""
    result = await session.execute(
        PARTNER.update()
        .where(PARTNER.c.id == partner_id)
        .values(disabled_at=now if disabled else None)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def issue_key(
    session: AsyncSession, *, partner_id: str, now: datetime, label: str = ""
) -> IssuedKey:
    """A new API key for the partner; the plaintext is returned once and never stored."""
    partner = await session.execute(sa.select(PARTNER.c.id).where(PARTNER.c.id == partner_id))
    if partner.first() is None:
        raise LookupError(f"no partner {partner_id!r}")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32).replace("_", "-")
    await session.execute(
        API_KEY.insert().values(
            key_id=key_id,
            partner_id=partner_id,
            secret_hash=_hash(secret),
            label=label,
            created_at=now,
        )
    )
    return IssuedKey(key_id=key_id, api_key=f"{_PREFIX}_{key_id}_{secret}")


async def revoke_key(session: AsyncSession, *, key_id: str, now: datetime) -> bool:
    """Revoke a key; returns False when there is no such active key."""
    result = await session.execute(
        API_KEY.update()
        .where(API_KEY.c.key_id == key_id, API_KEY.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def list_partners(session: AsyncSession) -> list[dict[str, object]]:
    rows = await session.execute(
        sa.select(
            PARTNER.c.id,
            PARTNER.c.program_id,
            PARTNER.c.name,
            PARTNER.c.kind,
            PARTNER.c.disabled_at,
        ).order_by(PARTNER.c.id)
    )
    partners = [dict(r._mapping) for r in rows]
    facilities = await session.execute(sa.select(PARTNER_FACILITY))
    keys = await session.execute(
        sa.select(API_KEY.c.key_id, API_KEY.c.partner_id, API_KEY.c.label, API_KEY.c.revoked_at)
    )
    by_partner: dict[str, dict[str, list[object]]] = {
        str(p["id"]): {"facilities": [], "keys": []} for p in partners
    }
    for f in facilities:
        by_partner.setdefault(f.partner_id, {"facilities": [], "keys": []})["facilities"].append(
            f.facility
        )
    for k in keys:
        by_partner.setdefault(k.partner_id, {"facilities": [], "keys": []})["keys"].append(
            {"key_id": k.key_id, "label": k.label, "revoked": k.revoked_at is not None}
        )
    for p in partners:
        p.update(by_partner[str(p["id"])])
    return partners


_CONTEXT_COLUMNS = (
    PARTNER.c.id,
    PARTNER.c.program_id,
    PARTNER.c.kind,
    PROGRAM.c.definition,
    PROGRAM.c.timezone,
)


class PartnerDirectory:
    """Authenticates partners, caching lookups for a short, configurable time."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        ttl_seconds: float = 30.0,
    ) -> None:
        self._sessions = sessions
        self._ttl = ttl_seconds
        self._facilities: dict[str, tuple[float, PartnerContext | None]] = {}
        self._keys: dict[str, tuple[float, PartnerContext | None, str | None]] = {}
        self._partners: dict[str, tuple[float, frozenset[str]]] = {}

    def clear(self) -> None:
        self._facilities.clear()
        self._keys.clear()
        self._partners.clear()

    async def by_facility(self, facility: str) -> PartnerContext | None:
        """The active hospital partner allowed to send as this MSH-4 facility."""
        key = facility_key(facility)
        cached = self._facilities.get(key)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        async with self._sessions() as session:
            row = (
                await session.execute(
                    sa.select(*_CONTEXT_COLUMNS)
                    .select_from(
                        PARTNER_FACILITY.join(
                            PARTNER, PARTNER.c.id == PARTNER_FACILITY.c.partner_id
                        ).join(PROGRAM, PROGRAM.c.id == PARTNER.c.program_id)
                    )
                    .where(PARTNER_FACILITY.c.facility == key, PARTNER.c.disabled_at.is_(None))
                )
            ).first()
        context = _context(row)
        self._facilities[key] = (time.monotonic() + self._ttl, context)
        return context

    async def by_api_key(self, api_key: str) -> PartnerContext | None:
        """The active partner holding this key, or None for unknown, revoked or malformed keys."""
        split = _split_key(api_key)
        if split is None:
            return None
        key_id, secret = split
        cached = self._keys.get(key_id)
        if not (cached and cached[0] > time.monotonic()):
            async with self._sessions() as session:
                row = (
                    await session.execute(
                        sa.select(*_CONTEXT_COLUMNS, API_KEY.c.secret_hash)
                        .select_from(
                            API_KEY.join(PARTNER, PARTNER.c.id == API_KEY.c.partner_id).join(
                                PROGRAM, PROGRAM.c.id == PARTNER.c.program_id
                            )
                        )
                        .where(
                            API_KEY.c.key_id == key_id,
                            API_KEY.c.revoked_at.is_(None),
                            PARTNER.c.disabled_at.is_(None),
                        )
                    )
                ).first()
            cached = (time.monotonic() + self._ttl, _context(row), row.secret_hash if row else None)
            self._keys[key_id] = cached
        _expires, context, secret_hash = cached
        if context is None or secret_hash is None:
            return None
        if not hmac.compare_digest(secret_hash, _hash(secret)):
            return None
        return context

    async def facilities_of(self, partner_id: str) -> frozenset[str]:
        cached = self._partners.get(partner_id)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        async with self._sessions() as session:
            rows = await session.execute(
                sa.select(PARTNER_FACILITY.c.facility).where(
                    PARTNER_FACILITY.c.partner_id == partner_id
                )
            )
            facilities = frozenset(rows.scalars())
        self._partners[partner_id] = (time.monotonic() + self._ttl, facilities)
        return facilities


def _context(row: Any) -> PartnerContext | None:
    if row is None:
        return None
    return PartnerContext(
        partner_id=str(row.id),
        program_id=str(row.program_id),
        kind=str(row.kind),
        definition=str(row.definition),
        timezone=str(row.timezone),
    )
