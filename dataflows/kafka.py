"""The flow's Kafka partitions: one confluent_kafka consumer each, records straight from it.

Bytewax's ``KafkaSource`` wraps every message in a ``KafkaSourceMessage`` (eight accessor
calls and a frozen dataclass) that the flow then turned into a ``SourceRecord``: a fifth of
the dataflow thread. These partitions build the ``SourceRecord`` from the consumer's own
message, and pass errors on as the consumer's own (error) messages.

Their recovery state is Bytewax's ``_KafkaSourcePartition``'s, so a worker upgraded over
existing recovery data resumes where it was: the same part names (``<index>-<topic>``),
the same snapshot (the next offset to read, an int; ``OFFSET_BEGINNING`` until a record
was read), the same start (that offset, or the topic's beginning), the same batches
(``consume(batch_size, 1 ms)``) and the same end (after ``enable.partition.eof`` without
``tail``). Where they differ: an error message does not move the offset (Bytewax moves it
past the error's offset, although no record was read there), and librdkafka's statistics
(Bytewax's ``bytewax_kafka_consumer_lag`` gauge, which nothing here reads; the lag tracker
reports lag) are not requested.
"""

from __future__ import annotations

from collections.abc import Iterable
from time import monotonic
from typing import TYPE_CHECKING, Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka import Message as KafkaMessage
from confluent_kafka.admin import AdminClient

from cdc_cache.core.events import SourceRecord

if TYPE_CHECKING:
    from typing_extensions import TypeIs

Item = SourceRecord | KafkaMessage
"""What a partition's batch holds: records, and the consumer's errors as its messages."""

_CONSUME_TIMEOUT_S = 0.001  # Bytewax's: the engine, not the consumer, waits between polls


def is_record(item: Item) -> TypeIs[SourceRecord]:
    """Whether a batch item is a record; any other item is the consumer's error (its message).

    The one test by which the source, the continuity guard (through ``error_codes``) and
    the flow tell records from errors, so that none counts an item as both or as neither.
    """
    return type(item) is SourceRecord


def part_name(where: TopicPartition) -> str:
    """The part name of a Kafka partition: Bytewax's ``<index>-<topic>``."""
    return f"{where.partition}-{where.topic}"


def part_of(for_part: str) -> TopicPartition:
    """The Kafka partition of a part name (``<index>-<topic>``)."""
    index, topic = for_part.split("-", 1)
    return TopicPartition(topic, int(index))


class KafkaPartition(StatefulSourcePartition[Item, int]):
    """One Kafka partition read by its own consumer, from ``offset`` (None: the beginning)."""

    def __init__(
        self, config: dict[str, Any], where: TopicPartition, offset: int | None, batch_size: int
    ) -> None:
        self._topic = where.topic
        self._index = where.partition
        self._offset = OFFSET_BEGINNING if offset is None else offset
        self._batch_size = batch_size
        self._eof = False
        self.consumer = Consumer(config)
        # Assigned, not subscribed: no consumer group; the recovery store keeps the offset.
        self.consumer.assign([TopicPartition(self._topic, self._index, self._offset)])

    @property
    def next_offset(self) -> int | None:
        """The next offset it reads (None: it starts at the beginning)."""
        return self._offset if self._offset >= 0 else None

    @property
    def paused(self) -> bool:
        """Never: it reads whatever its topic holds."""
        return False

    def next_batch(self) -> list[Item]:
        if self._eof:
            raise StopIteration
        topic, index = self._topic, self._index
        batch: list[Item] = []
        append = batch.append
        last = -1
        messages = self.consumer.consume(self._batch_size, _CONSUME_TIMEOUT_S)
        received = monotonic()
        for message in messages:
            error = message.error()
            if error is None:
                last = message.offset()  # type: ignore[assignment]  # a record has one
                append(
                    SourceRecord(
                        topic, index, last, message.key(), message.value(),
                        message.timestamp()[1], received,
                    )
                )  # fmt: skip
            elif error.code() == KafkaError._PARTITION_EOF:
                self._eof = True  # ends at the next call, after this batch
                break
            else:
                append(message)
        if last >= 0:
            self._offset = last + 1
        return batch

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self.consumer.close()

    @staticmethod
    def error_codes(batch: list[Any]) -> set[int]:
        """The librdkafka error codes among ``batch``'s items."""
        return {item.error().code() for item in batch if not is_record(item)}


class KafkaSource(FixedPartitionedSource[Item, int]):
    """Each partition of ``topics`` is a part, read from its start unless resumed.

    ``consumer`` configures the partitions' consumers, ``admin`` the client that lists the
    partitions (librdkafka warns at every start about consumer settings given to one).
    Without ``tail``, each partition ends at the end of its log.
    """

    def __init__(
        self,
        brokers: Iterable[str],
        topics: Iterable[str],
        *,
        consumer: dict[str, Any],
        admin: dict[str, Any],
        tail: bool,
        batch_size: int,
    ) -> None:
        servers = ",".join(brokers)
        self._topics = list(topics)
        self._admin = {"bootstrap.servers": servers, **admin}
        self._consumer = {
            # No consumer group: offsets live in the recovery store.
            "group.id": "BYTEWAX_IGNORED",
            "enable.auto.commit": "false",
            "bootstrap.servers": servers,
            "enable.partition.eof": str(not tail),
            **consumer,
        }
        self._batch_size = batch_size

    def list_parts(self) -> list[str]:
        client = AdminClient(self._admin)
        parts: list[str] = []
        for topic in self._topics:  # one by one, so that auto-creation applies to each
            metadata = client.list_topics(topic).topics[topic]
            if metadata.error is not None:
                msg = f"error listing partitions for Kafka topic {topic!r}: {metadata.error.str()}"
                raise RuntimeError(msg)
            parts.extend(part_name(TopicPartition(topic, index)) for index in metadata.partitions)
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> KafkaPartition:
        where = part_of(for_part)
        if where.topic not in self._topics:
            msg = f"recovery data names topic {where.topic!r}, not one read here"
            raise ValueError(msg)
        return KafkaPartition(dict(self._consumer), where, resume_state, self._batch_size)
