from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client import REGISTRY

from cdc_cache.core.errors import ConfigError
from cdc_cache.core.keys import ns
from cdc_cache.mode.controller import Cause
from cdc_cache.mode.holds import Holds
from cdc_cache.sink.connection import node_name, primaries
from cdc_cache.sink.memory import EvictionFallback, MemoryWatch, OomGuard
from tests.integration.memory_pressure import Filler, memory_limited, out_of_memory
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


def watch(
    client: Any, fallback: EvictionFallback = EvictionFallback.REFUSE, **kw: Any
) -> MemoryWatch:
    holds = kw.pop("holds", Holds())
    return MemoryWatch(
        client,
        fallback=fallback,
        lifetime_ms=kw.pop("lifetime_ms", HOUR_MS),
        guard=OomGuard(holds, settle_s=0),
        **kw,
    )


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(f"cdc_cache_{name}", labels)


@pytest.fixture
def policy_of_one_primary(any_redis: Any) -> Any:
    """Sets the eviction policy of one primary (the last one of a cluster); lifted after."""
    node = primaries(any_redis)[-1]

    def set_policy(policy: str) -> str:
        node.config_set("maxmemory-policy", policy)
        node.config_set("maxmemory", str(1 << 30))
        return node_name(node)

    yield set_policy
    node.config_set("maxmemory", "0")
    node.config_set("maxmemory-policy", "noeviction")


def test_every_primary_is_checked_and_an_unsafe_one_refused(
    any_redis: Any, policy_of_one_primary: Any
) -> None:
    where = policy_of_one_primary("volatile-lru")
    nodes = watch(any_redis).check()
    assert {n.node for n in nodes} == {node_name(p) for p in primaries(any_redis)}
    assert sample("redis_eviction_policy", node=where, policy="volatile-lru") == 1
    assert sample("redis_maxmemory_bytes", node=where) == 1 << 30
    assert (sample("redis_memory_headroom_bytes", node=where) or 0) > 0

    where = policy_of_one_primary("allkeys-lfu")
    with pytest.raises(ConfigError, match=f"{where} has maxmemory-policy allkeys-lfu"):
        watch(any_redis).check()
    opted = watch(any_redis, EvictionFallback.INVALIDATE_ONLY)
    opted.check()
    assert opted.invalidate_only()
    assert sample("invalidate_only") == 1


def test_an_unsafe_policy_while_running_engages_invalidations_only_for_a_lifetime(
    any_redis: Any, policy_of_one_primary: Any
) -> None:
    policy_of_one_primary("volatile-lru")
    running = watch(any_redis)
    running.check()
    assert not running.invalidate_only()

    policy_of_one_primary("allkeys-lru")  # changed by hand while the worker runs
    running.tick()
    assert running.invalidate_only()
    policy_of_one_primary("volatile-lru")
    running.tick()
    assert running.invalidate_only(), "versions evicted meanwhile are not known lost"
    restarted = watch(any_redis)
    restarted.check()
    assert restarted.invalidate_only(), "a restart must not forget it"

    any_redis.delete(ns().version_layout)  # what follows starts from a fresh store
    brief = watch(any_redis, lifetime_ms=1)  # versions live 1 ms: soon none is at risk
    policy_of_one_primary("allkeys-lru")
    brief.tick()
    assert brief.invalidate_only()
    policy_of_one_primary("volatile-lru")
    time.sleep(0.01)
    brief.tick()
    assert not brief.invalidate_only()
    assert sample("invalidate_only") == 0


def test_a_node_held_for_memory_is_probed_until_it_takes_writes(any_redis: Any) -> None:
    holds = Holds()
    running = watch(any_redis, holds=holds)
    running.check()
    name = node_name(primaries(any_redis)[0])
    with out_of_memory(any_redis):
        running.guard.refused(name, "OOM")
        running.tick()
        assert [h.cause for h in holds.active()] == [Cause.REDIS_OOM]  # still refused
    running.tick()
    assert holds.active() == ()


def test_evictions_are_counted(redis_client: Any) -> None:
    running = watch(redis_client)
    name = node_name(redis_client)
    before = sample("redis_evictions_total", node=name) or 0
    with memory_limited(redis_client, "volatile-lru", headroom=1 << 20):
        running.check()

        def counted() -> bool:
            running.tick()
            return (sample("redis_evictions_total", node=name) or 0) != before

        with Filler(redis_client, per_s=5000):
            wait_until("an eviction counted", counted, 30, interval=0.2)
