"""MLLP over TLS: the listener's optional TLS really encrypts and still answers ACKs."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.intake.mllp_listener import MllpListener, MllpPeer
from tests.hl7_builder import ack_fields, framed, routine

NOW = dt.datetime.now(dt.UTC)  # certificates are checked against the real clock


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_mllp_over_tls_answers_and_refuses_plaintext(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handle(payload: bytes) -> str:
        control = payload.split(b"\r", 1)[0].split(b"|")[9].decode()
        return f"MSH|^~\\&|PORTLINE|||||ACK|A1|P|2.5.1\rMSA|AA|{control}"

    async def anyone(_peer: MllpPeer) -> frozenset[str]:
        return frozenset({"h"})

    listener = MllpListener(
        lambda payload, _partners: handle(payload),
        authenticate=anyone,
        host="127.0.0.1",
        port=0,
        now=lambda: NOW,
        ssl_context=server_ctx,
    )
    await listener.start()
    try:
        client_ctx = ssl.create_default_context(cafile=str(cert))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", listener.port, ssl=client_ctx, server_hostname="localhost"
        )
        writer.write(framed(routine("TLS-1")))
        await writer.drain()
        ack = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
        assert ack_fields(ack.strip(b"\x0b\x1c\r").decode())[:2] == ("AA", "TLS-1")
        writer.close()

        # A plaintext client gets no ACK: the handshake fails and the connection closes.
        plain_reader, plain_writer = await asyncio.open_connection("127.0.0.1", listener.port)
        plain_writer.write(framed(routine("PLAIN-1")))
        await plain_writer.drain()
        leftover = await asyncio.wait_for(plain_reader.read(), 10)
        assert b"MSA" not in leftover
        plain_writer.close()
    finally:
        await listener.stop()
