"""The partner edge as an attacker and a hospital's interface engine meet it, over real
processes, PostgreSQL and sockets: mutual TLS with certificates the test makes, one answer for
every refusal, and connection limits and frame deadlines that keep the listener serving."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.db import create_engine
from tests.certs import CertificateAuthority, Issued
from tests.e2e.conftest import PORTLINE, _start, _stop, _wait_ready, free_port
from tests.hl7_builder import ack_fields, adt, framed

pytestmark = pytest.mark.e2e

TIMEOUT = 20.0


@dataclass
class Edge:
    """An intake process of this module's own: its ports, environment and schema."""

    http: str
    mllp_port: int
    env: dict[str, str]
    schema: str
    ca: CertificateAuthority | None = None
    client: Issued | None = None

    async def cli(self, *args: str) -> str:
        done = await asyncio.create_subprocess_exec(
            PORTLINE, *args, env=self.env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(done.communicate(), 120)
        assert done.returncode == 0, out
        return out.decode()

    async def mllp(self, message: str, tls: ssl.SSLContext | None = None) -> str:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1",
                self.mllp_port,
                ssl=tls,
                server_hostname="localhost" if tls else None,
            ),
            TIMEOUT,
        )
        try:
            writer.write(framed(message))
            await writer.drain()
            ack = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), TIMEOUT)
            return ack.strip(b"\x0b\x1c\r").decode()
        finally:
            writer.close()

    async def stored(self, postgres_url: str, control_ids: list[str]) -> int:
        """Inbound records whose ACK names one of these control ids (refused ones have none)."""
        engine = create_engine(postgres_url, service="admin", schema=self.schema)
        try:
            async with engine.connect() as conn:
                acks = (await conn.execute(sa.text("select ack from inbound_message"))).scalars()
                return sum(any(f"|{c}" in (a or "") for c in control_ids) for a in acks)
        finally:
            await engine.dispose()


@contextlib.asynccontextmanager
async def edge_process(
    postgres_url: str,
    kafka_bootstrap: str,
    var: Path,
    extra: dict[str, str],
    prepare: list[list[str]] | None = None,
) -> AsyncIterator[Edge]:
    prefix = f"edge{uuid.uuid4().hex[:8]}_"
    http_port, mllp_port = free_port(), free_port()
    env = {
        **os.environ,
        "PORTLINE_ENV": "development",
        "DATABASE_URL": postgres_url,
        "PORTLINE_DB_SCHEMA_PREFIX": prefix,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PORTLINE_VAR_DIR": str(var),
        "PORTLINE_INTAKE_PORT": str(http_port),
        "PORTLINE_MLLP_PORT": str(mllp_port),
        "PORTLINE_INTAKE_PARTNER_CACHE_SECONDS": "0",
        "PORTLINE_INTAKE_WORKERS": "1",
        **extra,
    }
    edge = Edge(f"http://127.0.0.1:{http_port}", mllp_port, env, f"{prefix}intake")
    for args in (["topics", "create"], ["migrate", "intake"], ["intake", "seed-demo"]):
        await edge.cli(*args)
    for args in prepare or []:
        await edge.cli(*args)
    log = var / "intake.log"
    proc = await asyncio.to_thread(_start, env, log)
    try:
        await _wait_ready(proc, edge.http, log)
        yield edge
    finally:
        await _stop(proc)
        engine = create_engine(postgres_url, service="admin", schema="public")
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{prefix}intake" CASCADE'))
        await engine.dispose()


def _shape(ack: str) -> list[str]:
    """An ACK without what always differs (its time and control id, the echoed MSH-4 and
    MSH-10)."""
    segments = ack.split("\r")
    msh, msa = segments[0].split("|"), segments[1].split("|")
    return ["|".join(msh[:5] + msh[7:9] + msh[10:]), msa[0], msa[1], *msa[3:], *segments[2:]]


async def test_mutual_tls_end_to_end_and_one_answer_for_every_refusal(
    postgres_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    ca = CertificateAuthority(tmp_path)
    server = ca.issue("intake", server=True)
    engine_cert = ca.issue("tls-hospital-engine")
    (tmp_path / "other").mkdir()
    forged = CertificateAuthority(tmp_path / "other", "Forger CA").issue("tls-hospital-engine")
    tls_env = {
        "PORTLINE_INTAKE_MLLP_TLS_CERT": str(server.cert),
        "PORTLINE_INTAKE_MLLP_TLS_KEY": str(server.key),
        "PORTLINE_INTAKE_MLLP_TLS_CLIENT_CA": str(ca.cert),
    }
    # A second hospital, recognised by its client certificate only (no network). The demo
    # hospital keeps its loopback network, so every connection from here speaks for it.
    prepare = [
        [
            *("partners", "add", "--id", "tls-hospital", "--program", "demo"),
            *("--kind", "hospital", "--name", "TLS Hospital", "--facility", "TLS_HOSPITAL"),
        ],
        [
            "partners",
            "add-certificate",
            "--id",
            "tls-hospital",
            "--certificate",
            str(engine_cert.cert),
        ],
    ]

    def client(issued: Issued | None = None, trust: Path = ca.cert) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(trust))
        if issued is not None:
            context.load_cert_chain(issued.cert, issued.key)
        return context

    async with edge_process(postgres_url, kafka_bootstrap, tmp_path, tls_env, prepare) as edge:
        listed = await edge.cli("partners", "list")
        assert "tls-hospital-engine" in listed  # the certificate's subject, never a key
        ok, foreign, nobody, demo = (f"TLS-{uuid.uuid4().hex[:8]}" for _ in range(4))
        assert (
            ack_fields(await edge.mllp(adt(ok, facility="TLS_HOSPITAL"), client(engine_cert)))[0]
            == "AA"
        )
        # Without its certificate, a connection cannot speak for the TLS hospital...
        refused = await edge.mllp(adt(foreign, facility="TLS_HOSPITAL"), client())
        # ...and that answer is the one a facility nobody registered gets.
        unknown = await edge.mllp(adt(nobody, facility="NOBODY_HOSPITAL"), client(engine_cert))
        assert ack_fields(refused) == ("AR", foreign, "103")
        assert ack_fields(unknown) == ("AR", nobody, "103")
        assert _shape(refused) == _shape(unknown)
        # Plain TCP to a TLS listener gets no answer at all; nor does a forged certificate.
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await edge.mllp(adt(demo), client(forged))
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.mllp_port)
        writer.write(framed(adt(demo)))
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            assert b"MSA" not in await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        assert await edge.stored(postgres_url, [ok]) == 1
        assert await edge.stored(postgres_url, [foreign, nobody, demo]) == 0  # refusals: none


async def test_a_flood_of_connections_and_a_slow_sender_stay_bounded_and_a_new_client_is_served(
    postgres_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    limits = {
        "PORTLINE_INTAKE_MLLP_MAX_CONNECTIONS_PER_PARTNER": "4",
        "PORTLINE_INTAKE_MLLP_MAX_CONNECTIONS": "6",
        "PORTLINE_INTAKE_MLLP_FRAME_TIMEOUT_SECONDS": "1",
    }
    async with edge_process(postgres_url, kafka_bootstrap, tmp_path, limits) as edge:
        flood = []
        for _ in range(30):  # far over the partner's 4 connections
            with contextlib.suppress(OSError):
                flood.append(await asyncio.open_connection("127.0.0.1", edge.mllp_port))
        await asyncio.sleep(0.5)
        open_ones = 0
        for reader, writer in flood:
            with contextlib.suppress(ConnectionError, TimeoutError, asyncio.IncompleteReadError):
                writer.write(framed(adt(f"FLOOD-{uuid.uuid4().hex[:8]}")))
                await writer.drain()
                frame = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 5)
                open_ones += b"|AA|" in frame
        assert 1 <= open_ones <= 4  # the rest were closed as they opened
        for _reader, writer in flood:
            writer.close()
        await asyncio.sleep(0.5)

        # A sender that trickles a frame is cut off after its deadline...
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.mllp_port)
        started = asyncio.get_running_loop().time()
        cut = False
        for byte in framed(adt("SLOW-1"))[:-2]:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                cut = True
                break
            if reader.at_eof():
                cut = True
                break
            await asyncio.sleep(0.1)
            if asyncio.get_running_loop().time() - started > 10:
                break
        try:
            cut = cut or await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        except ConnectionError:
            cut = True
        assert cut
        assert asyncio.get_running_loop().time() - started < 10
        writer.close()
        # ...and a new client is still served.
        fresh = f"FRESH-{uuid.uuid4().hex[:8]}"
        assert ack_fields(await edge.mllp(adt(fresh)))[:2] == ("AA", fresh)
