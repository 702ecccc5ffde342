from __future__ import annotations

import time
from typing import Any

import pytest

from cdc_cache.core import metrics
from cdc_cache.core.keys import ns, version_field
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import DeleteKey, InvalidatePrefix, SetRow, Truncated, ValueFormat
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.encoding import Outcome
from cdc_cache.sink.nodes import buckets_by_node
from cdc_cache.sink.version_store import VersionSweeper, migrate_legacy, stored_version
from cdc_cache.sink.versions import encode_version, stored

pytestmark = pytest.mark.integration

TTL = 60_000
TOMBSTONE = 3_600_000
NOW_MINUTE = int(time.time() // 60)


def pos(n: int) -> SourcePosition:
    return SourcePosition(0, 7, n, 0)


def set_json(key: str, n: int) -> SetRow:
    return SetRow(key, pos(n), f'{{"v":{n}}}'.encode(), ValueFormat.JSON, TTL, TOMBSTONE)


def put_version(redis: Any, key: str, n: int, horizon: int, *, delete: bool = False) -> None:
    """A version field as the apply script leaves it, with a chosen horizon."""
    redis.hset(
        ns().version_key(key),
        version_field(key),
        stored(encode_version(pos(n), delete=delete), horizon),
    )


def test_the_sweeper_forgets_versions_past_their_horizon_only(any_redis: Any) -> None:
    keys = [f"sw:{i}" for i in range(300)]
    for i, key in enumerate(keys):
        put_version(any_redis, key, 1, NOW_MINUTE - 1 if i % 3 == 0 else NOW_MINUTE + 30)
    before = metrics.VERSIONS_SWEPT._value.get()

    report = VersionSweeper(any_redis).sweep()

    assert (report.examined, report.removed) == (300, 100)
    assert metrics.VERSIONS_SWEPT._value.get() - before == 100
    left = {key for key in keys if stored_version(any_redis, key) is not None}
    assert left == {key for i, key in enumerate(keys) if i % 3 != 0}
    # a swept tombstone no longer stops an older write: the documented horizon
    put_version(any_redis, "sw:gone", 9, NOW_MINUTE - 1, delete=True)
    VersionSweeper(any_redis).sweep()
    assert RedisApplier(any_redis).apply([set_json("sw:gone", 5)]).outcomes == (Outcome.APPLIED,)


def test_truncate_records_in_the_buckets_are_not_counted_as_versions(any_redis: Any) -> None:
    """A TRUNCATE leaves a ``truncated:<table>`` field in every bucket: counted apart."""
    keys = [f"tr:{i}" for i in range(10)]
    for i, key in enumerate(keys):
        put_version(any_redis, key, 1, NOW_MINUTE - 1 if i < 3 else NOW_MINUTE + 30)
    RedisApplier(any_redis).apply([InvalidatePrefix("tr:", "db.t", pos(5), TOMBSTONE, Truncated())])
    # a TRUNCATE of another table recorded in one bucket only, its horizon passed
    bucket = ns().version_key(keys[0])
    any_redis.hset(bucket, "truncated:db.old", stored(encode_version(pos(2), delete=True), 1))
    buckets = sum(len(names) for _, names in buckets_by_node(any_redis))
    swept = metrics.VERSIONS_SWEPT._value.get()

    report = VersionSweeper(any_redis, fields_per_s=10_000_000).sweep()

    assert (report.examined, report.removed) == (10, 3)
    assert (report.truncates_examined, report.truncates_removed) == (buckets + 1, 1)
    assert metrics.VERSIONS_KEPT._value.get() == 7
    assert metrics.VERSIONS_SWEPT._value.get() - swept == 3
    assert metrics.TRUNCATE_RECORDS._value.get() == buckets
    assert any_redis.hget(bucket, "truncated:db.old") is None
    assert any_redis.hget(bucket, "truncated:db.t") is not None


def test_a_sweep_stops_when_asked(any_redis: Any) -> None:
    put_version(any_redis, "early", 1, NOW_MINUTE - 1)
    assert VersionSweeper(any_redis).sweep(keep_going=lambda: False).examined == 0
    assert stored_version(any_redis, "early") is not None


def legacy_write(
    redis: Any, key: str, n: int, *, delete: bool = False, ttl_ms: int = TOMBSTONE
) -> None:
    """A version key exactly as the previous release wrote it."""
    redis.set(ns().legacy_version_key(key), pos(n).encode() + (".d" if delete else ".s"), px=ttl_ms)


def test_upgrade_moves_previous_versions_and_keeps_the_newer(any_redis: Any) -> None:
    legacy_write(any_redis, "up:1", 5)  # only the old layout knows it
    legacy_write(any_redis, "up:{x}:2", 7, delete=True)  # a tombstone: must survive the upgrade
    legacy_write(any_redis, "up:3", 4)
    RedisApplier(any_redis).apply([set_json("up:3", 6)])  # newer, already in a bucket
    any_redis.set(ns().legacy_version_key("up:bad"), b"no version at all")
    any_redis.set("up:bad", b"a value nothing vouches for")

    assert migrate_legacy(any_redis, lifetime_ms=TOMBSTONE) == 3

    assert stored_version(any_redis, "up:1") == encode_version(pos(5), delete=False)
    assert stored_version(any_redis, "up:{x}:2") == encode_version(pos(7), delete=True)
    assert stored_version(any_redis, "up:3") == encode_version(pos(6), delete=False)
    legacy = [ns().legacy_version_key(k) for k in ("up:1", "up:{x}:2", "up:3", "up:bad")]
    assert any_redis.exists(*legacy, "up:bad") == 0
    assert any_redis.hget(ns().version_layout, "format") == b"2"
    # late older changes stay stale across the upgrade; a deleted row is not resurrected
    late = [set_json("up:1", 4), set_json("up:{x}:2", 6), DeleteKey("up:3", pos(5), TOMBSTONE)]
    stale = (Outcome.STALE,) * 3
    assert RedisApplier(any_redis).apply(late).outcomes == stale
    assert any_redis.exists("up:{x}:2") == 0
    # once recorded, later starts do not scan again
    legacy_write(any_redis, "up:after", 1)
    assert migrate_legacy(any_redis, lifetime_ms=TOMBSTONE) == 0
