"""Entering ttl mode shortens existing managed keys, on single Redis and on Redis Cluster."""

from __future__ import annotations

from typing import Any

import pytest

from cdc_cache.core.keys import ns
from cdc_cache.fallback.shortening import shorten_ttls

pytestmark = pytest.mark.integration
HOUR_MS = 3_600_000


def test_managed_keys_get_the_short_ttl_and_nothing_else_changes(any_redis: Any) -> None:
    managed = [f"stock:{i}:north" for i in range(300)] + ["sku:7:availability", "stock:{tag}:x"]
    for key in managed:
        any_redis.set(key, b"v", px=HOUR_MS)
    any_redis.set("stock:persistent", b"v")  # no TTL at all: LT treats it as infinite
    any_redis.set("stock:short", b"v", px=2_000)  # already shorter: left alone
    any_redis.set("session:1", b"v", px=HOUR_MS)  # not under a managed prefix
    any_redis.set(ns().version_key("stock:1:north"), b"position", px=HOUR_MS)
    slept: list[float] = []

    count = shorten_ttls(
        any_redis, ["stock:", "sku:"], 10_000, keys_per_s=1_000, page=50, sleep=slept.append
    )

    assert count == len(managed) + 1
    for key in [*managed, "stock:persistent"]:
        assert 0 < any_redis.pttl(key) <= 10_000, key
    assert any_redis.pttl("stock:short") <= 2_000
    assert any_redis.pttl("session:1") > 10_000
    assert any_redis.pttl(ns().version_key("stock:1:north")) > 10_000
    assert sum(slept) == pytest.approx((len(managed) + 2) / 1_000)  # the rate limit


def test_shortening_stops_when_the_mode_leaves_ttl(any_redis: Any) -> None:
    for i in range(200):
        any_redis.set(f"stock:{i}", b"v", px=HOUR_MS)
    pages: list[float] = []

    def keep_going() -> bool:
        return len(pages) < 1

    shorten_ttls(
        any_redis,
        ["stock:"],
        10_000,
        keys_per_s=1e9,
        page=10,
        keep_going=keep_going,
        sleep=pages.append,
    )

    untouched = sum(any_redis.pttl(f"stock:{i}") > 10_000 for i in range(200))
    assert untouched > 100
