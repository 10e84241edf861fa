"""Partners and how they prove who they are: API keys for HTTP; for MLLP, a TLS client
certificate, a source network, or both.

An API key looks like ``plk_<key id>_<secret>``. Only a SHA-256 hash of the secret is
stored: the secret is 256 random bits, so a slow password hash would add nothing but latency.

An MLLP connection is authenticated when it opens, before any of its messages is processed
(:class:`MllpRules`): a hospital registers the SHA-256 fingerprints of its client
certificates and its source networks, and says which it must show (``mllp_auth``:
``certificate``, ``network`` or ``both``; unset, it must show everything it registered). A
connection may speak for every hospital whose rule it meets, and a message's MSH-4 must then
be one of *those* hospitals' facilities: MSH-4 alone never authenticates anybody.

Look-ups are cached for a short time (``PORTLINE_INTAKE_PARTNER_CACHE_SECONDS``), so a revoked
key, a removed facility or network stops working within that time. The caches are bounded, and
never keyed by raw partner input: a key id or facility that cannot exist is refused before it
is looked up or cached.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

import sqlalchemy as sa
from cachetools import TTLCache
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.intake.models import (
    API_KEY,
    PARTNER,
    PARTNER_CERTIFICATE,
    PARTNER_FACILITY,
    PARTNER_NETWORK,
    PROGRAM,
)

__all__ = [
    "MLLP_AUTH_MODES",
    "PARTNER_KINDS",
    "IssuedKey",
    "MllpAuth",
    "MllpRule",
    "MllpRules",
    "PartnerContext",
    "PartnerDirectory",
    "add_certificate",
    "add_facility",
    "add_network",
    "certificate_fingerprint",
    "create_partner",
    "create_program",
    "facility_key",
    "issue_key",
    "list_partners",
    "remove_certificate",
    "remove_facility",
    "remove_network",
    "revoke_key",
    "set_disabled",
    "set_mllp_auth",
]

_PREFIX = "plk"
PARTNER_KINDS = ("ems", "hospital", "law_enforcement")
_KEY_ID = re.compile(r"[0-9a-f]{12}")
MAX_FACILITY = 200
"""The longest facility the allow-list holds; a longer MSH-4 names nobody."""
_CACHE_ENTRIES = 4096

MllpAuth = Literal["certificate", "network", "both"]
MLLP_AUTH_MODES: tuple[str, ...] = get_args(MllpAuth)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    """Create a partner (an EMS agency, a hospital or a law-enforcement agency) of a program."""
    if kind not in PARTNER_KINDS:
        raise ValueError(f"kind must be one of {', '.join(PARTNER_KINDS)}")
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


async def _hospital(session: AsyncSession, partner_id: str) -> None:
    row = (
        await session.execute(sa.select(PARTNER.c.kind).where(PARTNER.c.id == partner_id))
    ).first()
    if row is None:
        raise LookupError(f"no partner {partner_id!r}")
    if row.kind != "hospital":
        raise ValueError("only hospital partners send HL7 over MLLP")


def _network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"not a network in CIDR notation: {text!r}") from None


async def add_network(session: AsyncSession, *, partner_id: str, network: str) -> str:
    """Let a hospital's MLLP connections come from this network; idempotent. Returns the
    network as stored (host bits cleared, e.g. 10.1.2.3/24 becomes 10.1.2.0/24)."""
    await _hospital(session, partner_id)
    cidr = str(_network(network))
    taken = await session.execute(
        sa.select(PARTNER_NETWORK.c.network).where(
            PARTNER_NETWORK.c.partner_id == partner_id, PARTNER_NETWORK.c.network == cidr
        )
    )
    if taken.first() is None:
        await session.execute(PARTNER_NETWORK.insert().values(partner_id=partner_id, network=cidr))
    return cidr


async def remove_network(session: AsyncSession, *, partner_id: str, network: str) -> bool:
    """Stop accepting this hospital's connections from a network; False if it was not there."""
    result = await session.execute(
        PARTNER_NETWORK.delete().where(
            PARTNER_NETWORK.c.partner_id == partner_id,
            PARTNER_NETWORK.c.network == str(_network(network)),
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def certificate_fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint (lower-case hex) of a certificate's DER encoding."""
    return hashlib.sha256(der).hexdigest()


def _read_certificate(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ValueError("not a PEM-encoded X.509 certificate") from None


async def add_certificate(
    session: AsyncSession, *, partner_id: str, pem: bytes, now: datetime
) -> str:
    """Authenticate a hospital's MLLP connections by this TLS client certificate (matched by
    fingerprint); returns the fingerprint. A certificate belongs to one partner only."""
    await _hospital(session, partner_id)
    cert = _read_certificate(pem)
    fingerprint = certificate_fingerprint(cert.public_bytes(Encoding.DER))
    owner = (
        await session.execute(
            sa.select(PARTNER_CERTIFICATE.c.partner_id).where(
                PARTNER_CERTIFICATE.c.fingerprint == fingerprint
            )
        )
    ).scalar_one_or_none()
    if owner == partner_id:
        return fingerprint
    if owner is not None:
        raise ValueError(f"this certificate already belongs to partner {owner!r}")
    await session.execute(
        PARTNER_CERTIFICATE.insert().values(
            fingerprint=fingerprint,
            partner_id=partner_id,
            subject=cert.subject.rfc4514_string()[:200],
            not_after=cert.not_valid_after_utc,
            added_at=now,
        )
    )
    return fingerprint


async def remove_certificate(session: AsyncSession, *, partner_id: str, fingerprint: str) -> bool:
    """Stop accepting a client certificate (by fingerprint, colons allowed); False if absent."""
    cleaned = fingerprint.replace(":", "").strip().lower()
    result = await session.execute(
        PARTNER_CERTIFICATE.delete().where(
            PARTNER_CERTIFICATE.c.partner_id == partner_id,
            PARTNER_CERTIFICATE.c.fingerprint == cleaned,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def set_mllp_auth(session: AsyncSession, *, partner_id: str, require: str | None) -> None:
    """What a hospital's MLLP connections must show: a certificate, a network, both; or None,
    everything it registered."""
    if require is not None and require not in MLLP_AUTH_MODES:
        raise ValueError(f"require must be one of {', '.join(MLLP_AUTH_MODES)} (or auto)")
    await _hospital(session, partner_id)
    await session.execute(
        PARTNER.update().where(PARTNER.c.id == partner_id).values(mllp_auth=require)
    )


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
            PARTNER.c.mllp_auth,
        ).order_by(PARTNER.c.id)
    )
    partners = [dict(r._mapping) for r in rows]
    by_partner: dict[str, dict[str, list[object]]] = {
        str(p["id"]): {"facilities": [], "networks": [], "certificates": [], "keys": []}
        for p in partners
    }
    for f in await session.execute(sa.select(PARTNER_FACILITY)):
        by_partner[f.partner_id]["facilities"].append(f.facility)
    for n in await session.execute(sa.select(PARTNER_NETWORK)):
        by_partner[n.partner_id]["networks"].append(n.network)
    for c in await session.execute(sa.select(PARTNER_CERTIFICATE)):
        by_partner[c.partner_id]["certificates"].append(
            {"fingerprint": c.fingerprint, "subject": c.subject, "not_after": c.not_after}
        )
    keys = await session.execute(
        sa.select(API_KEY.c.key_id, API_KEY.c.partner_id, API_KEY.c.label, API_KEY.c.revoked_at)
    )
    for k in keys:
        by_partner[k.partner_id]["keys"].append(
            {"key_id": k.key_id, "label": k.label, "revoked": k.revoked_at is not None}
        )
    for p in partners:
        p.update(by_partner[str(p["id"])])
        if p["kind"] == "hospital":
            rule = MllpRule.of(
                str(p["id"]),
                p.pop("mllp_auth"),
                [str(n) for n in p["networks"]],
                [str(c["fingerprint"]) for c in p["certificates"]],
            )
            p["mllp_auth"] = rule.mode if rule else "none (cannot send over MLLP)"
        else:
            p.pop("mllp_auth")
    return partners


_CONTEXT_COLUMNS = (
    PARTNER.c.id,
    PARTNER.c.program_id,
    PARTNER.c.kind,
    PROGRAM.c.definition,
    PROGRAM.c.timezone,
)


def _address(peer: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not peer:
        return None
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return address


@dataclass(frozen=True, slots=True)
class MllpRule:
    """What one hospital's MLLP connections must show."""

    partner_id: str
    mode: MllpAuth
    networks: tuple[IPNetwork, ...] = ()
    fingerprints: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        partner_id: str,
        mode: str | None,
        networks: Iterable[str],
        fingerprints: Iterable[str],
    ) -> MllpRule | None:
        """The rule from what is registered; None when the hospital cannot be authenticated
        (nothing registered, or not what its mode requires)."""
        nets = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        prints = frozenset(fingerprints)
        if mode is None:
            mode = "both" if nets and prints else "certificate" if prints else "network"
        if mode not in MLLP_AUTH_MODES:
            return None
        needs_cert, needs_net = mode in ("certificate", "both"), mode in ("network", "both")
        if (needs_cert and not prints) or (needs_net and not nets):
            return None
        return cls(partner_id, mode, nets, prints)  # type: ignore[arg-type]

    def admits(self, address: Any, fingerprint: str | None) -> bool:
        if self.mode in ("certificate", "both") and fingerprint not in self.fingerprints:
            return False
        return self.mode == "certificate" or (
            address is not None
            and any(address.version == n.version and address in n for n in self.networks)
        )


_MEMO_ENTRIES = 1024
"""Peers whose answer one set of rules remembers (a listener asks again on every frame)."""


@dataclass(frozen=True, slots=True)
class MllpRules:
    """Every active hospital's MLLP rule: who a connection may speak for."""

    rules: tuple[MllpRule, ...] = field(default=())
    _memo: dict[tuple[str | None, str | None], frozenset[str]] = field(
        default_factory=dict, compare=False, repr=False
    )
    """Answers already given under these rules: a new set of rules (the directory reads
    them again once its cache expires) starts empty, so a change is never masked."""

    def partners_for(self, peer: str | None, fingerprint: str | None) -> frozenset[str]:
        """The hospitals a connection from ``peer`` (an IP address) presenting a client
        certificate with ``fingerprint`` (or none) may speak for; empty: nobody."""
        key = (peer, fingerprint)
        known = self._memo.get(key)
        if known is not None:
            return known
        address = _address(peer)
        answer = frozenset(r.partner_id for r in self.rules if r.admits(address, fingerprint))
        if len(self._memo) >= _MEMO_ENTRIES:  # bounded, whatever peers connect
            self._memo.clear()
        self._memo[key] = answer
        return answer

    def authenticates_anyone(self, *, client_certificates: bool) -> bool:
        """Whether any hospital can be authenticated at all (with client certificates
        requested by the listener, or without)."""
        return any(client_certificates or r.mode == "network" for r in self.rules)


class PartnerDirectory:
    """Authenticates partners, caching look-ups for a short, configurable time."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        ttl_seconds: float = 30.0,
        max_entries: int = _CACHE_ENTRIES,
    ) -> None:
        self._sessions = sessions
        self._ttl = ttl_seconds
        self._facilities: TTLCache[str, PartnerContext | None] = self._cache(max_entries)
        self._keys: TTLCache[str, tuple[PartnerContext | None, str | None]] = self._cache(
            max_entries
        )
        self._rules: tuple[MllpRules, float] | None = None
        """The rules and when they expire (time.monotonic): asked for on every MLLP frame,
        so one comparison rather than a cache look-up."""

    def _cache(self, entries: int) -> TTLCache[Any, Any]:
        return TTLCache(maxsize=entries, ttl=self._ttl)

    def clear(self) -> None:
        self._facilities.clear()
        self._keys.clear()
        self._rules = None

    async def by_facility(self, facility: str) -> PartnerContext | None:
        """The active hospital partner whose sending facility (MSH-4) this is."""
        key = facility_key(facility)
        if not key or len(key) > MAX_FACILITY:
            return None
        try:
            return self._facilities[key]  # one look-up: a hit is every message's case
        except KeyError:
            pass
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
        self._facilities[key] = context
        return context

    async def by_api_key(self, api_key: str) -> PartnerContext | None:
        """The active partner holding this key, or None for unknown, revoked or malformed keys."""
        split = _split_key(api_key)
        if split is None:
            return None
        key_id, secret = split
        if not _KEY_ID.fullmatch(key_id):
            return None  # cannot exist: never looked up, never cached
        cached = self._keys.get(key_id)
        if cached is None:
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
            cached = (_context(row), row.secret_hash if row else None)
            self._keys[key_id] = cached
        context, secret_hash = cached
        if context is None or secret_hash is None:
            return None
        if not hmac.compare_digest(secret_hash, _hash(secret)):
            return None
        return context

    async def mllp_rules(self) -> MllpRules:
        """Every active hospital's MLLP rule (one read per cache period)."""
        cached = self._rules
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        read_at = time.monotonic()
        async with self._sessions() as session:
            hospitals = (
                await session.execute(
                    sa.select(PARTNER.c.id, PARTNER.c.mllp_auth).where(
                        PARTNER.c.kind == "hospital", PARTNER.c.disabled_at.is_(None)
                    )
                )
            ).all()
            networks = (await session.execute(sa.select(PARTNER_NETWORK))).all()
            certificates = (
                await session.execute(
                    sa.select(PARTNER_CERTIFICATE.c.partner_id, PARTNER_CERTIFICATE.c.fingerprint)
                )
            ).all()
        rules = []
        for partner_id, mode in hospitals:
            rule = MllpRule.of(
                partner_id,
                mode,
                [n.network for n in networks if n.partner_id == partner_id],
                [c.fingerprint for c in certificates if c.partner_id == partner_id],
            )
            if rule is not None:
                rules.append(rule)
        found = MllpRules(tuple(rules))
        self._rules = (found, read_at + self._ttl)
        return found


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
