"""Worker settings: command-line flags over ``CDC_CACHE_*`` environment over a YAML file.

Kafka client options (SASL, TLS, timeouts) pass straight through to librdkafka rather than
being re-declared here: ``kafka:`` for every client, ``kafka_consumer:`` and
``kafka_producer:`` for one kind only (see :mod:`cdc_cache.source.kafka_config`). Secrets are
:class:`~pydantic.SecretStr` (masked in every repr) and may come from files (``*_file``: a
mounted Kubernetes or Docker secret), read once here so a missing file stops startup with
the setting's name. Loading any kind of them, with each problem named by its file and
line, flag or variable: ``load``.

Kept in one module: declarations, one field after another with its description (the
README's settings table), and the checks between fields.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    SettingsConfigDict,
)

from cdc_cache.core.identity import TableIdentity
from cdc_cache.core.keys import DEFAULT_NAMESPACE, valid_namespace
from cdc_cache.core.retry import Backoff
from cdc_cache.sink.connection import RedisAuth, redis_url_problem
from cdc_cache.sink.memory import EvictionFallback
from cdc_cache.source.kafka_config import Role, misplaced, weakened
from cdc_cache.source.registry_access import (
    BasicAuth,
    BearerAuth,
    RegistryAccess,
    RegistryTLS,
    access_problems,
)

ENV_PREFIX = "CDC_CACHE_"
# Where the worker's own keys live; pipelines sharing one Redis each take their own.
Namespace = Annotated[
    str,
    AfterValidator(valid_namespace),
    Field(description="prefix of the worker's own Redis keys (<namespace>:mode, ...)"),
]
# The worker watchdog's bound (gateway and cdc-cache watchdog); None: what the worker publishes.
DownAfter = Annotated[
    float | None, Field(gt=0, description="heartbeat silence that means the worker is down")
]


class BackoffSettings(BaseModel):
    """Retry policy for one kind of server: jittered exponential backoff, never giving up."""

    model_config = ConfigDict(extra="forbid")

    initial_s: float = Field(default=0.1, gt=0, description="first delay")
    max_s: float = Field(default=30.0, gt=0, description="longest delay")
    multiplier: float = Field(default=2.0, ge=1, description="growth per attempt")
    jitter: float = Field(default=0.5, ge=0, le=1, description="random share taken off a delay")

    @model_validator(mode="after")
    def _ordered(self) -> BackoffSettings:
        if self.initial_s > self.max_s:
            msg = f"initial_s ({self.initial_s:g}) must not exceed max_s ({self.max_s:g})"
            raise ValueError(msg)
        return self

    def backoff(self) -> Backoff:
        """The policy as the retry helpers take it."""
        return Backoff(self.initial_s, self.max_s, self.multiplier, self.jitter)


def _as_text(properties: object) -> object:
    """Scalars as the strings librdkafka takes: YAML's ``100``, ``true`` → ``"100"``, ``"true"``."""
    if not isinstance(properties, dict):
        return properties
    return {name: _text(value) for name, value in properties.items()}


def _text(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


KafkaProperties = Annotated[dict[str, str], BeforeValidator(_as_text)]
"""librdkafka properties, passed through unchanged."""

_KAFKA_SECTIONS: dict[str, tuple[Role, ...]] = {
    "kafka": (),
    "kafka_consumer": ("consumer",),
    "kafka_producer": ("producer",),
}


class SharedSettings(BaseSettings):
    """What the worker and the ``cdc-cache dlq`` commands both read (same file, same env).

    Unknown keys are ignored here, so the dlq commands accept the worker's settings file.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    rules: Path = Field(description="the rules file")
    brokers: str = Field(default="127.0.0.1:19092", description="Kafka bootstrap servers")
    redis_url: str = Field(
        default="redis://127.0.0.1:16379/0",
        description="redis://, rediss://, unix://, ?cluster=true, redis+sentinel://",
    )
    namespace: Namespace = DEFAULT_NAMESPACE
    table_identity: TableIdentity = Field(
        default=TableIdentity.DB_TABLE,
        description="how changes and rules name tables: db_table (<db>.<table>) or "
        "server_db_table (<topic.prefix>.<db>.<table>, sources sharing table names)",
    )
    kafka: KafkaProperties = Field(default_factory=dict, description="every Kafka client")
    kafka_consumer: KafkaProperties = Field(default_factory=dict, description="consumers only")
    kafka_producer: KafkaProperties = Field(default_factory=dict, description="producer only")
    source_epoch: int = Field(default=0, ge=0, le=99999, description="the lowest position epoch")
    lineage_detection: bool = Field(
        default=True, description="detect source log lineage switches (see README Failover)"
    )
    dlq_topic: str = Field(default="cdc-cache.dlq", min_length=1, description="dead letters")
    max_value_bytes: int = Field(
        default=1_048_576, ge=1, description="largest projected value written to Redis"
    )
    fanout_limit: int = Field(
        default=100_000,
        ge=1,
        description="members of a cache tag above which an invalidation shortens TTLs instead",
    )
    fanout_page: int = Field(
        default=1_000, ge=1, le=100_000, description="members deleted per page of a fan-out"
    )
    retry_redis: BackoffSettings = Field(
        default_factory=BackoffSettings, description="backoff while Redis is unavailable"
    )
    retry_kafka: BackoffSettings = Field(
        default_factory=lambda: BackoffSettings(initial_s=0.5, max_s=30.0),
        description="backoff while a DLQ write is not acknowledged",
    )
    redis_username: str | None = Field(default=None, description="Redis ACL user")
    redis_password: SecretStr | None = Field(default=None, description="its password")
    redis_password_file: Path | None = Field(default=None, description="file holding it")
    message_format: Literal["json", "avro"] = Field(default="json", description="json or avro")
    schema_registry_url: str | None = Field(
        default=None, description="needed for avro; comma-separated to fail over"
    )
    schema_registry_ca_file: Path | None = Field(
        default=None, description="PEM CA bundle (or folder) that signs the registry's cert"
    )
    schema_registry_cert_file: Path | None = Field(
        default=None, description="client certificate (PEM) for mTLS"
    )
    schema_registry_key_file: Path | None = Field(
        default=None, description="its private key, if not in the certificate file"
    )
    schema_registry_key_password: SecretStr | None = Field(
        default=None, description="password of an encrypted private key"
    )
    schema_registry_user: str | None = Field(default=None, description="HTTP basic auth user")
    schema_registry_password: SecretStr | None = Field(default=None, description="its password")
    schema_registry_password_file: Path | None = Field(default=None, description="file holding it")
    schema_registry_token: SecretStr | None = Field(
        default=None, description="bearer token, instead of basic auth"
    )
    schema_registry_token_file: Path | None = Field(
        default=None, description="file holding it (read at start)"
    )
    schema_registry_cluster_id: str | None = Field(
        default=None, description="Confluent Cloud's lsrc-... id, sent with the token"
    )
    schema_registry_timeout_s: float = Field(
        default=10.0, gt=0, description="one request to the registry"
    )
    admin_token: SecretStr | None = Field(
        default=None, description="bearer token for PUT /mode and the DLQ page"
    )
    admin_token_file: Path | None = Field(default=None, description="file holding admin_token")
    eviction_fallback: EvictionFallback = Field(
        default=EvictionFallback.REFUSE,
        description="on a Redis whose eviction policy may evict versions: refuse to start, "
        "or write invalidations only",
    )

    @field_validator(*_KAFKA_SECTIONS)
    @classmethod
    def _kafka_in_place(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        problems = misplaced(value, _KAFKA_SECTIONS[str(info.field_name)]) + weakened(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _formats_and_secrets(self) -> SharedSettings:
        if self.message_format == "avro" and not self.schema_registry_url:
            msg = (
                "message_format avro needs schema_registry_url (the Confluent Schema Registry "
                "the Avro converter registers its schemas with, e.g. http://registry:8081)"
            )
            raise ValueError(msg)
        self.redis_password = secret_from_file(
            self.redis_password, self.redis_password_file, "redis_password"
        )
        self.admin_token = secret_from_file(self.admin_token, self.admin_token_file, "admin_token")
        self._registry_secrets()
        access = self.schema_registry_access()
        problems = access_problems(access) if access is not None else []
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _registry_secrets(self) -> None:
        self.schema_registry_password = secret_from_file(
            self.schema_registry_password,
            self.schema_registry_password_file,
            "schema_registry_password",
        )
        self.schema_registry_token = secret_from_file(
            self.schema_registry_token, self.schema_registry_token_file, "schema_registry_token"
        )
        if (self.schema_registry_user is None) != (self.schema_registry_password is None):
            msg = "schema_registry_user and schema_registry_password go together"
            raise ValueError(msg)
        if self.schema_registry_user is not None and self.schema_registry_token is not None:
            msg = "give schema_registry_user (basic auth) or schema_registry_token, not both"
            raise ValueError(msg)
        if self.schema_registry_cluster_id and self.schema_registry_token is None:
            msg = "schema_registry_cluster_id is sent with schema_registry_token: set it"
            raise ValueError(msg)
        registry_options = [
            name
            for name in type(self).model_fields
            if name.startswith("schema_registry_")
            and name not in ("schema_registry_url", "schema_registry_timeout_s")
            and getattr(self, name) is not None
        ]
        if registry_options and not self.schema_registry_url:
            msg = f"{', '.join(registry_options)} need schema_registry_url"
            raise ValueError(msg)

    def schema_registry_access(self) -> RegistryAccess | None:
        """The registry's URL, TLS and credentials; None without ``schema_registry_url``."""
        if not self.schema_registry_url:
            return None
        auth: BasicAuth | BearerAuth | None = None
        if self.schema_registry_user is not None and self.schema_registry_password is not None:
            password = self.schema_registry_password.get_secret_value()
            auth = BasicAuth(self.schema_registry_user, password)
        elif self.schema_registry_token is not None:
            token = self.schema_registry_token.get_secret_value()
            auth = BearerAuth(token, self.schema_registry_cluster_id or "")
        key_password = self.schema_registry_key_password
        tls = RegistryTLS(
            self.schema_registry_ca_file,
            self.schema_registry_cert_file,
            self.schema_registry_key_file,
            key_password.get_secret_value() if key_password is not None else None,
        )
        return RegistryAccess(self.schema_registry_url, tls, auth, self.schema_registry_timeout_s)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return valid_redis_url(value)

    def redis_auth(self) -> RedisAuth:
        """The ACL credentials (the password possibly read from its file)."""
        return RedisAuth(self.redis_username, self.redis_password)

    def consumer_kafka(self) -> dict[str, str]:
        """The consumers' librdkafka settings: the common ones, their own on top."""
        return {**self.kafka, **self.kafka_consumer}

    def producer_kafka(self) -> dict[str, str]:
        """The DLQ producer's librdkafka settings: the common ones, its own on top."""
        return {**self.kafka, **self.kafka_producer}


class TopicSettings(SharedSettings):
    """The Debezium topics to read: what the worker and ``cdc-cache inspect`` both consume."""

    topics: list[str] = Field(default_factory=list, description="Debezium topics to read")
    topic_pattern: str | None = Field(default=None, description="or a regex over topic names")
    heartbeat_topics: list[str] = Field(
        default_factory=list, description="heartbeat topics the topic names do not point to"
    )

    @field_validator("topic_pattern")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                msg = f"not a valid regular expression: {exc}"
                raise ValueError(msg) from exc
        return value

    @model_validator(mode="after")
    def _topics_named(self) -> TopicSettings:
        if not self.topics and self.topic_pattern is None:
            msg = "give the Debezium topics to read: topics (a list) or topic_pattern (a regex)"
            raise ValueError(msg)
        return self


class WorkerSettings(TopicSettings):
    """Everything ``cdc-cache run`` needs; see README "Configuration" for each setting."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    recovery_dir: Path | None = Field(
        default=Path(".cdc-cache/recovery"), description="Bytewax recovery store (offsets)"
    )
    recovery_partitions: int = Field(
        default=1, ge=1, description="partitions of a new recovery store"
    )
    workers: int = Field(default=1, ge=1, description="worker threads in this process")
    process_id: int | None = Field(default=None, ge=0, description="this process's index")
    addresses: list[str] = Field(
        default_factory=list, description="host:port of every process of the cluster"
    )
    address_template: str | None = Field(
        default=None, description="every process's host:port, {process} for its index"
    )
    processes: int | None = Field(
        default=None, ge=1, description="processes of the cluster, with address_template"
    )
    epoch_interval_ms: int = Field(
        default=1000, ge=10, description="how often progress is snapshotted"
    )
    topic_refresh_s: float = Field(
        default=30.0, ge=0, description="how often new topics are looked for (0: never)"
    )
    batch_size: int = Field(default=250, ge=1, description="messages per poll per partition")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve the admin API on this port"
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    lag_slo_s: float = Field(default=60.0, gt=0, description="lag that switches to ttl mode")
    lag_recover_s: float = Field(default=15.0, ge=0, description="lag that returns to cdc")
    mode_window_s: float = Field(default=30.0, ge=0, description="how long a lag must hold")
    flow_stall_s: float = Field(
        default=120.0,
        gt=0,
        description="a flow not polled, or not applying what waits, this long is stuck",
    )
    fallback_ttl_s: float = Field(default=60.0, gt=0, description="TTL cap in ttl mode")
    ready_max_consumer_lag: int = Field(
        default=1000, ge=0, description="/readyz: partitions at most this far from their end"
    )
    table_fallback_failures: int = Field(
        default=5, ge=1, description="failed changes that make a table fall back alone"
    )
    table_fallback_window_s: float = Field(
        default=60.0, gt=0, description="within this long; and failure-free this long to return"
    )
    lineage_rewind_files: int = Field(
        default=1, ge=0, description="binlog files a connector may go back when re-sending"
    )
    lineage_rewind_wal_mb: int = Field(
        default=1024, ge=0, description="WAL a PostgreSQL connector may go back when re-sending"
    )
    lineage_settle_s: float = Field(
        default=300.0, gt=0, description="ttl mode after a lineage switch or a re-snapshot"
    )
    redis_replicas: int = Field(
        default=0, ge=0, description="Redis replicas that must acknowledge each batch"
    )
    redis_replicas_timeout_ms: int = Field(
        default=1000, ge=1, le=60_000, description="wait for them before falling back to ttl"
    )

    @model_validator(mode="after")
    def _cluster_and_lag(self) -> WorkerSettings:
        if self.address_template is not None or self.processes is not None:
            template, processes = self.address_template, self.processes
            self.addresses = derived_addresses(self.addresses, template, processes)
        size = len(self.addresses)
        if size and self.process_id is not None and self.process_id >= size:
            msg = (
                f"process_id {self.process_id} is outside the cluster of {size} "
                "process(es): on Kubernetes, re-apply the kustomization after changing the "
                "StatefulSet's replicas (it copies them into CDC_CACHE_PROCESSES)"
            )
            raise ValueError(msg)
        if self.addresses and self.process_id is None:
            msg = "addresses (a multi-process cluster) also needs process_id"
            raise ValueError(msg)
        if self.lineage_settle_s <= self.fallback_ttl_s:
            msg = (
                f"lineage_settle_s ({self.lineage_settle_s:g}) must exceed fallback_ttl_s "
                f"({self.fallback_ttl_s:g}): entries must have expired when it ends; allow "
                "also for shortening the existing keys' TTLs (about 20,000 keys a second)"
            )
            raise ValueError(msg)
        if self.lag_recover_s >= self.lag_slo_s:
            msg = (
                f"lag_recover_s ({self.lag_recover_s:g}) must be below lag_slo_s "
                f"({self.lag_slo_s:g}): the gap keeps the mode from flapping"
            )
            raise ValueError(msg)
        return self

    @property
    def process_index(self) -> int:
        """The process's number in its cluster (0 when it runs alone)."""
        return self.process_id or 0

    @property
    def process_count(self) -> int:
        """How many processes the cluster has (1 when this one runs alone)."""
        return max(1, len(self.addresses))


def derived_addresses(
    addresses: Sequence[str], template: str | None, processes: int | None
) -> list[str]:
    """A cluster's addresses from ``address_template`` and ``processes``.

    A count and a pattern replace a list that had to be kept in step with a replica count
    by hand; raises with the problem of those settings.
    """
    if addresses:
        msg = "give either addresses (a list) or address_template with processes, not both"
        raise ValueError(msg)
    if template is None or processes is None:
        msg = "address_template and processes go together: where process i listens, and how many"
        raise ValueError(msg)
    if "{process}" not in template:
        msg = f"address_template {template!r} must hold {{process}}, the process's index"
        raise ValueError(msg)
    try:
        return [template.format(process=i) for i in range(processes)]
    except (KeyError, IndexError, ValueError) as exc:
        msg = f"address_template {template!r}: only {{process}} may be filled in ({exc!s})"
        raise ValueError(msg) from exc


def valid_redis_url(url: str) -> str:
    """A ``redis_url`` setting, or the problem with it (for a field validator)."""
    problem = redis_url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    return url


def secret_from_file(value: SecretStr | None, file: Path | None, setting: str) -> SecretStr | None:
    """The secret given directly or read from its file (one trailing newline dropped)."""
    if file is None:
        return value
    if value is not None:
        msg = f"give {setting} or {setting}_file, not both"
        raise ValueError(msg)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{setting}_file {file} cannot be read ({type(exc).__name__}); fix the path"
        raise ValueError(msg) from None
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        msg = f"{setting}_file {file} is empty"
        raise ValueError(msg)
    return SecretStr(secret)


class WatchdogSettings(BaseSettings):
    """``cdc-cache watchdog``: the worker's Redis settings and its own ``watchdog_*`` ones.

    It reads the worker's settings file and ``CDC_CACHE_*`` variables (keys it does not
    use are ignored), so both point at the same Redis by construction; its own settings
    come from flags or the environment. Everything else (the bound, the fallback TTL, the
    prefixes) the worker publishes in Redis.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", title="watchdog")

    redis_url: Annotated[str, AfterValidator(valid_redis_url)] = "redis://127.0.0.1:16379/0"
    redis_username: str | None = Field(default=None, description="Redis ACL user")
    redis_password: SecretStr | None = None
    redis_password_file: Path | None = Field(default=None, description="file holding it")
    namespace: Namespace = DEFAULT_NAMESPACE
    watchdog_down_after_s: DownAfter = None
    watchdog_port: int | None = Field(default=None, ge=0, le=65535, description="admin API")
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _password(self) -> WatchdogSettings:
        self.redis_password = secret_from_file(
            self.redis_password, self.redis_password_file, "redis_password"
        )
        return self

    def redis_auth(self) -> RedisAuth:
        """The ACL credentials (the password possibly read from its file)."""
        return RedisAuth(self.redis_username, self.redis_password)
