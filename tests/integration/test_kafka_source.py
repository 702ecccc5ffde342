"""The flow's Kafka partitions on a real broker: where they start, resume and end.

Their recovery state must be Bytewax's ``KafkaSource``'s: a worker upgraded over recovery
data that Bytewax's partitions wrote resumes at the same offsets. (How an offset the log
does not hold surfaces is in ``tests/unit/test_kafka_partition.py``: tansu never answers
"offset out of range", it serves the next records it has or nothing.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import pytest
from bytewax.connectors.kafka import KafkaSource as BytewaxKafkaSource
from bytewax.connectors.kafka import KafkaSourceMessage
from confluent_kafka import OFFSET_BEGINNING, Producer

from cdc_cache.core.events import SourceRecord
from cdc_cache.mode.lag import LagTracker
from cdc_cache.source.broker_health import BrokerHealth
from dataflows.kafka import Item, KafkaPartition, KafkaSource
from dataflows.source import StoppableSource
from tests.integration.topics import unique_topic

pytestmark = pytest.mark.integration

RECORDS = 30


@pytest.fixture
def topic(broker: Any) -> str:
    """A 2-partition topic holding RECORDS records on partition 0 (key i, value v<i>)."""
    name = unique_topic()
    broker.create_topics({name: 2})
    fill(broker.bootstrap, name, range(RECORDS))
    return name


def fill(bootstrap: str, topic: str, numbers: Iterable[int]) -> None:
    """Records key i, value v<i> on partition 0, acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in numbers:
        producer.produce(topic, key=f"{i}".encode(), value=f"v{i}".encode(), partition=0)
    assert producer.flush(30) == 0, "the broker did not acknowledge every record"


def source(
    broker: Any, topic: str, *, tail: bool = False, batch_size: int = 10, **consumer: str
) -> KafkaSource:
    config = {"auto.offset.reset": "error", **consumer}
    return KafkaSource(
        [broker.bootstrap], [topic], consumer=config, admin={}, tail=tail, batch_size=batch_size
    )


def next_batch(part: Any, timeout: float = 30) -> list[Any]:
    """The next non-empty batch (the first fetches may return nothing yet)."""
    deadline = time.monotonic() + timeout
    while not (batch := part.next_batch()):
        assert time.monotonic() < deadline, "no batch within the timeout"
        time.sleep(0.01)
    return batch


def drain(part: KafkaPartition) -> list[Item]:
    """Everything up to the end of the log (the partition raises StopIteration there)."""
    items: list[Item] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            items.extend(part.next_batch())
    except StopIteration:
        return items
    raise AssertionError("the partition did not end at the end of its log")


def offsets(items: list[Any]) -> list[int]:
    return [item.offset for item in items]


def test_a_partition_starts_at_the_beginning_and_resumes_at_its_snapshot(broker, topic):
    kafka = source(broker, topic)
    first = kafka.build_part("debezium", f"0-{topic}", None)
    try:
        assert first.snapshot() == OFFSET_BEGINNING and first.next_offset is None
        batch = next_batch(first)
        assert offsets(batch) == list(range(10))  # batch_size
        assert all(type(item) is SourceRecord for item in batch)
        assert (batch[3].topic, batch[3].partition, batch[3].key, batch[3].value) == (
            topic,
            0,
            b"3",
            b"v3",
        )
        assert batch[3].timestamp_ms is not None and batch[3].timestamp_ms > 0
        resume = first.snapshot()
        assert resume == 10 and first.next_offset == 10
    finally:
        first.close()
    again = kafka.build_part("debezium", f"0-{topic}", resume)
    try:
        rest = drain(again)
        assert offsets(rest) == list(range(10, RECORDS))
        assert again.snapshot() == RECORDS
        with pytest.raises(StopIteration):
            again.next_batch()  # ended at the end of its log, as Bytewax's does without tail
    finally:
        again.close()


def test_recovery_state_passes_between_bytewaxs_partition_and_ours(broker, topic):
    """Bytewax reads 0-6 and stores its snapshot; ours resumes there and reads 7-16; Bytewax's
    resumes from ours' snapshot at 17: nothing skipped, nothing read twice, either way."""
    theirs = BytewaxKafkaSource(
        [broker.bootstrap], [topic], tail=False, add_config={"auto.offset.reset": "error"},
        batch_size=7,
    )  # fmt: skip
    assert source(broker, topic).list_parts() == theirs.list_parts()  # the same part names
    bytewaxs = theirs.build_part("debezium", f"0-{topic}", None)
    try:
        read: list[KafkaSourceMessage[Any, Any]] = next_batch(bytewaxs)  # type: ignore[assignment]
        stored = bytewaxs.snapshot()
    finally:
        bytewaxs.close()
    assert [m.offset for m in read] == list(range(7)) and stored == 7

    ours = source(broker, topic).build_part("debezium", f"0-{topic}", stored)
    try:
        batch = next_batch(ours)
        stored = ours.snapshot()
    finally:
        ours.close()
    assert offsets(batch) == list(range(7, 17)) and batch[0].value == b"v7"

    bytewaxs = theirs.build_part("debezium", f"0-{topic}", stored)
    try:
        read = next_batch(bytewaxs)  # type: ignore[assignment]
    finally:
        bytewaxs.close()
    assert read[0].offset == 17 and read[0].value == b"v17"


def test_stop_ends_a_tailing_partition_after_its_current_batch(broker, topic):
    stop = threading.Event()
    stoppable = StoppableSource(
        source(broker, topic, tail=True),
        stop,
        LagTracker(lambda: time.time() * 1000),
        BrokerHealth(),
    )
    part = stoppable.build_part("debezium", f"0-{topic}", None)
    try:
        assert offsets(next_batch(part)) == list(range(10))
        stop.set()
        with pytest.raises(StopIteration):
            part.next_batch()
        assert part.snapshot() == 10  # it stopped where it had read to
    finally:
        part.close()
