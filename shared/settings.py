"""One typed settings object for every service, read once at start-up.

The default environment is production: development comes only from `make run` or an explicit
PORTLINE_ENV. Secrets are refused when they look like placeholders outside development, and a
production service with a missing key stops at start instead of running unsealed (keys are
generated only in development).
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.topics import TopicLayout

__all__ = [
    "SERVICES",
    "TEAM_TOKEN_SERVICES",
    "TOKEN_ALGORITHMS",
    "ConfigurationError",
    "PlaceholderSecretError",
    "ServiceName",
    "Settings",
    "get_settings",
    "insecure_url_problem",
]

ServiceName = Literal["intake", "scheduler", "outreach", "reporting"]
SERVICES: tuple[ServiceName, ...] = ("intake", "scheduler", "outreach", "reporting")
TEAM_TOKEN_SERVICES: tuple[ServiceName, ...] = ("scheduler", "outreach", "reporting")
"""The services whose APIs team users call with bearer tokens (intake takes partners' keys)."""
TOKEN_ALGORITHMS = ("RS256", "ES256", "EdDSA")
"""The only signature algorithms a team token may use: asymmetric, so no service holds a key
that could sign one."""

_PLACEHOLDER = re.compile(
    r"^(|changeme|change[-_ ]?me|placeholder|secret|password|dev|test|todo|xxx+|<.*>|\$\{.*\})$",
    re.IGNORECASE,
)


class PlaceholderSecretError(ValueError):
    """A secret setting is empty or a placeholder where real secrets are required."""


class ConfigurationError(ValueError):
    """A setting one service needs is missing or unusable: that service does not start."""


def insecure_url_problem(url: str) -> str | None:
    """Why a URL may not be used to fetch keys (None when it may): HTTPS, except on this
    machine's loopback (tests, a local provider in development)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname:
        try:
            loopback = ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = parts.hostname == "localhost"
        if loopback:
            return None
    return f"{url!r} is not an https:// URL (plain http only on loopback)"


def _is_placeholder(value: str) -> bool:
    return bool(_PLACEHOLDER.match(value.strip())) or "change" in value.lower()


class Settings(BaseSettings):
    """PORTline settings. Environment variables win over the defaults shown here."""

    model_config = SettingsConfigDict(env_prefix="PORTLINE_", extra="ignore", frozen=True)

    env: Literal["development", "test", "production"] = Field(
        default="production",
        description="Production unless said otherwise: a bare `portline run` and the "
        "container image refuse to start without their keys and never generate them. "
        "`make run` sets development.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias="DATABASE_URL",
        description="One URL for all services; on PostgreSQL each service gets its own schema, "
        "on SQLite '{service}' in the path gives each service its own file. Unset: SQLite "
        "files under the var dir. On PostgreSQL the services connect as this URL's role, the "
        "runtime role: it may read and write rows, never change a schema.",
    )
    database_owner_url: str | None = Field(
        default=None,
        validation_alias="DATABASE_OWNER_URL",
        description="The URL `portline migrate` connects with, as the role that owns the "
        "schemas; it then grants DATABASE_URL's role only the row access the services need "
        "(append-only tables: INSERT and SELECT). Give it to the migration job only, never "
        "to a service. Unset: DATABASE_URL (one role, no separation).",
    )
    db_schema_prefix: str = Field(
        default="",
        pattern=r"^[a-z_][a-z0-9_]{0,30}$|^$",
        description="Prefix for each service's PostgreSQL schema (e.g. 'staging_' gives "
        "'staging_intake'), for several deployments or test runs in one database.",
    )
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    kafka_consumer_start: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="Where a new consumer group starts: every retained event, or only new ones.",
    )
    kafka_replication: int = Field(
        default=1,
        ge=1,
        description="Replication factor `portline topics create` gives new topics; 3 in "
        "production (a single local broker can only hold 1).",
    )
    kafka_min_insync_replicas: int = Field(
        default=1,
        ge=1,
        description="The topics' min.insync.replicas: how many replicas must hold an event "
        "before the broker acknowledges it (producers use acks=all); 2 in production, at most "
        "the replication factor.",
    )
    kafka_partitions: int = Field(
        default=6,
        ge=1,
        description="Partitions of each topic (the team topic has 1): the most consumer "
        "processes of one service that share a topic's work.",
    )
    kafka_compression: Literal["gzip", "none"] = Field(
        default="gzip",
        description="The codec producers compress batches with, and the topics' compression.type.",
    )
    kafka_fact_retention_days: int = Field(
        default=0,
        ge=0,
        description="How long the fact topics keep events; 0 keeps them for good, so that "
        "`portline reporting rebuild` can replay every event.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How every Kafka client connects: SASL_SSL for a managed cluster.",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = Field(
        default="SCRAM-SHA-512", description="The SASL mechanism (SASL_* protocols)."
    )
    kafka_sasl_username: str | None = Field(
        default=None, description="The SASL user; required with a SASL_* protocol."
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="The SASL password; required with a SASL_* protocol."
    )
    kafka_ssl_cafile: str | None = Field(
        default=None,
        description="A PEM file of the CAs that sign the brokers' certificates (SSL, "
        "SASL_SSL); unset: the system's CAs.",
    )
    kafka_ssl_certfile: str | None = Field(
        default=None,
        description="A PEM client certificate, for brokers that authenticate clients by TLS.",
    )
    kafka_ssl_keyfile: str | None = Field(
        default=None, description="The client certificate's private key (PEM)."
    )
    kafka_ssl_check_hostname: bool = Field(
        default=True,
        description="Whether a broker's certificate must name the host connected to.",
    )
    kafka_max_event_bytes: int = Field(
        default=1_000_000,
        ge=1024,
        description="The largest event (envelope JSON and key) intake commits; a message whose "
        "event would be larger is refused, so that nothing accepted is unpublishable. Keep it "
        "under the broker's message.max.bytes and the producer's max.request.size (1 MiB).",
    )
    var_dir: Path = Path("var")
    host: str = "127.0.0.1"
    intake_port: int = 8001
    mllp_port: int = 2575
    scheduler_port: int = 8002
    outreach_port: int = 8003
    reporting_port: int = 8004
    log_level: str = "INFO"
    http_max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        le=64 * 1_048_576,
        description="The largest request body any service's HTTP API takes: a larger one is "
        "413 body_too_large before it is read. Intake's partner routes keep their own limits "
        "(PORTLINE_INTAKE_MAX_MESSAGE_BYTES, PORTLINE_INTAKE_MAX_EMS_BYTES).",
    )

    # PHI sealing: "kid:base64key[,kid:base64key...]"; the first key seals, all keys open.
    seal_keys: SecretStr | None = None
    # Blind-index keys: "version:base64key[,...]", the first version active, all held (a
    # rotation); the single PORTLINE_BLIND_INDEX_KEY is version b1 (docs/deploy.md).
    blind_index_keys: SecretStr | None = None
    blind_index_key: SecretStr | None = None

    # Team identity: the program's OpenID Connect provider (scheduler, outreach, reporting;
    # intake takes no team tokens). See docs/adr/0015-team-identity-from-the-oidc-provider.md.
    oidc_issuer: str | None = Field(
        default=None,
        description="The program's OpenID Connect issuer (the tokens' `iss`); its keys are "
        "found through <issuer>/.well-known/openid-configuration. Required outside "
        "development by every service that takes team tokens.",
    )
    oidc_jwks_url: str | None = Field(
        default=None,
        description="The provider's JWKS URL, when discovery should be skipped.",
    )
    oidc_algorithms: str = Field(
        default="RS256,ES256,EdDSA",
        description="Signature algorithms accepted, comma-separated: a subset of RS256, ES256 "
        "and EdDSA (asymmetric only: HS256 and none are never accepted).",
    )
    oidc_leeway_seconds: int = Field(
        default=60, ge=0, le=300, description="Clock skew allowed on exp, nbf and iat."
    )
    oidc_role_claim: str = Field(
        default="role",
        pattern=r"^[A-Za-z0-9_:/.-]{1,128}$",
        description="The claim holding the PORTline role: a string, or a list holding exactly "
        "one PORTline role. A dotted path reaches into objects (`realm_access.roles`).",
    )
    oidc_program_claim: str = Field(
        default="program",
        pattern=r"^[A-Za-z0-9_:/.-]{1,128}$",
        description="The claim holding the program id (a string); a dotted path as above.",
    )
    oidc_jwks_cache_seconds: int = Field(
        default=3600, ge=60, description="How long the provider's keys are used before refetching."
    )
    oidc_jwks_refetch_seconds: int = Field(
        default=30,
        ge=1,
        description="The shortest time between two fetches of the keys: a token with an "
        "unknown key id refetches them (a rotation) at most this often.",
    )
    oidc_http_timeout_seconds: float = Field(
        default=5.0, gt=0, le=30, description="Timeout of each request to the provider."
    )
    scheduler_token_audience: str = Field(
        default="portline-scheduler", description="The `aud` the scheduler's tokens must carry."
    )
    outreach_token_audience: str = Field(
        default="portline-outreach", description="The `aud` outreach's tokens must carry."
    )
    reporting_token_audience: str = Field(
        default="portline-reporting", description="The `aud` reporting's tokens must carry."
    )
    team_access_refresh_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often each process rereads the deactivated team members: the longest "
        "a deactivation takes to reach another replica once its event is applied.",
    )

    # intake
    intake_max_message_bytes: int = Field(default=1_048_576, ge=1024)
    intake_max_ems_bytes: int = Field(default=5 * 1_048_576, ge=1024)
    intake_consent_element: str = Field(
        default="itDisposition.PeerFollowUp",
        description="eCustomResults element that holds the answer to 'may a peer follow up?'",
    )
    intake_leave_behind_element: str = "itDisposition.LeaveBehind"
    intake_partner_cache_seconds: float = Field(default=30.0, ge=0)
    intake_batch_max: int = Field(default=256, ge=1)
    intake_workers: int = Field(
        default=1,
        ge=1,
        description="Intake worker processes sharing its HTTP port (PostgreSQL only); the "
        "first of them also runs the MLLP listener.",
    )
    worker: str = Field(
        default="",
        description="Set by `portline run` for each worker process it supervises (e.g. "
        "`intake-0`); empty when the service runs as a single process. Not for operators.",
    )
    intake_parse_workers: int = Field(
        default=1,
        ge=0,
        description="Processes for the full hl7apy parse of overdose candidates (0: inline).",
    )
    intake_batch_concurrency: int = Field(
        default=3, ge=1, description="Group-commit transactions in flight at once."
    )
    intake_mllp_tls_cert: Path | None = None
    intake_mllp_tls_key: Path | None = None
    intake_mllp_tls_client_ca: Path | None = Field(
        default=None,
        description="PEM bundle of the CAs that issue partners' client certificates: with it, "
        "the MLLP listener (over TLS) asks every client for a certificate (mutual TLS).",
    )
    intake_mllp_start_unauthenticated: bool = Field(
        default=False,
        description="Production only: start the MLLP listener even though no hospital can be "
        "authenticated on it yet (every message is refused until one can). Logged as an error.",
    )
    intake_mllp_max_connections: int = Field(default=256, ge=1)
    intake_mllp_max_connections_per_partner: int = Field(default=32, ge=1)
    intake_mllp_frame_timeout_seconds: float = Field(default=30.0, gt=0)
    intake_mllp_idle_timeout_seconds: float = Field(default=600.0, gt=0)
    intake_queue_max: int = Field(
        default=4096,
        ge=1,
        description="Submissions waiting for a group commit, per feed; beyond it MLLP answers "
        "AE and HTTP 503 with Retry-After, so memory stays flat under a flood.",
    )
    intake_idempotency_lease_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long an Idempotency-Key reservation holds before another request "
        "with that key may take it over (its first request crashed or was cut off).",
    )

    # scheduler
    scheduler_policy_dir: Path | None = Field(
        default=None,
        description="Directory of <program>.toml policy files; programs without one use the "
        "defaults.",
    )
    scheduler_episode_window_hours: int = Field(default=12, ge=1, le=72)
    scheduler_timer_batch: int = Field(default=100, ge=1)

    # outreach
    outreach_program_name: str = Field(
        default="the peer support team",
        description="How texts name the program; keep it discreet (no 'overdose').",
    )
    outreach_sms_url: str | None = Field(
        default=None,
        description="Base URL of a Twilio-style SMS provider, e.g. https://api.twilio.com. "
        "Unset: texting is off (409 sms_not_configured).",
    )
    outreach_sms_account_sid: str | None = None
    outreach_sms_auth_token: SecretStr | None = None
    outreach_sms_from: str | None = Field(default=None, description="The number texts come from.")
    outreach_sms_templates: Path | None = Field(
        default=None, description="TOML file of [templates] overriding the discreet defaults."
    )
    outreach_public_url: str = Field(
        default="http://127.0.0.1:8003",
        description="Outreach's public base URL, as the SMS provider calls it (webhook "
        "signatures cover it).",
    )

    # reporting
    reporting_timezone: str = Field(
        default="America/New_York",
        description="The programs' clock for days, weeks, months and quarters, unless the "
        "reporting programs file or the program's scheduler policy file names another.",
    )
    reporting_programs: Path | None = Field(
        default=None,
        description="TOML file of [programs.<id>] tables: timezone, suppression_threshold, "
        "unstable_max, per program.",
    )
    reporting_suppression_threshold: int = Field(
        default=10,
        ge=1,
        description="Published counts from 1 to this minus one are hidden (CDC WONDER: 10).",
    )
    reporting_unstable_max: int = Field(
        default=20,
        ge=1,
        description="Rates on this many events or fewer are flagged unstable (CDC WISQARS: 20).",
    )
    reporting_late_after_hours: int = Field(
        default=72,
        ge=1,
        description="For reports the scheduler never links (de-identified): received this "
        "long after the overdose counts as late (the policy's remote window).",
    )
    reporting_watch_interval_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How often reporting looks for spikes in every county and checks every "
        "partner's feed, besides looking at once at the counties a batch of reports touched.",
    )
    reporting_feed_silent_min_hours: float = Field(
        default=2.0,
        gt=0,
        description="A feed is never called silent before it has been quiet this long.",
    )
    reporting_feed_silent_expected: float = Field(
        default=7.0,
        gt=0,
        description="... and only once its usual rate promised at least this many messages "
        "in the quiet spell (7: silence by chance under 1 in 1,000).",
    )
    reporting_feed_history_days: int = Field(
        default=28,
        ge=7,
        le=366,
        description="The history a feed's usual rate by hour of week is learned from.",
    )
    reporting_feed_reject_window_hours: float = Field(
        default=1.0,
        gt=0,
        description="The recent window a partner's rejects are compared with its usual share.",
    )
    reporting_feed_reject_min: int = Field(
        default=5,
        ge=1,
        description="The fewest rejects in the window that can raise FeedRejectSpikeDetected.",
    )

    inbox_max_attempts: int = Field(default=5, ge=1)
    inbox_retry_backoff_seconds: float = Field(default=0.2, ge=0)
    relay_poll_interval_seconds: float = Field(default=0.2, gt=0)
    relay_min_interval_seconds: float = Field(
        default=0.05,
        ge=0,
        description="The shortest time between two relay passes that are not draining a "
        "backlog: under load, the commits of that interval are published together.",
    )
    relay_batch_size: int = Field(default=200, ge=1)

    # Retention (shared/retention.py): each service prunes what only its plumbing needs.
    # 0 keeps those rows for ever.
    retention_interval_seconds: float = Field(
        default=3600.0, gt=0, description="How often each service runs its retention rules."
    )
    retention_outbox_days: int = Field(
        default=7, ge=0, description="Published outbox rows are deleted this many days after."
    )
    retention_inbox_days: int = Field(
        default=0,
        ge=0,
        description="Inbox ids (processed event ids) are deleted this many days after the "
        "event was applied; 0 keeps them. They guard against redelivery, so they must be kept "
        "as long as the topics keep events: for good while the fact topics keep theirs for good "
        "(PORTLINE_KAFKA_FACT_RETENTION_DAYS 0, the default), else at least that many days.",
    )
    retention_dead_letter_days: int = Field(
        default=90, ge=0, description="Resolved dead letters are deleted this many days after."
    )
    retention_idempotency_days: int = Field(
        default=7,
        ge=0,
        description="intake: Idempotency-Key records are deleted this many days after the "
        "request; a partner retrying later is treated as a new request.",
    )
    retention_rejected_days: int = Field(
        default=30,
        ge=0,
        description="intake: the replay window of rejected messages. After it, their sealed "
        "raw text is cleared (the record, its ACK and dedupe key stay).",
    )
    audit_retention_days: int = Field(
        default=2192,
        ge=1,
        description="How long audit logs are kept: six years (with leap days) by default, after "
        "HIPAA's documentation rule (45 CFR 164.316(b)(2)). Pruned only when "
        "PORTLINE_AUDIT_PRUNE is true, and then only by `portline prune --audit-log`.",
    )
    audit_prune: bool = Field(
        default=False,
        description="Allow `portline prune --audit-log` to delete audit rows older than "
        "PORTLINE_AUDIT_RETENTION_DAYS. Off: the audit log is never pruned.",
    )

    # Tracing (shared/tracing.py): off unless an OTLP endpoint is given.
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces endpoint (e.g. http://otel-collector:4318/v1/traces). "
        "Unset: tracing is off, nothing is recorded and no traceparent is stored or sent. "
        "Needs the `otlp` extra (the container image has it).",
    )
    otel_sample_ratio: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="The share of traces kept, decided once per trace where it starts "
        "(intake); every later span follows that decision.",
    )

    @property
    def db_url(self) -> str:
        """DATABASE_URL, or the embedded default: one SQLite file per service in var_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.var_dir}/{{service}}.db"

    def workers_for(self, service: str) -> int:
        """Processes to run for a service; several only where they can share the database."""
        if service != "intake" or not self.db_url.startswith("postgres"):
            return 1
        return self.intake_workers

    @property
    def runs_mllp(self) -> bool:
        """Whether this intake process runs the MLLP listener: a single process, or the first
        worker. The kernel's SO_REUSEPORT hashing would spread a handful of long-lived
        partner connections unevenly over workers (with 8 connections and 2 workers, three
        runs in four), leaving one worker's event loop the bottleneck."""
        return self.worker in ("", "intake-0")

    def schema_for(self, service: str) -> str:
        """The PostgreSQL schema a service owns."""
        return f"{self.db_schema_prefix}{service}"

    @property
    def is_development(self) -> bool:
        return self.env == "development"

    @model_validator(mode="after")
    def _inbox_outlives_kafka(self) -> Settings:
        from shared.topics import ALL_TOPICS

        if self.retention_inbox_days == 0:
            return self
        # A compacted topic holds current states: applying one again changes nothing.
        kept = [
            self.kafka_fact_retention_days if t.retention_days is None else t.retention_days
            for t in ALL_TOPICS
            if not t.compact
        ]
        longest_days = -1 if any(days == 0 for days in kept) else max(kept)
        if longest_days < 0 or self.retention_inbox_days < longest_days:
            limit = "for ever (set 0)" if longest_days < 0 else f"at least {longest_days} days"
            raise ValueError(
                f"PORTLINE_RETENTION_INBOX_DAYS must keep inbox ids {limit}: the topics keep "
                "events that long, and a redelivered event whose id is gone would be applied "
                "twice"
            )
        return self

    @field_validator("blind_index_keys", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        # Compose passes it through empty when a deployment does not rotate.
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.is_development:
            return self
        if self.env == "production":
            if self.seal_keys is None:
                raise PlaceholderSecretError(
                    f"PORTLINE_SEAL_KEYS is required when PORTLINE_ENV={self.env}"
                )
            if self.blind_index_key is None and self.blind_index_keys is None:
                raise PlaceholderSecretError(
                    f"PORTLINE_BLIND_INDEX_KEY is required when PORTLINE_ENV={self.env} "
                    "(or PORTLINE_BLIND_INDEX_KEYS, its versioned form)"
                )
        for name in ("seal_keys", "blind_index_key", "blind_index_keys"):
            secret: SecretStr | None = getattr(self, name)
            if secret is not None and _is_placeholder(secret.get_secret_value()):
                raise PlaceholderSecretError(
                    f"PORTLINE_{name.upper()} looks like a placeholder; "
                    f"set a real secret when PORTLINE_ENV={self.env}"
                )
        return self

    @model_validator(mode="after")
    def _kafka_consistent(self) -> Settings:
        if self.kafka_min_insync_replicas > self.kafka_replication:
            raise ConfigurationError(
                "PORTLINE_KAFKA_MIN_INSYNC_REPLICAS must not exceed PORTLINE_KAFKA_REPLICATION: "
                "no write could ever be acknowledged"
            )
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ConfigurationError(
                f"PORTLINE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "PORTLINE_KAFKA_SASL_USERNAME and PORTLINE_KAFKA_SASL_PASSWORD"
            )
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise ConfigurationError(
                "PORTLINE_KAFKA_SSL_CERTFILE and PORTLINE_KAFKA_SSL_KEYFILE go together"
            )
        return self

    def topic_layout(self) -> TopicLayout:
        """The deployment's topic settings (shared.topics)."""
        return TopicLayout(
            partitions=self.kafka_partitions,
            replication=self.kafka_replication,
            min_insync_replicas=self.kafka_min_insync_replicas,
            compression=self.kafka_compression,
            fact_retention_days=self.kafka_fact_retention_days,
        )

    @field_validator("oidc_issuer", "oidc_jwks_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("oidc_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        refused = [name for name in names if name not in TOKEN_ALGORITHMS]
        if not names or refused:
            raise ValueError(
                f"PORTLINE_OIDC_ALGORITHMS must name some of {', '.join(TOKEN_ALGORITHMS)}"
                + (f", not {', '.join(refused)}" if refused else "")
            )
        return ",".join(names)

    @property
    def token_algorithms(self) -> tuple[str, ...]:
        return tuple(self.oidc_algorithms.split(","))

    def token_audience(self, service: ServiceName) -> str:
        """The audience a service's team tokens must carry."""
        audience: str = getattr(self, f"{service}_token_audience")
        return audience

    def team_identity_problem(self, service: ServiceName) -> str | None:
        """Why this service cannot verify team tokens with these settings, or None.

        Outside development a service that takes team tokens needs the program's provider:
        with none configured it would accept nobody, or (worse) something else."""
        for name in ("oidc_issuer", "oidc_jwks_url"):
            url: str | None = getattr(self, name)
            problem = insecure_url_problem(url) if url else None
            if problem:
                return f"PORTLINE_{name.upper()}: {problem}"
        if self.is_development or self.oidc_issuer:
            return None
        return (
            f"PORTLINE_OIDC_ISSUER is required for {service} when PORTLINE_ENV={self.env}: "
            "it takes team tokens, which only the program's OpenID Connect provider issues"
        )

    def port_for(self, service: ServiceName) -> int:
        port: int = getattr(self, f"{service}_port")
        return port


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
