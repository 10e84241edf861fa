"""The Kafka clients on TLS with SASL/SCRAM, against a real broker: one of this test module's
own (deploy/local/kafka.sh with KAFKA_SCRAM_PORT and a server certificate made here with
`cryptography`) whose second listener is SASL_SSL with SCRAM-SHA-256 and -512 on 127.0.0.1.
Topics are created, an event published and consumed, all through clients built from settings
(shared.kafka) that verify the broker's certificate and host name; a wrong password, and a
client that does not trust the broker's CA, are refused."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaError

from shared.bus import KafkaPublisher, ensure_topics, make_admin, make_consumer
from shared.kafka import KafkaConnection
from shared.outbox import OutgoingMessage
from shared.settings import Settings
from shared.topics import TopicLayout, TopicSpec
from tests.certs import CertificateAuthority
from tests.e2e.conftest import free_port
from tests.e2e.test_faults_e2e import PrivateService, _private_env

pytestmark = pytest.mark.e2e

USER, PASSWORD = "portline-e2e", "scram-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
async def managed_broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    """A broker with a SASL_SSL listener; its address and the CA that signed its certificate."""
    tmp = tmp_path_factory.mktemp("scram")
    ca = CertificateAuthority(tmp)
    server = ca.issue("broker", server=True)
    port = free_port()
    broker = PrivateService(
        "kafka.sh",
        _private_env(
            tmp / "broker",
            "KAFKA_BOOTSTRAP_SERVERS",
            KAFKA_PORT=str(free_port()),
            KAFKA_CONTROLLER_PORT=str(free_port()),
            KAFKA_SCRAM_PORT=str(port),
            KAFKA_SCRAM_USER=USER,
            KAFKA_SCRAM_PASSWORD=PASSWORD,
            KAFKA_SCRAM_TLS_CERT=str(server.cert),
            KAFKA_SCRAM_TLS_KEY=str(server.key),
            KAFKA_HEAP_OPTS="-Xms128m -Xmx512m",
        ),
    )
    try:
        await broker.start()
        yield f"127.0.0.1:{port}", ca
    finally:
        await broker.stop()


def connection(
    broker: Any,
    mechanism: str = "SCRAM-SHA-512",
    *,
    password: str = PASSWORD,
    ca: Path | None = None,
) -> KafkaConnection:
    address, authority = broker
    settings = Settings(
        env="development",
        kafka_bootstrap_servers=address,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism=mechanism,  # type: ignore[arg-type]
        kafka_sasl_username=USER,
        kafka_sasl_password=password,  # type: ignore[arg-type]
        kafka_ssl_cafile=str(ca or authority.cert),
    )
    return KafkaConnection.from_settings(settings)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256"])
async def test_clients_from_settings_work_over_tls_and_scram(
    managed_broker: Any, mechanism: str
) -> None:
    managed = connection(managed_broker, mechanism)
    topic = TopicSpec(f"port.test.scram.{uuid.uuid4().hex[:8]}", key="k", partitions=1)
    assert await ensure_topics(managed, TopicLayout(), [topic]) == ([topic.name], [])

    publisher = KafkaPublisher(managed, client_id="e2e-scram")
    await publisher.start()
    try:
        await publisher.publish([OutgoingMessage(topic.name, b"k", b'{"hello": "scram"}')])
    finally:
        await publisher.stop()
    consumer = make_consumer(managed, group_id=f"g-{uuid.uuid4()}", topics=[topic.name])
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"k", b'{"hello": "scram"}')


async def test_a_wrong_password_is_refused(managed_broker: Any) -> None:
    admin = make_admin(connection(managed_broker, password="not-the-password"))
    with pytest.raises(KafkaError):
        await admin.start()
    await admin.close()


async def test_a_broker_signed_by_another_ca_is_not_trusted(
    managed_broker: Any, tmp_path: Path
) -> None:
    stranger = CertificateAuthority(tmp_path, name="Some other CA")
    admin = make_admin(connection(managed_broker, ca=stranger.cert))
    with pytest.raises(KafkaError):
        await admin.start()
    await admin.close()
