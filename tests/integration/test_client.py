from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from cdc_cache.aside.cache_aside import NEGATIVE, CacheAside, FillCounts
from cdc_cache.aside.fill import RowCodec
from cdc_cache.core.events import ChangeEvent, Op
from cdc_cache.core.keys import ns
from cdc_cache.core.logical import ColumnType, Kind, RowTypes
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import CacheOp, DeleteKey, InvalidatePrefix, SetRow, ValueFormat
from cdc_cache.plan.planner import plan
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import RedisApplier

pytestmark = pytest.mark.integration

KEY = "user:{7}:profile"
OLD, NEW = b'{"name":"old"}', b'{"name":"new"}'
TTL = 600_000
TOMBSTONE = 3_600_000


def pos(n: int) -> SourcePosition:
    return SourcePosition(0, 7, n, 0)


def cdc_set(key: str, n: int, value: bytes) -> SetRow:
    return SetRow(key, pos(n), value, ValueFormat.JSON, TTL, TOMBSTONE)


def cdc_delete(key: str, n: int) -> DeleteKey:
    return DeleteKey(key, pos(n), TOMBSTONE)


class Loader:
    """A database read that returns ``row`` and counts its calls; ``during`` runs mid-read."""

    def __init__(self, row: bytes | None, during: Callable[[], object] = lambda: None) -> None:
        self.row = row
        self.during = during
        self.calls = 0

    def __call__(self) -> bytes | None:
        self.calls += 1
        self.during()
        return self.row


def change_applied_mid_load(redis: Any, row: bytes | None, *change: CacheOp) -> Loader:
    """The race: the loader reads ``row``, then the worker applies ``change`` before the fill."""
    return Loader(row, during=lambda: RedisApplier(redis).apply(change))


def plain_fill(redis: Any, key: str, loader: Loader) -> bytes | None:
    """Cache-aside without leases: GET, load, SET."""
    cached: bytes | None = redis.get(key)
    if cached is not None:
        return cached
    row = loader()
    if row is not None:
        redis.set(key, row, px=TTL)
    return row


def test_miss_fills_then_hits(any_redis: Any) -> None:
    cache = CacheAside(any_redis, ttl_ms=TTL)
    loader = Loader(OLD)
    assert cache.get(KEY, loader) == OLD
    assert cache.get(KEY, loader) == OLD
    assert loader.calls == 1
    assert TTL - 5_000 < any_redis.pttl(KEY) <= TTL
    assert any_redis.exists(ns().lease_key(KEY)) == 0


def test_value_written_by_the_worker_is_a_hit(any_redis: Any) -> None:
    RedisApplier(any_redis).apply([cdc_set(KEY, 1, NEW)])
    loader = Loader(OLD)
    assert CacheAside(any_redis, ttl_ms=TTL).get(KEY, loader) == NEW
    assert loader.calls == 0


def test_per_call_ttl(any_redis: Any) -> None:
    CacheAside(any_redis, ttl_ms=TTL).get(KEY, Loader(OLD), ttl_ms=10_000)
    assert 5_000 < any_redis.pttl(KEY) <= 10_000


@pytest.mark.parametrize(
    "change",
    [cdc_delete(KEY, 2), cdc_set(KEY, 2, NEW)],
    ids=["delete", "set"],
)
def test_change_applied_during_load_rejects_the_fill(any_redis: Any, change: CacheOp) -> None:
    loader = change_applied_mid_load(any_redis, OLD, change)
    cache = CacheAside(any_redis, ttl_ms=TTL)
    assert cache.get(KEY, loader) == OLD  # the caller still gets it
    cached = any_redis.get(KEY)
    assert cached == (NEW if isinstance(change, SetRow) else None)
    assert any_redis.exists(ns().lease_key(KEY)) == 0
    assert cache.fills == FillCounts(loads=1, voided_by_change=1)


def test_plain_fill_without_lease_leaves_the_stale_row(any_redis: Any) -> None:
    loader = change_applied_mid_load(any_redis, OLD, cdc_delete(KEY, 2))
    assert plain_fill(any_redis, KEY, loader) == OLD
    assert any_redis.get(KEY) == OLD  # stale: the row was deleted, the cache still has it
    assert any_redis.exists(ns().version_key(KEY)) == 1


def test_truncate_during_load_rejects_the_fill_of_an_absent_key(any_redis: Any) -> None:
    truncate = InvalidatePrefix("user:", "db.user", pos(5), TOMBSTONE)
    loader = change_applied_mid_load(any_redis, OLD, truncate)
    assert CacheAside(any_redis, ttl_ms=TTL).get(KEY, loader) == OLD
    assert any_redis.exists(KEY, ns().lease_key(KEY)) == 0


def test_stale_or_duplicate_change_does_not_void_the_lease(any_redis: Any) -> None:
    RedisApplier(any_redis).apply([cdc_delete(KEY, 5)])
    replays = (cdc_set(KEY, 3, OLD), cdc_delete(KEY, 5))
    loader = change_applied_mid_load(any_redis, None, *replays)
    assert CacheAside(any_redis, ttl_ms=TTL).get(KEY, loader) is None
    assert any_redis.get(KEY) == NEGATIVE


def test_concurrent_misses_load_once(any_redis: Any) -> None:
    cache = CacheAside(any_redis, ttl_ms=TTL, lease_wait_ms=2_000)
    loader = Loader(OLD, during=lambda: time.sleep(0.05))
    start = threading.Barrier(6)
    results: list[bytes | None] = []

    def read() -> None:
        start.wait()
        results.append(cache.get(KEY, loader))

    threads = [threading.Thread(target=read) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == [OLD] * 6
    assert loader.calls == 1
    assert any_redis.get(KEY) == OLD


def test_slow_fill_elsewhere_is_not_waited_on_past_the_budget(any_redis: Any) -> None:
    any_redis.set(ns().lease_key(KEY), b"another reader", px=60_000)
    loader = Loader(NEW)
    assert CacheAside(any_redis, ttl_ms=TTL, lease_wait_ms=30).get(KEY, loader) == NEW
    assert loader.calls == 1
    assert any_redis.exists(KEY) == 0
    assert any_redis.get(ns().lease_key(KEY)) == b"another reader"


def test_fill_after_the_lease_expired_is_dropped(any_redis: Any) -> None:
    loader = Loader(OLD, during=lambda: time.sleep(0.05))
    assert CacheAside(any_redis, ttl_ms=TTL, lease_ttl_ms=10).get(KEY, loader) == OLD
    assert any_redis.exists(KEY) == 0


def test_failing_loader_releases_the_lease(any_redis: Any) -> None:
    def broken() -> bytes | None:
        raise OSError("database down")

    cache = CacheAside(any_redis, ttl_ms=TTL)
    with pytest.raises(OSError, match="database down"):
        cache.get(KEY, broken)
    assert any_redis.exists(ns().lease_key(KEY)) == 0


def test_missing_row_is_cached_briefly(any_redis: Any) -> None:
    cache = CacheAside(any_redis, ttl_ms=TTL, negative_ttl_ms=5_000)
    loader = Loader(None)
    assert cache.get(KEY, loader) is None
    assert cache.get(KEY, loader) is None
    assert loader.calls == 1
    assert any_redis.get(KEY) == NEGATIVE
    assert 0 < any_redis.pttl(KEY) <= 5_000

    # The row is inserted. The marker has no version, so nothing says the insert is newer
    # than what the marker stands for: it is invalidated, and the next read loads the row.
    RedisApplier(any_redis).apply([cdc_set(KEY, 1, NEW)])
    assert any_redis.exists(KEY) == 0
    loader.row = NEW
    assert cache.get(KEY, loader) == NEW
    assert loader.calls == 2


def test_insert_during_a_not_found_load_rejects_the_negative_fill(any_redis: Any) -> None:
    loader = change_applied_mid_load(any_redis, None, cdc_set(KEY, 1, NEW))
    assert CacheAside(any_redis, ttl_ms=TTL).get(KEY, loader) is None
    assert any_redis.get(KEY) == NEW


def test_loader_may_not_return_the_negative_marker(any_redis: Any) -> None:
    with pytest.raises(ValueError, match="return None instead"):
        CacheAside(any_redis, ttl_ms=TTL).get(KEY, Loader(NEGATIVE))
    assert any_redis.exists(KEY, ns().lease_key(KEY)) == 0


def test_ttl_mode_caps_fills_at_the_fallback_ttl(any_redis: Any) -> None:
    any_redis.hset(ns().mode, mapping={"mode": "ttl", "fallback_ttl_ms": 4_000})
    cache = CacheAside(any_redis, ttl_ms=TTL, negative_ttl_ms=TTL)
    cache.get(KEY, Loader(OLD))
    cache.get("user:{8}:profile", Loader(None))
    assert 0 < any_redis.pttl(KEY) <= 4_000
    assert 0 < any_redis.pttl("user:{8}:profile") <= 4_000


def test_a_table_in_ttl_mode_alone_caps_only_the_fills_under_its_prefixes(any_redis: Any) -> None:
    any_redis.hset(
        ns().mode,
        mapping={"mode": "cdc", "fallback_ttl_ms": 4_000, "ttl_prefixes": '["user:"]'},
    )
    cache = CacheAside(any_redis, ttl_ms=TTL)
    cache.get(KEY, Loader(OLD))
    cache.get("order:1", Loader(OLD))
    assert 0 < any_redis.pttl(KEY) <= 4_000
    assert any_redis.pttl("order:1") > 4_000


def test_a_hash_gone_stale_caps_every_fill_not_only_those_under_ttl_prefixes(
    any_redis: Any,
) -> None:
    written_ms = 1_000_000
    any_redis.hset(
        ns().mode,
        mapping={
            "mode": "cdc", "fallback_ttl_ms": 4_000, "ttl_prefixes": '["user:"]',
            "updated_ms": written_ms, "stale_after_ms": 90_000,
        },
    )  # fmt: skip
    now_s = [written_ms / 1000 + 1]
    cache = CacheAside(any_redis, ttl_ms=TTL, mode_refresh_s=0, wall_clock=lambda: now_s[0])
    assert cache.mode().name == "cdc"  # fresh: only the table's keys are capped
    cache.get("order:1", Loader(OLD))
    assert any_redis.pttl("order:1") > 4_000

    now_s[0] += 90  # no worker (nor watchdog) wrote it for longer than its bound
    mode = cache.mode()
    assert (mode.name, mode.ttl_cap_ms, mode.table_prefixes) == ("ttl", 4_000, ("user:",))
    cache.get(KEY, Loader(OLD))
    cache.get("order:2", Loader(OLD))
    assert 0 < any_redis.pttl(KEY) <= 4_000
    assert 0 < any_redis.pttl("order:2") <= 4_000


def test_a_hash_missing_for_longer_than_the_bound_caps_every_fill(any_redis: Any) -> None:
    """Redis restarted empty while no worker runs: nobody writes the hash again, nor applies
    an invalidation, so a missing hash cannot mean cdc for longer than a stale one would."""
    now = [0.0]
    cache = CacheAside(
        any_redis, ttl_ms=TTL, fallback_ttl_ms=4_000, stale_after_ms=90_000,
        mode_refresh_s=0, clock=lambda: now[0],
    )  # fmt: skip
    assert cache.mode().name == "cdc"  # a worker writes it within a second of starting
    now[0] += 60
    assert cache.mode().name == "cdc"
    now[0] += 31  # missing for longer than the bound
    mode = cache.mode()
    assert (mode.name, mode.ttl_cap_ms) == ("ttl", 4_000)
    cache.get(KEY, Loader(OLD))
    assert 0 < any_redis.pttl(KEY) <= 4_000

    any_redis.hset(ns().mode, mapping={"mode": "cdc", "updated_ms": int(time.time() * 1000)})
    now[0] += 1
    assert cache.mode().name == "cdc"  # written again: trusted again
    any_redis.delete(ns().mode)
    now[0] += 1
    assert cache.mode().name == "cdc"  # missing again: counted from now
    unbounded = CacheAside(any_redis, ttl_ms=TTL, stale_after_ms=None, clock=lambda: now[0])
    assert unbounded.mode().name == "cdc"
    now[0] += 3600
    assert unbounded.mode().name == "cdc"  # stale_after_ms=None trusts the mode however old


def test_mode_is_reread_after_the_refresh_period(any_redis: Any) -> None:
    now = [0.0]
    cache = CacheAside(any_redis, ttl_ms=TTL, fallback_ttl_ms=3_000, clock=lambda: now[0])
    assert cache.mode().name == "cdc"  # no hash published: normal mode
    any_redis.hset(ns().mode, "mode", "ttl")
    assert cache.mode().name == "cdc"  # cached
    now[0] = 1.5
    mode = cache.mode()
    assert (mode.name, mode.ttl_cap_ms) == ("ttl", 3_000)  # no field: the helper's fallback
    cache.get(KEY, Loader(OLD))
    assert 0 < any_redis.pttl(KEY) <= 3_000


def test_bad_settings_name_the_parameter(any_redis: Any) -> None:
    with pytest.raises(ValueError, match="negative_ttl_ms=0"):
        CacheAside(any_redis, ttl_ms=TTL, negative_ttl_ms=0)
    with pytest.raises(ValueError, match="ttl_ms=-1"):
        CacheAside(any_redis, ttl_ms=TTL).get(KEY, Loader(OLD), ttl_ms=-1)


ORDERS = parse_rules("""
version: 2
tables:
  shop.orders:
    types: {paid: boolean}
    keys:
      - key: "order:{placed_on}:{id}"
""")
ORDER_ROW = {"id": 7, "placed_on": dt.date(2026, 11, 29), "total": Decimal("12.50"), "paid": 1}
# The same row as Debezium ships it (precise decimals, epoch days), with its schema's types.
ORDER_SHIPPED = {"id": 7, "placed_on": 20786, "total": "BOI=", "paid": 1}
ORDER_TYPES = RowTypes(
    [("placed_on", ColumnType(Kind.DATE)), ("total", ColumnType(Kind.DECIMAL, 2))]
)


def worker_writes_order(redis: Any, n: int) -> SetRow:
    event = ChangeEvent(
        table="shop.orders",
        op=Op.UPDATE,
        before=ORDER_SHIPPED,
        after=ORDER_SHIPPED,
        key={"id": 7},
        position=pos(n),
        committed_at_ms=None,
        types=ORDER_TYPES,
    )
    table = ORDERS.tables["shop.orders"]
    (op,) = plan(table.values.event(event), ORDERS)
    assert isinstance(op, SetRow)
    RedisApplier(redis).apply([op])
    return op


def test_get_row_fills_the_workers_key_with_the_workers_bytes(any_redis: Any) -> None:
    codec = RowCodec(ORDERS, "shop.orders")
    cache = CacheAside(any_redis, ttl_ms=TTL)
    filled = cache.get_row(codec, {"id": 7, "placed_on": dt.date(2026, 11, 29)}, lambda: ORDER_ROW)
    assert filled == b'{"id":7,"placed_on":"2026-11-29","total":"12.50","paid":true}'
    assert any_redis.get("order:2026-11-29:7") == filled
    # The worker's first change to the key finds the fill without a version: it invalidates
    # it (see lua/apply.lua); its next change writes the row again.
    worker_writes_order(any_redis, 2)
    assert any_redis.exists("order:2026-11-29:7") == 0
    written = worker_writes_order(any_redis, 3)  # the worker rewrites the same row later
    assert written.key == "order:2026-11-29:7"
    assert any_redis.get(written.key) == filled  # same bytes: no flip between two shapes
    hit = cache.get_row(codec, {"id": 7, "placed_on": dt.date(2026, 11, 29)}, Loader(None))
    assert hit == filled


def test_get_row_of_a_missing_row_caches_the_negative_marker(any_redis: Any) -> None:
    codec = RowCodec(ORDERS, "shop.orders")
    cache = CacheAside(any_redis, ttl_ms=TTL)
    assert cache.get_row(codec, {"id": 8, "placed_on": dt.date(2026, 1, 1)}, lambda: None) is None
    assert any_redis.get("order:2026-01-01:8") == NEGATIVE
