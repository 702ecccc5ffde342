"""``cdc-cache inspect`` settings: the worker's, and its own ``inspect_*`` ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    SecretStr,
    model_validator,
)
from pydantic_settings import (
    SettingsConfigDict,
)

from cdc_cache.app.settings import ENV_PREFIX, TopicSettings, secret_from_file

_DB_SCHEMES = ("mysql", "mariadb", "postgresql", "postgres")


class InspectSettings(TopicSettings):
    """``cdc-cache inspect``: the worker's settings and its own ``inspect_*`` ones.

    It reads the worker's settings file and ``CDC_CACHE_*`` variables (keys it does not
    use are ignored), so it consumes the worker's topics with the worker's rules and Redis
    by construction; its own settings come from flags or the environment
    (``CDC_CACHE_INSPECT_*``). See README "Measuring consistency" for each.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", title="inspector")

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
        self.inspect_db = secret_from_file(self.inspect_db, self.inspect_db_file, "inspect_db")
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
