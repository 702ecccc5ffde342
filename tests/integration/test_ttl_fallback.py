"""The TTL fallback mode on the real stack: MariaDB, Debezium, tansu, the worker, Redis.

A stalled connector switches the cache to ttl mode (existing keys get the short TTL and
expire), its return switches it back, and the operator flag overrides both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from cdc_cache.core.keys import ns
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.process import free_port
from tests.integration.fixtures_stack import scratch_database
from tests.integration.pipelines import HEARTBEATS
from tests.integration.services import Service, debezium
from tests.integration.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLO_S, RECOVER_S, WINDOW_S, FALLBACK_TTL_S = 3.0, 2.0, 2.0, 5.0
SWITCHES = "cdc_cache_mode_switches_total"
ITEMS = "CREATE TABLE {schema}.items (id INT PRIMARY KEY, v INT)"


@pytest.fixture
def database(mariadb: MariaDB) -> Iterator[str]:
    with scratch_database(mariadb, "ttl", ITEMS, *HEARTBEATS) as name:
        yield name


def insert(mariadb: MariaDB, database: str, *ids: int) -> None:
    conn = mariadb.connect()
    with conn.cursor() as cur:
        for i in ids:
            cur.execute(f"INSERT INTO {database}.items VALUES (%s, %s)", (i, i * 10))
    conn.close()


def mode_of(client: Redis) -> tuple[str, str]:
    record = client.hgetall(ns().mode)
    return record.get(b"mode", b"").decode(), record.get(b"cause", b"").decode()


def metric(port: int, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` that carry ``labels`` (in any order)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.split("{")[0].split(" ")[0] == name and all(w in line for w in wanted)
    )


def ready(port: int) -> bool:
    try:
        return bool(
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200
        )
    except urllib.error.HTTPError:
        return False


def cli_mode(redis_url: str, *args: str) -> str:
    argv = [sys.executable, "-m", "cdc_cache", "mode", *args, "--redis-url", redis_url]
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def test_stalled_connector_switches_to_ttl_and_back(
    broker: Broker, mariadb: MariaDB, database: str, redis_server, redis_client, tmp_path: Path
) -> None:
    prefix = f"tf{uuid.uuid4().hex[:6]}"
    topic = f"{prefix}.{database}.items"
    broker.create_topics({topic: 1, f"__debezium-heartbeat.{prefix}": 1})
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        f"defaults: {{safety_ttl: 1h, tombstone_ttl: 30m}}\ntables:\n  {database}.items:\n"
        '    keys:\n      - key: "item:{id}"\n        fields: [id, v]\n'
    )
    port = free_port()
    worker = Service(
        [
            sys.executable,
            "-m",
            "cdc_cache",
            "run",
            "--rules",
            str(rules),
            "--brokers",
            broker.bootstrap,
            "--topic",
            topic,
            "--redis-url",
            redis_server.address(),
            "--recovery-dir",
            str(tmp_path / "recovery"),
            "--metrics-port",
            str(port),
        ],
        tmp_path / "worker.log",
        {
            "CDC_CACHE_LAG_SLO_S": str(SLO_S),
            "CDC_CACHE_LAG_RECOVER_S": str(RECOVER_S),
            "CDC_CACHE_MODE_WINDOW_S": str(WINDOW_S),
            "CDC_CACHE_FALLBACK_TTL_S": str(FALLBACK_TTL_S),
            "CDC_CACHE_ADMIN_TOKEN": "t0ken",
        },
    )
    connector = debezium(
        tmp_path, source="mariadb", db_port=mariadb.port, brokers=broker.bootstrap,
        prefix=prefix, databases=database, options=["--no-schemas"],
    )  # fmt: skip
    services = [connector, worker]
    client = redis_client
    connector.start()
    worker.start()
    try:
        insert(mariadb, database, 100)
        wait_until("first row cached", lambda: client.exists("item:100") == 1, 60, alive=services)
        # until the JVM streams, the connector is silent: the worker may start in ttl
        wait_until("cdc mode", lambda: mode_of(client)[0] == "cdc", 20, alive=services)
        wait_until("ready", lambda: ready(port), 10, alive=services)
        switches = metric(port, SWITCHES)
        time.sleep(SLO_S + WINDOW_S)  # idle but heartbeating: no switch
        assert mode_of(client)[0] == "cdc", worker.tail()
        assert metric(port, SWITCHES) == switches
        insert(mariadb, database, 1, 2, 3)
        wait_until(
            "rows cached",
            lambda: client.exists("item:1", "item:2", "item:3") == 3,
            10,
            alive=services,
        )
        assert client.pttl("item:1") > FALLBACK_TTL_S * 1000

        # the connector stalls: ttl mode within SLO + window (+ a tick and a heartbeat)
        assert connector.proc is not None
        os.killpg(connector.proc.pid, signal.SIGSTOP)
        to_ttl = wait_until(
            "ttl mode", lambda: mode_of(client)[0] == "ttl", SLO_S + WINDOW_S + 4, alive=services
        )
        print(f"stall -> ttl: {to_ttl:.1f}s")
        # applications (cdc_cache.aside.cache_aside) cap their fills at the published fallback TTL
        assert client.hget(ns().mode, "fallback_ttl_ms") == str(int(FALLBACK_TTL_S * 1000)).encode()
        wait_until(
            "existing keys shortened",
            lambda: all(0 < client.pttl(f"item:{i}") <= FALLBACK_TTL_S * 1000 for i in (1, 2, 3)),
            3,
            alive=services,
        )
        expired = wait_until(
            "keys expired", lambda: client.exists("item:1") == 0, FALLBACK_TTL_S + 2, alive=services
        )
        print(f"shortened keys expired after a further {expired:.1f}s")
        assert metric(port, "cdc_cache_mode", mode="ttl") == 1
        stalled = {"to": "ttl", "reason": "stalled"}
        stalled_before = metric(port, SWITCHES, **stalled)
        assert stalled_before >= 1

        # it resumes: a change applied before recovery still gets the short TTL
        os.killpg(connector.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        insert(mariadb, database, 4)
        wait_until("row 4 cached", lambda: client.exists("item:4") == 1, 10, alive=services)
        if mode_of(client)[0] == "ttl":
            assert client.pttl("item:4") <= FALLBACK_TTL_S * 1000
        wait_until("cdc mode", lambda: mode_of(client)[0] == "cdc", WINDOW_S + 8, alive=services)
        print(f"resume -> cdc: {time.monotonic() - resumed:.1f}s")
        assert mode_of(client)[1] == "recovered"
        insert(mariadb, database, 5)
        wait_until("row 5 cached", lambda: client.exists("item:5") == 1, 10, alive=services)
        assert client.pttl("item:5") > FALLBACK_TTL_S * 1000
        assert metric(port, SWITCHES, to="cdc", reason="recovered") >= 1

        # the operator flag wins over auto, both ways, and auto follows the lag again
        url = redis_server.address()
        cli_mode(url, "set", "ttl")
        wait_until("forced ttl", lambda: mode_of(client) == ("ttl", "forced"), 3, alive=services)
        assert "forced" in cli_mode(url, "get")
        insert(mariadb, database, 6)
        wait_until("row 6 cached", lambda: client.exists("item:6") == 1, 10, alive=services)
        assert client.pttl("item:6") <= FALLBACK_TTL_S * 1000
        cli_mode(url, "set", "cdc")
        wait_until("forced cdc", lambda: mode_of(client) == ("cdc", "forced"), 3, alive=services)
        os.killpg(connector.proc.pid, signal.SIGSTOP)
        time.sleep(SLO_S + WINDOW_S + 2)
        assert mode_of(client) == ("cdc", "forced")  # lagging, but forced
        cli_mode(url, "set", "auto")
        wait_until("auto ttl", lambda: mode_of(client)[0] == "ttl", 3, alive=services)
        os.killpg(connector.proc.pid, signal.SIGCONT)
        assert metric(port, SWITCHES, to="ttl", reason="forced") == 1
        assert metric(port, SWITCHES, to="cdc", reason="forced") == 1
        assert metric(port, SWITCHES, **stalled) == stalled_before + 1
        assert metric(port, "cdc_cache_mode_flag", flag="auto") == 1
        assert worker.terminate() == 0, worker.tail()
    finally:
        if connector.running():
            os.killpg(connector.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        for service in services:
            service.stop()
