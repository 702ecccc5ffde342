from __future__ import annotations

import pytest

from cdc_cache.core import metrics
from cdc_cache.mode.controller import Cause
from cdc_cache.mode.holds import Holds
from cdc_cache.sink.memory import SAFE_POLICIES, NodeMemory, OomGuard, refusal


def node(policy: str, maxmemory: int = 1 << 30, counted: int = 1 << 20) -> NodeMemory:
    return NodeMemory("10.0.0.1:6379", maxmemory, policy, counted, 0)


@pytest.mark.parametrize("policy", SAFE_POLICIES)
def test_policies_that_spare_keys_without_a_ttl_keep_versions(policy: str) -> None:
    assert not node(policy).evicts_versions


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random", "new-kind"])
def test_policies_that_may_evict_any_key_may_evict_versions(policy: str) -> None:
    assert node(policy).evicts_versions
    assert not node(policy, maxmemory=0).evicts_versions  # no limit: nothing is evicted


def test_the_refusal_names_the_node_the_setting_and_the_choices() -> None:
    text = refusal([node("allkeys-lru")])
    assert "10.0.0.1:6379 has maxmemory-policy allkeys-lru" in text
    assert all(policy in text for policy in SAFE_POLICIES)
    assert "eviction_fallback: invalidate_only" in text


def test_info_is_read_with_what_redis_does_not_count_against_maxmemory() -> None:
    memory = {
        "used_memory": 5000,
        "mem_not_counted_for_evict": 1000,
        "maxmemory": 6000,
        "maxmemory_policy": "volatile-lru",
    }
    parsed = NodeMemory.parse("n", memory, {"evicted_keys": 7})
    assert (parsed.counted, parsed.headroom, parsed.evicted_keys) == (4000, 2000, 7)
    assert NodeMemory.parse("n", {"maxmemory": 0}, {}).headroom is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_refusal_holds_ttl_mode_until_the_node_took_writes_after_settling() -> None:
    holds, clock = Holds(), Clock()
    guard = OomGuard(holds, settle_s=10, clock=clock)
    before = metrics.REDIS_OOM_REFUSALS._value.get()

    guard.refused("a:1", "command not allowed when used memory > 'maxmemory'. script: x")
    assert [h.cause for h in holds.active()] == [Cause.REDIS_OOM]
    assert "a:1 refuses writes for memory" in holds.active()[0].reason
    assert "script:" not in holds.active()[0].reason
    assert metrics.REDIS_OOM_REFUSALS._value.get() == before + 1

    clock.now += 5
    guard.accepted("a:1")  # at the edge of its memory: too soon to trust
    assert holds.active() and guard.held() == ["a:1"]
    guard.refused("a:1", "again")
    clock.now += 9
    guard.accepted("a:1")
    assert holds.active()
    clock.now += 1
    guard.accepted("a:1")
    assert not holds.active() and guard.held() == []


def test_each_node_is_held_on_its_own() -> None:
    holds, clock = Holds(), Clock()
    guard = OomGuard(holds, settle_s=0, clock=clock)
    guard.refused("a:1", "oom")
    guard.refused("b:2", "oom")
    guard.accepted("a:1")
    assert guard.held() == ["b:2"]
    assert len(holds.active()) == 1
    guard.accepted("c:3")  # never held: nothing to clear
    assert guard.held() == ["b:2"]


@pytest.mark.parametrize(("version", "old"), [("7.0.15", False), ("7.4.1", False),
                                              ("8.0.0", False), ("6.2.14", True), ("", True)])  # fmt: skip
def test_redis_before_7_is_too_old(version: str, old: bool) -> None:
    parsed = NodeMemory.parse("n", {}, {}, {"redis_version": version})
    assert parsed.too_old is old
