"""What the flow relies on in Bytewax beyond its public API: fails loudly when it changes.

The flow reads Kafka with partitions of its own (``dataflows.kafka``) whose recovery state
must stay Bytewax's ``KafkaSource``'s, so that recovery data written by either resumes the
other: the same part names, and a snapshot that is the next offset to read.
"""

from __future__ import annotations

from types import SimpleNamespace

import bytewax.connectors.kafka as bytewax_kafka
import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

import dataflows.kafka
from dataflows.kafka import KafkaSource, part_of

TOPIC = "dbserver1.inventory.sku-stock"  # dots and dashes, as Debezium names them
CLOSED = "127.0.0.1:9"  # nothing is fetched: only what a partition starts from is read


def ours() -> KafkaSource:
    return KafkaSource([CLOSED], [TOPIC], consumer={}, admin={}, tail=False, batch_size=1)


def theirs() -> bytewax_kafka.KafkaSource:
    return bytewax_kafka.KafkaSource([CLOSED], [TOPIC], tail=False, batch_size=1)


def test_our_parts_are_named_as_bytewaxs_index_dash_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    partitions = {0: None, 1: None, 2: None}
    metadata = SimpleNamespace(topics={TOPIC: SimpleNamespace(error=None, partitions=partitions)})

    class Admin:
        def __init__(self, config: dict[str, str]) -> None:
            pass

        def list_topics(self, topic: str) -> SimpleNamespace:
            return metadata

    monkeypatch.setattr(bytewax_kafka, "AdminClient", Admin)
    monkeypatch.setattr(dataflows.kafka, "AdminClient", Admin)
    names = ours().list_parts()
    assert names == theirs().list_parts()
    assert [part_of(name) for name in names] == [TopicPartition(TOPIC, i) for i in partitions]


@pytest.mark.parametrize("resume_state", [None, 0, 1234])
def test_a_partition_snapshots_where_it_resumes_as_bytewaxs_does(resume_state: int | None) -> None:
    """Before reading anything, both snapshot the offset they were resumed at, and the
    topic's beginning when there was none (``tests/integration/test_kafka_source.py``
    resumes ours from a snapshot Bytewax's partition wrote after reading)."""
    mine = ours().build_part("debezium", f"2-{TOPIC}", resume_state)
    bytewaxs = theirs().build_part("debezium", f"2-{TOPIC}", resume_state)
    try:
        assert mine.snapshot() == bytewaxs.snapshot()
        assert mine.snapshot() == (OFFSET_BEGINNING if resume_state is None else resume_state)
        assert mine.consumer.assignment() == [TopicPartition(TOPIC, 2)]
    finally:
        mine.close()
        bytewaxs.close()
