"""How every Kafka client connects: one factory for the producers, consumers and admin clients
that the services and the CLIs make.

A managed cluster (Confluent Cloud, Amazon MSK, Aiven, Strimzi) wants TLS, SASL/SCRAM or
both; the local broker and CI speak PLAINTEXT. :class:`KafkaConnection` holds the bootstrap
servers and those settings (``PORTLINE_KAFKA_SECURITY_PROTOCOL``, ``_SASL_*``, ``_SSL_*``), read
once from :class:`~shared.settings.Settings`, and :meth:`KafkaConnection.options` gives the
keyword arguments every aiokafka client takes. A client built from a bare bootstrap string
(tests, benchmarks) connects in PLAINTEXT.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aiokafka.helpers import create_ssl_context

from shared.topics import Compression

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["KafkaConnection", "SaslMechanism", "SecurityProtocol", "kafka_connection"]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how to reach them; secrets stay out of its repr."""

    bootstrap_servers: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    """The CA bundle that signed the brokers' certificates; None: the system's CAs."""
    ssl_certfile: str | None = None
    """A client certificate, for clusters that authenticate clients by TLS (mutual TLS)."""
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    compression: Compression = "gzip"
    """What the producers compress batches with (the topics store them so)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaConnection:
        password = settings.kafka_sasl_password
        return cls(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username=settings.kafka_sasl_username,
            sasl_password=password.get_secret_value() if password else None,
            ssl_cafile=settings.kafka_ssl_cafile,
            ssl_certfile=settings.kafka_ssl_certfile,
            ssl_keyfile=settings.kafka_ssl_keyfile,
            ssl_check_hostname=settings.kafka_ssl_check_hostname,
            compression=settings.kafka_compression,
        )

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext:
        context: ssl.SSLContext = create_ssl_context(
            cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
        )
        context.check_hostname = self.ssl_check_hostname
        return context

    def options(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options


def kafka_connection(target: str | KafkaConnection) -> KafkaConnection:
    """A connection as given, or PLAINTEXT to these bootstrap servers."""
    return target if isinstance(target, KafkaConnection) else KafkaConnection(target)
