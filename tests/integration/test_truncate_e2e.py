"""A MariaDB TRUNCATE on the real stack: older changes delivered again afterwards (for rows
whose keys and versions were gone when it ran) leave no old row behind, and each of the
table's channels hears one ``truncate`` message, even when the TRUNCATE is delivered twice."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from cdc_cache.core.keys import ns
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisServer
from tests.integration.pipelines import Pipeline, mariadb_pipeline
from tests.integration.probes import metric
from tests.integration.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RULES = """
version: 2
defaults: {{safety_ttl: 1h, tombstone_ttl: 30m}}
tables:
  {schema}.stock:
    keys:
      - key: "stock:{{id}}"
        fields: [id, sku_id, warehouse, qty]
    notify:
      channel: "wh:{{warehouse}}"
      fields: [qty]
"""
CHANNELS = ("wh:north", "wh:south")


@pytest.fixture
def pipeline(
    tmp_path: Path, mariadb: MariaDB, broker: Broker, redis_server: RedisServer
) -> Iterator[Pipeline]:
    with mariadb_pipeline(tmp_path, mariadb, broker, redis_server.address(), rules=RULES) as line:
        yield line


def messages(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, bytes, bytes]]:
    """Every message of ``topic`` so far: (partition, key, value)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "truncate-test", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    found, idle = [], time.monotonic()
    while time.monotonic() - idle < 2:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None and message.value() is not None:
            found.append((message.partition(), message.key(), message.value()))
            idle = time.monotonic()
    consumer.close()
    return found


def insert(mariadb: MariaDB, schema: str, *ids: int) -> None:
    with mariadb.connect(schema) as conn, conn.cursor() as cur:
        for i in ids:
            cur.execute(
                "INSERT INTO stock (id, sku_id, warehouse, qty, price) VALUES (%s, %s, %s, %s, 1)",
                (i, i, CHANNELS[i % 2].split(":")[1], i),
            )
        conn.commit()


def truncates(client, channel: str) -> int:
    entries = client.xrange(ns().stream_key(channel))
    return sum(orjson.loads(fields[b"p"]).get("op") == "truncate" for _, fields in entries)


def test_older_changes_delivered_after_a_truncate_leave_no_old_row(
    pipeline: Pipeline, mariadb: MariaDB, broker: Broker, redis_client
) -> None:
    port = free_port()
    pipeline.worker.argv += ["--metrics-port", str(port)]
    services = [pipeline.debezium, pipeline.worker]
    for service in services:
        service.start()
    rows = lambda: {k.decode() for k in redis_client.scan_iter(match="stock:*")}  # noqa: E731
    insert(mariadb, pipeline.schema, 1)  # once cached, the connector streams
    wait_until("the connector streams", lambda: len(rows()) == 1, 120, alive=services)
    insert(mariadb, pipeline.schema, *range(2, 11))
    wait_until("rows cached", lambda: len(rows()) == 10, 60, alive=services)
    # the rows' changes as streamed (a snapshot's reads delivered again keep their
    # lineage too: test_lineage_registry.py)
    older = [
        m
        for m in messages(broker.bootstrap, pipeline.topic, Pipeline.PARTITIONS)
        if orjson.loads(m[2]).get("op") == "c"
    ]
    assert older, "changes streamed"
    # The rows' keys and versions are gone (expired, swept, or never cached this far):
    # nothing but the TRUNCATE's own position can tell the older changes stale.
    for key in redis_client.scan_iter(match="stock:*"):
        redis_client.delete(key)
    for bucket in redis_client.scan_iter(match=f"{ns().version_prefix}*"):
        redis_client.delete(bucket)

    with mariadb.connect(pipeline.schema) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE TABLE stock")
        conn.commit()
    wait_until(
        "truncate announced",
        lambda: all(truncates(redis_client, c) == 1 for c in CHANNELS),
        60,
        alive=services,
    )
    every = messages(broker.bootstrap, pipeline.topic, Pipeline.PARTITIONS)
    truncate = [m for m in every if orjson.loads(m[2]).get("op") == "t"]
    assert len(truncate) == 1, "one TRUNCATE on the topic"

    events = "cdc_cache_events_total"
    seen, stale = metric(port, events), metric(port, events, {"outcome": "stale"})
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for partition, key, value in [*older, *truncate]:  # delivered again, late
        producer.produce(pipeline.topic, value, key, partition=partition)
    assert producer.flush(30) == 0
    wait_until(
        "the older changes read again",
        lambda: metric(port, events) - seen >= len(older),
        60,
        alive=services,
    )
    assert metric(port, events, {"outcome": "stale"}) - stale >= len(older), rows()
    insert(mariadb, pipeline.schema, 100)
    wait_until(
        "a row newer than the truncate cached", lambda: rows() == {"stock:100"}, 60, alive=services
    )
    assert rows() == {"stock:100"}, "no old row came back"
    assert [truncates(redis_client, c) for c in CHANNELS] == [1, 1], "one truncate message each"
