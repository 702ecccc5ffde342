"""Refresh-only writes (``only_if_cached``) and row expiry through the real apply script.

On one server and on a 3-node Cluster: a refresh-only set writes only over a cached value,
and on an uncached key leaves its version (so a late older change and an application fill
that loaded the row before it cannot land); a row's expiry becomes its TTL, or the delete
of its key once passed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from cdc_cache.core.keys import ns
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import SetRow, ValueFormat
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.encoding import Outcome
from cdc_cache.sink.version_store import stored_version
from cdc_cache.sink.versions import encode_version

pytestmark = pytest.mark.integration

TTL = 60_000
TOMBSTONE = 3_600_000


def refresh(key: str, n: int) -> SetRow:
    return SetRow(
        key, SourcePosition(0, 7, n, 0), f'{{"v":{n}}}'.encode(), ValueFormat.JSON, TTL,
        TOMBSTONE, only_if_cached=True,
    )  # fmt: skip


def test_refresh_only_never_fills_but_records_its_version(any_redis: Any) -> None:
    applier = RedisApplier(any_redis)
    any_redis.set(ns().lease_key("{w}:1"), "lease")
    assert applier.apply([refresh("{w}:1", 5)]).outcomes == (Outcome.INVALIDATED,)
    assert any_redis.get("{w}:1") is None
    assert any_redis.get(ns().lease_key("{w}:1")) is None  # an in-flight fill cannot land
    assert stored_version(any_redis, "{w}:1") == encode_version(
        SourcePosition(0, 7, 5, 0), delete=False
    )
    assert applier.apply([refresh("{w}:1", 4)]).outcomes == (Outcome.STALE,)


def test_refresh_only_updates_a_cached_value_version_gated(any_redis: Any) -> None:
    applier = RedisApplier(any_redis)
    plain = replace(refresh("{w}:2", 3), only_if_cached=False)
    assert applier.apply([plain]).outcomes == (Outcome.APPLIED,)
    assert applier.apply([refresh("{w}:2", 6), refresh("{w}:2", 5)]).outcomes == (
        Outcome.APPLIED,
        Outcome.STALE,
    )
    assert any_redis.get("{w}:2") == b'{"v":6}'
    assert 0 < any_redis.pttl("{w}:2") <= TTL


def test_without_the_flag_the_same_set_fills_the_cold_key(any_redis: Any) -> None:
    """The flag is what keeps cold rows out: the same set unflagged writes the key."""
    RedisApplier(any_redis).apply([replace(refresh("{w}:3", 5), only_if_cached=False)])
    assert any_redis.get("{w}:3") == b'{"v":5}'


def test_a_cached_value_without_a_version_is_invalidated_not_refreshed(any_redis: Any) -> None:
    """Filled before any change of its row was seen: the change cannot tell it is newer."""
    any_redis.set("{w}:4", b"filled")
    assert RedisApplier(any_redis).apply([refresh("{w}:4", 5)]).outcomes == (Outcome.INVALIDATED,)
    assert any_redis.get("{w}:4") is None
