"""Kafka partitions as a Bytewax source of :class:`~cdc_cache.events.SourceRecord`.

Bytewax's ``KafkaSource`` wraps every message in a ``KafkaSourceMessage`` (eight calls
into the client and a dataclass) that the flow then copied into a ``SourceRecord``; this
source builds the ``SourceRecord`` directly, once per message, and knows each partition's
topic and index instead of asking every message. It keeps ``KafkaSource``'s contract, so
recovery stores written by either resume with the other: one partition per Kafka
partition, named ``<index>-<topic>``, snapshotting the next offset to read; partitions are
read with ``assign`` (no consumer group). It also ends every partition once ``stop`` is set
(Bytewax has no stop call) and reports each partition's high watermark and next offset to
the lag tracker.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka import KafkaError as ClientError
from confluent_kafka.admin import AdminClient

from cdc_cache.events import SourceRecord
from cdc_cache.lag import LagTracker


@dataclass(frozen=True, slots=True)
class ConsumerError:
    """An error the Kafka client reported instead of a message (it retries these itself)."""

    topic: str
    partition: int
    error: str


Fetched = SourceRecord | ConsumerError


class KafkaPartitions(FixedPartitionedSource[Fetched, int]):
    """Every partition of ``topics``; see the module docstring."""

    def __init__(
        self,
        brokers: list[str],
        topics: list[str],
        *,
        config: dict[str, str],
        starting_offset: int,
        tail: bool,
        batch_size: int,
        stop: threading.Event,
        tracker: LagTracker,
    ) -> None:
        self._brokers = ",".join(brokers)
        self._topics = topics
        self._config = config
        self._starting_offset = starting_offset
        self._tail = tail
        self._batch_size = batch_size
        self._stop = stop
        self._tracker = tracker

    def list_parts(self) -> list[str]:
        """``<index>-<topic>`` for every partition of every topic."""
        admin = AdminClient({"bootstrap.servers": self._brokers, **self._config})
        parts = []
        for topic in self._topics:
            meta = admin.list_topics(topic).topics[topic]
            if meta.error is not None:
                msg = f"cannot list the partitions of Kafka topic {topic!r}: {meta.error.str()}"
                raise RuntimeError(msg)
            parts += [f"{index}-{topic}" for index in meta.partitions]
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        """A consumer assigned to one partition, from the snapshot's offset if any."""
        index, topic = for_part.split("-", 1)
        if topic not in self._topics:
            msg = f"the recovery store holds partition {for_part!r}, not among {self._topics}"
            raise RuntimeError(msg)
        offset = self._starting_offset if resume_state is None else resume_state
        consumer = Consumer(
            {
                "group.id": "BYTEWAX_IGNORED",  # offsets live in recovery snapshots
                "enable.auto.commit": "false",
                "bootstrap.servers": self._brokers,
                "enable.partition.eof": str(not self._tail),
                # Keeps the cached low watermark fresh (the high one follows every fetch).
                "statistics.interval.ms": 1000,
                **self._config,
            }
        )
        where = TopicPartition(topic, int(index), offset)
        consumer.assign([where])
        return _Partition(
            consumer, where, offset, self._batch_size, stop=self._stop, tracker=self._tracker
        )


class _Partition(StatefulSourcePartition[Fetched, int]):
    def __init__(
        self,
        consumer: Consumer,
        where: TopicPartition,
        offset: int,
        batch_size: int,
        *,
        stop: threading.Event,
        tracker: LagTracker,
    ) -> None:
        self._consumer = consumer
        self._where = TopicPartition(where.topic, where.partition)
        self._topic = where.topic
        self._index = where.partition
        self._offset = offset
        self._batch_size = batch_size
        self._stop = stop
        self._tracker = tracker
        self._eof = False
        tracker.track(self._topic, self._index)

    def next_batch(self) -> Iterable[Fetched]:
        if self._eof or self._stop.is_set():
            raise StopIteration
        topic, index = self._topic, self._index
        batch: list[Fetched] = []
        for message in self._consumer.consume(self._batch_size, 0.001):
            error = message.error()
            if error is not None:
                if error.code() == ClientError._PARTITION_EOF:
                    self._eof = True  # ends at the next call, after this batch
                    break
                batch.append(ConsumerError(topic, index, str(error)))
                continue
            offset = message.offset()
            assert offset is not None  # every message that is not an error has one
            batch.append(
                SourceRecord(
                    topic, index, offset, message.key(), message.value(), message.timestamp()[1]
                )
            )
            self._offset = offset + 1
        self._observe_offsets()
        return batch

    def _observe_offsets(self) -> None:
        """Report the watermark librdkafka cached from its last fetch.

        No ListOffsets request: some brokers answer it with a wrong "latest".
        """
        low, high = self._consumer.get_watermark_offsets(self._where, cached=True)
        if high < 0:
            return  # no fetch answered yet
        next_offset = self._offset if self._offset >= 0 else low
        self._tracker.offsets(self._topic, self._index, high, next_offset)

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()
