"""Kafka clients and topics as the settings say: security, compression, topic configs."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from shared.bus import KafkaPublisher, make_admin, make_consumer
from shared.kafka import KafkaConnection, kafka_connection
from shared.settings import Settings
from shared.topics import ALL_TOPICS, INTAKE_OVERDOSES, OUTREACH_TEAM, TopicLayout, TopicSpec
from tests.certs import CertificateAuthority


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for var in list(os.environ):
        if var.startswith("PORTLINE_KAFKA_") or var == "PORTLINE_ENV":
            monkeypatch.delenv(var)


def managed(tmp_path: Path, **more: Any) -> Settings:
    ca = CertificateAuthority(tmp_path)
    return Settings(
        env="development",
        kafka_bootstrap_servers="broker-1.example.org:9096",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="portline-scheduler",
        kafka_sasl_password="s3cret-pa55word",
        kafka_ssl_cafile=str(ca.cert),
        **more,
    )


def client_security(client: Any) -> dict[str, Any]:
    return {
        "protocol": client._security_protocol,
        "mechanism": client._sasl_mechanism,
        "user": client._sasl_plain_username,
        "password": client._sasl_plain_password,
        "ssl": client._ssl_context,
    }


async def test_every_client_connects_as_the_settings_say(tmp_path: Path) -> None:
    connection = KafkaConnection.from_settings(managed(tmp_path))
    publisher = KafkaPublisher(connection, client_id="portline-test")
    consumer = make_consumer(connection, group_id="g", topics=["t"])
    admin = make_admin(connection)
    try:
        clients = [publisher._producer.client, consumer._client, admin._client]
        for client in clients:
            security = client_security(client)
            assert security["protocol"] == "SASL_SSL"
            assert security["mechanism"] == "SCRAM-SHA-256"
            assert (security["user"], security["password"]) == (
                "portline-scheduler",
                "s3cret-pa55word",
            )
            context = security["ssl"]
            assert isinstance(context, ssl.SSLContext)
            assert context.check_hostname
            assert context.verify_mode == ssl.CERT_REQUIRED
            assert context.get_ca_certs()[0]["subject"] == ((("commonName", "PORTline test CA"),),)
        assert publisher._producer._compression_type == "gzip"
    finally:
        await consumer.stop()
        await publisher._producer.stop()  # never started: stop() would skip it
        await admin.close()


async def test_a_bare_bootstrap_string_is_plaintext() -> None:
    consumer = make_consumer("127.0.0.1:9", group_id="g", topics=["t"])
    try:
        security = client_security(consumer._client)
        assert security["protocol"] == "PLAINTEXT"
        assert security["ssl"] is None
    finally:
        await consumer.stop()
    assert kafka_connection("127.0.0.1:9").options() == {
        "bootstrap_servers": "127.0.0.1:9",
        "security_protocol": "PLAINTEXT",
    }


def test_client_certificates_and_no_hostname_check_for_mutual_tls(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    issued = ca.issue("portline-intake")
    settings = Settings(
        env="development",
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=str(ca.cert),
        kafka_ssl_certfile=str(issued.cert),
        kafka_ssl_keyfile=str(issued.key),
        kafka_ssl_check_hostname=False,
    )
    options = KafkaConnection.from_settings(settings).options()
    assert "sasl_mechanism" not in options
    assert options["ssl_context"].check_hostname is False


def test_the_password_never_shows_in_a_repr(tmp_path: Path) -> None:
    settings = managed(tmp_path)
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in repr(KafkaConnection.from_settings(settings))


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "PORTLINE_KAFKA_SASL_USERNAME"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u"},
            "PORTLINE_KAFKA_SASL_PASSWORD",
        ),
        ({"kafka_ssl_certfile": "/c.pem"}, "go together"),
        ({"kafka_replication": 1, "kafka_min_insync_replicas": 2}, "must not exceed"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
    ],
)
def test_inconsistent_kafka_settings_are_refused(given: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Settings(env="development", **given)


def test_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "PORTLINE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "PORTLINE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "PORTLINE_KAFKA_SASL_USERNAME": "svc",
        "PORTLINE_KAFKA_SASL_PASSWORD": "pw-from-a-secret",
        "PORTLINE_KAFKA_REPLICATION": "3",
        "PORTLINE_KAFKA_MIN_INSYNC_REPLICAS": "2",
        "PORTLINE_KAFKA_PARTITIONS": "12",
        "PORTLINE_KAFKA_FACT_RETENTION_DAYS": "400",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings(env="development")
    options = KafkaConnection.from_settings(settings).options()
    assert (options["sasl_mechanism"], options["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "pw-from-a-secret",
    )
    layout = settings.topic_layout()
    assert layout == TopicLayout(
        partitions=12, replication=3, min_insync_replicas=2, fact_retention_days=400
    )
    assert layout.configs(INTAKE_OVERDOSES)["retention.ms"] == str(400 * 86_400_000)


def test_fact_topics_keep_events_for_good_and_the_team_topic_is_compacted() -> None:
    layout = TopicLayout(replication=3, min_insync_replicas=2)
    for spec in ALL_TOPICS:
        configs = layout.configs(spec)
        assert configs["min.insync.replicas"] == "2"
        assert configs["compression.type"] == "gzip"
        if spec is OUTREACH_TEAM:
            assert configs["cleanup.policy"] == "compact"
            assert "retention.ms" not in configs
            assert layout.partitions_of(spec) == 1
        else:
            assert configs["cleanup.policy"] == "delete"
            assert configs["retention.ms"] == "-1"
            # the alerts topic has one partition of its own: one program's alerts in order
            assert layout.partitions_of(spec) == (spec.partitions or 6)
    short = TopicSpec("t", key="k", retention_days=7)
    assert layout.configs(short)["retention.ms"] == str(7 * 86_400_000)
    assert TopicLayout(compression="none").configs(short)["compression.type"] == "uncompressed"
