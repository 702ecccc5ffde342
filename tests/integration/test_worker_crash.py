"""``cdc-cache run`` as a real process: SIGKILL mid-stream, restart, nothing lost or stale,
each applied change notified once."""

from __future__ import annotations

import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
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
from tests.integration.slow_sink_worker import DELAY_PER_ITEM_S
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


def test_sigkill_with_batches_in_flight_loses_nothing_when_the_snapshot_waits(
    broker, redis_target, tmp_path
):
    """A backlog and a slow Redis keep batches handed over to the sink and not yet written
    while epochs end; SIGKILL at random points, restart: every offset is written, the
    cache exact."""
    workload, lost = _kill_with_batches_in_flight(broker, redis_target.url, tmp_path, True)
    assert not lost, f"{len(lost)} offsets never written, e.g. {sorted(lost)[:5]}"
    state = wait_until_equal(redis_target.client, workload.expected_cache())
    assert state == workload.expected_cache()


def test_sigkill_with_batches_in_flight_loses_offsets_when_the_snapshot_does_not_wait(
    broker, redis_server, redis_client, tmp_path
):
    """The control: the same kills with a snapshot that does not wait lose offsets for good
    (the recovery snapshot ran ahead of Redis). The slow sink decides it, not the kind of
    Redis, so one server is enough."""
    _, lost = _kill_with_batches_in_flight(broker, redis_server.address(), tmp_path, False)
    assert lost, "a snapshot that runs ahead of Redis lost nothing: the test is blind"


def _kill_with_batches_in_flight(
    broker: Any, redis_url: str, tmp_path: Path, snapshot_waits: bool
) -> tuple[Workload, set[tuple[int, int]]]:
    """Three SIGKILLs of a slow-sink worker with batches in flight, a restart after each;
    the workload and the produced offsets the sink never wrote once it caught up."""
    topic = unique_topic()
    broker.create_topics({topic: 2})
    workload = Workload(seed=31, topic=topic)
    produced: set[tuple[int, int]] = set()
    messages = [m for tx in workload.transactions(2500) for m in tx]
    produce(broker.bootstrap, messages, delivered=lambda _, m: produced.add((m.partition(), m.offset())))  # fmt: skip
    written = tmp_path / "written.log"
    batch, epoch_ms = 100, 100  # a batch's write outlasts an epoch: snapshots pass writes
    assert batch * DELAY_PER_ITEM_S * 1000 > epoch_ms
    env = {
        "CDC_CACHE_BATCH_SIZE": str(batch),
        "CDC_CACHE_EPOCH_INTERVAL_MS": str(epoch_ms),
        "SLOW_SINK_LOG": str(written),
    }
    if not snapshot_waits:
        env["SLOW_SINK_EAGER_SNAPSHOT"] = "1"
    service = worker(tmp_path, broker.bootstrap, redis_url, [topic], env=env)
    service.argv[2] = "tests.integration.slow_sink_worker"
    rnd = random.Random(31)
    service.start()
    try:
        for _ in range(3):
            before = len(_offsets(written))
            writes = held_within(lambda before=before: len(_offsets(written)) > before, 60)
            assert writes, service.tail()  # this run writes before it is killed
            time.sleep(rnd.uniform(0.3, 1.5))
            assert not produced <= _offsets(written), "the backlog ended before the kill"
            service.kill()
            service.start()
        newest = {p: max(o for q, o in produced if q == p) for p, _ in produced}
        caught_up = held_within(lambda: newest.items() <= _newest(_offsets(written)).items(), 90)
        assert caught_up, service.tail()
        return workload, produced - _offsets(written)
    finally:
        service.stop()


def _offsets(log: Path) -> set[tuple[int, int]]:
    """The (partition, offset) of every item the slow sink wrote (complete lines)."""
    if not log.exists():
        return set()
    lines = log.read_text().split("\n")[:-1]  # the last may be cut short by a kill
    return {(int(p), int(o)) for p, o in (line.split() for line in lines if len(line.split()) == 2)}


def _newest(offsets: set[tuple[int, int]]) -> dict[int, int]:
    newest: dict[int, int] = {}
    for partition, offset in offsets:
        newest[partition] = max(offset, newest.get(partition, -1))
    return newest


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
