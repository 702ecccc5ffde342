"""The embedded-engine runner publishes committed rows and loses none across a SIGKILL."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from cdc_cache.core.events import ChangeEvent, SourceRecord
from cdc_cache.source.envelope import decode
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from tests.integration.fixtures_stack import scratch_database
from tests.integration.services import Service, debezium

pytestmark = pytest.mark.integration

ITEMS = "CREATE TABLE {schema}.items (id INT PRIMARY KEY, v INT)"


@pytest.fixture
def database(mariadb: MariaDB) -> Iterator[str]:
    with scratch_database(mariadb, "runner", ITEMS) as name:
        yield name


def _insert(mariadb: MariaDB, database: str, ids: range) -> None:
    conn = mariadb.connect()
    with conn.cursor() as cur:
        for i in ids:
            cur.execute(f"INSERT INTO {database}.items VALUES (%s, %s)", (i, i * 10))
    conn.close()


def _consumer(broker: Broker, topic: str, runner: Service) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    deadline = time.monotonic() + 45
    while topic not in consumer.list_topics(timeout=5).topics:
        runner.check_alive()
        assert time.monotonic() < deadline, f"runner never created {topic}"
        time.sleep(0.2)
    consumer.assign([TopicPartition(topic, 0, 0)])
    return consumer


def _collect(consumer: Consumer, runner: Service, want: set[int], seen: dict[int, float]) -> None:
    deadline = time.monotonic() + 45
    while not want <= seen.keys():
        runner.check_alive()
        assert time.monotonic() < deadline, f"missing ids {sorted(want - seen.keys())}"
        msg = consumer.poll(0.2)
        if msg is None or msg.error() is not None:
            continue
        record = SourceRecord(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value())
        event = decode(record)
        if isinstance(event, ChangeEvent) and event.after is not None:
            seen.setdefault(int(event.after["id"]), time.monotonic())


def test_publishes_commits_and_survives_sigkill(
    broker: Broker, mariadb: MariaDB, database: str, tmp_path: Path
) -> None:
    prefix = f"it{uuid.uuid4().hex[:6]}"
    topic = f"{prefix}.{database}.items"
    runner = debezium(
        tmp_path,
        source="mariadb",
        db_port=mariadb.port,
        brokers=broker.bootstrap,
        prefix=prefix,
        databases=database,
        options=["--no-schemas"],
    )
    seen: dict[int, float] = {}
    runner.start()
    try:
        _insert(mariadb, database, range(1, 2))
        consumer = _consumer(broker, topic, runner)
        _collect(consumer, runner, {1}, seen)
        committed = time.monotonic()
        _insert(mariadb, database, range(2, 3))
        _collect(consumer, runner, {2}, seen)
        print(f"commit -> consumed: {(seen[2] - committed) * 1000:.0f} ms")

        assert runner.signal(signal.SIGKILL) == -signal.SIGKILL
        _insert(mariadb, database, range(3, 21))
        runner.start()
        _collect(consumer, runner, set(range(1, 21)), seen)
        assert runner.signal(signal.SIGTERM) == 0
    finally:
        runner.stop()
