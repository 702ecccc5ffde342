"""A recreated topic or records removed unread never skip changes silently.

On the local stack (tansu, Redis, the dataflow in-process and the real ``cdc-cache run``):
the worker drains a topic, stops, the topic changes under it, and it starts again. Each
scenario ends with every change applied after the documented re-read, or with the cache
held in ttl mode and the alert condition true, never with changes skipped in cdc mode.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import cluster_main
from confluent_kafka.admin import AdminClient

from cdc_cache.devstack.broker import Broker
from cdc_cache.fallback import Holds
from cdc_cache.mode import Cause
from cdc_cache.rules import parse_rules
from dataflows.invalidation import build_flow
from tests.integration.flowkit import cache_state, produce, unique_topic
from tests.workload import RULES_YAML, Workload

pytestmark = pytest.mark.integration

PARTITIONS = 2


def recreate_topic(broker: Broker, topic: str, partitions: int, timeout: float = 30) -> None:
    """Delete ``topic`` and create it again under the same name (a new topic id)."""
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.delete_topics([topic], request_timeout=timeout).values():
        future.result(timeout)
    deadline = time.monotonic() + timeout
    while topic in admin.list_topics(timeout=5).topics:
        assert time.monotonic() < deadline, f"{topic} still listed after its deletion"
        time.sleep(0.1)
    broker.create_topics({topic: partitions})


def messages(workload: Workload, transactions: int) -> list:
    return [m for tx in workload.transactions(transactions) for m in tx]


@pytest.mark.parametrize("continuity", [True, False], ids=["guarded", "bare-source"])
def test_a_recreated_topic_is_held_not_skipped(broker, redis_target, tmp_path, continuity):
    """The issue's scenario in-process: a drained topic is recreated and receives more
    changes than it held; the bare source resumes at its old offsets and skips the rest
    in silence (the failure this guards against), the guarded one holds ttl and applies
    nothing it cannot place."""
    topic = unique_topic()
    broker.create_topics({topic: PARTITIONS})
    workload = Workload(seed=31, topic=topic)
    produce(broker.bootstrap, messages(workload, 300))
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)

    def flow(holds: Holds, stop: threading.Event | None = None, tail: bool = False):
        return build_flow(
            rules=parse_rules(RULES_YAML),
            brokers=[broker.bootstrap],
            topics=[topic],
            redis_url=redis_target.url,
            tail=tail,
            holds=holds,
            stop=stop,
            continuity=continuity,
        )

    config = RecoveryConfig(recovery)
    cluster_main(flow(Holds()), [], 0, recovery_config=config)
    assert cache_state(redis_target.client) == workload.expected_cache()

    recreate_topic(broker, topic, PARTITIONS)
    produce(broker.bootstrap, messages(workload, 900))  # past the old offsets
    holds, stop = Holds(), threading.Event()
    runner = threading.Thread(
        target=cluster_main, args=(flow(holds, stop, tail=True), [], 0),
        kwargs={"recovery_config": config},
    )  # fmt: skip
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(holds.active()) < PARTITIONS:
            if not continuity and cache_state(redis_target.client) != {}:
                time.sleep(3)  # let the bare source apply what it will
                break
            time.sleep(0.2)
    finally:
        stop.set()
        runner.join(60)
    assert not runner.is_alive()
    expected = workload.expected_cache()
    cached = cache_state(redis_target.client)
    if not continuity:
        assert not holds.active()
        assert cached != expected, "the bare source was expected to skip changes silently"
        return
    assert [h.cause for h in holds.active()] == [Cause.SOURCE_DISCONTINUITY] * PARTITIONS
    reason = holds.active()[0].reason
    assert "deleted or recreated" in reason, reason
    assert reason.count("topic id ") == 2, reason  # both identities named
    assert cached != expected  # nothing of the new topic was applied in the dark
