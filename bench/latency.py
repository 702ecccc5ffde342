"""Commit → visible-in-Redis latency on the local stack.

Starts Redis, the tansu broker and MariaDB (``cdc_cache.tools.devstack``) on free ports, the
Debezium runner and ``cdc-cache run`` as processes, then commits single-row updates one at
a time. For each it takes the time just before COMMIT and spins on GET until Redis holds
the new value. A side consumer on the Debezium topic timestamps each change's arrival in
Kafka, which splits the latency into commit → Kafka (Debezium) and Kafka → Redis (worker).

    python bench/latency.py [--commits 1000] [--out bench/results/latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from cdc_cache.sink.connection import connect
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisServer

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "bench"
ROWS = 50
PARTITIONS = 1
RULES = f"""
tables:
  {SCHEMA}.stock:
    watch: [id, warehouse, qty]
    keys:
      - key: "stock:{{id}}:{{warehouse}}"
        fields: [id, warehouse, qty]
"""


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean in milliseconds."""
    return {
        "p50_ms": round(_percentile(values, 0.50), 2),
        "p95_ms": round(_percentile(values, 0.95), 2),
        "p99_ms": round(_percentile(values, 0.99), 2),
        "max_ms": round(max(values), 2),
        "mean_ms": round(statistics.fmean(values), 2),
    }


class KafkaArrivals(threading.Thread):
    """Records when each qty value of the measured rows first appears on the topic."""

    def __init__(self, brokers: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": brokers,
                "group.id": "latency-bench",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 5,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])

    def run(self) -> None:
        while not self.stop.is_set():
            msg = self._consumer.poll(0.05)
            if msg is None or msg.error() is not None or msg.value() is None:
                continue
            now = time.perf_counter()
            after = orjson.loads(msg.value() or b"{}").get("after") or {}
            if isinstance(after.get("qty"), int):
                self.seen.setdefault(after["qty"], now)
        self._consumer.close()


class Stack:
    """The servers and the two processes, all under one temporary home."""

    def __init__(self, home: Path, kafka: dict[str, str]) -> None:
        self.home = home
        self.kafka = kafka
        self.redis = RedisServer(home / "redis", free_port())
        self.broker = Broker(home / "broker", free_port())
        self.mariadb = MariaDB(home / "mariadb", free_port())
        self.procs: list[subprocess.Popen[bytes]] = []
        self.topic = f"bench.{SCHEMA}.stock"

    def start(self) -> None:
        for server in (self.redis, self.broker, self.mariadb):
            print(f"starting {server.name}", flush=True)
            server.start()
        with self.mariadb.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {SCHEMA}")
            cur.execute(
                f"CREATE TABLE {SCHEMA}.stock (id INT PRIMARY KEY, warehouse VARCHAR(16), qty INT)"
            )
            cur.executemany(
                f"INSERT INTO {SCHEMA}.stock VALUES (%s, 'north', 0)", range(1, ROWS + 1)
            )
        self.broker.create_topics({self.topic: PARTITIONS})
        rules = self.home / "rules.yaml"
        rules.write_text(RULES)
        self._spawn(
            "debezium",
            [
                "-m", "cdc_cache.tools.devstack.debezium", "--source=mariadb",
                f"--db-port={self.mariadb.port}", f"--databases={SCHEMA}",
                f"--brokers={self.broker.bootstrap}", "--topic-prefix=bench",
                f"--state-dir={self.home / 'debezium'}", "--no-schemas", "--log-level=WARN",
            ],
        )  # fmt: skip
        self._spawn(
            "worker",
            [
                "-m", "cdc_cache", "run", "--rules", str(rules),
                "--brokers", self.broker.bootstrap, "--topic", self.topic,
                "--redis-url", self.redis.address(),
                "--recovery-dir", str(self.home / "recovery"), "--log-level", "WARNING",
            ],
            {"CDC_CACHE_KAFKA_CONSUMER": json.dumps(self.kafka)},
        )  # fmt: skip

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        print(f"starting {name}", flush=True)
        with (self.home / f"{name}.log").open("ab") as log:
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, *args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    env={**os.environ, **(env or {})},
                    start_new_session=True,
                )
            )

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                logs = {p.name: p.read_text()[-2000:] for p in self.home.glob("*.log")}
                msg = f"{proc.args!r} exited {proc.returncode}; logs:\n{json.dumps(logs, indent=1)}"
                raise SystemExit(msg)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for server in (self.mariadb, self.broker, self.redis):
            server.stop()


def measure(stack: Stack, commits: int, arrivals: KafkaArrivals) -> dict[str, Any]:
    """Commit ``commits`` updates one at a time; commit → visible for each, in ms."""
    redis = connect(stack.redis.address())
    conn = stack.mariadb.connect(SCHEMA)
    conn.autocommit(False)
    visible: list[float] = []
    to_kafka: list[float] = []
    with conn.cursor() as cur:
        for i in range(-1, commits):
            qty = i + 1_000_000  # unique per commit, so Kafka arrivals map back to commits
            row = i % ROWS + 1
            cur.execute(f"UPDATE {SCHEMA}.stock SET qty = %s WHERE id = %s", (qty, row))
            started = time.perf_counter()
            conn.commit()
            deadline = started + (120 if i < 0 else 10)  # the first waits for the stack
            while True:
                value = redis.get(f"stock:{row}:north")
                if value is not None and orjson.loads(value)["qty"] == qty:
                    break
                if time.perf_counter() > deadline:
                    stack.check_alive()
                    msg = f"commit {i} (row {row}, qty {qty}) not visible after 10 s"
                    raise SystemExit(msg)
                time.sleep(0.0002)
            done = time.perf_counter()
            if i < 0:
                print("stack is live; measuring", flush=True)
                continue
            visible.append((done - started) * 1000)
            if qty in arrivals.seen:
                to_kafka.append((arrivals.seen[qty] - started) * 1000)
            if (i + 1) % 100 == 0:
                recent = summary(visible[-100:])
                print(f"{i + 1}/{commits} commits, last 100: {recent}", flush=True)
    conn.close()
    return {
        "commit_to_visible": summary(visible),
        "commit_to_kafka": summary(to_kafka) if to_kafka else None,
        "samples_ms": [round(v, 2) for v in visible],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Start the stack, measure, print the percentiles and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/latency.json")
    parser.add_argument(
        "--kafka",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka consumer setting for the worker (repeatable), e.g. fetch.wait.max.ms=10",
    )
    args = parser.parse_args(argv)
    kafka = dict(pair.split("=", 1) for pair in args.kafka)
    home = Path(tempfile.mkdtemp(prefix="cdc-bench-"))
    stack = Stack(home, kafka)
    try:
        stack.start()
        arrivals = KafkaArrivals(stack.broker.bootstrap, stack.topic)
        arrivals.start()
        results = measure(stack, args.commits, arrivals)
        arrivals.stop.set()
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
    results |= {
        "commits": args.commits,
        "worker_kafka_settings": kafka,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"commit -> visible in Redis over {args.commits} commits: {results['commit_to_visible']}")
    print(f"commit -> record in Kafka: {results['commit_to_kafka']}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
