"""The MLLP listener on real loopback sockets: long-lived connections, ordering, concurrency,
framing errors answered in-band, and a listener that hostile input cannot kill.

Two levels: the listener alone with a fake `handle` coroutine, and the whole intake app (its
lifespan entered) with the real HL7 handler behind it. Every read is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.intake.hl7 import build_ack, normalize, read_header
from services.intake.mllp_listener import MllpListener, MllpPeer
from tests.hl7_builder import CR, FS, VT, ack_fields, adt, framed, routine
from tests.unit.test_intake_api import Intake, running_intake

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
TIMEOUT = 10.0
"""Upper bound for any single read or wait: a bug fails the test instead of hanging it."""

Handle = Callable[[bytes], Awaitable[str]]


# --------------------------------------------------------------------------- client side


class MllpClient:
    """A partner's end of one MLLP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> MllpClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        return cls(reader, writer)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), TIMEOUT)

    async def send(self, message: str) -> None:
        await self.write(framed(message))

    async def read_ack(self) -> str:
        data = await asyncio.wait_for(self.reader.readuntil(FS + CR), TIMEOUT)
        assert data.startswith(VT), data[:20]
        return data[1:-2].decode()

    async def request(self, message: str) -> str:
        await self.send(message)
        return await self.read_ack()

    async def read_to_eof(self) -> bytes:
        """Everything the server still sends until it closes the connection."""
        return await asyncio.wait_for(self.reader.read(), TIMEOUT)

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)


@pytest.fixture
async def clients() -> AsyncIterator[list[MllpClient]]:
    """Collects the test's client connections and closes them afterwards."""
    opened: list[MllpClient] = []
    yield opened
    for client in opened:
        await client.close()


async def connect(port: int, opened: list[MllpClient]) -> MllpClient:
    client = await MllpClient.connect(port)
    opened.append(client)
    return client


async def eventually(predicate: Callable[[], bool], *, timeout: float = TIMEOUT) -> None:
    """A bounded wait for something the server does in the background."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def split_frames(data: bytes) -> list[str]:
    """The payloads of a stream that must consist of complete MLLP frames only."""
    frames: list[str] = []
    rest = data
    while rest:
        assert rest.startswith(VT), rest[:40]
        end = rest.index(FS + CR)
        frames.append(rest[1:end].decode())
        rest = rest[end + 2 :]
    return frames


# --------------------------------------------------------------------------- listener alone


def ack_for(payload: bytes) -> str:
    header = read_header(normalize(payload))
    return build_ack(header, "AA", now=NOW, control_id=f"ACK-{header.control_id}")


async def echo(payload: bytes) -> str:
    """The fake handler: an AA for the message it got."""
    return ack_for(payload)


async def trust_everyone(_peer: MllpPeer) -> frozenset[str]:
    """Framing tests: every connection speaks for the demo hospital (authentication is
    tests/unit/test_mllp_auth.py's)."""
    return frozenset({"demo-hospital"})


@asynccontextmanager
async def listening(
    handle: Handle, *, max_message_bytes: int = 1_048_576, idle_timeout: float = 600.0
) -> AsyncIterator[MllpListener]:
    listener = MllpListener(
        lambda payload, _partners: handle(payload),
        authenticate=trust_everyone,
        host="127.0.0.1",
        port=0,
        now=lambda: NOW,
        max_message_bytes=max_message_bytes,
        idle_timeout=idle_timeout,
    )
    await listener.start()
    try:
        yield listener
    finally:
        await asyncio.wait_for(listener.stop(), TIMEOUT)


@pytest.fixture
async def echo_listener() -> AsyncIterator[MllpListener]:
    async with listening(echo) as listener:
        yield listener


async def test_listener_reports_the_ephemeral_port_it_bound(echo_listener: MllpListener) -> None:
    assert echo_listener.port > 0


async def test_many_messages_on_one_connection_are_answered_in_order(
    echo_listener: MllpListener, clients: list[MllpClient]
) -> None:
    client = await connect(echo_listener.port, clients)
    for n in range(50):
        ack = await client.request(routine(f"SEQ-{n}"))
        assert ack_fields(ack) == ("AA", f"SEQ-{n}", "")
    assert not client.reader.at_eof()
    assert ack_fields(await client.request(routine("SEQ-LAST")))[:2] == ("AA", "SEQ-LAST")


async def test_concurrent_connections_each_get_their_own_acks(
    clients: list[MllpClient],
) -> None:
    rng = random.Random(7)

    async def jittery_echo(payload: bytes) -> str:
        for _ in range(rng.randint(0, 5)):  # interleave the connections' handling
            await asyncio.sleep(0)
        return ack_for(payload)

    async def converse(port: int, name: str) -> list[str]:
        client = await connect(port, clients)
        return [await client.request(routine(f"{name}-{n}")) for n in range(20)]

    async with listening(jittery_echo) as listener:
        names = [f"C{i}" for i in range(8)]
        answers = await asyncio.gather(*(converse(listener.port, name) for name in names))
    for name, acks in zip(names, answers, strict=True):
        assert [ack_fields(a)[:2] for a in acks] == [("AA", f"{name}-{n}") for n in range(20)]


async def test_a_slow_message_does_not_hold_up_other_connections(
    clients: list[MllpClient],
) -> None:
    release = asyncio.Event()

    async def handle(payload: bytes) -> str:
        if b"|SLOW|" in payload:
            await release.wait()
        return ack_for(payload)

    async with listening(handle) as listener:
        slow = await connect(listener.port, clients)
        fast = await connect(listener.port, clients)
        await slow.send(routine("SLOW"))
        assert ack_fields(await fast.request(routine("FAST")))[:2] == ("AA", "FAST")
        release.set()
        assert ack_fields(await slow.read_ack())[:2] == ("AA", "SLOW")


async def test_pipelined_frames_are_answered_in_order(
    echo_listener: MllpListener, clients: list[MllpClient]
) -> None:
    client = await connect(echo_listener.port, clients)
    await client.write(b"".join(framed(routine(f"PIPE-{n}")) for n in range(5)))
    acks = [await client.read_ack() for _ in range(5)]
    assert [ack_fields(a)[:2] for a in acks] == [("AA", f"PIPE-{n}") for n in range(5)]


async def test_a_flood_of_pipelined_frames_then_a_half_close_is_answered_in_full(
    echo_listener: MllpListener, clients: list[MllpClient]
) -> None:
    """A sender that pipelines many frames and then half-closes its side still gets every
    ACK, in order, before the listener closes the connection."""
    count = 200
    client = await connect(echo_listener.port, clients)
    await client.write(b"".join(framed(routine(f"FLOOD-{n}")) for n in range(count)))
    client.writer.write_eof()
    acks = split_frames(await client.read_to_eof())
    assert [ack_fields(a)[:2] for a in acks] == [("AA", f"FLOOD-{n}") for n in range(count)]


async def test_a_frame_written_byte_by_byte_is_reassembled(
    echo_listener: MllpListener, clients: list[MllpClient]
) -> None:
    client = await connect(echo_listener.port, clients)
    for byte in framed(routine("DRIP-1")):
        await client.write(bytes([byte]))
    assert ack_fields(await client.read_ack())[:2] == ("AA", "DRIP-1")


async def test_whitespace_between_frames_is_ignored(
    echo_listener: MllpListener, clients: list[MllpClient]
) -> None:
    client = await connect(echo_listener.port, clients)
    await client.write(framed(routine("WS-1")) + b"\r\n \x00" + framed(routine("WS-2")))
    assert ack_fields(await client.read_ack())[:2] == ("AA", "WS-1")
    assert ack_fields(await client.read_ack())[:2] == ("AA", "WS-2")
    # nothing else was queued: the next answer is for the next message
    assert ack_fields(await client.request(routine("WS-3")))[:2] == ("AA", "WS-3")


async def test_end_block_without_its_carriage_return_still_ends_the_frame(
    echo_listener: MllpListener, clients: list[MllpClient]
) -> None:
    client = await connect(echo_listener.port, clients)
    first, second = (routine(f"NOCR-{n}").encode() for n in (1, 2))
    await client.write(VT + first + FS + VT + second + FS + CR)
    assert ack_fields(await client.read_ack())[:2] == ("AA", "NOCR-1")
    assert ack_fields(await client.read_ack())[:2] == ("AA", "NOCR-2")


async def test_junk_before_a_frame_gets_an_ar_then_the_frame_its_ack(
    echo_listener: MllpListener, clients: list[MllpClient]
) -> None:
    client = await connect(echo_listener.port, clients)
    await client.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + framed(routine("AFTER-JUNK")))
    assert ack_fields(await client.read_ack()) == ("AR", "", "100")
    assert ack_fields(await client.read_ack())[:2] == ("AA", "AFTER-JUNK")
    assert ack_fields(await client.request(routine("STILL-OPEN")))[:2] == ("AA", "STILL-OPEN")


async def test_junk_spread_over_several_writes_is_reported_once(
    echo_listener: MllpListener, clients: list[MllpClient]
) -> None:
    client = await connect(echo_listener.port, clients)
    for piece in (b"junk", b"more junk", b"and more"):
        await client.write(piece)
    await client.send(routine("AFTER-JUNK-2"))
    assert ack_fields(await client.read_ack())[0] == "AR"
    assert ack_fields(await client.read_ack())[:2] == ("AA", "AFTER-JUNK-2")


async def test_oversized_frame_gets_an_ar_and_the_next_frame_is_handled(
    clients: list[MllpClient],
) -> None:
    seen: list[bytes] = []

    async def recording_echo(payload: bytes) -> str:
        seen.append(payload)
        return ack_for(payload)

    async with listening(recording_echo, max_message_bytes=1024) as listener:
        client = await connect(listener.port, clients)
        big = routine("BIG-1") + "NTE|1||" + "x" * 2000 + "\r"
        ack = await client.request(big)
        code, control_id, err = ack_fields(ack)
        assert (code, control_id, err) == ("AR", "", "100")
        assert "maximum message size" in ack
        assert ack_fields(await client.request(routine("SMALL-1")))[:2] == ("AA", "SMALL-1")
    assert [read_header(normalize(p)).control_id for p in seen] == ["SMALL-1"]


async def test_frame_abandoned_for_a_new_one_gets_an_ar_then_the_ack(
    echo_listener: MllpListener, clients: list[MllpClient]
) -> None:
    client = await connect(echo_listener.port, clients)
    await client.write(VT + b"MSH|^~\\&|EPIC|DEMO_HOSPITAL|cut off" + framed(routine("RESTART")))
    ack = await client.read_ack()
    assert ack_fields(ack) == ("AR", "", "100")
    assert "end-of-block" in ack
    assert ack_fields(await client.read_ack())[:2] == ("AA", "RESTART")


async def test_truncated_frame_then_close_is_logged_and_the_listener_serves_on(
    echo_listener: MllpListener, clients: list[MllpClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="services.intake.mllp_listener")
    cut = await MllpClient.connect(echo_listener.port)
    await cut.write(framed(routine("CUT-1"))[:40])
    await cut.close()

    await eventually(lambda: "connection closed mid-frame" in caplog.text)
    fresh = await connect(echo_listener.port, clients)
    assert ack_fields(await fresh.request(routine("AFTER-CUT")))[:2] == ("AA", "AFTER-CUT")


async def test_handler_failure_answers_ae_and_the_connection_survives(
    clients: list[MllpClient], caplog: pytest.LogCaptureFixture
) -> None:
    async def flaky(payload: bytes) -> str:
        if b"|BOOM|" in payload:
            raise RuntimeError("database exploded")
        return ack_for(payload)

    caplog.set_level(logging.ERROR, logger="services.intake.mllp_listener")
    async with listening(flaky) as listener:
        client = await connect(listener.port, clients)
        ack = await client.request(routine("BOOM"))
        assert ack_fields(ack)[0] == "AE"
        assert "database exploded" not in ack
        assert ack_fields(await client.request(routine("OK-1")))[:2] == ("AA", "OK-1")
    assert "message handling failed" in caplog.text


async def test_peer_leaving_before_its_ack_does_not_hurt_the_listener(
    clients: list[MllpClient],
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    handled: list[bytes] = []

    async def handle(payload: bytes) -> str:
        if b"|LEAVER|" in payload:
            started.set()
            await release.wait()
        handled.append(payload)
        return ack_for(payload)

    async with listening(handle) as listener:
        leaver = await MllpClient.connect(listener.port)
        await leaver.send(routine("LEAVER"))
        await asyncio.wait_for(started.wait(), TIMEOUT)
        await leaver.close()
        release.set()
        await eventually(lambda: len(handled) == 1)
        client = await connect(listener.port, clients)
        assert ack_fields(await client.request(routine("STAYER")))[:2] == ("AA", "STAYER")


async def test_idle_connection_is_closed_after_the_idle_timeout(
    clients: list[MllpClient],
) -> None:
    async with listening(echo, idle_timeout=0.2) as listener:
        client = await connect(listener.port, clients)
        assert ack_fields(await client.request(routine("IDLE-1")))[0] == "AA"
        assert await client.read_to_eof() == b""


async def test_stop_closes_open_connections(clients: list[MllpClient]) -> None:
    listener = MllpListener(
        lambda payload, _partners: echo(payload),
        authenticate=trust_everyone,
        host="127.0.0.1",
        port=0,
        now=lambda: NOW,
    )
    await listener.start()
    client = await connect(listener.port, clients)
    assert ack_fields(await client.request(routine("BEFORE-STOP")))[0] == "AA"

    await asyncio.wait_for(listener.stop(), TIMEOUT)
    assert await client.read_to_eof() == b""
    with pytest.raises(ConnectionRefusedError):
        await MllpClient.connect(listener.port)


# --------------------------------------------------------------------------- the whole app


@pytest.fixture
async def intake(tmp_path: Path) -> AsyncIterator[Intake]:
    async with running_intake(tmp_path) as running:
        yield running


async def test_app_overdose_over_mllp_is_acked_aa_and_published(
    intake: Intake, clients: list[MllpClient]
) -> None:
    client = await connect(intake.mllp_port, clients)
    ack = await client.request(adt("E2E-OD-1"))
    assert ack_fields(ack) == ("AA", "E2E-OD-1", "")
    (event,) = await intake.events("OverdoseReported")
    assert event.data["source_ref"] == "E2E-OD-1"
    assert ack_fields(await client.request(routine("E2E-RT-1")))[:2] == ("AA", "E2E-RT-1")
    assert len(await intake.events("OverdoseReported")) == 1


async def test_app_message_from_an_unknown_facility_is_refused_ar(
    intake: Intake, clients: list[MllpClient]
) -> None:
    client = await connect(intake.mllp_port, clients)
    ack = await client.request(adt("E2E-FAC-1", facility="NOT_A_PARTNER"))
    assert ack_fields(ack) == ("AR", "E2E-FAC-1", "103")
    assert await intake.events("OverdoseReported") == []


async def test_app_junk_gets_the_listeners_ar_and_the_message_its_ack(
    intake: Intake, clients: list[MllpClient]
) -> None:
    client = await connect(intake.mllp_port, clients)
    await client.write(b"\x16\x03\x01 TLS hello?" + framed(adt("E2E-JUNK-1")))
    assert ack_fields(await client.read_ack()) == ("AR", "", "100")
    assert ack_fields(await client.read_ack())[:2] == ("AA", "E2E-JUNK-1")


async def test_app_resend_on_concurrent_connections_is_one_report_with_one_ack(
    intake: Intake, clients: list[MllpClient]
) -> None:
    connections = [await connect(intake.mllp_port, clients) for _ in range(4)]
    acks = await asyncio.gather(*(c.request(adt("E2E-DUP-1")) for c in connections))
    assert ack_fields(acks[0])[:2] == ("AA", "E2E-DUP-1")
    assert set(acks) == {acks[0]}
    assert len(await intake.events("OverdoseReported")) == 1
    # and once more later, on a fresh connection: still the original ACK
    late = await connect(intake.mllp_port, clients)
    assert await late.request(adt("E2E-DUP-1")) == acks[0]
    assert len(await intake.events("OverdoseReported")) == 1


async def test_app_many_connections_many_messages_all_acked(
    intake: Intake, clients: list[MllpClient]
) -> None:
    async def converse(name: str) -> list[str]:
        client = await connect(intake.mllp_port, clients)
        return [await client.request(adt(f"{name}-{n}", visit=f"{name}-{n}")) for n in range(5)]

    names = [f"APP{i}" for i in range(6)]
    answers = await asyncio.gather(*(converse(name) for name in names))
    for name, acks in zip(names, answers, strict=True):
        assert [ack_fields(a)[:2] for a in acks] == [("AA", f"{name}-{n}") for n in range(5)]
    assert len(await intake.events("OverdoseReported")) == 30


# --------------------------------------------------------------------------- hostile input


@pytest.fixture(scope="module")
async def hostile_target(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Intake]:
    """One app for every generated example (an app per example would be slow)."""
    async with running_intake(
        tmp_path_factory.mktemp("hostile"), intake_max_message_bytes=1024
    ) as running:
        yield running


_ids = itertools.count()

HOSTILE_PIECES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [
            VT,
            FS,
            CR,
            FS + CR,
            b"\r\n",
            b"\x00",
            VT + b"MSH|^~\\&|",
            b"MSH|^~\\&|EPIC|DEMO_HOSPITAL|PORTLINE|PORT|2026||ADT^A04|",
            b"A" * 1500,  # over this app's 1024-byte frame limit
            framed(routine("HOSTILE-GOOD")),
            framed(b"\xff\xfe\x00 not text"),
            framed(""),
        ]
    ),
)


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(pieces=st.lists(HOSTILE_PIECES, max_size=12), close_abruptly=st.booleans())
async def test_hostile_byte_streams_never_kill_the_listener(
    hostile_target: Intake, pieces: list[bytes], close_abruptly: bool
) -> None:
    port = hostile_target.mllp_port
    attacker = await MllpClient.connect(port)
    try:
        for piece in pieces:
            await attacker.write(piece)
        if close_abruptly:
            attacker.writer.transport.abort()
        else:
            attacker.writer.write_eof()
            # Whatever comes back is complete ACK frames, then the server closes.
            for ack in split_frames(await attacker.read_to_eof()):
                assert ack_fields(ack)[0] in ("AA", "AR", "AE")
    finally:
        await attacker.close()

    good = await MllpClient.connect(port)
    try:
        control_id = f"AFTER-HOSTILE-{next(_ids)}"
        ack = await good.request(routine(control_id))
        assert ack_fields(ack)[:2] == ("AA", control_id)
    finally:
        await good.close()
