"""``cdc-cache run`` as a real process: SIGKILL mid-stream, restart, nothing lost or stale,
each applied change notified once."""

from __future__ import annotations

import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from cdc_cache.plan.rules_loader import parse_rules
from tests.integration.cache import cache_state, wait_until_equal
from tests.integration.notifications import (
    NOTIFY_YAML,
    expected_notifications,
    notifications_sent,
)
from tests.integration.services import Service, worker
from tests.integration.topics import produce, unique_topic
from tests.integration.waiting import held_within
from tests.workload import Workload

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_mid_stream_then_restart_ends_exactly_at_the_database_state(
    broker, redis_target, tmp_path, workers
):
    topic = unique_topic()
    broker.create_topics({topic: 3})
    workload = Workload(seed=10 + workers, topic=topic)
    messages = [m for tx in workload.transactions(6000) for m in tx]
    service = worker(tmp_path, broker.bootstrap, redis_target.url, [topic], workers=workers)
    service.start()
    pool = ThreadPoolExecutor(1)
    producer = pool.submit(produce, broker.bootstrap, messages, pace_s=0.05)
    try:
        kill_while_producing(service, producer, redis_target.client, random.Random(workers))

        state = wait_until_equal(redis_target.client, workload.expected_cache())
        assert state == workload.expected_cache(), service.tail()
        assert not list(redis_target.client.scan_iter(match="sku:*"))
        assert service.terminate() == 0, service.tail()

        # a graceful stop resumes where it ended: more changes, a restart, the new state
        produce(broker.bootstrap, [m for tx in workload.transactions(300) for m in tx])
        service.start()
        state = wait_until_equal(redis_target.client, workload.expected_cache())
        assert state == workload.expected_cache(), service.tail()
        assert service.terminate() == 0, service.tail()
    finally:
        pool.shutdown(cancel_futures=True)
        service.stop()


def test_sigkill_mid_stream_notifies_each_applied_change_exactly_once(
    broker, redis_target, tmp_path
):
    """On a Cluster a kill can fall between the outbox write and its relay: the replayed
    batch and the sweep at start relay what was left, and nothing twice."""
    topic = unique_topic()
    broker.create_topics({topic: 1})  # one partition: every first delivery applies
    workload = Workload(seed=21, topic=topic)
    transactions = workload.transactions(3000)
    expected = expected_notifications(topic, transactions, parse_rules(NOTIFY_YAML))
    service = worker(tmp_path, broker.bootstrap, redis_target.url, [topic], rules=NOTIFY_YAML)
    service.start()
    pool = ThreadPoolExecutor(1)
    messages = [m for tx in transactions for m in tx]
    producer = pool.submit(produce, broker.bootstrap, messages, pace_s=0.05)
    try:
        kill_while_producing(service, producer, redis_target.client, random.Random(21), 0.8)
        state = wait_until_equal(redis_target.client, workload.expected_cache())
        assert state == workload.expected_cache(), service.tail()
        held_within(lambda: notifications_sent(redis_target.client) == expected, 30)
        assert notifications_sent(redis_target.client) == expected, service.tail()
    finally:
        pool.shutdown(cancel_futures=True)
        service.stop()


def kill_while_producing(
    service: Service, producer: Future[int], client: Any, rnd: random.Random, pause_s: float = 1.0
) -> None:
    """SIGKILL and restart the worker up to 3 times, every ``pause_s`` to twice that
    seconds while the producer runs; at least twice, or the test proves nothing."""
    kills = 0
    while not producer.done() and kills < 3:
        time.sleep(rnd.uniform(pause_s, 2 * pause_s))
        if not cache_state(client):
            continue  # not consuming yet: a kill now proves nothing
        service.kill()
        kills += 1
        service.start()
    producer.result()
    assert kills >= 2, "the stream ended before the worker could be killed mid-stream"
