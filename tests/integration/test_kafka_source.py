"""The flow's Kafka source keeps KafkaSource's recovery contract: partition names and
offset snapshots, so a recovery store written by either resumes with the other."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from bytewax.connectors.kafka import KafkaSource
from confluent_kafka import OFFSET_BEGINNING, Producer

from cdc_cache.devstack.broker import Broker
from cdc_cache.events import SourceRecord
from cdc_cache.lag import LagTracker
from dataflows.kafka_source import KafkaPartitions


def _ours(broker: Broker, topic: str) -> KafkaPartitions:
    return KafkaPartitions(
        [broker.bootstrap],
        [topic],
        config={"fetch.wait.max.ms": "10"},
        starting_offset=OFFSET_BEGINNING,
        tail=False,
        batch_size=7,
        stop=threading.Event(),
        tracker=LagTracker(lambda: time.time() * 1000),
    )


def _drain(part: Any, limit: int | None = None) -> list[Any]:
    out: list[Any] = []
    deadline = time.monotonic() + 30
    while (limit is None or len(out) < limit) and time.monotonic() < deadline:
        try:
            out += part.next_batch()
        except StopIteration:
            break
    return out


@pytest.mark.integration
def test_partitions_and_snapshots_match_kafka_source(broker: Broker) -> None:
    topic = f"t{uuid.uuid4().hex[:8]}.inventory.stock"
    broker.create_topics({topic: 3})
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(60):
        producer.produce(topic, key=b"k%d" % i, value=b"v%d" % i, partition=i % 3)
    assert producer.flush(30) == 0
    theirs = KafkaSource(
        [broker.bootstrap], [topic], tail=False, add_config={"fetch.wait.max.ms": "10"}
    )
    ours = _ours(broker, topic)
    assert sorted(ours.list_parts()) == sorted(theirs.list_parts())

    name = "1-" + topic
    mine, reference = ours.build_part("in", name, None), theirs.build_part("in", name, None)
    records, messages = _drain(mine), _drain(reference)
    assert [(r.topic, r.partition, r.offset, r.key, r.value) for r in records] == [
        (m.topic, m.partition, m.offset, m.key, m.value) for m in messages
    ]
    assert all(isinstance(r, SourceRecord) and r.timestamp_ms for r in records)
    assert mine.snapshot() == reference.snapshot() == 20

    # Resuming from a snapshot taken by either source starts at the same offset.
    resumed = _drain(ours.build_part("in", name, 12))
    assert [r.offset for r in resumed] == list(range(12, 20))
    resumed_theirs = _drain(theirs.build_part("in", name, 12))
    assert [m.offset for m in resumed_theirs] == list(range(12, 20))
    for part in (mine, reference):
        part.close()


@pytest.mark.integration
def test_a_stop_request_ends_every_partition(broker: Broker) -> None:
    topic = f"t{uuid.uuid4().hex[:8]}.inventory.stock"
    broker.create_topics({topic: 1})
    source = _ours(broker, topic)
    part = source.build_part("in", "0-" + topic, None)
    source._stop.set()
    with pytest.raises(StopIteration):
        part.next_batch()
    part.close()
