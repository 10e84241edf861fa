"""MLLP authentication: who a connection may speak for (networks, client certificates, both),
mutual TLS end to end with certificates the test makes, connection limits and slow senders."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.intake.mllp_listener import MllpListener, MllpPeer
from services.intake.models import PARTNER_NETWORK
from services.intake.partners import (
    MllpRule,
    MllpRules,
    PartnerDirectory,
    add_certificate,
    add_facility,
    add_network,
    create_partner,
    create_program,
    list_partners,
    remove_certificate,
    remove_network,
    set_mllp_auth,
)
from shared.db import create_engine, session_factory
from shared.migrations import upgrade
from tests.certs import CertificateAuthority
from tests.hl7_builder import ack_fields, framed, routine

NOW = datetime.now(UTC)
TIMEOUT = 10.0
FP_A, FP_B = "a" * 64, "b" * 64


def rules(*items: MllpRule | None) -> MllpRules:
    return MllpRules(tuple(r for r in items if r is not None))


def test_a_set_of_rules_remembers_its_answers_boundedly_and_a_new_set_starts_afresh() -> None:
    """The listener asks on every frame: one set of rules answers a peer from memory, never
    holds more than its bound, and rules read again later (a network removed) decide anew."""
    hospital = MllpRule.of("h", None, ["10.1.0.0/16"], [])
    first = rules(hospital)
    assert first.partners_for("10.1.2.3", None) == {"h"}
    assert first.partners_for("10.1.2.3", None) == {"h"}  # remembered
    assert first.partners_for("10.9.0.1", None) == frozenset()
    for n in range(3000):  # many peers: memory stays bounded, answers stay right
        assert first.partners_for(f"10.1.{n // 250}.{n % 250}", None) == {"h"}
    assert len(first._memo) <= 1024
    removed = rules(MllpRule.of("h", None, ["10.2.0.0/16"], []))
    assert removed.partners_for("10.1.2.3", None) == frozenset()


@pytest.mark.parametrize(
    ("mode", "networks", "prints", "peer", "fingerprint", "admitted"),
    [
        (None, ["10.1.0.0/16"], [], "10.1.2.3", None, True),
        (None, ["10.1.0.0/16"], [], "10.2.0.1", None, False),
        (None, ["10.1.0.0/16"], [], "::ffff:10.1.2.3", None, True),  # dual-stack socket
        (None, [], [FP_A], "192.0.2.9", FP_A, True),
        (None, [], [FP_A], "192.0.2.9", FP_B, False),
        (None, [], [FP_A], "192.0.2.9", None, False),
        (None, ["10.1.0.0/16"], [FP_A], "10.1.2.3", None, False),  # both registered: both due
        (None, ["10.1.0.0/16"], [FP_A], "10.9.9.9", FP_A, False),
        (None, ["10.1.0.0/16"], [FP_A], "10.1.2.3", FP_A, True),
        ("network", ["10.1.0.0/16"], [FP_A], "10.1.2.3", None, True),
        ("certificate", ["10.1.0.0/16"], [FP_A], "198.51.100.1", FP_A, True),
        (None, ["2001:db8::/64"], [], "2001:db8::7", None, True),
        (None, ["2001:db8::/64"], [], "not an address", None, False),
    ],
)
def test_a_connection_speaks_for_a_hospital_only_when_it_shows_what_the_rule_requires(
    mode: str | None,
    networks: list[str],
    prints: list[str],
    peer: str,
    fingerprint: str | None,
    admitted: bool,
) -> None:
    found = rules(MllpRule.of("h1", mode, networks, prints)).partners_for(peer, fingerprint)
    assert found == ({"h1"} if admitted else set())


def test_a_hospital_without_what_its_rule_requires_cannot_be_authenticated() -> None:
    assert MllpRule.of("h1", None, [], []) is None
    assert MllpRule.of("h1", "certificate", ["10.0.0.0/8"], []) is None
    assert MllpRule.of("h1", "both", ["10.0.0.0/8"], []) is None
    assert rules().authenticates_anyone(client_certificates=True) is False
    certificate_only = rules(MllpRule.of("h1", None, [], [FP_A]))
    assert certificate_only.authenticates_anyone(client_certificates=False) is False
    assert certificate_only.authenticates_anyone(client_certificates=True) is True


def test_a_shared_network_speaks_for_each_hospital_registered_on_it() -> None:
    hie = rules(
        MllpRule.of("h1", None, ["10.0.0.0/24"], []), MllpRule.of("h2", None, ["10.0.0.0/24"], [])
    )
    assert hie.partners_for("10.0.0.5", None) == {"h1", "h2"}


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/intake.db", service="intake")
    await upgrade(engine, service="intake")
    factory = session_factory(engine)
    async with factory() as s, s.begin():
        await create_program(s, program_id="p", name="P", timezone="UTC", definition="opioid")
        for partner, kind in (("h1", "hospital"), ("h2", "hospital"), ("e1", "ems")):
            await create_partner(
                s, partner_id=partner, program_id="p", name=partner, kind=kind, now=NOW
            )
        await add_facility(s, partner_id="h1", facility="H1")
    yield factory
    await engine.dispose()


async def test_networks_and_certificates_are_managed_per_hospital(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    ca = CertificateAuthority(tmp_path)
    client = ca.issue("h1-engine")
    async with sessions() as s, s.begin():
        assert await add_network(s, partner_id="h1", network="10.20.30.7/24") == "10.20.30.0/24"
        assert await add_network(s, partner_id="h1", network="10.20.30.0/24") == "10.20.30.0/24"
        fingerprint = await add_certificate(
            s, partner_id="h1", pem=client.cert.read_bytes(), now=NOW
        )
        with pytest.raises(ValueError, match="already belongs to partner 'h1'"):
            await add_certificate(s, partner_id="h2", pem=client.cert.read_bytes(), now=NOW)
        with pytest.raises(ValueError, match="only hospital partners"):
            await add_network(s, partner_id="e1", network="10.0.0.0/8")
        with pytest.raises(ValueError, match="not a network"):
            await add_network(s, partner_id="h1", network="10.0.0.300/8")
        with pytest.raises(ValueError, match="PEM"):
            await add_certificate(s, partner_id="h1", pem=b"garbage", now=NOW)
        with pytest.raises(LookupError):
            await add_network(s, partner_id="nobody", network="10.0.0.0/8")
        with pytest.raises(ValueError, match="require must be one of"):
            await set_mllp_auth(s, partner_id="h1", require="anything")
    assert fingerprint == hashlib.sha256(client.der).hexdigest()
    directory = PartnerDirectory(sessions, ttl_seconds=0)
    both = await directory.mllp_rules()
    assert both.partners_for("10.20.30.9", fingerprint) == {"h1"}
    assert both.partners_for("10.20.30.9", None) == set()  # both registered: both required
    async with sessions() as s, s.begin():
        await set_mllp_auth(s, partner_id="h1", require="network")
    assert (await directory.mllp_rules()).partners_for("10.20.30.9", None) == {"h1"}
    async with sessions() as s, s.begin():
        listed = {p["id"]: p for p in await list_partners(s)}
        assert listed["h1"]["networks"] == ["10.20.30.0/24"]
        assert listed["h1"]["mllp_auth"] == "network"
        assert listed["h2"]["mllp_auth"] == "none (cannot send over MLLP)"
        assert "mllp_auth" not in listed["e1"]
        assert await remove_network(s, partner_id="h1", network="10.20.30.0/24")
        assert not await remove_network(s, partner_id="h1", network="10.20.30.0/24")
        assert await remove_certificate(
            s,
            partner_id="h1",
            fingerprint=":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)),
        )
        assert (
            await s.execute(sa.select(sa.func.count()).select_from(PARTNER_NETWORK))
        ).scalar_one() == 0
    assert (await directory.mllp_rules()).rules == ()


async def test_the_rules_are_read_once_per_cache_period_and_again_after_it(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listener asks for the rules on every frame: within the cache's time it gets the same
    rules without a read (a change waits for the period to end), then the new ones."""
    clock = [1000.0]
    monkeypatch.setattr("services.intake.partners.time.monotonic", lambda: clock[0])
    directory = PartnerDirectory(sessions, ttl_seconds=30)
    async with sessions() as s, s.begin():
        await add_network(s, partner_id="h1", network="10.1.0.0/16")
    first = await directory.mllp_rules()
    assert first.partners_for("10.1.2.3", None) == {"h1"}
    async with sessions() as s, s.begin():
        await remove_network(s, partner_id="h1", network="10.1.0.0/16")
    clock[0] += 29.9
    assert await directory.mllp_rules() is first
    clock[0] += 0.1
    again = await directory.mllp_rules()
    assert again is not first
    assert again.partners_for("10.1.2.3", None) == set()
    async with sessions() as s, s.begin():
        await add_network(s, partner_id="h2", network="10.1.0.0/16")
    directory.clear()  # clear() forgets them at once
    assert (await directory.mllp_rules()).partners_for("10.1.2.3", None) == {"h2"}


async def test_a_facility_is_looked_up_once_per_cache_period_known_or_not(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    directory = PartnerDirectory(sessions, ttl_seconds=30)
    h1 = await directory.by_facility("h1^x^y")
    assert h1 is not None
    assert h1.partner_id == "h1"
    assert await directory.by_facility("NOBODY") is None
    async with sessions() as s, s.begin():
        await add_facility(s, partner_id="h2", facility="NOBODY")
    # both answers, the partner and "nobody", come from the cache within its time
    assert await directory.by_facility("H1") is h1
    assert await directory.by_facility("NOBODY") is None
    assert (await PartnerDirectory(sessions, ttl_seconds=0).by_facility("NOBODY")) is not None


async def test_the_directory_never_looks_up_or_caches_what_cannot_exist(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    directory = PartnerDirectory(sessions, ttl_seconds=30, max_entries=8)
    assert await directory.by_api_key("plk_" + "z" * 5000 + "_secret") is None
    assert await directory.by_facility("X" * 5000) is None
    for i in range(100):  # a flood of distinct facility names stays within the bound
        await directory.by_facility(f"NOPE{i}")
    assert len(directory._facilities) <= 8
    assert len(directory._keys) == 0


# --------------------------------------------------------------------------- the listener


class Seen:
    def __init__(self) -> None:
        self.partners: list[frozenset[str]] = []

    async def handle(self, payload: bytes, partners: frozenset[str]) -> str:
        self.partners.append(partners)
        control = payload.split(b"\r", 1)[0].split(b"|")[9].decode()
        code = "AA" if partners else "AR"
        return f"MSH|^~\\&|PORTLINE|||||ACK|A1|P|2.5.1\rMSA|{code}|{control}"


@asynccontextmanager
async def listening(
    authenticate: Callable[[MllpPeer], Any], seen: Seen, **kw: Any
) -> AsyncIterator[MllpListener]:
    listener = MllpListener(
        seen.handle, authenticate=authenticate, host="127.0.0.1", port=0, now=lambda: NOW, **kw
    )
    await listener.start()
    try:
        yield listener
    finally:
        await asyncio.wait_for(listener.stop(), TIMEOUT)


async def _request(port: int, control: str, ssl_context: ssl.SSLContext | None = None) -> str:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1", port, ssl=ssl_context, server_hostname="localhost" if ssl_context else None
        ),
        TIMEOUT,
    )
    try:
        writer.write(framed(routine(control)))
        await writer.drain()
        ack = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), TIMEOUT)
        return ack.strip(b"\x0b\x1c\r").decode()
    finally:
        writer.close()


async def test_a_connection_from_outside_every_registered_network_speaks_for_nobody() -> None:
    seen = Seen()
    by_network = rules(MllpRule.of("h1", None, ["10.99.0.0/16"], []))
    loopback = rules(MllpRule.of("h1", None, ["127.0.0.0/8"], []))
    current = {"rules": by_network}

    async def authenticate(peer: MllpPeer) -> frozenset[str]:
        return current["rules"].partners_for(peer.address, peer.fingerprint)

    async with listening(authenticate, seen) as listener:
        assert ack_fields(await _request(listener.port, "OUT-1"))[0] == "AR"
        current["rules"] = loopback
        assert ack_fields(await _request(listener.port, "IN-1"))[0] == "AA"
    assert seen.partners == [frozenset(), frozenset({"h1"})]


async def test_mutual_tls_recognises_a_hospital_by_its_client_certificate(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    server = ca.issue("intake", server=True)
    ours, theirs = ca.issue("h1-engine"), ca.issue("h2-engine")
    (tmp_path / "other").mkdir()
    stranger = CertificateAuthority(tmp_path / "other", "Stranger CA").issue("intruder")

    registered = rules(
        MllpRule.of("h1", None, [], [hashlib.sha256(ours.der).hexdigest()]),
        MllpRule.of("h2", None, ["10.0.0.0/8"], [hashlib.sha256(theirs.der).hexdigest()]),
    )

    async def authenticate(peer: MllpPeer) -> frozenset[str]:
        return registered.partners_for(peer.address, peer.fingerprint)

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.load_cert_chain(server.cert, server.key)
    server_ctx.load_verify_locations(cafile=str(ca.cert))
    server_ctx.verify_mode = ssl.CERT_OPTIONAL

    def client(issued: Any = None, *, trust: Path = ca.cert) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(trust))
        if issued is not None:
            ctx.load_cert_chain(issued.cert, issued.key)
        return ctx

    seen = Seen()
    async with listening(authenticate, seen, ssl_context=server_ctx) as listener:
        assert ack_fields(await _request(listener.port, "TLS-1", client(ours)))[0] == "AA"
        # h2 registered a certificate and a network: its certificate from loopback is not enough
        assert ack_fields(await _request(listener.port, "TLS-2", client(theirs)))[0] == "AR"
        assert ack_fields(await _request(listener.port, "TLS-3", client()))[0] == "AR"
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await _request(listener.port, "TLS-4", client(stranger))
    assert seen.partners == [frozenset({"h1"}), frozenset(), frozenset()]


async def test_connections_over_a_partner_s_limit_are_closed_and_others_still_served() -> None:
    seen = Seen()

    async def authenticate(peer: MllpPeer) -> frozenset[str]:
        return frozenset({"h1"})

    async with listening(
        authenticate, seen, max_connections_per_partner=2, max_connections=3
    ) as listener:
        held = [await asyncio.open_connection("127.0.0.1", listener.port) for _ in range(2)]
        for reader, writer in held:  # both served
            writer.write(framed(routine("HOLD")))
            await writer.drain()
            await asyncio.wait_for(reader.readuntil(b"\x1c\r"), TIMEOUT)
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(framed(routine("OVER")))
        await writer.drain()
        # closed at once, unanswered (a reset, since our frame was never read)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        writer.close()
        held[0][1].close()
        await asyncio.sleep(0.1)
        assert ack_fields(await _request(listener.port, "AFTER"))[0] == "AA"
        for _r, w in held[1:]:
            w.close()


async def test_a_sender_trickling_a_frame_is_cut_off_and_a_new_client_is_still_served() -> None:
    seen = Seen()

    async def authenticate(peer: MllpPeer) -> frozenset[str]:
        return frozenset({"h1"})

    async with listening(authenticate, seen, frame_timeout=0.3) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        message = framed(routine("SLOW"))
        started = asyncio.get_running_loop().time()
        closed = False
        for byte in message[:-2]:  # one byte every 50 ms: the whole frame would take seconds
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            if reader.at_eof():
                closed = True
                break
            await asyncio.sleep(0.05)
            if asyncio.get_running_loop().time() - started > 3:
                break
        try:
            closed = closed or await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        except ConnectionError:
            closed = True  # reset: the server cut the connection with our bytes unread
        assert closed
        assert asyncio.get_running_loop().time() - started < 3
        writer.close()
        assert ack_fields(await _request(listener.port, "FAST"))[0] == "AA"
    assert len(seen.partners) == 1  # only the fast client's message was handled


def _connections(outcome: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "portline_intake_mllp_connections_total", {"outcome": outcome}
    )
    return value or 0.0


async def _served(port: int, control: str) -> bool:
    """Whether a connection opened now gets its message answered (False: closed unanswered)."""
    try:
        return ack_fields(await _request(port, control))[0] in ("AA", "AR")
    except (ConnectionError, asyncio.IncompleteReadError):
        return False


async def test_connections_accepted_together_never_pass_the_total_limit() -> None:
    """The total is counted before authentication, which takes a database read: ten
    connections accepted at once, while each is still being authenticated, cannot all pass
    a limit of three."""
    seen = Seen()
    release = asyncio.Event()

    async def authenticate(peer: MllpPeer) -> frozenset[str]:
        await release.wait()  # every connection is authenticating at the same time
        return frozenset({"h1"})

    async with listening(
        authenticate, seen, max_connections=3, max_connections_per_partner=100
    ) as listener:
        refused = _connections("refused_total_limit")
        opened = [await asyncio.open_connection("127.0.0.1", listener.port) for _ in range(10)]
        for _reader, writer in opened:
            writer.write(framed(routine("TOGETHER")))
            await writer.drain()
        await asyncio.sleep(0.2)
        release.set()
        answered = 0
        for reader, writer in opened:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                answered += bool(await asyncio.wait_for(reader.readuntil(b"\x1c\r"), TIMEOUT))
            writer.close()
        assert answered == 3
        assert _connections("refused_total_limit") == refused + 7
        await asyncio.sleep(0.1)
        assert await _served(listener.port, "AFTER")  # the closed ones gave their places back


async def test_a_flood_held_open_leaves_other_partners_served_until_the_total() -> None:
    """A flood of unauthenticated connections fills only their shared allowance; the
    hospitals are served while it stays open, up to the total, which holds for everyone."""
    seen = Seen()

    async def authenticate(peer: MllpPeer) -> frozenset[str]:
        return current[0]

    current = [frozenset[str]()]
    async with listening(
        authenticate, seen, max_connections=4, max_connections_per_partner=2
    ) as listener:
        flood = []
        for _ in range(5):  # strangers: two are held, the other three closed at once
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            flood.append((reader, writer))
        await asyncio.sleep(0.2)
        held = [(r, w) for r, w in flood if not r.at_eof()]
        assert len(held) == 2
        current[0] = frozenset({"h1"})
        hospital = [await asyncio.open_connection("127.0.0.1", listener.port) for _ in range(2)]
        for reader, writer in hospital:  # served while the flood is still open
            writer.write(framed(routine("DURING")))
            await writer.drain()
            ack = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), TIMEOUT)
            assert ack_fields(ack.strip(b"\x0b\x1c\r").decode())[0] == "AA"
        refused = _connections("refused_total_limit")
        current[0] = frozenset({"h2"})  # another hospital, under its own allowance ...
        assert not await _served(listener.port, "OVER-TOTAL")  # ... but over the total of 4
        assert _connections("refused_total_limit") == refused + 1
        for _reader, writer in [*flood, *hospital]:
            writer.close()
        await asyncio.sleep(0.2)
        assert await _served(listener.port, "AFTER")


async def _trickled_until_closed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunk: bytes, *, for_at_most: float
) -> float:
    """Write `chunk` every 0.1 s until the listener closes the connection; the seconds it
    took (or `for_at_most` if it never did)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < for_at_most:
        try:
            writer.write(chunk)
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.sleep(0.1)
        if reader.at_eof():
            break
    return loop.time() - started


async def _one_message(listener: MllpListener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(framed(routine("FIRST")))
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(b"\x1c\r"), TIMEOUT)
    return reader, writer


def _always_h1() -> Callable[[MllpPeer], Any]:
    async def authenticate(peer: MllpPeer) -> frozenset[str]:
        return frozenset({"h1"})

    return authenticate


async def test_junk_between_frames_gets_one_ar_and_does_not_keep_a_connection_open() -> None:
    """The idle time counts from the last message answered: a peer trickling junk between
    frames gets one AR for it, and is then closed like an idle one."""
    seen = Seen()
    async with listening(_always_h1(), seen, idle_timeout=1.0) as listener:
        reader, writer = await _one_message(listener)
        writer.write(b"x")
        await writer.drain()
        ar = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), TIMEOUT)
        assert ack_fields(ar.strip(b"\x0b\x1c\r").decode())[0] == "AR"
        took = await _trickled_until_closed(reader, writer, b"x", for_at_most=8)
        assert took < 6  # the idle time and some slack, not the 8 s of trickling
        writer.close()
    assert len(seen.partners) == 1


async def test_whitespace_between_frames_does_not_keep_a_connection_open() -> None:
    seen = Seen()
    async with listening(_always_h1(), seen, idle_timeout=1.0) as listener:
        reader, writer = await _one_message(listener)
        took = await _trickled_until_closed(reader, writer, b"\r\n", for_at_most=8)
        assert took < 6  # the idle time and some slack, not the 8 s of trickling
        writer.close()


async def test_restarting_a_frame_over_and_over_does_not_keep_a_connection_open() -> None:
    """A bare VT starts a new frame (the last one is reported truncated): a peer sending one
    now and then is still held to the idle time plus one frame's deadline."""
    seen = Seen()
    async with listening(_always_h1(), seen, idle_timeout=1.0, frame_timeout=1.0) as listener:
        reader, writer = await _one_message(listener)
        took = await _trickled_until_closed(reader, writer, b"\x0b", for_at_most=10)
        assert took < 7  # idle 1 s + frame 1 s and slack, not the 10 s of restarting
        writer.close()
    assert len(seen.partners) == 1


async def test_a_frame_still_arriving_is_held_to_its_own_deadline_not_the_idle_time() -> None:
    seen = Seen()
    async with listening(_always_h1(), seen, idle_timeout=1.0, frame_timeout=10) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        message = framed(routine("SLOW-BUT-IN-TIME"))
        half = len(message) // 2
        writer.write(message[:half])  # the frame starts at once ...
        await writer.drain()
        await asyncio.sleep(2.5)  # ... and ends after the idle time, within its own deadline
        writer.write(message[half:])
        await writer.drain()
        ack = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), TIMEOUT)
        assert ack_fields(ack.strip(b"\x0b\x1c\r").decode()) == ("AA", "SLOW-BUT-IN-TIME", "")
        # then idle again: closed after the idle time, counted from that answer
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        writer.close()


async def test_a_message_answered_after_the_idle_time_still_gets_its_ack() -> None:
    """The idle time never cuts a connection while its message is being answered (a slow
    commit): the message arrived in time, and its sender gets its ACK."""
    seen = Seen()

    async def slow(payload: bytes, partners: frozenset[str]) -> str:
        await asyncio.sleep(2.0)
        return await seen.handle(payload, partners)

    listener = MllpListener(
        slow, authenticate=_always_h1(), host="127.0.0.1", port=0, now=lambda: NOW, idle_timeout=0.5
    )
    await listener.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(framed(routine("SLOW-COMMIT")))
        await writer.drain()
        ack = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), TIMEOUT)
        assert ack_fields(ack.strip(b"\x0b\x1c\r").decode())[:2] == ("AA", "SLOW-COMMIT")
        writer.close()
    finally:
        await asyncio.wait_for(listener.stop(), TIMEOUT)


async def test_a_frame_after_an_oversized_one_gets_a_deadline_of_its_own() -> None:
    """An oversized frame that ends in the same read as the next one begins: the next frame is
    held to its own deadline, not the discarded frame's."""
    seen = Seen()
    async with listening(
        _always_h1(), seen, idle_timeout=30, frame_timeout=3, max_message_bytes=1000
    ) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"\x0b" + b"9" * 3000)  # too large: reported, then discarded as it comes
        await writer.drain()
        too_large = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), TIMEOUT)
        assert b"MSA|AR" in too_large
        await asyncio.sleep(2.0)
        good = framed(routine("AFTER-BIG"))
        writer.write(b"\x1c\r" + good[:20])  # the big one ends, the next one begins ...
        await writer.drain()
        await asyncio.sleep(2.0)  # ... past the big one's deadline (3 s), within its own (5 s)
        writer.write(good[20:])
        await writer.drain()
        ack = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), TIMEOUT)
        assert ack_fields(ack.strip(b"\x0b\x1c\r").decode())[:2] == ("AA", "AFTER-BIG")
        writer.close()


async def test_an_answer_that_never_comes_is_given_up_on_after_idle_and_frame_time() -> None:
    async def hung(payload: bytes, partners: frozenset[str]) -> str:
        await asyncio.sleep(60)
        raise AssertionError("never answered")

    listener = MllpListener(
        hung,
        authenticate=_always_h1(),
        host="127.0.0.1",
        port=0,
        now=lambda: NOW,
        idle_timeout=0.5,
        frame_timeout=0.5,
    )
    await listener.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(framed(routine("HUNG")))
        await writer.drain()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        assert loop.time() - started < 5  # about 1 s, not the handler's 60
        writer.close()
    finally:
        await asyncio.wait_for(listener.stop(), TIMEOUT)


class _Rules:
    def __init__(self, found: MllpRules) -> None:
        self.found = found

    async def mllp_rules(self) -> MllpRules:
        return self.found


async def test_production_refuses_a_listener_that_can_authenticate_nobody(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from services.intake.app import _check_mllp_can_authenticate
    from shared.settings import Settings

    nobody, somebody = rules(), rules(MllpRule.of("h1", None, ["10.0.0.0/8"], []))
    # (keys and the rest of production's checks are not this test's: built unvalidated)
    production = Settings.model_construct(env="production")
    with pytest.raises(RuntimeError, match="no hospital can be authenticated"):
        await _check_mllp_can_authenticate(production, _Rules(nobody), None)  # type: ignore[arg-type]
    await _check_mllp_can_authenticate(production, _Rules(somebody), None)  # type: ignore[arg-type]
    await _check_mllp_can_authenticate(Settings(env="development"), _Rules(nobody), None)  # type: ignore[arg-type]
    loud = Settings.model_construct(env="production", intake_mllp_start_unauthenticated=True)
    await _check_mllp_can_authenticate(loud, _Rules(nobody), None)  # type: ignore[arg-type]
    assert any(
        r.levelname == "ERROR" and "no hospital can be authenticated" in r.getMessage()
        for r in caplog.records
    )
