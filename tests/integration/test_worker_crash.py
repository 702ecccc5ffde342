"""``cdc-cache run`` as a real process: SIGKILL mid-stream, restart, nothing lost or stale,
each applied change notified once."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cdc_cache.plan.rules_loader import parse_rules
from tests.integration.cache import cache_state, wait_until_equal
from tests.integration.notifications import (
    NOTIFY_YAML,
    expected_notifications,
    notifications_sent,
)
from tests.integration.services import worker
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
    rnd = random.Random(workers)
    kills = 0
    try:
        while not producer.done() and kills < 3:
            time.sleep(rnd.uniform(1.0, 2.0))
            if not cache_state(redis_target.client):
                continue  # not consuming yet: a kill now proves nothing
            service.kill()
            kills += 1
            service.start()
        producer.result()
        assert kills >= 2, "the stream ended before the worker could be killed mid-stream"

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
    rnd = random.Random(21)
    kills = 0
    try:
        while not producer.done() and kills < 3:
            time.sleep(rnd.uniform(0.8, 1.5))
            if not cache_state(redis_target.client):
                continue  # not consuming yet: a kill now proves nothing
            service.kill()
            kills += 1
            service.start()
        producer.result()
        assert kills >= 2, "the stream ended before the worker could be killed mid-stream"
        state = wait_until_equal(redis_target.client, workload.expected_cache())
        assert state == workload.expected_cache(), service.tail()
        held_within(lambda: notifications_sent(redis_target.client) == expected, 30)
        assert notifications_sent(redis_target.client) == expected, service.tail()
        assert service.terminate() == 0, service.tail()
    finally:
        pool.shutdown(cancel_futures=True)
        service.stop()
