"""Helpers shared by the dataflow tests: produce a workload, read back the cache, and run
the worker and the Debezium runner as real processes."""

from __future__ import annotations

import http.client
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka import Message as KafkaMessage
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from redis.cluster import RedisCluster

from cdc_cache.devstack.broker import Broker
from cdc_cache.devstack.mariadb import MariaDB
from cdc_cache.devstack.process import free_port
from cdc_cache.rules import parse_rules
from cdc_cache.verify import Report, verify
from tests.integration.sql_workload import DDL, rules_for
from tests.workload import RULES_YAML, Message

ROOT = Path(__file__).resolve().parents[2]
POISON = [b"{not json", b'{"op": "u", "source": {}}', b"\x00\xff"]
INSPECT_DB_QUERIES_PER_S = 400  # the database budget of the inspectors tests start


def unique_topic(table: str = "inventory.stock") -> str:
    return f"t{uuid.uuid4().hex[:10]}.{table}"


def produce(
    bootstrap: str,
    messages: Iterable[Message],
    *,
    pace_s: float = 0.0,
    delivered: Callable[[int, KafkaMessage], None] | None = None,
) -> int:
    """Produce in order and wait for every acknowledgement; ``delivered(index, message)``
    hears where each one landed (partition, offset)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", "enable.idempotence": True}
    )
    count = 0
    for message in messages:
        callback = None if delivered is None else _on_delivery(delivered, count)
        producer.produce(message.topic, key=message.key, value=message.value, on_delivery=callback)
        count += 1
        if pace_s and count % 50 == 0:
            producer.poll(0)
            time.sleep(pace_s)
    assert producer.flush(30) == 0, "broker did not acknowledge every message"
    return count


def _on_delivery(
    delivered: Callable[[int, KafkaMessage], None], index: int
) -> Callable[[KafkaError | None, KafkaMessage], None]:
    def report(error: KafkaError | None, message: KafkaMessage) -> None:
        assert error is None, f"message {index} was not delivered: {error}"
        delivered(index, message)

    return report


def with_redelivery(transactions: list[list[Message]], seed: int = 1) -> list[Message]:
    """Every transaction in order, plus ~30 % of them delivered again later (duplicates)."""
    rnd = random.Random(seed)
    out: list[Message] = []
    for index, tx in enumerate(transactions):
        out.extend(tx)
        if index > 5 and rnd.random() < 0.3:
            out.extend(transactions[rnd.randrange(index)])
    return out


def with_poison(messages: list[Message], topic: str, seed: int = 2) -> list[Message]:
    rnd = random.Random(seed)
    out = list(messages)
    for bad in POISON:
        out.insert(rnd.randrange(len(out)), Message(topic, b'{"id": 1}', bad))
    return out


def cache_state(client: Redis | RedisCluster, prefix: str = "stock:") -> dict[str, Any]:
    """The JSON values under ``prefix`` (a key deleted between SCAN and GET is skipped)."""
    state = {}
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        value = client.get(key)
        if value is not None:
            state[key.decode()] = orjson.loads(value)  # type: ignore[arg-type]
    return state


def wait_until_equal(
    client: Redis | RedisCluster, expected: dict[str, Any], timeout: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = cache_state(client)
        if state == expected:
            return state
        time.sleep(0.5)
    return state


class Service:
    """A child process in its own session, its output kept in a log for failure messages."""

    def __init__(self, argv: list[str], log: Path, env: Mapping[str, str] | None = None):
        self.argv = argv
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
                start_new_session=True,
            )

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def signal(self, sig: int, timeout: float = 30) -> int:
        """Signal the whole process group and return the exit status."""
        assert self.proc is not None and self.proc.poll() is None, self.tail()
        os.killpg(self.proc.pid, sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def terminate(self, timeout: float = 20) -> int:
        return self.signal(signal.SIGTERM, timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"{self.argv[2]} exited {self.proc.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        """Kill what is still running (test teardown)."""
        if self.running():
            self.kill()


def worker(
    tmp_path: Path,
    brokers: str,
    redis_url: str,
    topics: Sequence[str],
    *,
    rules: str = RULES_YAML,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
) -> Service:
    """``cdc-cache run`` reading ``topics``, snapshotting progress every 500 ms; ``env``
    adds settings (``CDC_CACHE_*``)."""
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(rules)
    argv = [
        sys.executable, "-m", "cdc_cache", "run",
        "--rules", str(rules_file),
        "--brokers", brokers,
        *(arg for topic in topics for arg in ("--topic", topic)),
        "--redis-url", redis_url,
        "--recovery-dir", str(tmp_path / "recovery"),
        "--workers", str(workers),
    ]  # fmt: skip
    return Service(
        argv, tmp_path / "worker.log", {"CDC_CACHE_EPOCH_INTERVAL_MS": "500", **(env or {})}
    )


def inspector(
    tmp_path: Path,
    brokers: str,
    redis_url: str,
    topics: Sequence[str],
    dsn: str,
    port: int,
    *,
    rules: str = RULES_YAML,
    env: Mapping[str, str] | None = None,
    options: Mapping[str, str] | None = None,
) -> Service:
    """``cdc-cache inspect`` beside a worker: every change sampled (up to 200 a second),
    checked once it settled for 1 s, a wrong key re-checked for up to 30 s; ``options``
    (flag: value) change that."""
    rules_file = tmp_path / "inspect-rules.yaml"
    rules_file.write_text(rules)
    flags = {
        "--sample-every": "1",
        "--max-samples-per-s": "200",
        "--max-db-queries-per-s": str(INSPECT_DB_QUERIES_PER_S),
        "--settle-s": "1",
        "--recheck-limit-s": "30",
        "--min-checks": "20",
        **(options or {}),
    }
    argv = [
        sys.executable, "-m", "cdc_cache", "inspect",
        "--rules", str(rules_file),
        "--brokers", brokers,
        *(arg for topic in topics for arg in ("--topic", topic)),
        "--redis-url", redis_url,
        "--db", dsn,
        "--port", str(port),
        *(part for flag in flags.items() for part in flag),
    ]  # fmt: skip
    return Service(argv, tmp_path / "inspect.log", env)


def inspection(port: int) -> dict[str, Any]:
    """The inspector's report (``GET /inspect``)."""
    status, body = admin_get(port, "/inspect")
    assert status == 200, body
    report: dict[str, Any] = orjson.loads(body)
    return report


def wait_ready(service: Service, port: int, timeout: float = 60) -> None:
    """Until ``GET /readyz`` on ``port`` answers 200 (the process must stay alive)."""

    def ready() -> bool:
        try:
            return admin_get(port, "/readyz")[0] == 200
        except OSError:
            return False

    wait_while_alive(f"{service.argv[3]} ready", ready, service, timeout)


def settled_inspection(port: int, service: Service, timeout: float = 60) -> dict[str, Any]:
    """The inspector's report once every sample was judged and every re-check ended."""
    wait_while_alive(
        "inspector done with its samples",
        lambda: inspection(port).get("pending") == 0,
        service,
        timeout,
    )
    return inspection(port)


def debezium(
    tmp_path: Path,
    *,
    source: str,
    db_port: int,
    brokers: str,
    prefix: str,
    databases: str,
    options: Sequence[str] = (),
) -> Service:
    """The embedded-engine runner (``cdc_cache.devstack.debezium``) as the cdc user."""
    argv = [
        sys.executable, "-m", "cdc_cache.devstack.debezium",
        f"--source={source}",
        f"--db-port={db_port}",
        "--db-user=cdc",
        "--db-password=cdc",
        f"--databases={databases}",
        f"--brokers={brokers}",
        f"--topic-prefix={prefix}",
        f"--state-dir={tmp_path / 'debezium'}",
        "--log-level=WARN",
        *options,
    ]  # fmt: skip
    return Service(argv, tmp_path / "debezium.log")


def schedule_heartbeats(cursor: Any, database: str) -> None:
    """Write ``<database>.dbz_heartbeat`` every second (MariaDB's event scheduler).

    An idle MySQL source sends no Debezium heartbeats: a scheduled write keeps the binlog
    moving, as ``deploy/mysql/inventory.sql`` does for the compose stack.
    """
    cursor.execute(f"CREATE TABLE {database}.dbz_heartbeat (id INT PRIMARY KEY, ts DATETIME(3))")
    cursor.execute("SET GLOBAL event_scheduler = ON")
    cursor.execute(
        f"CREATE EVENT {database}.dbz_heartbeat ON SCHEDULE EVERY 1 SECOND DO "
        f"INSERT INTO {database}.dbz_heartbeat VALUES (1, NOW(3)) "
        "ON DUPLICATE KEY UPDATE ts = NOW(3)"
    )


def wait_until_verified(
    dsn: str,
    rules: str,
    client: Redis | RedisCluster,
    services: Sequence[Service],
    timeout: float = 120,
    done: Callable[[Report], bool] = lambda report: report.clean,
) -> Report:
    """Poll the checker until the cache matches the database (``done``: no finding at
    all), then check once more with re-checks of in-flight changes; returns that last
    report (``done`` unless timed out)."""
    compiled = parse_rules(rules)
    deadline = time.monotonic() + timeout
    while True:
        for service in services:
            service.check_alive()
        report = verify(dsn, compiled, client, settle_retries=0)
        if done(report) or time.monotonic() > deadline:
            break
        time.sleep(1)
    return verify(dsn, compiled, client, settle_retries=3, settle_delay_s=0.5)


class Pipeline:
    """The Debezium runner and the worker for one table ``<schema>.stock`` of a test."""

    PARTITIONS = 3

    def __init__(
        self,
        tmp_path: Path,
        *,
        source: str,
        db_port: int,
        dsn: str,
        schema: str,
        broker: Broker,
        redis_url: str,
        registry_url: str | None = None,
    ) -> None:
        """With ``registry_url`` the changes travel as Avro (AvroConverter, that registry)."""
        self.schema = schema
        self.dsn = dsn
        self.redis_url = redis_url
        self.rules = rules_for(schema)
        self.rules_file = tmp_path / "rules.yaml"  # written by worker()
        self.prefix = prefix = f"p{uuid.uuid4().hex[:6]}"
        topic = f"{prefix}.{schema}.stock"
        broker.create_topics({topic: self.PARTITIONS})  # the worker starts before any change
        self.debezium = debezium(
            tmp_path,
            source=source,
            db_port=db_port,
            brokers=broker.bootstrap,
            prefix=prefix,
            databases=schema,
            options=[
                f"--partitions={self.PARTITIONS}",
                "--no-schemas",
                *(
                    ["--format=avro", f"--schema-registry-url={registry_url}"]
                    if registry_url
                    else []
                ),
            ],
        )
        avro = {"CDC_CACHE_MESSAGE_FORMAT": "avro", "CDC_CACHE_SCHEMA_REGISTRY_URL": registry_url}
        self.worker = worker(
            tmp_path,
            broker.bootstrap,
            redis_url,
            [topic],
            rules=self.rules,
            env=avro if registry_url else None,
        )
        self.inspect_port = free_port()
        self.inspector = inspector(
            tmp_path,
            broker.bootstrap,
            redis_url,
            [topic],
            dsn,
            self.inspect_port,
            rules=self.rules,
            env=avro if registry_url else None,
        )
        self.services = [self.debezium, self.worker, self.inspector]

    def start(self) -> None:
        """Every service, returning once the inspector reads its topics: it samples from
        their end, so a change committed before that would never be judged."""
        for service in self.services:
            service.start()
        wait_ready(self.inspector, self.inspect_port, timeout=120)

    def stop(self) -> None:
        for service in self.services:
            service.stop()


@contextmanager
def mariadb_pipeline(
    tmp_path: Path,
    mariadb: MariaDB,
    broker: Broker,
    redis_url: str,
    *,
    prefix: str = "e2e",
    registry_url: str | None = None,
) -> Iterator[Pipeline]:
    """A :class:`Pipeline` over a fresh MariaDB database (dropped afterwards)."""
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {schema} CHARACTER SET utf8mb4")
        cur.execute(DDL.format(schema=schema))
    line = Pipeline(
        tmp_path,
        source="mariadb",
        db_port=mariadb.port,
        dsn=f"mysql://root@127.0.0.1:{mariadb.port}/{schema}",
        schema=schema,
        broker=broker,
        redis_url=redis_url,
        registry_url=registry_url,
    )
    try:
        yield line
    finally:
        line.stop()
        with mariadb.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE {schema}")


def admin_get(port: int, path: str) -> tuple[int, bytes]:
    """GET a path of the worker's admin port: status and body (error statuses too)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def metric(port: int, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The summed value of the worker's samples named ``name`` matching ``labels`` (0 if none)."""
    status, body = admin_get(port, "/metrics")
    assert status == 200, body
    wanted = labels or {}
    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items())
    )


def wait_while_alive(
    what: str, check: Callable[[], bool], service: Service, timeout: float = 60
) -> float:
    """Seconds until ``check()`` held; fails if ``service`` exits or the time runs out."""
    started = time.monotonic()
    while not check():
        service.check_alive()
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout}s\n" + (
            service.tail()
        )
        time.sleep(0.2)
    return time.monotonic() - started
