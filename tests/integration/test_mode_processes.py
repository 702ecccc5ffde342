"""Two ``cdc-cache run`` processes as one Bytewax cluster deciding the cache mode together.

Process 0 leads: it merges the lag the other process reports. A connector's heartbeats land
in one partition, read by one process; the other process's idle partitions stay fresh
through them too. One process's lagging partition switches the mode; a process that stops
reporting counts as stalled (and is named); the leader restarting does not flip the mode.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from redis import Redis

from cdc_cache.core.keys import MODE_KEY
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.process import free_port
from tests.integration.services import Service, worker
from tests.integration.topics import unique_topic
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

SLO_S, RECOVER_S, WINDOW_S = 3.0, 2.0, 2.0
PARTITIONS = 4
MODE_ENV = {
    "CDC_CACHE_LAG_SLO_S": str(SLO_S),
    "CDC_CACHE_LAG_RECOVER_S": str(RECOVER_S),
    "CDC_CACHE_MODE_WINDOW_S": str(WINDOW_S),
    "CDC_CACHE_FALLBACK_TTL_S": "30",
    "CDC_CACHE_RECOVERY_PARTITIONS": "2",
}


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


class Cluster:
    """Two worker processes, each with its own recovery directory and admin port."""

    def __init__(self, tmp_path: Path, bootstrap: str, redis_url: str, topic: str) -> None:
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
        self.ports = [free_port() for _ in range(2)]
        self.services: list[Service] = []
        for process_id in range(2):
            home = tmp_path / f"process-{process_id}"
            home.mkdir(exist_ok=True)
            service = worker(home, bootstrap, redis_url, [topic], env=MODE_ENV)
            service.argv += ["--process-id", str(process_id)]
            service.argv += ["--metrics-port", str(self.ports[process_id])]
            service.argv += [arg for address in addresses for arg in ("--address", address)]
            self.services.append(service)

    def start(self) -> None:
        for service in self.services:
            service.start()

    def stop(self) -> None:
        for service in self.services:
            service.stop()

    def partitions_of(self, process: int, topic: str) -> list[int]:
        """The partitions of ``topic`` the process reads (from its lag metrics)."""
        url = f"http://127.0.0.1:{self.ports[process]}/metrics"
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            return []
        label = f'topic="{topic}"'
        return sorted(
            int(line.split('partition="')[1].split('"')[0])
            for line in text.splitlines()
            if line.startswith("cdc_cache_connector_lag_seconds{") and label in line
        )


@pytest.fixture
def cluster(tmp_path: Path, broker: Broker, redis_server, source: Source) -> Iterator[Cluster]:
    made = Cluster(tmp_path, broker.bootstrap, redis_server.address(), source.topic)
    made.start()
    yield made
    made.stop()


def mode_of(client: Redis) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(MODE_KEY).items()}


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
