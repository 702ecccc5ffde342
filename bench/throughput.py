"""Throughput, processor latency and memory of the invalidation worker on the local stack.

Starts Redis and the tansu broker (``cdc_cache.tools.devstack``) on free ports, loads N Debezium
change events (``bench/workload.py``) and measures, in one run:

* ``consume_only``: the machine's Kafka limit, a confluent-kafka consumer that only reads;
* ``redis_lua``: the machine's Redis limit, the product's apply script fed pre-encoded
  batches over one connection, pipelined;
* ``product_1proc`` / ``product_2proc`` / ``product_1proc_2threads``: ``cdc-cache run``
  (1 worker process, 2 processes, 1 process with 2 worker threads) draining the loaded
  topics; after each, the correctness guard compares Redis with the state the events
  imply and fails the run on any difference;
* ``baseline``: a plain confluent-kafka + redis-py loop, one command per message;
* ``latency_full`` / ``latency_half``: the worker fed paced events at the measured full
  rate and at half of it, with a probe every 5 ms: librdkafka reports when the broker
  acknowledged it (appended), a subscriber to Redis keyspace notifications when the
  worker's SET of its key happened; ack → SET is the processor latency. A plain consumer
  with the worker's fetch settings timestamps when each probe reached a client, which
  splits it into the broker's share and the worker's (``bench/probes.py``); every probe's
  latencies are kept in the JSON (``probe_ms``) for the charts (``bench/charts.py``).

``--replicas N`` gives the Redis N replicas for the whole run and adds two phases:
``product_1proc_wait`` and ``latency_half_wait``, the same as ``product_1proc`` and
``latency_half`` with the worker waiting for the N replicas after each batch
(``redis_replicas``), so the cost of that wait reads side by side with the run without it.
``--rounds R`` runs the pair without and with the wait R times, alternating, and reports
the medians (``wait_rounds``): on a busy machine one pair is mostly noise. The phase
``replica_wait`` times the wait alone, as the worker makes it after a batch (marker, WAIT,
INFO on the primary), after one small write each: its latency and the client's CPU.

``--soak SECONDS`` runs only the memory test: the worker fed paced events for that long,
its RSS sampled throughout. ``--lineage-ab ROUNDS`` runs only ``product_1proc``, ROUNDS
times with lineage detection on and off alternately, for the cost of detection.
``--code-ab DIR`` runs only ``product_1proc``, ``--rounds`` times with the worker's code
from DIR (another checkout: the base) and from this checkout alternately, on the same
loaded events: what a change bought the whole worker (``bench/against.py --worker`` makes
the base's checkout and calls it). ``--latency-only RATE`` runs only the latency phase at
RATE events/s, ``--rounds`` times: a minute where the whole run takes six.
``--worker-cpu N`` runs the workers on CPU N alone and everything else on the other CPUs,
to see the worker's own latency with a core to itself.

The whole run writes ``bench/results/throughput.json`` unless ``--out`` says otherwise;
a partial run (``--profile``, ``--lineage-ab``, ``--code-ab``, ``--latency-only``) writes
only to an ``--out`` it is given, so it never replaces the committed full results.

    python bench/throughput.py [--events 1000000] [--out bench/results/throughput.json]
    python bench/throughput.py --events 200000 --replicas 1 --out bench/results/replicas.json
    python bench/throughput.py --soak 600 --out bench/results/soak.json
    python bench/throughput.py --lineage-ab 3 --events 200000 --out bench/results/lineage.json
    python bench/throughput.py --code-ab /tmp/base --rounds 3 --events 200000 --out FILE
    python bench/throughput.py --latency-only 8000 --rounds 3 --out FILE
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.latency import summary
from bench.probes import (
    applied_recorder,
    collections,
    compact,
    delivered_recorder,
    own_time,
    per_probe,
    split,
    writes,
)
from bench.workload import RULES_YAML, TABLES, Generator, Message
from cdc_cache.core.keys import ns
from cdc_cache.mode.holds import Holds
from cdc_cache.plan.cache_ops import KeyOp, Notify
from cdc_cache.plan.route import Planned, route
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.encoding import calls
from cdc_cache.sink.failover import PrimaryRegistry
from cdc_cache.sink.replica_wait import ReplicaWait
from cdc_cache.sink.replication import ReplicationInfo
from cdc_cache.sink.scripts import apply_script
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisServer

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 2
NUMBER_LIST = re.compile(r"\[[-0-9.,eE\s]*\]")
TABLE_NAMES = [t.name for t in TABLES] + ["probes"]
PRODUCER = {
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "compression.type": "none",
    "acks": "1",
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 2_000_000,
}


def load_conditions() -> dict[str, Any]:
    """What else the machine was doing: core count and load averages."""
    return {"nproc": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> tuple[float, float]:
    """(busy CPU seconds over all cores, wall clock), from /proc/stat's first line."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK"), time.monotonic()


class CpuMeter:
    """CPU seconds used by each group of processes, and by the whole machine, over a span.

    The machine figure includes everything else running (other users' jobs too), so it
    says how much of the machine was free for the measured processes.
    """

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self._groups = groups
        self._start: dict[str, float] = {}
        self._machine = (0.0, 0.0)

    def start(self) -> None:
        self._start = {name: self._used(pids) for name, pids in self._groups.items()}
        self._machine = _machine_busy_s()

    def stop(self) -> dict[str, float]:
        busy, now = _machine_busy_s()
        wall = now - self._machine[1]
        used = {
            f"{name}_cores": round((self._used(pids) - self._start[name]) / wall, 2)
            for name, pids in self._groups.items()
        }
        return used | {"machine_busy_cores": round((busy - self._machine[0]) / wall, 2)}

    @staticmethod
    def _used(pids: list[int]) -> float:
        return sum(cpu_seconds(pid) for pid in pids)


class Bench:
    """The servers under one temporary home, plus helpers every phase uses."""

    def __init__(self, home: Path, replicas: int = 0) -> None:
        self.home = home
        self.redis_server = RedisServer(home / "redis", free_port())
        self.replicas = [
            RedisServer(home / f"replica-{n}", free_port(), replica_of=self.redis_server.port)
            for n in range(replicas)
        ]
        self.broker = Broker(home / "broker", free_port())
        self.rules_path = home / "rules.yaml"
        self.rules_path.write_text(RULES_YAML)
        self.rules = parse_rules(RULES_YAML, str(self.rules_path))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.code = ROOT  # the checkout whose code the workers run
        self.worker_cpus: set[int] | None = None  # None: the workers run where the OS puts them

    def start(self) -> None:
        self.redis_server.start()
        for replica in self.replicas:
            replica.start()
        self.broker.start()
        self.redis = Redis.from_url(self.redis_server.address())
        deadline = time.monotonic() + 60
        while self.replicas and ReplicationInfo.parse(
            self.redis.info("replication")
        ).online() < len(self.replicas):
            if time.monotonic() > deadline:
                msg = "the Redis replicas did not come online within 60 s"
                raise SystemExit(msg)
            time.sleep(0.1)

    def stop(self) -> None:
        self.stop_workers()
        self.broker.stop()
        for replica in self.replicas:
            replica.stop()
        self.redis_server.stop()

    def create_topics(self, prefix: str) -> list[str]:
        topics = [f"{prefix}.inventory.{name}" for name in TABLE_NAMES]
        self.broker.create_topics(dict.fromkeys(topics, PARTITIONS))
        return topics

    def reset_redis(self) -> None:
        """Empty Redis; pin the cache mode to cdc (preloaded events look old to the lag)."""
        self.redis.flushall()
        self.redis.set(ns().mode_flag, "cdc")

    def producer(self, **extra: Any) -> Producer:
        return Producer({"bootstrap.servers": self.broker.bootstrap, **PRODUCER, **extra})

    def start_workers(
        self, prefix: str, processes: int, threads: int = 1, wait_replicas: int = 0
    ) -> list[int]:
        """``cdc-cache run`` on the prefix's topics; returns the metrics ports.

        ``wait_replicas`` is the worker's ``redis_replicas``: acknowledgements it waits for.
        """
        recovery = Path(tempfile.mkdtemp(prefix=f"recovery-{prefix}-", dir=self.home))
        ports = [free_port() for _ in range(processes)]
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
        for index, port in enumerate(ports):
            argv = [
                sys.executable, "-m", "cdc_cache", "run", "--rules", str(self.rules_path),
                "--brokers", self.broker.bootstrap, "--topic-pattern", rf"{prefix}\.inventory\..*",
                "--redis-url", self.redis_server.address(),
                "--recovery-dir", str(recovery / f"p{index}"),
                "--metrics-port", str(port), "--log-level", "WARNING", "--workers", str(threads),
            ]  # fmt: skip
            if processes > 1:
                # Each process keeps its own share of the recovery partitions (as on its own
                # volume in Kubernetes).
                argv += ["--process-id", str(index)]
                argv += [arg for a in addresses for arg in ("--address", a)]
            if self.worker_cpus:  # taskset execs the worker: the same pid, its threads pinned
                cpus = ",".join(map(str, sorted(self.worker_cpus)))
                argv = ["taskset", "--cpu-list", cpus, *argv]
            log = (self.home / f"worker-{prefix}-{index}.log").open("ab")
            self.procs.append(
                subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.code,
                    env={
                        **os.environ,
                        # before the editable install's finder
                        "PYTHONPATH": os.pathsep.join(
                            filter(None, [str(self.code), os.environ.get("PYTHONPATH")])
                        ),
                        "CDC_CACHE_RECOVERY_PARTITIONS": str(processes),
                        "CDC_CACHE_REDIS_REPLICAS": str(wait_replicas),
                    },
                )
            )
        return ports

    def pin(self, worker_cpu: int) -> dict[str, list[int]]:
        """Give the workers CPU ``worker_cpu`` alone; this harness and what it starts the rest.

        A worker in production has its cores to itself; here it shares two with the broker,
        Redis and the harness, so its own latency includes waiting for a core they hold.
        Called before the servers start, so that they inherit the harness's CPUs.
        """
        cpus = os.sched_getaffinity(0)
        others = cpus - {worker_cpu}
        if worker_cpu not in cpus or not others:
            msg = f"--worker-cpu {worker_cpu}: needs it and another CPU among {sorted(cpus)}"
            raise SystemExit(msg)
        os.sched_setaffinity(0, others)
        self.worker_cpus = {worker_cpu}
        return {"worker": [worker_cpu], "others": sorted(others)}

    def meter(self, **others: int) -> CpuMeter:
        """CPU use of the workers, the broker, Redis, this harness and ``others`` (name=pid)."""
        servers: dict[str, int | None] = {
            "broker": self.broker.pid(),
            "redis": self.redis_server.pid(),
        }
        servers |= {f"replica_{n}": r.pid() for n, r in enumerate(self.replicas)}
        servers |= others
        return CpuMeter(
            {"worker": [proc.pid for proc in self.procs], "harness": [os.getpid()]}
            | {name: [pid] for name, pid in servers.items() if pid is not None}
        )

    def stop_workers(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []

    def check_workers(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                logs = {p.name: p.read_text()[-3000:] for p in self.home.glob("worker-*.log")}
                msg = f"worker exited {proc.returncode}; logs:\n{json.dumps(logs, indent=1)}"
                raise SystemExit(msg)

    @staticmethod
    def scrape(port: int) -> str:
        """A worker's ``/metrics`` text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text: str = r.read().decode()
        return text

    def consumed(self, ports: Sequence[int]) -> int:
        """Kafka records the workers have finished (applied or counted), from /metrics."""
        total = 0
        for port in ports:
            try:
                text = self.scrape(port)
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("cdc_cache_records_total{"):
                    total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def wait_consumed(
        self,
        ports: Sequence[int],
        target: int,
        timeout: float,
        on_first: Callable[[], None] = lambda: None,
    ) -> tuple[float, float]:
        """Poll until the workers finished ``target`` records: (started, done) times.

        Started is the last poll that saw nothing finished yet: the work began after it,
        so the span is never shorter than the work (nor zero on a tiny load). Each poll
        costs the worker a metrics collection (~8 ms of its CPU), so once work is under
        way the polls sleep half the time the rate so far says is left: a few polls per
        run instead of five a second, and the end still seen within 0.2 s.
        """
        first = 0.0
        idle = time.monotonic()
        deadline = idle + timeout
        while True:
            count = self.consumed(ports)
            now = time.monotonic()
            if not count:
                idle = now
            elif not first:
                first = idle
                on_first()
            if count >= target:
                return first, now
            if now > deadline:
                msg = f"workers finished {count} of {target} records within {timeout:.0f} s"
                raise SystemExit(msg)
            self.check_workers()
            left_s = (target - count) * (now - first) / count if first else 0.0
            time.sleep(min(max(0.2, left_s / 2), 5.0))

    def guard(self, generator: Generator) -> dict[str, Any]:
        """Compare Redis with the state the events imply; any difference fails the run."""
        present, absent = generator.expected()
        names = list(present)
        wrong: list[str] = []
        for start in range(0, len(names), 2000):
            chunk = names[start : start + 2000]
            pipe = self.redis.pipeline(transaction=False)
            for name in chunk:
                if isinstance(present[name], dict):
                    pipe.hgetall(name)
                else:
                    pipe.get(name)
            wrong += [n for n, got in zip(chunk, pipe.execute(), strict=True) if got != present[n]]
        leftover = 0
        for start in range(0, len(absent), 2000):
            leftover += int(self.redis.exists(*absent[start : start + 2000]) or 0)
        return {
            "ok": not wrong and not leftover,
            "keys_checked": len(names),
            "absent_checked": len(absent),
            "wrong_values": len(wrong),
            "wrong_examples": wrong[:5],
            "deleted_but_present": leftover,
        }


def load(bench: Bench, generator: Generator, events: int) -> dict[str, Any]:
    """Generate and produce ``events`` changes (plus tombstones) as fast as possible."""
    topics = bench.create_topics(generator.prefix)
    producer = bench.producer()
    started = time.monotonic()
    records = size = 0
    for message in generator.messages(events):
        _produce(producer, message)
        records += 1
        size += len(message.value or b"")
    remaining = producer.flush(300)
    elapsed = time.monotonic() - started
    if remaining:
        msg = f"{remaining} records not acknowledged by the broker"
        raise SystemExit(msg)
    return {
        "topics": topics,
        "events": events,
        "records": records,
        "tombstones": records - events,
        "value_bytes": size,
        "seconds": round(elapsed, 2),
        "records_per_s": round(records / elapsed),
    }


def _produce(producer: Producer, message: Message, **callback: Any) -> None:
    while True:
        try:
            producer.produce(message.topic, value=message.value, key=message.key, **callback)
            return
        except BufferError:
            producer.poll(0.05)


def consume_only(bench: Bench, topics: Sequence[str], records: int) -> dict[str, Any]:
    """The machine's Kafka read limit: a consumer that only touches each value."""
    consumer = Consumer(
        {
            "bootstrap.servers": bench.broker.bootstrap,
            "group.id": "bench-consume-only",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
        }
    )
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in range(PARTITIONS)])
    seen = size = 0
    started = time.monotonic()
    while seen < records:
        for message in consumer.consume(10_000, 1.0):
            if message.error() is None:
                seen += 1
                size += len(message.value() or b"")
        if time.monotonic() - started > 600:
            break
    elapsed = time.monotonic() - started
    consumer.close()
    return {"records": seen, "seconds": round(elapsed, 2), "records_per_s": round(seen / elapsed)}


def redis_lua(bench: Bench, events: int) -> dict[str, Any]:
    """The machine's Redis limit for the product's script: pre-encoded calls, pipelined.

    The calls are what the worker would send for these events (same planner, same
    chunking); encoding them is outside the timing, so only Redis and the socket count.
    """
    generator = Generator(prefix="lua", seed=7)
    ops: list[KeyOp | Notify] = []  # the bench workload truncates nothing
    for message in generator.messages(events):
        routed = route(_record(message), bench.rules)
        if isinstance(routed, Planned):
            ops += [op for op in routed.ops if isinstance(op, KeyOp | Notify)]
    script_calls = list(calls(ops, range(len(ops))))
    source, sha = apply_script()
    bench.reset_redis()
    bench.redis.execute_command("SCRIPT LOAD", source)
    connection = bench.redis.connection_pool.get_connection()
    packed = [
        connection.pack_command("EVALSHA", sha, len(c.keys), *c.keys, *c.args) for c in script_calls
    ]
    in_flight = 2  # the worker sends one batch per partition poll; allow a little overlap
    started = time.monotonic()
    for start in range(0, len(packed), in_flight):
        group = packed[start : start + in_flight]
        connection.send_packed_command([part for command in group for part in command])
        for _ in group:
            connection.read_response()
    elapsed = time.monotonic() - started
    bench.redis.connection_pool.release(connection)
    return {
        "events": events,
        "ops": len(ops),
        "ops_per_event": round(len(ops) / events, 3),
        "calls": len(script_calls),
        "seconds": round(elapsed, 2),
        "ops_per_s": round(len(ops) / elapsed),
        "events_per_s": round(events / elapsed),
    }


def replica_wait(bench: Bench, replicas: int, waits: int = 2000) -> dict[str, Any]:
    """One worker's wait for ``replicas`` acknowledgements, alone: latency and client CPU."""
    wait = ReplicaWait(
        bench.redis, PrimaryRegistry(tracked=True), Holds(), replicas=replicas, timeout_ms=1000
    ).start()
    primary = wait.touched([])
    seconds = []
    cpu = 0.0
    for number in range(waits):
        bench.redis.set("bench:replica-wait", number)  # something for the replicas to take
        started, cpu_started = time.perf_counter(), time.process_time()
        wait.confirm(primary)
        seconds.append(time.perf_counter() - started)
        cpu += time.process_time() - cpu_started
    return {
        "replicas": replicas,
        "waits": waits,
        **summary([s * 1000 for s in seconds]),
        "client_cpu_us_per_wait": round(cpu / waits * 1e6, 1),
    }


def _record(message: Message) -> Any:
    from cdc_cache.core.events import SourceRecord

    return SourceRecord(message.topic, 0, 0, message.key, message.value)


def product(
    bench: Bench,
    generator: Generator,
    loaded: dict[str, Any],
    processes: int,
    threads: int = 1,
    *,
    wait_replicas: int = 0,
) -> dict[str, Any]:
    """``cdc-cache run`` draining the loaded topics; then the correctness guard."""
    bench.reset_redis()
    ports = bench.start_workers(generator.prefix, processes, threads, wait_replicas)
    records = loaded["records"]
    meter = bench.meter()
    first, done = bench.wait_consumed(ports, records, timeout=900, on_first=meter.start)
    cpu = meter.stop()
    rss = [rss_mb(proc.pid) for proc in bench.procs]
    scraped = [bench.scrape(port) for port in ports]
    bench.stop_workers()
    elapsed = done - first
    guard = bench.guard(generator)
    if not guard["ok"]:
        msg = f"correctness guard failed after the {processes}x{threads} worker run: {guard}"
        raise SystemExit(msg)
    return {
        "processes": processes,
        "threads_per_process": threads,
        "redis_replicas": wait_replicas,
        "records": records,
        "events": loaded["events"],
        "seconds": round(elapsed, 2),
        "records_per_s": round(records / elapsed),
        "events_per_s": round(loaded["events"] / elapsed),
        "cpu": cpu,
        "worker_rss_mb_end": rss,
        "writes": [writes(text) for text in scraped],
        "gc_collections": [collections(text) for text in scraped],
        "guard": guard,
    }


def baseline(bench: Bench, topics: Sequence[str], records: int, limit_s: float) -> dict[str, Any]:
    """A plain consumer loop as a user would first write it: json + one Redis call each.

    Not version-gated and single-threaded; it runs for at most ``limit_s`` seconds.
    """
    bench.reset_redis()
    consumer = Consumer(
        {
            "bootstrap.servers": bench.broker.bootstrap,
            "group.id": "bench-baseline",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in range(PARTITIONS)])
    redis = Redis.from_url(bench.redis_server.address())
    seen = 0
    started = time.monotonic()
    while seen < records and time.monotonic() - started < limit_s:
        message = consumer.poll(1.0)
        if message is None or message.error() is not None:
            continue
        seen += 1
        value = message.value()
        if value is None:
            continue  # tombstone
        _plain_apply(redis, json.loads(value))
    elapsed = time.monotonic() - started
    consumer.close()
    return {
        "records": seen,
        "complete": seen >= records,
        "seconds": round(elapsed, 2),
        "records_per_s": round(seen / elapsed),
    }


def _plain_apply(redis: Redis[bytes], doc: dict[str, Any]) -> None:
    change = doc["payload"] if "schema" in doc else doc
    table, op = change["source"]["table"], change["op"]
    row = change["before"] if op == "d" else change["after"]
    fields: tuple[str, ...]
    if table == "products":
        key, fields = f"product:{row['id']}", ("id", "name", "price")
    elif table == "stock":
        key, fields = (
            f"stock:{row['sku_id']}:{row['warehouse']}",
            ("sku_id", "warehouse", "qty", "price"),
        )
        redis.delete(f"sku:{row['sku_id']}:availability")
    else:
        key = f"order:{row['id']}"
        if op == "d":
            redis.delete(key)
        else:
            redis.hset(
                key, mapping={f: str(row[f]) for f in ("id", "customer_id", "status", "total")}
            )
        return
    if op == "d":
        redis.delete(key)
    else:
        redis.set(key, json.dumps({f: row[f] for f in fields}), px=86_400_000)


class Pacer:
    """Produces changes at a fixed rate, with a timestamped probe every ``probe_every_s``."""

    def __init__(self, producer: Producer, generator: Generator, probe_every_s: float) -> None:
        self.producer = producer
        self.generator = generator
        self.probe_every_s = probe_every_s
        self.sent: dict[int, int] = {}  # probe id -> send time, µs since the epoch
        self.ack_after_s: dict[int, float] = {}  # probe id -> send → broker ack
        self.changes = 0

    def _acked(self, ident: int) -> Callable[[Any, Any], None]:
        """Delivery callback: librdkafka's own produce() → ack time for the probe."""

        def acked(error: Any, message: Any) -> None:
            if error is None:
                self.ack_after_s[ident] = message.latency()

        return acked

    def run(
        self,
        changes: Iterator[list[Message]],
        rate: float,
        seconds: float,
        on_tick: Callable[[], None] = lambda: None,
    ) -> float:
        """Produce for ``seconds`` (or until ``changes`` ends); returns the time it took."""
        tick = 0.005
        started = time.monotonic()
        next_probe = started
        while (now := time.monotonic()) - started < seconds:
            due = int((now - started) * rate)
            while self.changes < due:
                for message in next(changes):
                    _produce(self.producer, message)
                self.changes += 1
            if now >= next_probe:
                ident = len(self.sent) + 1
                self.sent[ident] = sent_us = int(time.time() * 1_000_000)
                probe = self.generator.probe(ident, sent_us)
                _produce(self.producer, probe, on_delivery=self._acked(ident))
                next_probe += self.probe_every_s
            self.producer.poll(0)
            on_tick()
            time.sleep(max(0.0, tick - (time.monotonic() - now)))
        return time.monotonic() - started


def latency(
    bench: Bench, prefix: str, rate: float, seconds: float, wait_replicas: int = 0
) -> dict[str, Any]:
    """Processor latency at a paced rate: probe acked by the broker → probe key SET in Redis.

    The changes are generated before the clock starts, so generating them does not
    compete with the worker for the CPU.
    """
    generator = Generator(prefix=prefix, seed=11)
    changes = [generator.change() for _ in range(int(rate * seconds) + 1)]
    bench.create_topics(prefix)
    bench.reset_redis()
    ports = bench.start_workers(prefix, 1, wait_replicas=wait_replicas)
    producer = bench.producer(**{"linger.ms": 1})
    applied = applied_recorder(bench.redis, bench.redis_server.address())
    # Warm up: the worker is live once a first probe is applied, the side consumer once
    # it has that probe.
    _produce(producer, generator.probe(0, 0))
    producer.flush(30)
    delivered = delivered_recorder(bench.broker.bootstrap, generator.topic("probes"))
    bench.wait_consumed(ports, 1, timeout=120)
    pid = bench.procs[0].pid
    rss_start = rss_mb(pid)
    pacer = Pacer(producer, generator, probe_every_s=0.005)
    meter = bench.meter(probe_consumer=delivered.pid)
    meter.start()
    produced_for = pacer.run(iter(changes), rate, seconds)
    finished = time.monotonic()
    producer.flush(60)
    records = sum(len(c) for c in changes[: pacer.changes]) + len(pacer.sent) + 1
    _, done = bench.wait_consumed(ports, records, timeout=600)
    cpu = meter.stop()
    rss_end = rss_mb(pid)
    own = own_time(bench.scrape(ports[0]))
    bench.stop_workers()
    seen = applied.finish()
    bench.redis.config_set("notify-keyspace-events", "")
    got = delivered.finish()
    sent, acked = pacer.sent, pacer.ack_after_s
    missing = [i for i in sent if i not in seen or i not in acked or i not in got]
    if missing:
        msg = (
            f"{len(missing)} of {len(sent)} probes never reached Redis or the side consumer, "
            "or were not acked"
        )
        raise SystemExit(msg)
    to_applied = [seen[i] * 1000 - sent[i] / 1000 for i in sent]
    to_ack = [acked[i] * 1000 for i in sent]
    samples = per_probe(sent, acked, got, seen)
    return {
        "target_rate": round(rate),
        "redis_replicas": wait_replicas,
        "achieved_rate": round(pacer.changes / produced_for),
        "seconds": round(produced_for, 1),
        "drain_after_last_s": round(max(0.0, done - finished), 2),
        "probes": len(sent),
        # Processor latency: the broker acknowledged the probe (it was appended) → its
        # key was set in Redis. The ack follows the append, so this understates by the
        # ack's way back (local loopback).
        **summary(samples["ack_to_applied"]),
        "send_to_ack": summary(to_ack),
        "send_to_applied": summary(to_applied),
        # The same split at the moment a plain consumer with the worker's fetch settings
        # got the probe: the broker's share, then the worker's (bench/probes.py).
        "split": split(samples),
        # The worker's own time, measured inside it over every change (its histogram).
        "worker_own_time": own,
        "worker_rss_mb": [rss_start, rss_end],
        "cpu": cpu,
        "probe_ms": compact(samples),
    }


def soak(bench: Bench, rate: float, seconds: float) -> dict[str, Any]:
    """Memory over a long run: the worker fed ``rate`` changes/s, RSS sampled every 10 s."""
    generator = Generator(prefix="soak", seed=13)
    bench.create_topics("soak")
    bench.reset_redis()
    ports = bench.start_workers("soak", 1)
    producer = bench.producer(**{"linger.ms": 5})
    _produce(producer, generator.probe(0, 0))
    producer.flush(30)
    bench.wait_consumed(ports, 1, timeout=120)
    pid = bench.procs[0].pid
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    next_sample = started

    def sample() -> None:
        nonlocal next_sample
        now = time.monotonic()
        if now >= next_sample:
            samples.append((round(now - started, 1), rss_mb(pid)))
            next_sample += 10
            bench.check_workers()

    pacer = Pacer(producer, generator, probe_every_s=1.0)
    pacer.run(iter(generator.change, None), rate, seconds, on_tick=sample)
    producer.flush(60)
    records = generator.changes + generator.deletes
    bench.wait_consumed(ports, records, timeout=600)
    samples.append((round(time.monotonic() - started, 1), rss_mb(pid)))
    bench.stop_workers()
    guard = bench.guard(generator)
    rss = [mb for _, mb in samples]
    return {
        "rate": round(rate),
        "seconds": round(seconds),
        "records": records,
        "rss_mb_start": rss[0],
        "rss_mb_end": rss[-1],
        "rss_mb_max": max(rss),
        "rss_mb_samples": samples,
        "guard": guard,
    }


def markdown(result: dict[str, Any]) -> str:
    """A short table of the headline numbers."""
    rows = [("measurement", "value")]
    if "profile" in result:
        rows.append(("profiled run", f"{result['events_per_s']:,} events/s"))
    elif "soak" in result:
        s = result["soak"]
        rss = f"{s['rss_mb_start']} / {s['rss_mb_end']} / {s['rss_mb_max']} MiB"
        rows += [
            ("soak rate (changes/s)", f"{s['rate']:,}"),
            ("soak duration", f"{s['seconds']} s"),
            ("worker RSS start / end / max", rss),
            ("correctness guard", "passed" if s["guard"]["ok"] else "FAILED"),
        ]
    else:
        rows += _throughput_rows(result)
    start, end = result["conditions_start"], result["conditions_end"]
    rows.append(
        ("nproc, loadavg start → end", f"{start['nproc']}, {start['loadavg']} → {end['loadavg']}")
    )
    lines = [f"| {a} | {b} |" for a, b in rows]
    lines.insert(1, "|---|---|")
    return "\n".join(lines) + "\n"


def _throughput_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    def rate(part: dict[str, Any]) -> str:
        return f"{part['events_per_s']:,} events/s ({part['records_per_s']:,} records/s)"

    load, lua, ratio = result["load"], result["redis_lua"], result["ratios"]
    rows = [
        ("events (records incl. tombstones)", f"{load['events']:,} ({load['records']:,})"),
        ("load rate (generate + produce)", f"{load['records_per_s']:,} records/s"),
        (
            "consume-only (confluent-kafka)",
            f"{result['consume_only']['records_per_s']:,} records/s",
        ),
        (
            "Redis: apply script, pipelined",
            f"{lua['events_per_s']:,} events/s ({lua['ops_per_s']:,} ops/s)",
        ),
        *(
            [
                (
                    f"the wait for {wait['replicas']} replica(s) alone, after a write",
                    f"p50 {wait['p50_ms']} ms, p99 {wait['p99_ms']} ms; "
                    f"{wait['client_cpu_us_per_wait']} µs client CPU",
                )
            ]
            if (wait := result.get("replica_wait"))
            else []
        ),
        ("cdc-cache run, 1 process", rate(result["product_1proc"])),
        *_wait_rows(result),
        ("cdc-cache run, 2 processes", rate(result["product_2proc"])),
        ("cdc-cache run, 1 process, 2 worker threads", rate(result["product_1proc_2threads"])),
        (
            "plain baseline (consumer loop + redis-py)",
            f"{result['baseline']['records_per_s']:,} records/s",
        ),
    ]
    for name in ("latency_full", "latency_half", "latency_half_wait"):
        if name not in result:
            continue
        lat = result[name]
        send = lat["send_to_ack"]
        rows += [
            (
                f"broker ack → applied at {lat['achieved_rate']:,} events/s "
                f"({name.split('_')[1]} rate)"
                + (
                    f", waiting for {lat['redis_replicas']} replica(s)"
                    if lat["redis_replicas"]
                    else ""
                ),
                f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms",
            ),
            (
                "  (before it: produce → broker ack)",
                f"p50 {send['p50_ms']} ms, p99 {send['p99_ms']} ms, max {send['max_ms']} ms",
            ),
            *_split_rows(lat),
        ]
    rows += [
        ("1 process vs baseline (records/s)", f"{ratio['vs_baseline']}x"),
        ("1 process vs lower raw limit", f"{ratio['vs_lower_raw_limit']:.0%}"),
        ("2 processes vs 1", f"{ratio['scaling_2_vs_1']}x"),
        *(
            [
                (
                    "waiting for replicas vs not (medians)",
                    f"{ratio['wait_vs_no_wait']:.0%} of the rate, "
                    f"{ratio['wait_cpu_vs_no_wait']:.0%} of the worker CPU per event",
                )
            ]
            if "wait_vs_no_wait" in ratio
            else []
        ),
        ("correctness guard (after each cdc-cache run)", "passed"),
    ]
    return rows


def _split_rows(lat: dict[str, Any]) -> list[tuple[str, str]]:
    """The broker's and the worker's share of a latency phase (absent in older results)."""
    if "split" not in lat:
        return []
    broker, worker = lat["split"]["ack_to_delivered"], lat["split"]["delivered_to_applied"]
    return [
        (
            "  of it, broker: ack → delivered to a plain consumer",
            f"p50 {broker['p50_ms']} ms, p99 {broker['p99_ms']} ms, max {broker['max_ms']} ms",
        ),
        (
            "  of it, worker: delivered → applied",
            f"p50 {worker['p50_ms']} ms, p99 {worker['p99_ms']} ms, max {worker['max_ms']} ms "
            f"(side consumer: {lat['cpu'].get('probe_consumer_cores', 0)} cores)",
        ),
        *_own_rows(lat),
    ]


def _own_rows(lat: dict[str, Any]) -> list[tuple[str, str]]:
    """The worker's own time from its histogram (absent in older results)."""
    own = lat.get("worker_own_time")
    if not own:
        return []
    return [
        (
            "  the worker's own time, received → applied (its histogram)",
            f"p50 {own['p50_ms']} ms, p95 {own['p95_ms']} ms, p99 {own['p99_ms']} ms "
            f"over {own['changes']:,} changes",
        )
    ]


def _wait_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The runs with and without waiting for replicas, as medians of their rounds."""
    if "wait_medians" not in result:
        return []
    medians, rounds = result["wait_medians"], result["wait_rounds"]
    replicas = result["product_1proc_wait"]["redis_replicas"]
    pairs = ", ".join(
        f"{r['wait']['events_per_s']:,} vs {r['no_wait']['events_per_s']:,}" for r in rounds
    )
    return [
        (
            f"  the same, waiting for {replicas} replica(s), median of {len(rounds)}",
            f"{medians['wait']['events_per_s']:,.0f} events/s vs "
            f"{medians['no_wait']['events_per_s']:,.0f} without (rounds: {pairs})",
        ),
        (
            "  worker CPU per event, with vs without the wait (medians)",
            f"{medians['wait']['worker_cpu_us_per_event']} vs "
            f"{medians['no_wait']['worker_cpu_us_per_event']} µs",
        ),
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="cdc-throughput-"))
    bench = Bench(home, args.replicas)
    result: dict[str, Any] = {"conditions_start": load_conditions()}
    if args.worker_cpu is not None:
        result["cpus"] = bench.pin(args.worker_cpu)
    try:
        bench.start()
        if args.profile:
            result |= profile(bench, args)
        elif args.soak:
            print(f"soak: {args.soak_rate}/s for {args.soak} s", flush=True)
            result["soak"] = soak(bench, args.soak_rate, args.soak)
        elif args.lineage_ab:
            result["lineage_ab"] = lineage_ab(bench, args)
        elif args.code_ab:
            result["code_ab"] = code_ab(bench, args)
        elif args.latency_only:
            result["latency_only"] = latency_rounds(bench, args)
        else:
            result |= measure(bench, args)
    finally:
        bench.stop()
        shutil.rmtree(home, ignore_errors=True)
    result |= {
        "conditions_end": load_conditions(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return result


def measure(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    generator = Generator(prefix="bench", seed=1)
    step = _announcer()
    step(f"loading {args.events:,} events")
    out["load"] = loaded = load(bench, generator, args.events)
    topics = loaded.pop("topics")
    step(f"loaded: {loaded}; consume-only")
    out["consume_only"] = consume_only(bench, topics, loaded["records"])
    # The same stream counted in change events (tombstones ride along), as the others are.
    out["consume_only"]["events_per_s"] = round(
        out["consume_only"]["records_per_s"] * loaded["events"] / loaded["records"]
    )
    step(f"{out['consume_only']}; Redis Lua limit")
    out["redis_lua"] = redis_lua(bench, min(args.events, 200_000))
    if args.replicas:
        step(f"{out['redis_lua']}; the wait for {args.replicas} replica(s) alone")
        out["replica_wait"] = replica_wait(bench, args.replicas)
    step(f"{out.get('replica_wait', out['redis_lua'])}; cdc-cache run, 1 process")
    out["product_1proc"] = product(bench, generator, loaded, 1)
    if args.replicas:
        step(f"{out['product_1proc']}; {args.rounds} round(s) without and with the wait")
        out |= wait_rounds(bench, generator, loaded, out["product_1proc"], args)
        step(f"{out['wait_rounds']}")
    step(f"{out['product_1proc']}; cdc-cache run, 2 processes")
    out["product_2proc"] = product(bench, generator, loaded, 2)
    step(f"{out['product_2proc']}; cdc-cache run, 1 process with 2 worker threads")
    out["product_1proc_2threads"] = product(bench, generator, loaded, 1, threads=2)
    step(f"{out['product_1proc_2threads']}; baseline")
    out["baseline"] = baseline(bench, topics, loaded["records"], args.baseline_seconds)
    full = out["product_1proc"]["events_per_s"]
    step(f"{out['baseline']}; latency at {full}/s")
    out["latency_full"] = latency(bench, "latfull", full, args.latency_seconds)
    step(f"{_brief(out['latency_full'])}; latency at {full // 2}/s")
    out["latency_half"] = latency(bench, "lathalf", full / 2, args.latency_seconds)
    step(f"{_brief(out['latency_half'])}")
    if args.replicas:
        out["latency_half_wait"] = latency(
            bench, "lathalfw", full / 2, args.latency_seconds, wait_replicas=args.replicas
        )
        step(f"waiting for replicas: {_brief(out['latency_half_wait'])}")
    out["ratios"] = ratios(out)
    return out


def wait_rounds(
    bench: Bench,
    generator: Generator,
    loaded: dict[str, Any],
    first: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The 1-process run waiting for replicas, paired with runs without the wait.

    ``first`` is the run without it already made; the pairs alternate so that a change in
    the machine's load hits both sides alike. Worker CPU per event is reported too: it
    depends less on what else the machine runs than the rate does.
    """
    rounds = []
    waiting: dict[str, Any] = {}
    for number in range(args.rounds):
        plain = first if number == 0 else product(bench, generator, loaded, 1)
        waiting = product(bench, generator, loaded, 1, wait_replicas=args.replicas)
        rounds.append({"no_wait": _rate_and_cpu(plain), "wait": _rate_and_cpu(waiting)})
    medians = {
        side: {
            name: _median([r[side][name] for r in rounds])
            for name in ("events_per_s", "worker_cpu_us_per_event")
        }
        for side in ("no_wait", "wait")
    }
    return {"product_1proc_wait": waiting, "wait_rounds": rounds, "wait_medians": medians}


def _rate_and_cpu(run: dict[str, Any]) -> dict[str, float]:
    cpu_s = run["cpu"]["worker_cores"] * run["seconds"]
    return {
        "events_per_s": run["events_per_s"],
        "worker_cpu_us_per_event": round(cpu_s / run["events"] * 1e6, 1),
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def alternate(
    bench: Bench,
    events: int,
    rounds: int,
    variants: dict[str, Callable[[], AbstractContextManager[None]]],
) -> dict[str, Any]:
    """One worker process draining the same events under each variant, alternately.

    Rounds alternate, so load from other jobs on the machine falls on every variant alike;
    the worker's CPU per event is steadier than its wall-clock rate on a busy machine.
    """
    generator = Generator(prefix="bench", seed=1)
    loaded = load(bench, generator, events)
    loaded.pop("topics")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for round_ in range(rounds):
        for name, variant in variants.items():
            with variant():
                run_ = product(bench, generator, loaded, 1)
            busy = {"machine_busy_cores": run_["cpu"]["machine_busy_cores"]}
            runs[name].append(_rate_and_cpu(run_) | busy)
            print(f"round {round_ + 1}/{rounds}, {name}: {runs[name][-1]}", flush=True)
    medians = {
        name: {field: _median([r[field] for r in done]) for field in done[0]}
        for name, done in runs.items()
    }
    return {"events": loaded["events"], "runs": runs, "medians": medians}


def lineage_ab(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Lineage detection on and off (``CDC_CACHE_LINEAGE_DETECTION``)."""

    def detection(on: bool) -> Callable[[], AbstractContextManager[None]]:
        @contextmanager
        def variant() -> Iterator[None]:
            os.environ["CDC_CACHE_LINEAGE_DETECTION"] = "true" if on else "false"
            try:
                yield
            finally:
                del os.environ["CDC_CACHE_LINEAGE_DETECTION"]

        return variant

    variants = {"on": detection(True), "off": detection(False)}
    return alternate(bench, args.events, args.lineage_ab, variants)


def code_ab(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """The worker's code from ``args.code_ab`` (base) and from this checkout (head).

    Both run with this checkout's harness, servers, events and correctness guard; the
    ratio is head over base of the medians (above 1: head drains faster, or uses more
    CPU per event).
    """

    def code(tree: Path) -> Callable[[], AbstractContextManager[None]]:
        @contextmanager
        def variant() -> Iterator[None]:
            bench.code = tree
            try:
                yield
            finally:
                bench.code = ROOT

        return variant

    base = args.code_ab.resolve()
    result = alternate(bench, args.events, args.rounds, {"base": code(base), "head": code(ROOT)})
    before, after = result["medians"]["base"], result["medians"]["head"]
    result["base_tree"] = str(base)
    result["head_over_base"] = {
        field: round(after[field] / before[field], 3)
        for field in ("events_per_s", "worker_cpu_us_per_event")
        if before[field]
    }
    return result


def profile(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Load the events, then sample one worker draining them with py-spy (raw stacks).

    Idle threads are sampled too (where a thread waits shows what it waits for), unless
    ``--profile-cpu``: then only threads on the CPU, so the shares are of its CPU time.
    """
    generator = Generator(prefix="bench", seed=1)
    loaded = load(bench, generator, args.events)
    bench.reset_redis()
    ports = bench.start_workers(generator.prefix, 1)
    bench.wait_consumed(ports, 1, timeout=120)
    spy = subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(bench.procs[0].pid),
         "--rate", "200", "--nonblocking", *([] if args.profile_cpu else ["--idle"]),
         "--format", "raw", "-o", str(args.profile)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    first, done = bench.wait_consumed(ports, loaded["records"], timeout=900)
    spy.send_signal(signal.SIGINT)
    spy.wait(60)
    scraped = bench.scrape(ports[0])
    bench.stop_workers()
    return {
        "profile": str(args.profile),
        "events_per_s": round(loaded["events"] / (done - first)),
        "writes": writes(scraped),
        "gc_collections": collections(scraped),
    }


def ratios(out: dict[str, Any]) -> dict[str, float]:
    """The issue's targets as ratios of this run's measurements."""
    one = out["product_1proc"]["events_per_s"]
    records = out["product_1proc"]["records_per_s"]
    raw = min(out["consume_only"]["events_per_s"], out["redis_lua"]["events_per_s"])
    found = {
        "vs_baseline": _ratio(records, out["baseline"]["records_per_s"], 2),
        "vs_lower_raw_limit": _ratio(one, raw, 3),
        "scaling_2_vs_1": _ratio(out["product_2proc"]["events_per_s"], one, 2),
    }
    if "wait_medians" in out:
        wait, no_wait = out["wait_medians"]["wait"], out["wait_medians"]["no_wait"]
        found["wait_vs_no_wait"] = _ratio(wait["events_per_s"], no_wait["events_per_s"], 3)
        found["wait_cpu_vs_no_wait"] = _ratio(
            wait["worker_cpu_us_per_event"], no_wait["worker_cpu_us_per_event"], 3
        )
    return found


def _ratio(part: float, whole: float, digits: int) -> float:
    """``part / whole`` rounded; NaN when ``whole`` is 0 (a run too short to sample CPU)."""
    return round(part / whole, digits) if whole else math.nan


def dumps(result: dict[str, Any]) -> str:
    """Indented JSON with every list of numbers on one line (the per-probe latencies)."""
    text = json.dumps(result, indent=1)
    return NUMBER_LIST.sub(lambda m: "".join(m.group().split()), text) + "\n"


def latency_rounds(bench: Bench, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The latency phase alone at ``args.latency_only`` events/s, ``args.rounds`` times."""
    step = _announcer()
    rounds = []
    for number in range(args.rounds):
        phase = latency(bench, f"latonly{number}", args.latency_only, args.latency_seconds)
        step(f"round {number + 1}/{args.rounds}: {_brief(phase)}")
        rounds.append(phase)
    return rounds


def _brief(phase: dict[str, Any]) -> dict[str, Any]:
    """A latency phase without its per-probe samples, for the progress lines."""
    return {name: value for name, value in phase.items() if name != "probe_ms"}


def _announcer() -> Callable[[str], None]:
    started = time.monotonic()

    def step(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {text}", flush=True)

    return step


def results_path(args: argparse.Namespace) -> Path | None:
    """Where the results go: ``--out``, else the committed file for a whole run only."""
    partial = bool(args.profile or args.lineage_ab or args.code_ab or args.latency_only)
    return args.out or (None if partial else ROOT / "bench/results/throughput.json")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the JSON and Markdown results."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--baseline-seconds", type=float, default=30)
    parser.add_argument("--soak", type=float, default=0, help="memory run of this many seconds")
    parser.add_argument("--soak-rate", type=float, default=3000)
    parser.add_argument("--profile", type=Path, help="only profile the worker, to this file")
    parser.add_argument(
        "--profile-cpu", action="store_true", help="with --profile: threads on the CPU only"
    )
    parser.add_argument(
        "--replicas", type=int, default=0, help="give Redis N replicas; measure waiting for them"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of each variant (--replicas, --code-ab)"
    )
    parser.add_argument(
        "--out", type=Path,
        help="results file (default: bench/results/throughput.json for the whole run; "
        "a partial run writes only to one given here)",
    )  # fmt: skip
    parser.add_argument(
        "--lineage-ab", type=int, default=0, metavar="ROUNDS",
        help="only compare one worker with lineage detection on and off, ROUNDS times each",
    )  # fmt: skip
    parser.add_argument(
        "--code-ab", type=Path, metavar="DIR",
        help="only compare the worker's code from checkout DIR with this one's, --rounds times",
    )  # fmt: skip
    parser.add_argument(
        "--latency-only", type=float, default=0, metavar="RATE",
        help="only the latency phase at RATE events/s, --rounds times",
    )  # fmt: skip
    parser.add_argument(
        "--worker-cpu", type=int, metavar="N",
        help="run the workers on CPU N alone, the broker, Redis and this harness on the others",
    )  # fmt: skip
    args = parser.parse_args(argv)
    out = results_path(args)
    result = run(args)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(dumps(result))
    if args.lineage_ab or args.code_ab or args.latency_only:
        shown = result.get("lineage_ab") or result.get("code_ab") or result["latency_only"]
        if args.latency_only:
            shown = [_brief(phase) for phase in shown]
        print(json.dumps(shown, indent=1))
        return 0
    table = markdown(result)
    if out is not None:
        out.with_suffix(".md").write_text(table)
    print(table)
    if out is not None:
        print(f"written to {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
