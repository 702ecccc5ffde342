"""Worker settings: command-line flags over ``CDC_CACHE_*`` environment over a YAML file.

Kafka client options (SASL, TLS, timeouts) pass straight through to librdkafka rather than
being re-declared here: ``kafka:`` for every client, ``kafka_consumer:`` and
``kafka_producer:`` for one kind only (see :mod:`cdc_cache.source.kafka_config`). Secrets are
:class:`~pydantic.SecretStr` (masked in every repr) and may come from files (``*_file``: a
mounted Kubernetes or Docker secret), read once here so a missing file stops startup with
the setting's name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from cdc_cache.core.errors import ConfigError
from cdc_cache.core.retry import Backoff
from cdc_cache.notify.tokens import MAX_PATTERNS
from cdc_cache.plan.rules import unreadable_yaml
from cdc_cache.sink.apply import RedisAuth, redis_url_problem
from cdc_cache.sink.memory import EvictionFallback
from cdc_cache.source.kafka_config import Role, misplaced, weakened

ENV_PREFIX = "CDC_CACHE_"
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

    rules: Path
    brokers: str = "127.0.0.1:19092"
    redis_url: str = "redis://127.0.0.1:16379/0"
    kafka: KafkaProperties = Field(default_factory=dict, description="every Kafka client")
    kafka_consumer: KafkaProperties = Field(default_factory=dict, description="consumers only")
    kafka_producer: KafkaProperties = Field(default_factory=dict, description="producer only")
    source_epoch: int = Field(default=0, ge=0, le=99999)
    lineage_detection: bool = Field(
        default=True, description="detect source log lineage switches (see README Failover)"
    )
    dlq_topic: str = Field(default="cdc-cache.dlq", min_length=1, description="dead letters")
    max_value_bytes: int = Field(
        default=1_048_576, ge=1, description="largest projected value written to Redis"
    )
    retry_redis: BackoffSettings = Field(default_factory=BackoffSettings)
    retry_kafka: BackoffSettings = Field(
        default_factory=lambda: BackoffSettings(initial_s=0.5, max_s=30.0)
    )
    redis_username: str | None = Field(default=None, description="Redis ACL user")
    redis_password: SecretStr | None = None
    redis_password_file: Path | None = Field(default=None, description="file holding it")
    message_format: Literal["json", "avro"] = "json"
    schema_registry_url: str | None = Field(default=None, description="needed for avro")
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
        self.redis_password = _secret(
            self.redis_password, self.redis_password_file, "redis_password"
        )
        self.admin_token = _secret(self.admin_token, self.admin_token_file, "admin_token")
        return self

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return _valid_redis_url(value)

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

    topics: list[str] = Field(default_factory=list)
    topic_pattern: str | None = None
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

    recovery_dir: Path | None = Path(".cdc-cache/recovery")
    recovery_partitions: int = Field(default=1, ge=1)
    workers: int = Field(default=1, ge=1, description="worker threads in this process")
    process_id: int | None = Field(default=None, ge=0)
    addresses: list[str] = Field(default_factory=list)
    epoch_interval_ms: int = Field(default=1000, ge=10)
    batch_size: int = Field(default=1000, ge=1)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    log_level: str = "INFO"
    lag_slo_s: float = Field(default=60.0, gt=0, description="lag that switches to ttl mode")
    lag_recover_s: float = Field(default=15.0, ge=0, description="lag that returns to cdc")
    mode_window_s: float = Field(default=30.0, ge=0, description="how long a lag must hold")
    fallback_ttl_s: float = Field(default=60.0, gt=0, description="TTL cap in ttl mode")
    ready_max_consumer_lag: int = Field(default=1000, ge=0)
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


_DB_SCHEMES = ("mysql", "mariadb", "postgresql", "postgres")


class InspectSettings(TopicSettings):
    """``cdc-cache inspect``: the worker's settings and its own ``inspect_*`` ones.

    It reads the worker's settings file and ``CDC_CACHE_*`` variables (keys it does not
    use are ignored), so it consumes the worker's topics with the worker's rules and Redis
    by construction; its own settings come from flags or the environment
    (``CDC_CACHE_INSPECT_*``). See README "Measuring consistency" for each.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    inspect_db: SecretStr | None = Field(
        default=None, description="the database DSN (mysql:// or postgresql://)"
    )
    inspect_db_file: Path | None = Field(default=None, description="file holding inspect_db")
    inspect_port: int | None = Field(default=None, ge=0, le=65535, description="HTTP port")
    inspect_sample_every: int = Field(default=1000, ge=1, description="sample 1 change in N")
    inspect_max_samples_per_s: float = Field(default=10.0, gt=0, description="samples per s")
    inspect_max_db_queries_per_s: float = Field(
        default=20.0, gt=0, description="database queries per s, re-checks included"
    )
    inspect_settle_s: float = Field(default=2.0, gt=0, description="wait before the check")
    inspect_recheck_limit_s: float = Field(
        default=60.0, gt=0, description="how long a wrong key is re-checked"
    )
    inspect_max_pending: int = Field(default=10_000, ge=1, description="samples in flight")
    inspect_objective_nines: float = Field(default=3.0, gt=0, description="alert threshold")
    inspect_min_checks: int = Field(
        default=100, ge=1, description="checks a window needs before it has nines"
    )
    log_level: str = "INFO"

    @model_validator(mode="before")
    @classmethod
    def _no_admin_token(cls, data: Any) -> Any:
        """Leave the worker's admin token out: the inspector changes nothing.

        The worker's file may name an ``admin_token_file`` that is not mounted here.
        """
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in ("admin_token", "admin_token_file")}
        return data

    @model_validator(mode="after")
    def _db_given(self) -> InspectSettings:
        self.inspect_db = _secret(self.inspect_db, self.inspect_db_file, "inspect_db")
        if self.inspect_db is None:
            msg = (
                "give the database to compare with: inspect_db (--db, CDC_CACHE_INSPECT_DB), "
                "e.g. mysql://user:pass@db:3306/inventory, or inspect_db_file"
            )
            raise ValueError(msg)
        scheme = self.inspect_db.get_secret_value().partition("://")[0]
        if scheme not in _DB_SCHEMES:
            msg = (
                f"inspect_db has the scheme {scheme!r}; use mysql://user:pass@host:3306/db "
                "(MySQL, MariaDB) or postgresql://user:pass@host:5432/db"
            )
            raise ValueError(msg)
        return self

    def dsn(self) -> str:
        """The database DSN (possibly read from its file)."""
        assert self.inspect_db is not None  # the validator guarantees it
        return self.inspect_db.get_secret_value()


def _valid_redis_url(url: str) -> str:
    problem = redis_url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    return url


def _secret(value: SecretStr | None, file: Path | None, setting: str) -> SecretStr | None:
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


class GatewaySettings(BaseSettings):
    """Everything ``cdc-cache gateway`` needs; see README "Live notifications"."""

    model_config = SettingsConfigDict(env_prefix=f"{ENV_PREFIX}GATEWAY_", extra="forbid")

    redis_url: str = "redis://127.0.0.1:16379/0"
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    secret: SecretStr | None = Field(default=None, description="HMAC key of client tokens")
    secret_file: Path | None = None
    queue_size: int = Field(default=1000, ge=1, description="messages queued per client")
    heartbeat_s: float = Field(default=15.0, gt=0)
    block_ms: int = Field(default=1000, ge=10, description="XREAD BLOCK per read")
    discover_s: float = Field(default=1.0, gt=0, description="how often new channels are found")
    max_patterns: int = Field(
        default=MAX_PATTERNS, ge=1, description="patterns one connection may hold"
    )
    requests_per_s: float = Field(
        default=10.0, gt=0, description="requests per connection and second (one per pattern)"
    )
    request_burst: int = Field(default=80, ge=1, description="requests allowed at once")
    watchdog: bool = Field(default=True, description="run the worker watchdog in the gateway")
    watchdog_down_after_s: DownAfter = None
    log_level: str = "INFO"

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return _valid_redis_url(value)

    @model_validator(mode="after")
    def _secret_given(self) -> GatewaySettings:
        if self.secret is None and self.secret_file is None:
            msg = "give the token signing key: secret, or secret_file (a file holding it)"
            raise ValueError(msg)
        return self

    def signing_key(self) -> bytes:
        """The HMAC key: ``secret``, or the first line of ``secret_file``."""
        if self.secret is not None:
            return self.secret.get_secret_value().encode()
        assert self.secret_file is not None  # the validator guarantees one of them
        try:
            key = self.secret_file.read_text(encoding="utf-8").strip().encode()
        except OSError as exc:
            msg = f"cannot read secret_file {self.secret_file}: {exc.strerror}"
            raise ConfigError(msg) from exc
        except UnicodeDecodeError:
            msg = f"secret_file {self.secret_file} is not UTF-8 text; write the key as text"
            raise ConfigError(msg) from None
        if not key:
            msg = f"secret_file {self.secret_file} is empty; put the signing key in it"
            raise ConfigError(msg)
        return key


class WatchdogSettings(BaseSettings):
    """``cdc-cache watchdog``: the worker's Redis settings and its own ``watchdog_*`` ones.

    It reads the worker's settings file and ``CDC_CACHE_*`` variables (keys it does not
    use are ignored), so both point at the same Redis by construction; its own settings
    come from flags or the environment. Everything else (the bound, the fallback TTL, the
    prefixes) the worker publishes in Redis.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    redis_url: Annotated[str, AfterValidator(_valid_redis_url)] = "redis://127.0.0.1:16379/0"
    redis_username: str | None = Field(default=None, description="Redis ACL user")
    redis_password: SecretStr | None = None
    redis_password_file: Path | None = Field(default=None, description="file holding it")
    watchdog_down_after_s: DownAfter = None
    watchdog_port: int | None = Field(default=None, ge=0, le=65535, description="admin API")
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _password(self) -> WatchdogSettings:
        self.redis_password = _secret(
            self.redis_password, self.redis_password_file, "redis_password"
        )
        return self

    def redis_auth(self) -> RedisAuth:
        """The ACL credentials (the password possibly read from its file)."""
        return RedisAuth(self.redis_username, self.redis_password)


_S = TypeVar("_S", bound=BaseSettings)


def load_settings(config_file: Path | None = None, **overrides: Any) -> WorkerSettings:
    """Build settings from flags (``overrides``), environment and an optional YAML file."""
    return load(WorkerSettings, config_file, **overrides)


def load(kind: type[_S], config_file: Path | None = None, **overrides: Any) -> _S:
    """Settings of ``kind`` from flags (``overrides``) over environment over a YAML file."""
    given = {k: v for k, v in overrides.items() if v is not None and v != ()}

    class FromFile(kind):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
            if config_file is not None:
                sources += (YamlConfigSettingsSource(settings_cls, yaml_file=config_file),)
            return sources

    if config_file is not None and not config_file.is_file():
        msg = f"settings file {config_file} does not exist; pass an existing file to --config"
        raise ConfigError(msg)
    try:
        settings: _S = FromFile(**given)
        return settings
    except ValidationError as exc:
        raise ConfigError(_explain(exc, config_file, given, kind)) from exc
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        msg = f"settings file {unreadable_yaml(str(config_file), exc)}"
        raise ConfigError(msg) from None


def _explain(
    exc: ValidationError, config_file: Path | None, given: dict[str, Any], kind: type[BaseSettings]
) -> str:
    prefix = kind.model_config.get("env_prefix", ENV_PREFIX)
    lines = _top_level_lines(config_file) if config_file is not None else {}
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "settings"
        if field in given:
            origin = f"--{field.replace('_', '-')}"
        elif field in lines:
            origin = f"{config_file}:{lines[field]}"
        else:
            origin = f"{prefix}{field.upper()}" if field != "settings" else "settings"
        path = ".".join(str(part) for part in error["loc"]) or field
        problems.append(f"{origin}: {path}: {error['msg']}")
    what = {
        GatewaySettings: "gateway",
        WatchdogSettings: "watchdog",
        InspectSettings: "inspector",
    }.get(kind, "worker")
    if len(problems) == 1:
        return f"invalid {what} settings: {problems[0]}"
    return f"invalid {what} settings:\n  " + "\n  ".join(problems)


def _top_level_lines(config_file: Path) -> dict[str, int]:
    try:
        root = yaml.compose(config_file.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, ValueError, yaml.YAMLError, RecursionError):
        return {}
    if not isinstance(root, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in root.value if isinstance(k, yaml.ScalarNode)}
