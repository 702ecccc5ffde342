"""The dataflow end to end on real tansu and Redis (single and cluster), 1 and 2 workers."""

from __future__ import annotations

import threading
import time

import pytest
from bytewax.testing import cluster_main
from prometheus_client import REGISTRY

from cdc_cache.core.retry import Backoff
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.connection import connect
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisClusterServers
from dataflows.config import FlowConfig
from dataflows.invalidation import build_flow
from tests.integration.cache import cache_state
from tests.integration.notifications import NOTIFY_YAML, expected_notifications, notifications_sent
from tests.integration.topics import POISON, produce, unique_topic, with_poison, with_redelivery
from tests.workload import RULES_YAML, Workload

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("workers", [1, 2])
def test_duplicates_and_poison_converge_to_the_database_state(broker, redis_target, workers):
    topic = unique_topic()
    broker.create_topics({topic: 3})
    workload = Workload(seed=workers, topic=topic)
    messages = with_poison(with_redelivery(workload.transactions(1500)), topic)
    produce(broker.bootstrap, messages)

    flow = build_flow(
        FlowConfig(
            rules=parse_rules(RULES_YAML),
            brokers=(broker.bootstrap,),
            topics=(topic,),
            redis_url=redis_target.url,
            tail=False,
            batch_size=200,
        )
    )
    rejected_before = rejected()
    cluster_main(flow, [], 0, worker_count_per_proc=workers)

    assert rejected() - rejected_before == len(POISON)
    client = redis_target.client
    assert cache_state(client) == workload.expected_cache()
    assert not list(client.scan_iter(match="sku:*")), "delete-only keys must never hold values"


def rejected() -> float:
    return REGISTRY.get_sample_value("cdc_cache_records_total", {"kind": "rejected"}) or 0


def applied_events() -> float:
    return sum(
        REGISTRY.get_sample_value(
            "cdc_cache_events_total", {"table": "inventory.stock", "op": op, "outcome": "applied"}
        )
        or 0
        for op in "cud"
    )


def test_replaying_the_whole_topic_applies_nothing_again(broker, redis_target):
    topic = unique_topic()
    broker.create_topics({topic: 2})
    workload = Workload(seed=7, topic=topic)
    produce(broker.bootstrap, [m for tx in workload.transactions(500) for m in tx])
    config = FlowConfig(
        rules=parse_rules(RULES_YAML),
        brokers=(broker.bootstrap,),
        topics=(topic,),
        redis_url=redis_target.url,
        tail=False,
    )
    cluster_main(build_flow(config), [], 0)
    state = cache_state(redis_target.client)
    applied = applied_events()

    # A full replay, as after losing the recovery store. Built anew, as a restarted worker
    # does: one flow object run twice keeps its topic ids, and its new partitions would wait
    # up to their 30 s refresh for an id asked after they were built.
    cluster_main(build_flow(config), [], 0)

    assert applied_events() == applied
    assert cache_state(redis_target.client) == state == workload.expected_cache()


def test_worker_started_before_redis_waits_for_it(broker, tmp_path):
    topic = unique_topic()
    broker.create_topics({topic: 2})
    workload = Workload(seed=9, topic=topic)
    produce(broker.bootstrap, [m for tx in workload.transactions(200) for m in tx])
    cluster = RedisClusterServers(
        tmp_path, [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    )
    flow = build_flow(
        FlowConfig(
            rules=parse_rules(RULES_YAML),
            brokers=(broker.bootstrap,),
            topics=(topic,),
            redis_url=cluster.address(),
            tail=False,
            backoff=Backoff(initial=0.05, maximum=0.5),
        )
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            cluster_main(flow, [], 0)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        time.sleep(2)
        assert thread.is_alive() and not errors, f"the flow gave up on Redis: {errors}"
        cluster.start()
        thread.join(60)
        assert not thread.is_alive() and not errors, errors
        client = connect(cluster.address())
        assert cache_state(client) == workload.expected_cache()
    finally:
        cluster.stop()


def test_each_applied_change_is_notified_once_and_redeliveries_and_replays_never(
    broker, redis_target
):
    topic = unique_topic()
    broker.create_topics({topic: 1})  # one partition: every first delivery applies
    workload = Workload(seed=11, topic=topic)
    transactions = workload.transactions(600)
    produce(broker.bootstrap, with_redelivery(transactions))
    rules = parse_rules(NOTIFY_YAML)
    expected = expected_notifications(topic, transactions, rules)
    config = FlowConfig(
        rules=rules,
        brokers=(broker.bootstrap,),
        topics=(topic,),
        redis_url=redis_target.url,
        tail=False,
    )
    cluster_main(build_flow(config), [], 0)
    cluster_main(build_flow(config), [], 0)  # a full replay, built anew as on a restart

    assert len(expected) > 400
    # every applied change once; redeliveries and the replay never
    assert notifications_sent(redis_target.client) == expected
