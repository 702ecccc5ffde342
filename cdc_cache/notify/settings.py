"""``cdc-cache gateway`` settings: flags over ``CDC_CACHE_GATEWAY_*`` over a YAML file.

Loaded like every process's settings (``cdc_cache.app.load.load``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cdc_cache.app.settings import ENV_PREFIX, DownAfter, Namespace, valid_redis_url
from cdc_cache.core.errors import ConfigError
from cdc_cache.core.keys import DEFAULT_NAMESPACE
from cdc_cache.notify.tokens import MAX_PATTERNS


class GatewaySettings(BaseSettings):
    """Everything ``cdc-cache gateway`` needs; see README "Live notifications"."""

    model_config = SettingsConfigDict(
        env_prefix=f"{ENV_PREFIX}GATEWAY_", extra="forbid", title="gateway"
    )

    redis_url: str = "redis://127.0.0.1:16379/0"
    namespace: Namespace = DEFAULT_NAMESPACE
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
        return valid_redis_url(value)

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
