"""The worker across a Redis failover to a replica that fell behind (through Sentinel).

The scenario: a primary and a replica watched by a Sentinel; the worker applies the first
part of a stream; the replica is cut off for the second part; the primary is SIGKILLed and
the Sentinel promotes the replica; the old server comes back as its replica. With
``redis_replicas: 1`` every batch waited for the replica, so the worker held still while
the replica was cut off and went on against the new primary: it ends exactly at the
stream's state. With ``redis_replicas: 0`` (no waiting) the same run leaves the changes
of the second part stale on the new primary; the worker detects the incomplete failover
and holds the cache in ttl mode, so the loss is bounded and visible, never silent.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from redis import Redis

from cdc_cache.core.keys import ns
from cdc_cache.tools.devstack.process import free_port
from tests.integration.cache import cache_state, wait_until_equal
from tests.integration.probes import metric
from tests.integration.services import worker
from tests.integration.topics import produce, unique_topic
from tests.integration.waiting import wait_until
from tests.workload import Workload

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def stale_rows(client: Redis, expected: dict[str, Any]) -> int:
    """Cached rows that differ from the stream's final state (deleted rows included)."""
    return sum(1 for key, value in cache_state(client).items() if expected.get(key) != value)


@pytest.mark.parametrize("replicas", [1, 0], ids=["acknowledged", "unacknowledged"])
def test_a_failover_to_a_lagging_replica(broker, replicated_redis, tmp_path, replicas):
    group = replicated_redis
    topic = unique_topic()
    broker.create_topics({topic: 2})
    workload = Workload(seed=25, topic=topic)
    port = free_port()
    service = worker(
        tmp_path,
        broker.bootstrap,
        group.url(),  # redis+sentinel://
        [topic],
        env={
            "CDC_CACHE_REDIS_REPLICAS": str(replicas),
            "CDC_CACHE_REDIS_REPLICAS_TIMEOUT_MS": "300",
            "CDC_CACHE_METRICS_PORT": str(port),
            "CDC_CACHE_BATCH_SIZE": "50",  # the stream goes in many batches
            "CDC_CACHE_LAG_SLO_S": "600",  # no heartbeats here: keep the lag out of it
            "CDC_CACHE_LAG_RECOVER_S": "300",
            "CDC_CACHE_RETRY_REDIS": '{"initial_s": 0.1, "max_s": 1}',
        },
    )
    service.start()
    try:
        produce(broker.bootstrap, [m for tx in workload.transactions(600) for m in tx])
        primary = group.client(group.primary)
        first = wait_until_equal(primary, workload.expected_cache())
        assert first == workload.expected_cache(), service.tail()

        group.detach_replica()
        produce(broker.bootstrap, [m for tx in workload.transactions(600) for m in tx])
        expected = workload.expected_cache()
        if replicas:
            held = {"cause": "redis_replication"}
            wait_until(
                "the replication hold",
                lambda: metric(port, "cdc_cache_mode_holds", held) >= 1,
                alive=[service],
                interval=0.2,
            )
            assert cache_state(primary) != expected, "the worker went on without its replica"
        else:
            assert wait_until_equal(primary, expected) == expected, service.tail()

        group.fail_over()
        group.rejoin_old_primary()
        promoted = group.client(group.primary)

        if replicas:
            state = wait_until_equal(promoted, expected)
            assert stale_rows(promoted, expected) == 0, service.tail()
            assert state == expected, service.tail()
            assert metric(port, "cdc_cache_redis_failovers_total", {"outcome": "complete"}) == 1
        else:
            incomplete = {"outcome": "incomplete"}
            wait_until(
                "the failover's detection",
                lambda: metric(port, "cdc_cache_redis_failovers_total", incomplete) == 1,
                alive=[service],
                interval=0.2,
            )
            assert stale_rows(promoted, expected) > 0
            wait_until(
                "ttl mode",
                lambda: promoted.hget(ns().mode, "cause") == b"redis_replication",
                alive=[service],
                interval=0.2,
            )
            holds = orjson.loads(promoted.hget(ns().mode, "holds") or b"[]")
            assert promoted.hget(ns().mode, "mode") == b"ttl" and holds == ["redis_replication"]
        assert service.terminate() == 0, service.tail()
    finally:
        service.stop()
