"""What tests read from the cache, and the waits until it matches what they expect."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
from redis import Redis
from redis.cluster import RedisCluster

from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.tools.verify import verify
from cdc_cache.tools.verify_report import Report
from tests.integration.services import Service
from tests.integration.waiting import held_within


def cache_state(client: Redis | RedisCluster, prefix: str = "stock:") -> dict[str, Any]:
    """The JSON values under ``prefix`` (a key deleted between SCAN and GET is skipped)."""
    state = {}
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        value = client.get(key)
        if value is not None:
            state[key.decode()] = orjson.loads(value)  # type: ignore[arg-type]
    return state


def wait_until_equal(
    client: Redis | RedisCluster, expected: dict[str, Any], timeout: float = 90
) -> dict[str, Any]:
    """The cache's state once it equals ``expected``, else the last one seen (for a diff)."""
    state: dict[str, Any] = {}

    def equal() -> bool:
        nonlocal state
        state = cache_state(client)
        return state == expected

    held_within(equal, timeout, interval=0.5)
    return state


def wait_until_verified(
    dsn: str,
    rules: str,
    client: Redis | RedisCluster,
    services: Sequence[Service],
    timeout: float = 120,
    done: Callable[[Report], bool] = lambda report: report.clean,
) -> Report:
    """Poll the checker until the cache matches the database (``done``: no finding at
    all), then check once more with re-checks of in-flight changes; returns that last
    report (``done`` unless timed out)."""
    compiled = parse_rules(rules)
    held_within(
        lambda: done(verify(dsn, compiled, client, settle_retries=0)),
        timeout,
        alive=services,
        interval=1,
    )
    return verify(dsn, compiled, client, settle_retries=3, settle_delay_s=0.5)
