"""Cache tags and dependency links on real Redis (one server and a 3-node Cluster).

The ops come from the planner for real change events of a small catalog (products depend
on brands; brand listings are filled by the application under a tag).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest

from cdc_cache.aside.cache_aside import CacheAside, FillCounts
from cdc_cache.core.errors import RedisUnavailable
from cdc_cache.core.events import ChangeEvent, Op, SourceRecord
from cdc_cache.core.keys import key_slot, ns
from cdc_cache.core.positions import SourcePosition
from cdc_cache.core.retry import Backoff
from cdc_cache.mode.controller import Cause
from cdc_cache.mode.holds import Holds
from cdc_cache.plan.cache_ops import CacheOp, DependencyOp, InvalidateTag, LinkKey
from cdc_cache.plan.dependencies import plan_dependencies
from cdc_cache.plan.planner import plan
from cdc_cache.plan.route import Planned
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import ApplyResult, RedisApplier
from cdc_cache.sink.connection import primaries
from cdc_cache.sink.memory import OomGuard
from cdc_cache.sink.scripts import accepts_writes
from cdc_cache.sink.tag_sweep import sweep_tags
from cdc_cache.sink.tags import TagStore, member
from cdc_cache.sink.writer import CacheWriter
from tests.integration.memory_pressure import out_of_memory
from tests.unit.test_dependencies import CATALOG

pytestmark = pytest.mark.integration

RULES = parse_rules(CATALOG)
TTL = 600_000
TOMBSTONE = 3_600_000


def at(n: int) -> SourcePosition:
    return SourcePosition(0, 3, n, 0)


def product(n: int, pid: int, brand: int | None, before_brand: int | None = None) -> ChangeEvent:
    after = {"id": pid, "brand_id": brand, "name": f"p{n}"}
    if before_brand is None:
        return ChangeEvent("catalog.products", Op.CREATE, None, after, {"id": pid}, at(n), 0)
    before = {**after, "brand_id": before_brand, "name": "old"}
    return ChangeEvent("catalog.products", Op.UPDATE, before, after, {"id": pid}, at(n), 0)


def brand(n: int, bid: int) -> ChangeEvent:
    before, after = {"id": bid, "name": "old"}, {"id": bid, "name": f"b{n}"}
    return ChangeEvent("catalog.brands", Op.UPDATE, before, after, {"id": bid}, at(n), 0)


def worker(redis: Any, **options: Any) -> tuple[RedisApplier, TagStore]:
    applier = RedisApplier(redis)
    return applier, TagStore(redis, applier, **options)


def apply(redis: Any, *events: ChangeEvent, **options: Any) -> None:
    """What the worker does with each change: the row's key ops, then its tag ops."""
    applier, tags = worker(redis, **options)
    for event in events:
        applier.apply(plan(event, RULES))
        tags.apply(plan_dependencies(event, RULES))


def fill(redis: Any, key: str, tags: Sequence[str] = ()) -> None:
    assert CacheAside(redis, ttl_ms=TTL).get(key, lambda: b"page", tags=tags) == b"page"


def test_a_brand_change_deletes_the_pages_of_its_products_only(any_redis: Any) -> None:
    apply(any_redis, product(1, 1, 7), product(2, 2, 7), product(3, 3, 8))
    for pid in (1, 2, 3):
        fill(any_redis, f"product:{pid}:page")
    apply(any_redis, brand(4, 7))
    assert [any_redis.exists(f"product:{pid}:page") for pid in (1, 2, 3)] == [0, 0, 1]


def test_a_product_that_moved_is_not_put_back_by_its_late_older_insert(any_redis: Any) -> None:
    apply(any_redis, product(2, 1, 8, before_brand=7), product(1, 1, 7))
    old = any_redis.hget(
        ns().tag_key("catalog.brands:7"), member("product:1:page", "catalog.products:1")
    )
    new = any_redis.hget(
        ns().tag_key("catalog.brands:8"), member("product:1:page", "catalog.products:1")
    )
    assert old.startswith(b"-" + at(2).encode().encode())  # a tombstone, then its horizon
    assert new == b"+" + at(2).encode().encode()
    fill(any_redis, "product:1:page")
    apply(any_redis, brand(3, 7))
    assert any_redis.exists("product:1:page") == 1  # brand 7 is no longer its brand
    apply(any_redis, brand(4, 8))
    assert any_redis.exists("product:1:page") == 0


def test_a_link_seen_after_its_parents_change_deletes_the_key_there(any_redis: Any) -> None:
    # The product's own op at 5 is applied, a reader fills its page with brand 9 as it was
    # before 7, the brand's change at 7 finds no member (the link op comes after it, as on
    # Cluster or when the brand's topic runs ahead), then the link op at 5 arrives.
    applier, tags = worker(any_redis)
    applier.apply(plan(product(5, 1, 9), RULES))
    fill(any_redis, "product:1:page")
    apply(any_redis, brand(7, 9))
    assert any_redis.exists("product:1:page") == 1
    result = tags.apply(plan_dependencies(product(5, 1, 9), RULES))
    assert result.deleted == 1
    assert any_redis.exists("product:1:page") == 0


def test_a_replayed_link_does_the_catch_up_again(any_redis: Any) -> None:
    apply(any_redis, brand(7, 9), product(5, 1, 9))  # link applied, catch-up done
    fill(any_redis, "product:1:page")  # a fill that read the database after 7
    apply(any_redis, product(5, 1, 9))  # the replay: duplicate link, same catch-up, gated
    assert any_redis.exists("product:1:page") == 1  # the catch-up delete is a duplicate


def test_a_fill_whose_tag_is_invalidated_while_it_loads_does_not_land(any_redis: Any) -> None:
    cache = CacheAside(any_redis, ttl_ms=TTL)
    listing = "listing:brand:7"

    def load() -> bytes:
        apply(any_redis, product(1, 1, 7))  # invalidates listing:brand:7 mid-load
        return b"old listing"

    assert cache.get(listing, load, tags=[listing]) == b"old listing"
    assert any_redis.exists(listing) == 0
    assert cache.get(listing, lambda: b"new listing", tags=[listing]) == b"new listing"
    assert any_redis.get(listing) == b"new listing"
    assert cache.fills == FillCounts(loads=2, landed=1, voided_by_tag=1)
    apply(any_redis, product(2, 2, 7))
    assert any_redis.exists(listing) == 0
    assert any_redis.hkeys(ns().tag_key(listing)) == [b"", b"h"]  # the fill's member left


def test_a_fill_without_the_tag_check_would_land_stale(any_redis: Any) -> None:
    # What the check prevents: the same race with a plain fill leaves the old listing.
    cache = CacheAside(any_redis, ttl_ms=TTL)
    listing = "listing:brand:7"

    def load() -> bytes:
        apply(any_redis, product(1, 1, 7))
        return b"old listing"

    cache.get(listing, load)
    assert any_redis.get(listing) == b"old listing"


def test_a_malformed_tag_is_refused(any_redis: Any) -> None:
    with pytest.raises(ValueError, match="whitespace"):
        CacheAside(any_redis, ttl_ms=TTL).get("k", lambda: b"v", tags=["brand 7"])
    with pytest.raises(ValueError, match="give a list of tags"):
        CacheAside(any_redis, ttl_ms=TTL).get("k", lambda: b"v", tags="brand:7")


def linked(redis: Any, keys: int, tag: str = "catalog.brands:7") -> list[str]:
    names = [f"product:{i}:page" for i in range(keys)]
    _, tags = worker(redis)
    tags.apply(
        [
            LinkKey(tag, name, f"catalog.products:{i}", at(1), True, TOMBSTONE)
            for i, name in enumerate(names)
        ]
    )
    for name in names:
        redis.set(name, b"page")
    return names


class Crashing(RedisApplier):
    """Fails every call after ``calls`` (a worker killed half-way through a fan-out)."""

    def __init__(self, redis: Any, calls: int) -> None:
        super().__init__(redis)
        self.calls = calls

    def apply(self, ops: Sequence[CacheOp]) -> ApplyResult:
        self.calls -= 1
        if self.calls < 0:
            raise RedisUnavailable("killed")
        return super().apply(ops)


def test_a_fanout_runs_in_pages_and_a_replay_finishes_a_crashed_one(any_redis: Any) -> None:
    names = linked(any_redis, 1_200)
    invalidate: list[DependencyOp] = [InvalidateTag("catalog.brands:7", at(5), TOMBSTONE)]
    with pytest.raises(RedisUnavailable):
        TagStore(any_redis, Crashing(any_redis, 3), page_size=100).apply(invalidate)
    left = sum(any_redis.exists(name) for name in names)
    assert 0 < left < len(names)
    result = TagStore(any_redis, RedisApplier(any_redis), page_size=100).apply(invalidate)
    assert result.deleted == left
    assert sum(any_redis.exists(name) for name in names) == 0
    slots = {key_slot(name) for name in names}
    assert len(slots) > 100  # the members live all over the cluster


def test_a_fanout_above_the_limit_shortens_ttls_instead(any_redis: Any) -> None:
    names = linked(any_redis, 50)
    shortened: list[Sequence[str]] = []
    _, tags = worker(any_redis, fanout_limit=10, shorten=shortened.append)
    result = tags.apply([InvalidateTag("catalog.brands:7", at(5), TOMBSTONE, ("product:",))])
    assert (result.fallbacks, shortened) == (1, [("product:",)])
    assert all(any_redis.exists(name) for name in names)  # left to their shortened TTLs
    assert any_redis.hget(ns().tag_key("catalog.brands:7"), "") == at(5).encode().encode()


def test_the_sweep_removes_tombstones_and_fills_past_their_minute_only(any_redis: Any) -> None:
    tag = "catalog.brands:7"
    apply(any_redis, product(1, 1, 7), product(2, 1, 8, before_brand=7), product(3, 2, 7))
    fill(any_redis, "listing:brand:7", tags=[tag])
    apply(any_redis, brand(4, 7))  # a version, and a fill member that went with its key
    fill(any_redis, "search:q", tags=[tag])
    hash_key = ns().tag_key(tag)
    fields = any_redis.hgetall(hash_key)
    tombstone = member("product:1:page", "catalog.products:1").encode()
    fill_member = member("search:q", "").encode()
    assert fields[tombstone].startswith(b"-" + at(2).encode().encode())
    assert fields[fill_member].startswith(b"*")
    assert (
        len(fields) == 5
    )  # the version and its horizon, product 2's link, the tombstone, the fill

    sweep_tags(any_redis)
    assert len(any_redis.hgetall(hash_key)) == 5  # nothing is past its minute yet

    past = b"00000001"  # what a value looks like once its minute has gone by
    any_redis.hset(hash_key, tombstone, fields[tombstone][: -len(past)] + past)
    any_redis.hset(hash_key, fill_member, b"*" + past + fields[fill_member][9:])
    report = sweep_tags(any_redis)
    assert report.removed == 2
    live = member("product:2:page", "catalog.products:2").encode()
    assert sorted(any_redis.hkeys(hash_key)) == [b"", b"h", live]

    any_redis.hset(hash_key, "h", past)  # the version's horizon has gone by too
    assert sweep_tags(any_redis).removed == 2
    assert any_redis.hkeys(hash_key) == [live]


def test_the_sweep_gives_a_version_kept_without_a_horizon_one(any_redis: Any) -> None:
    hash_key = ns().tag_key("catalog.brands:7")
    any_redis.hset(hash_key, "", at(4).encode())  # as the previous release kept it
    sweep_tags(any_redis, lifetime_ms=120_000)
    fields = any_redis.hgetall(hash_key)
    assert fields[b""] == at(4).encode().encode()
    assert int(fields[b"h"]) * 60 > time.time() + 60  # a minute after at least 2 from now


def test_a_fanout_counts_members_only(any_redis: Any) -> None:
    apply(any_redis, product(1, 1, 7), product(2, 2, 7), brand(3, 7))  # a version, a horizon
    _, tags = worker(any_redis, fanout_limit=2, shorten=lambda prefixes: None)
    invalidation = InvalidateTag("catalog.brands:7", at(4), TOMBSTONE, ("product:",))
    assert tags.apply([invalidation]).fallbacks == 0  # 2 members, not above the limit


def test_tag_and_link_ops_land_while_redis_is_out_of_memory(any_redis: Any) -> None:
    """Through the writer while Redis is full: a product's link (its set sent as a delete)
    and a brand's tag invalidation land, the brand's products' pages deleted, with no retry
    waiting for memory."""
    redis = any_redis
    apply(redis, product(1, 1, 7), product(2, 2, 7), product(3, 3, 8))
    for pid in (1, 2, 3):
        fill(redis, f"product:{pid}:page")
    holds = Holds()
    retried: list[float] = []

    def memory_freed(delay: float) -> None:  # the writer's sleep between two tries
        retried.append(delay)
        for node in primaries(redis):
            node.config_set("maxmemory", "0")

    applier = RedisApplier(redis, memory=OomGuard(holds, settle_s=60))
    writer = CacheWriter(
        applier, Backoff(initial=0.01, maximum=0.01), sleep=memory_freed,
        tags=TagStore(redis, applier),
    )  # fmt: skip
    changes = [product(5, 4, 8, before_brand=7), brand(6, 7)]
    with out_of_memory(redis):
        assert not any(accepts_writes(node) for node in primaries(redis))
        writer.write([_planned(event) for event in changes])
        assert retried == []  # landed while full, not once memory was freed
        assert [redis.exists(f"product:{pid}:page") for pid in (1, 2, 3)] == [0, 0, 1]
        assert {hold.cause for hold in holds.active()} == {Cause.REDIS_OOM}


def _planned(event: ChangeEvent) -> Planned:
    record = SourceRecord("t", 0, event.position.minor, None, None)
    return Planned(record, event, tuple(plan(event, RULES)), tuple(plan_dependencies(event, RULES)))
