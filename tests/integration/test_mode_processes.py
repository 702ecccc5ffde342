"""Two ``cdc-cache run`` processes as one Bytewax cluster deciding the cache mode together.

Process 0 leads: it merges the lag the other process reports. A connector's heartbeats land
in one partition, read by one process; the other process's idle partitions stay fresh
through them too. One process's lagging partition switches the mode; a process that stops
reporting counts as stalled (and is named); the leader restarting does not flip the mode.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from redis import Redis

from cdc_cache.core.keys import ns
from cdc_cache.fallback.runtime import ModeRuntime
from cdc_cache.mode.controller import Cause, ModeConfig
from cdc_cache.mode.lag import LagTracker
from cdc_cache.tools.devstack.broker import Broker
from tests.integration.services import Cluster
from tests.integration.topics import unique_topic
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

SLO_S, RECOVER_S, WINDOW_S = 6.0, 2.0, 2.0
PARTITIONS = 4
MODE_ENV = {
    "CDC_CACHE_LAG_SLO_S": str(SLO_S),
    "CDC_CACHE_LAG_RECOVER_S": str(RECOVER_S),
    "CDC_CACHE_MODE_WINDOW_S": str(WINDOW_S),
    "CDC_CACHE_FALLBACK_TTL_S": "30",
    "CDC_CACHE_RECOVERY_PARTITIONS": "2",
}
FALLBACK_MS = 30_000


class Source:
    """A connector's topics: changes to chosen partitions, heartbeats every 300 ms."""

    def __init__(self, bootstrap: str) -> None:
        self.topic = unique_topic()
        self.server = self.topic.split(".", 1)[0]
        self.heartbeats = f"__debezium-heartbeat.{self.server}"
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        self._pos = 4
        self._stop = threading.Event()
        self._beating = threading.Thread(target=self._beat, daemon=True)

    def start(self) -> None:
        self._beating.start()

    def close(self) -> None:
        self._stop.set()
        self._beating.join(5)

    def change(self, partition: int, row_id: int, age_s: float = 0.0, server: str = "") -> None:
        """An insert committed ``age_s`` ago by connector ``server`` (by default the one
        the topic is named for), to ``partition``."""
        committed = int((time.time() - age_s) * 1000)
        self._pos += 100
        row = {"id": row_id, "sku_id": row_id, "warehouse": "north", "qty": 1, "note": None}
        value = {
            "before": None, "after": row, "op": "c", "ts_ms": committed,
            "source": {
                "connector": "mysql", "name": server or self.server, "ts_ms": committed,
                "snapshot": "false", "db": "inventory", "table": "stock", "server_id": 1,
                "file": "mysql-bin.000001", "pos": self._pos, "row": 0,
            },
        }  # fmt: skip
        self._producer.produce(
            self.topic, orjson.dumps(value), orjson.dumps({"id": row_id}), partition=partition
        )
        assert self._producer.flush(10) == 0

    def feed(
        self, ages: dict[int, float], servers: dict[int, str], until: threading.Event
    ) -> threading.Thread:
        """A change to each partition of ``ages`` every 300 ms, committed that long ago by
        the connector ``servers`` names for it."""

        def run() -> None:
            while not until.wait(0.3):
                for partition, age_s in ages.items():
                    self.change(partition, 1000 + partition, age_s, servers.get(partition, ""))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def _beat(self) -> None:
        key = orjson.dumps({"serverName": self.server})
        while not self._stop.wait(0.3):
            now = int(time.time() * 1000)
            self._producer.produce(self.heartbeats, orjson.dumps({"ts_ms": now}), key)
            self._producer.flush(5)


@pytest.fixture
def source(broker: Broker) -> Iterator[Source]:
    made = Source(broker.bootstrap)
    broker.create_topics({made.topic: PARTITIONS, made.heartbeats: 1})
    made.start()
    yield made
    made.close()


@pytest.fixture
def cluster(tmp_path: Path, broker: Broker, redis_server, source: Source) -> Iterator[Cluster]:
    made = Cluster(tmp_path, broker.bootstrap, redis_server.address(), [source.topic], MODE_ENV)
    made.start()
    yield made
    made.stop()


def mode_of(client: Redis) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(ns().mode).items()}


def started(cluster: Cluster, source: Source, client: Redis) -> dict[int, list[int]]:
    """Every partition has a change; both processes read some; the mode is ``cdc``."""
    for partition in range(PARTITIONS):
        source.change(partition, partition + 1)
    alive = cluster.services
    wait_until(
        "every row cached", lambda: len(client.keys("stock:*")) == PARTITIONS, 60, alive=alive
    )
    owners = {p: cluster.partitions_of(p, source.topic) for p in range(2)}
    wait_until(
        "each process reads its partitions",
        lambda: sum(len(cluster.partitions_of(p, source.topic)) for p in range(2)) == PARTITIONS,
        30,
        alive=alive,
    )
    owners = {p: cluster.partitions_of(p, source.topic) for p in range(2)}
    assert all(owners.values()), f"one process reads no partition: {owners}"
    wait_until("cdc mode", lambda: mode_of(client).get("mode") == "cdc", 30, alive=alive)
    return owners


class ModeLog:
    """Every mode the leader publishes, polled while a scenario runs."""

    def __init__(self, client: Redis) -> None:
        self.seen: list[str] = []
        self._client = client
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            self.seen.append(mode_of(self._client).get("mode", ""))

    def close(self) -> list[str]:
        self._stop.set()
        self._thread.join(5)
        return self.seen


def test_idle_processes_stay_in_cdc_and_a_lagging_follower_switches_the_mode(
    cluster: Cluster, source: Source, redis_client: Redis
) -> None:
    owners = started(cluster, source, redis_client)
    alive = cluster.services
    modes = ModeLog(redis_client)
    time.sleep(SLO_S + WINDOW_S + 2)  # idle, heartbeats read by one process only
    assert set(modes.close()) == {"cdc"}, mode_of(redis_client)

    # A second connector, far behind, feeds process 1's partitions: changes committed two
    # minutes ago, and no heartbeat of its own to prove it current. Process 0 sees nothing.
    done = threading.Event()
    ages = {p: 0.0 for p in owners[0]} | {p: 120.0 for p in owners[1]}
    feeding = source.feed(ages, {p: "behind" for p in owners[1]}, done)
    try:
        wait_until("ttl mode", lambda: mode_of(redis_client)["mode"] == "ttl", 30, alive=alive)
        record = mode_of(redis_client)
        assert record["cause"] == "lag", record
        assert any(f"{source.topic}[{p}]" in record["reason"] for p in owners[1]), record

        ages.update({p: 0.0 for p in owners[1]})
        wait_until("cdc again", lambda: mode_of(redis_client)["mode"] == "cdc", 30, alive=alive)
        assert mode_of(redis_client)["cause"] == "recovered"
    finally:
        done.set()
        feeding.join(5)


def test_the_leader_restarting_does_not_flip_the_mode(
    cluster: Cluster, source: Source, redis_client: Redis
) -> None:
    """The cluster goes down with its leader (a Bytewax cluster stops together) and its
    processes come back at their own pace: the follower several seconds after the leader
    decides again. Its silence counts from the leader's start, as a partition's would."""
    started(cluster, source, redis_client)
    leader, follower = cluster.services
    modes = ModeLog(redis_client)
    leader.kill()
    wait_until("the follower stopped with it", lambda: not follower.running(), 30)
    leader.start()
    ticked = mode_of(redis_client)["updated_ms"]
    wait_until(
        "the leader decides again",
        lambda: mode_of(redis_client)["updated_ms"] != ticked,
        30,
        alive=[leader],
    )
    time.sleep(WINDOW_S + 1)  # the follower is still down: longer than the mode window
    follower.start()
    source.change(0, 500)
    alive = cluster.services
    cached = lambda: redis_client.exists("stock:500:north") == 1  # noqa: E731
    wait_until("a change applied after the restart", cached, 60, alive=alive)
    time.sleep(WINDOW_S + 1)
    seen = modes.close()
    assert set(seen) == {"cdc"}, mode_of(redis_client)


def runtime(client: Any, process: int, clock: list[float], tracker: LagTracker) -> ModeRuntime:
    """One process's mode loop, ticked by hand; its lag report expires after 250 ms."""
    return ModeRuntime(
        client=client,
        tracker=tracker,
        config=ModeConfig(slo_s=SLO_S, recover_s=RECOVER_S, window_s=WINDOW_S),
        fallback_ttl_ms=FALLBACK_MS,
        prefixes=["stock:"],
        process=process,
        processes=2,
        interval_s=0.05,
        clock=lambda: clock[0],
    )


class Process:
    """A worker process's mode loop over one partition, as fresh as ``age_s`` says."""

    def __init__(self, client: Any, number: int, clock: list[float]) -> None:
        self.tracker = LagTracker(lambda: clock[0] * 1000)
        self.runtime = runtime(client, number, clock, self.tracker)
        self._clock = clock
        self.partition = ("db.inventory.stock", number)

    def tick(self, age_s: float = 0.0) -> str:
        self.tracker.record(*self.partition, int((self._clock[0] - age_s) * 1000))
        decision = self.runtime.tick()
        assert decision is not None, "Redis answered"
        return decision.mode.value


def test_a_process_that_stops_reporting_counts_as_stalled_once_silent_for_the_slo(any_redis):
    clock = [1000.0]
    leader, follower = Process(any_redis, 0, clock), Process(any_redis, 1, clock)
    for _ in range(3):
        clock[0] += 1
        follower.tick()
        assert leader.tick() == "cdc"
    time.sleep(0.3)  # the follower's last report expires
    modes = []
    for _ in range(int(SLO_S + WINDOW_S) + 2):
        clock[0] += 1
        modes.append(leader.tick())
    assert modes[: int(SLO_S)] == ["cdc"] * int(SLO_S), "silent for less than the SLO"
    assert modes[-1] == "ttl", modes
    published = mode_of(any_redis)
    assert published["cause"] == "stalled", published
    assert "process 1 (no lag report for" in published["reason"], published

    for _ in range(int(WINDOW_S) + 2):  # it reports again, with a low lag: back after a window
        clock[0] += 1
        follower.tick()
        leader.tick()
    assert mode_of(any_redis)["mode"] == "cdc"


def test_a_lagging_follower_switches_the_mode_and_a_restarted_leader_keeps_it(any_redis):
    clock = [1000.0]
    leader, follower = Process(any_redis, 0, clock), Process(any_redis, 1, clock)
    modes = []
    for _ in range(int(WINDOW_S) + 2):
        clock[0] += 1
        follower.tick(age_s=2 * SLO_S)
        modes.append(leader.tick())
    assert modes[-1] == "ttl" and mode_of(any_redis)["cause"] == "lag", modes
    assert "db.inventory.stock[1]" in mode_of(any_redis)["reason"]

    restarted = Process(any_redis, 0, clock)  # its partitions are not read yet
    restarted.runtime.start()
    restarted.runtime.close()
    clock[0] += 1
    assert restarted.runtime.tick() is not None
    assert mode_of(any_redis)["mode"] == "ttl", "a restarted leader resumes ttl"


def test_a_restarted_leader_waits_the_slo_for_a_follower_that_restarts_later(any_redis):
    clock = [1000.0]
    leader = Process(any_redis, 0, clock)
    modes = []
    for _ in range(int(SLO_S)):  # the follower is not back yet
        clock[0] += 1
        modes.append(leader.tick())
    follower = Process(any_redis, 1, clock)
    for _ in range(int(WINDOW_S) + 2):
        clock[0] += 1
        follower.tick()
        modes.append(leader.tick())
    assert set(modes) == {"cdc"}, modes


def test_a_hold_of_a_process_that_stops_reporting_stands_until_it_reports_again(any_redis):
    """A follower whose partition is paused on a discontinuity dies: the partition is no
    more continuous for it, so the cache must not return to cdc when its report expires."""
    clock = [1000.0]
    leader, follower = Process(any_redis, 0, clock), Process(any_redis, 1, clock)
    scope = "db.inventory.stock[1]"
    follower.runtime.holds.hold(Cause.SOURCE_DISCONTINUITY, scope, f"{scope}: topic recreated")
    clock[0] += 1
    follower.tick()
    assert leader.tick() == "ttl"
    time.sleep(0.3)  # the follower's last report expires
    for _ in range(int(SLO_S) - 1):  # silent, but not for the SLO yet
        clock[0] += 1
        assert leader.tick() == "ttl"
        assert mode_of(any_redis)["cause"] == "source_discontinuity"

    follower.runtime.holds.clear(Cause.SOURCE_DISCONTINUITY, scope)  # back, and resolved
    clock[0] += 1
    follower.tick()
    assert leader.tick() == "cdc"
