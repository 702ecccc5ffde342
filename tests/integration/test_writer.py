"""The batch writer on real Redis: refused changes are set aside, outages are waited out."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from cdc_cache.core.errors import StopRequested
from cdc_cache.core.events import SourceRecord
from cdc_cache.core.keys import ns
from cdc_cache.core.retry import Backoff
from cdc_cache.dlq.entries import Failure
from cdc_cache.plan.route import Planned, route
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.writer import CacheWriter
from tests.integration.cache import cache_state
from tests.workload import RULES_YAML, Workload

pytestmark = pytest.mark.integration
RULES = parse_rules(RULES_YAML)
FAST = Backoff(initial=0.05, maximum=0.2)


def planned(count: int, seed: int = 4) -> tuple[list[Planned], Workload]:
    workload = Workload(seed=seed)
    items = []
    for n, message in enumerate(m for tx in workload.transactions(count) for m in tx):
        routed = route(SourceRecord(message.topic, 0, n, message.key, message.value), RULES)
        if isinstance(routed, Planned):
            items.append(routed)
    return items, workload


def refused() -> float:
    labels = {"kind": "redis_refused", "table": "inventory.stock"}
    return REGISTRY.get_sample_value("cdc_cache_poison_messages_total", labels) or 0


def test_change_redis_refuses_is_set_aside_and_the_rest_applies(redis_client):
    items, workload = planned(40)
    victim = next(i for i in items if i.event.op.value == "c")
    victim_key = victim.ops[0].key
    redis_client.rpush(ns().version_key(victim_key), b"not a position")  # forces WRONGTYPE
    before = refused()

    outcomes = CacheWriter(RedisApplier(redis_client), FAST).write(items)

    written = {id(o.event) for o in outcomes}
    rejected = [i for i in items if id(i.event) not in written]
    assert victim in rejected
    assert refused() - before == len(rejected)
    untouchable = {op.key for item in rejected for op in item.ops}
    expected = {k: v for k, v in workload.expected_cache().items() if k not in untouchable}
    state = cache_state(redis_client)
    assert {k: v for k, v in state.items() if k not in untouchable} == expected
    assert len(expected) > 5


def test_a_change_that_raises_anything_else_is_set_aside_and_the_rest_applies(any_redis):
    items, workload = planned(40)
    index, victim = next((n, i) for n, i in enumerate(items) if i.event.op.value == "c")
    unsendable = replace(victim.ops[0], key="stock:\ud800")  # no UTF-8 for a lone surrogate
    items[index] = replace(victim, ops=(unsendable, *victim.ops[1:]))
    failures: list[Failure] = []

    outcomes = CacheWriter(RedisApplier(any_redis), FAST, reject=failures.extend).write(items)

    (failure,) = failures
    assert failure.error.kind == "unprocessable" and failure.record == victim.record
    assert failure.error.reason.startswith("applying raised UnicodeEncodeError")
    assert len(outcomes) == len(items) - 1
    untouchable = {victim.ops[0].key}  # type: ignore[union-attr]
    expected = {k: v for k, v in workload.expected_cache().items() if k not in untouchable}
    state = cache_state(any_redis)
    assert {k: v for k, v in state.items() if k not in untouchable} == expected


def test_redis_outage_is_waited_out_and_nothing_is_skipped(redis_server, redis_client):
    items, workload = planned(200)
    writer = CacheWriter(RedisApplier(redis_client), FAST)
    redis_server.stop()
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(writer.write(items)))
    thread.start()
    time.sleep(1.5)
    assert thread.is_alive(), "the writer must wait for Redis, not give up"
    redis_server.start()
    thread.join(30)
    assert result, "the writer did not finish after Redis came back"
    assert cache_state(redis_client) == workload.expected_cache()


def test_stop_request_ends_the_wait_for_redis(redis_server, redis_client):
    items, _ = planned(10)
    stop = threading.Event()

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise StopRequested("stop")

    writer = CacheWriter(RedisApplier(redis_client), FAST, sleep=sleep)
    redis_server.stop()
    try:
        errors: list[BaseException] = []

        def write() -> None:
            try:
                writer.write(items)
            except StopRequested as exc:
                errors.append(exc)

        thread = threading.Thread(target=write)
        thread.start()
        time.sleep(0.5)
        stop.set()
        thread.join(5)
        assert not thread.is_alive() and errors
    finally:
        redis_server.start()
