"""A stuck dataflow stops the worker's mode heartbeat, so the watchdog falls the cache back.

The mode thread would otherwise go on writing ``cdc:mode`` while the flow applies nothing:
here a Redis Cluster node stops answering (SIGSTOP) in the middle of the worker's writes,
with no socket timeout, while the node holding the mode keys answers on; the watchdog,
whose scripts go to that node alone, takes over. The cluster's node timeout is set long so
that it does not declare the node failed meanwhile (which would make every node refuse
commands, the heartbeat's too).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.cluster import RedisCluster

from cdc_cache.app.load import load_settings
from cdc_cache.app.worker import fanout_fallback
from cdc_cache.core import metrics
from cdc_cache.core.keys import ns
from cdc_cache.fallback.runtime import ModeRuntime
from cdc_cache.fallback.shortening import SHORTEN_KEYS_PER_S
from cdc_cache.mode.controller import ModeConfig
from cdc_cache.mode.lag import LagTracker
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.process import free_port, port_open
from cdc_cache.tools.devstack.redis import RedisClusterServers
from tests.integration.fixtures_redis import RedisTarget, ReplicatedRedis
from tests.integration.probes import metric
from tests.integration.services import worker
from tests.integration.test_worker_down import WORKER_ENV, Source, managed_ttls, mode_of, watchdog
from tests.integration.topics import unique_topic
from tests.integration.waiting import wait_until

pytestmark = [pytest.mark.integration]

STALL_S = 3.0
SLO_S, WINDOW_S = 3.0, 2.0  # as WORKER_ENV
MARGIN_S = 6.0  # watchdog ticks and a loaded machine


def test_the_heartbeat_stops_while_the_flow_is_stuck_and_resumes_when_it_moves(
    redis_client: Redis,
) -> None:
    clock = [1000.0]
    tracker = LagTracker(lambda: clock[0] * 1000)
    runtime = ModeRuntime(
        client=redis_client,
        tracker=tracker,
        config=ModeConfig(slo_s=SLO_S, recover_s=1.0, window_s=WINDOW_S),
        fallback_ttl_ms=5000,
        prefixes=["stock:"],
        clock=lambda: clock[0],
        stall_after_s=STALL_S,
    )
    tracker.track("db.inventory.stock", 0, 10)
    tracker.offsets("db.inventory.stock", 0, 10, 10)
    assert runtime.tick() is not None
    beat = mode_of(redis_client)["updated_ms"]

    clock[0] += STALL_S + 1  # the partition was not polled since: its thread is stuck
    assert runtime.tick() is None
    assert mode_of(redis_client)["updated_ms"] == beat
    assert "not polled for 4s" in str(runtime.view()["flow_stuck"])
    assert metrics.FLOW_STUCK._value.get() == 1

    tracker.polled("db.inventory.stock", 0)
    assert runtime.tick() is not None
    assert mode_of(redis_client)["updated_ms"] != beat
    assert "flow_stuck" not in runtime.view()
    assert metrics.FLOW_STUCK._value.get() == 0


@pytest.fixture
def patient_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    """Three primaries that wait a minute before counting a silent node failed."""
    ports = [free_port() for _ in range(3)]
    cluster = RedisClusterServers(
        tmp_path / "cluster", ports, [free_port() for _ in ports], node_timeout_ms=60_000
    )
    try:
        cluster.start()
        yield cluster
    finally:
        for port in ports:  # a node left stopped would never stop
            pid = cluster.process(port).pid()
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
        cluster.stop()


def node_without(client: RedisCluster, keys: list[str]) -> int:
    """The port of a primary holding none of ``keys``."""
    taken = {client.get_node_from_key(key).port for key in keys}
    free = [node.port for node in client.get_primaries() if node.port not in taken]
    assert free, f"every primary holds one of {keys}"
    return int(free[0])


def test_a_worker_whose_writes_hang_stops_its_heartbeat_and_the_watchdog_falls_back(
    broker: Broker, patient_cluster: RedisClusterServers, tmp_path: Path
) -> None:
    url = patient_cluster.address()
    client = RedisCluster.from_url(url.replace("?cluster=true", ""))
    topic = unique_topic()
    broker.create_topics({topic: 1})
    env = {**WORKER_ENV, "CDC_CACHE_FLOW_STALL_S": str(STALL_S)}
    service = worker(tmp_path, broker.bootstrap, url, [topic], env=env)
    dog, dog_port = watchdog(tmp_path, url, "watchdog")
    services = [service, dog]
    with Source(broker.bootstrap, topic):
        service.start()
        dog.start()
        try:
            wait_until("rows cached", lambda: len(managed_ttls(client)) > 30, alive=services)
            wait_until("cdc mode", lambda: mode_of(client).get("mode") == "cdc", alive=services)
            wait_until("watchdog port", lambda: port_open(dog_port), 30, alive=services)
            wait_until(
                "the watchdog holds the lock",
                lambda: metric(dog_port, "cdc_cache_watchdog_leader") == 1,
                30,
                alive=services,
            )
            silent = node_without(client, [ns().mode, ns().mode_flag, ns().watchdog_lock])
            pid = patient_cluster.process(silent).pid()
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)  # the worker's next write to it never returns
            stopped = time.monotonic()
            wait_until(
                "ttl mode decided by the watchdog (worker_down)",
                lambda: (
                    (mode_of(client).get("writer"), mode_of(client).get("cause"))
                    == ("watchdog", "worker_down")
                ),
                STALL_S + SLO_S + WINDOW_S + MARGIN_S,
                alive=services,
            )
            print(f"writes hang -> the watchdog decides {time.monotonic() - stopped:.1f}s")
            assert "the dataflow is stuck" in service.log.read_text()

            os.kill(pid, signal.SIGCONT)  # the writes go through: the worker decides again
            wait_until(
                "the worker decides again",
                lambda: mode_of(client).get("writer") == "worker",
                30,
                alive=services,
            )
            assert "the dataflow moves again" in service.log.read_text()
        finally:
            service.stop()
            dog.stop()
            client.close()


def test_a_worker_whose_mode_thread_fails_says_so_and_exits_1(
    broker: Broker, redis_target: RedisTarget, tmp_path: Path
) -> None:
    topic = unique_topic()
    broker.create_topics({topic: 1})
    service = worker(tmp_path, broker.bootstrap, redis_target.url, [topic])
    service.argv[2] = "tests.integration.failing_mode_worker"
    service.start()
    try:
        assert service.proc is not None
        assert service.proc.wait(60) == 1, service.tail()
        log = service.log.read_text()
        assert '"level":"critical"' in log and "the mode thread failed" in log, log[-2000:]
        assert "ZeroDivisionError: a bug in the mode loop" in log
    finally:
        service.stop()


def test_writes_waiting_to_retry_for_a_cut_off_replica_keep_the_heartbeat(
    broker: Broker, replicated_redis: ReplicatedRedis, tmp_path: Path
) -> None:
    """Not stuck: the batch waits for the replica again and again (logged, held in ttl by
    ``redis_replication``), far beyond ``flow_stall_s``, while the dataflow thread waits
    for the writer."""
    group = replicated_redis
    topic = unique_topic()
    broker.create_topics({topic: 1})
    env = {
        **WORKER_ENV,
        "CDC_CACHE_FLOW_STALL_S": "2",
        "CDC_CACHE_REDIS_REPLICAS": "1",
        "CDC_CACHE_REDIS_REPLICAS_TIMEOUT_MS": "300",
    }
    service = worker(tmp_path, broker.bootstrap, group.url(), [topic], env=env)
    client = group.client(group.primary)
    with Source(broker.bootstrap, topic):
        service.start()
        try:
            wait_until("rows cached", lambda: len(managed_ttls(client)) > 30, alive=[service])
            group.detach_replica()
            wait_until(
                "the writes wait for the replica",
                lambda: "replicas behind: waiting" in service.log.read_text(),
                alive=[service],
            )
            beats = set()
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline:
                beats.add(mode_of(client)["updated_ms"])
                time.sleep(0.5)
            assert len(beats) >= 10, "the heartbeat stood still while the writes retried"
            assert "the dataflow is stuck" not in service.log.read_text()
            group.reattach_replica()
        finally:
            service.stop()


def test_a_fan_out_above_the_limit_paces_its_pages_through_the_flows_waits(any_redis) -> None:
    """Each page of the fallback TTLs a big fan-out gives is a wait the tracker hears of:
    a shortening longer than ``flow_stall_s`` is no stuck flow."""
    for start in range(0, 1200, 400):
        pipe = any_redis.pipeline(transaction=False)
        for n in range(start, start + 400):
            pipe.set(f"stock:{{w}}:{n}", b"1")
        pipe.execute()
    settings = load_settings(rules=Path("r.yaml"), topics=("t",), brokers="localhost:9092")
    paced: list[float] = []
    shortened = fanout_fallback(settings)(any_redis, ["stock:"], paced.append)
    assert shortened == 1200
    assert sum(paced) == pytest.approx(1200 / SHORTEN_KEYS_PER_S)
