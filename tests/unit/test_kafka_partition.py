"""An offset the log does not hold surfaces from a partition as an error; it never resets.

Against librdkafka's built-in test cluster (``test.mock.num.brokers``: a Kafka-protocol
broker inside a client that answers "offset out of range" as Kafka does; tansu never does,
it serves whatever records follow). Asked for offset 50 of a partition holding 0-2:
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import bytewax.connectors.kafka as bytewax_kafka
import pytest
from confluent_kafka import KafkaError, Producer

from cdc_cache.core import metrics
from cdc_cache.core.events import SourceRecord
from dataflows.invalidation import _consumer_error
from dataflows.kafka import KafkaPartition, KafkaSource

TOPIC = "inventory.stock"
STORED = 50


class _Address(logging.Handler):
    """Hears where the test cluster listens (librdkafka logs it when it starts one)."""

    def __init__(self) -> None:
        super().__init__()
        self.bootstrap: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if found := re.search(r"replaced with (\S+)", record.getMessage()):
            self.bootstrap = found.group(1)


@pytest.fixture
def bootstrap() -> Iterator[str]:
    """A test cluster whose partition 0 of TOPIC holds offsets 0-2; it lives with its producer."""
    address = _Address()
    logger = logging.getLogger("test-cluster")
    logger.setLevel(logging.INFO)  # librdkafka logs it as a notice
    logger.addHandler(address)
    producer = Producer({"test.mock.num.brokers": 1, "logger": logger})
    try:
        for i in range(3):
            producer.produce(TOPIC, value=b"v%d" % i, partition=0)
        assert producer.flush(20) == 0
        assert address.bootstrap is not None
        yield address.bootstrap
    finally:
        logger.removeHandler(address)


def partition(bootstrap: str, reset: str) -> KafkaPartition:
    config = {"auto.offset.reset": reset}
    source = KafkaSource([bootstrap], [TOPIC], consumer=config, admin={}, tail=True, batch_size=10)
    return source.build_part("debezium", f"0-{TOPIC}", STORED)


def first_batch(part: Any, timeout: float = 20) -> list[Any]:
    deadline = time.monotonic() + timeout
    while not (batch := part.next_batch()):
        assert time.monotonic() < deadline, "nothing came within the timeout"
    return batch


def test_with_reset_error_it_is_an_error_that_moves_nothing_and_is_counted(bootstrap: str) -> None:
    part = partition(bootstrap, "error")  # the flow's setting
    try:
        batch = first_batch(part)
    finally:
        part.close()
    assert not any(type(item) is SourceRecord for item in batch)
    assert KafkaError._AUTO_OFFSET_RESET in KafkaPartition.error_codes(batch)  # the guard's cue
    assert part.snapshot() == STORED  # a restart meets the same error
    name = batch[0].error().name()
    before = metrics.CONSUMER_ERRORS.labels(name)._value.get()
    _consumer_error(batch[0])  # what the flow does with it
    assert metrics.CONSUMER_ERRORS.labels(name)._value.get() == before + 1


def test_bytewaxs_partition_moves_past_the_error_where_ours_stays(bootstrap: str) -> None:
    """Why ours does not copy Bytewax here: its snapshot moves past an offset it never read."""
    config = {"auto.offset.reset": "error"}
    source = bytewax_kafka.KafkaSource(
        [bootstrap], [TOPIC], add_config=config, batch_size=10, raise_on_errors=False
    )
    part = source.build_part("debezium", f"0-{TOPIC}", STORED)
    try:
        batch = first_batch(part)
    finally:
        part.close()
    assert all(isinstance(item, bytewax_kafka.KafkaError) for item in batch)
    assert part.snapshot() == STORED + 1


def test_with_reset_earliest_the_consumer_starts_over_silently(bootstrap: str) -> None:
    """The failure ``auto.offset.reset=error`` prevents: records from the start, no error."""
    part = partition(bootstrap, "earliest")
    try:
        batch = first_batch(part)
    finally:
        part.close()
    assert [item.offset for item in batch] == [0, 1, 2]


def test_each_record_says_when_the_source_took_it_from_the_consumer(bootstrap: str) -> None:
    """``received_s`` starts the worker's own share of the latency (monotonic seconds)."""
    part = partition(bootstrap, "earliest")
    try:
        before = time.monotonic()
        batch = first_batch(part)
        after = time.monotonic()
    finally:
        part.close()
    assert batch
    assert all(before <= item.received_s <= after for item in batch)
