"""The integration tier's fixtures: real servers and a browser, for these tests only.

Registered here rather than for the whole suite, so ``pytest tests/unit`` needs neither
the local servers nor Selenium.
"""

from tests.integration.fixtures_browser import browser, chromium_session
from tests.integration.fixtures_redis import (
    any_redis,
    redis_client,
    redis_cluster,
    redis_cluster_client,
    redis_server,
    redis_target,
    replicated_redis,
)
from tests.integration.fixtures_stack import broker, mariadb, postgres

__all__ = [
    "any_redis",
    "broker",
    "browser",
    "chromium_session",
    "mariadb",
    "postgres",
    "redis_client",
    "redis_cluster",
    "redis_cluster_client",
    "redis_server",
    "redis_target",
    "replicated_redis",
]
