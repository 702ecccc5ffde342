"""What the flow relies on in Bytewax beyond its public API: fails loudly when it changes.

The flow's source reads each KafkaSource partition's consumer (a private attribute) for
its cached watermarks, and maps KafkaSource's part names back to Kafka partitions.
"""

from __future__ import annotations

from types import SimpleNamespace

import bytewax.connectors.kafka as bytewax_kafka
import pytest
from confluent_kafka import Consumer, TopicPartition

from dataflows.source import KafkaPartition, kafka_consumer_of, kafka_source, part_of

TOPIC = "dbserver1.inventory.sku-stock"  # dots and dashes, as Debezium names them


def test_a_kafka_source_partition_keeps_the_consumer_the_flow_reads() -> None:
    source = kafka_source(["127.0.0.1:9"], [TOPIC], {}, tail=False, batch_size=1)
    part = source.build_part("debezium", f"2-{TOPIC}", None)
    try:
        consumer = kafka_consumer_of(part)
        assert isinstance(consumer, Consumer), "Bytewax no longer keeps the consumer there"
        assert consumer.assignment() == [TopicPartition(TOPIC, 2)]
        assert KafkaPartition(part).consumer is consumer
    finally:
        part.close()


def test_kafka_source_names_its_parts_index_dash_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    partitions = {0: None, 1: None, 2: None}
    metadata = SimpleNamespace(topics={TOPIC: SimpleNamespace(error=None, partitions=partitions)})

    class Admin:
        def __init__(self, config: dict[str, str]) -> None:
            pass

        def list_topics(self, topic: str) -> SimpleNamespace:
            return metadata

    monkeypatch.setattr(bytewax_kafka, "AdminClient", Admin)
    names = kafka_source(["127.0.0.1:9"], [TOPIC], {}, tail=False, batch_size=1).list_parts()
    assert [part_of(name) for name in names] == [TopicPartition(TOPIC, i) for i in partitions]


def test_an_object_without_a_consumer_has_none() -> None:
    assert kafka_consumer_of(object()) is None
