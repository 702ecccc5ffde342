"""The flow's Kafka source: Bytewax's KafkaSource, stoppable, watched and guarded.

Each partition reports its watermarks and next offset to the lag tracker and whether the
brokers answer to the broker health; with a continuity guard, it checks its stored offset
before passing anything on (``cdc_cache.continuity.guard``). Bytewax has no stop call:
setting ``stop`` ends every partition after its current batch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol, cast

from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from cdc_cache.continuity.guard import ContinuityGuard
from cdc_cache.mode.lag import LagTracker
from cdc_cache.source.broker_health import BrokerHealth

Message = KafkaSourceMessage[bytes | None, bytes | None] | KafkaError[bytes | None, bytes | None]
EngineSource = FixedPartitionedSource[Message, Any]


def kafka_source(
    brokers: Iterable[str],
    topics: Iterable[str],
    config: dict[str, Any],
    *,
    tail: bool,
    batch_size: int,
) -> KafkaSource:
    """Bytewax's Kafka source from the start of each topic; errors come as messages."""
    return KafkaSource(
        list(brokers),
        list(topics),
        tail=tail,
        starting_offset=OFFSET_BEGINNING,
        add_config=cast(dict[str, str], config),  # passed to confluent_kafka as it is
        batch_size=batch_size,
        raise_on_errors=False,
    )


def kafka_consumer_of(partition: object) -> Consumer | None:
    """The consumer inside one of KafkaSource's partitions, which Bytewax keeps private.

    Its cached watermarks are what the last fetch saw: a ListOffsets request is not needed
    (and reports a wrong "latest" on some brokers). ``tests/unit/test_engine_contract.py``
    fails when Bytewax keeps it elsewhere.
    """
    consumer = getattr(partition, "_consumer", None)
    return consumer if isinstance(consumer, Consumer) else None


def part_of(for_part: str) -> TopicPartition:
    """The Kafka partition of a KafkaSource part name (``<index>-<topic>``)."""
    index, topic = for_part.split("-", 1)
    return TopicPartition(topic, int(index))


class _Passing:
    """Passes on to the partition it wraps what it does not change."""

    _inner: Any

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()  # type: ignore[no-any-return]

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class KafkaPartition(_Passing):
    """One of KafkaSource's partitions, with what its wrappers read of it."""

    def __init__(self, inner: StatefulSourcePartition[Message, Any]) -> None:
        self._inner = inner

    @property
    def consumer(self) -> Consumer | None:
        """Its consumer, whose cached watermarks are read."""
        return kafka_consumer_of(self._inner)

    @property
    def next_offset(self) -> int | None:
        """The next offset it reads (None: it starts at the beginning)."""
        resume = self._inner.snapshot()
        return resume if isinstance(resume, int) and resume >= 0 else None

    def next_batch(self) -> list[Message]:
        return list(self._inner.next_batch())

    @staticmethod
    def error_codes(batch: list[Any]) -> set[int]:
        """The librdkafka error codes among ``batch``'s messages."""
        return {message.err.code() for message in batch if isinstance(message, KafkaError)}


class _Watched(Protocol):
    """What a stoppable partition wraps: a Kafka partition, guarded or not."""

    @property
    def consumer(self) -> Consumer | None: ...

    @property
    def next_offset(self) -> int | None: ...

    def next_batch(self) -> Iterable[Any]: ...

    def next_awake(self) -> datetime | None: ...

    def snapshot(self) -> Any: ...

    def close(self) -> None: ...


class _StoppablePartition(_Passing, StatefulSourcePartition[Message, Any]):
    def __init__(
        self,
        inner: _Watched,
        stop: threading.Event,
        tracker: LagTracker,
        where: TopicPartition,
        health: BrokerHealth,
    ):
        self._inner = inner
        self._stop = stop
        self._tracker = tracker
        self._where = where
        self._health = health
        tracker.track(where.topic, where.partition)

    def next_batch(self) -> Iterable[Message]:
        if self._stop.is_set():
            raise StopIteration
        batch = list(self._inner.next_batch())
        self._observe_broker(batch)
        self._observe_offsets()
        return batch

    def _observe_broker(self, batch: list[Message]) -> None:
        """Records fetched mean the brokers answer; when idle and in doubt, ask one."""
        if any(not isinstance(message, KafkaError) for message in batch):
            self._health.reachable()
        elif (consumer := self._inner.consumer) is not None and self._health.should_probe():
            try:
                consumer.get_watermark_offsets(self._where, timeout=0.5, cached=False)
            except KafkaException:
                return  # still down: error_cb has counted it
            self._health.reachable()

    def _observe_offsets(self) -> None:
        # A guarded partition builds a new consumer when an operator resolves a
        # discontinuity, so the consumer is asked for each time.
        consumer = self._inner.consumer
        if consumer is None:
            return
        low, high = consumer.get_watermark_offsets(self._where, cached=True)
        if high < 0:
            return  # no fetch answered yet
        resume = self._inner.next_offset
        next_offset = resume if resume is not None else low
        self._tracker.offsets(self._where.topic, self._where.partition, high, next_offset)


class StoppableSource(FixedPartitionedSource[Message, Any]):
    """A source whose partitions all end once ``stop`` is set (Bytewax has no stop call).

    Each partition also reports its high watermark and next offset to the lag tracker,
    and whether the brokers answer to ``health``; with a ``guard``, it checks its stored
    offset before passing anything on. ``lister`` lists the partitions: a KafkaSource
    lists them with an admin client built from its own settings, and librdkafka warns at
    every start about consumer settings given to one.
    """

    def __init__(
        self,
        inner: EngineSource,
        stop: threading.Event,
        tracker: LagTracker,
        health: BrokerHealth,
        *,
        lister: EngineSource,
        guard: ContinuityGuard | None = None,
    ):
        self._inner = inner
        self._stop = stop
        self._tracker = tracker
        self._health = health
        self._lister = lister
        self._guard = guard

    def list_parts(self) -> list[str]:
        return self._lister.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StoppablePartition:
        where = part_of(for_part)

        def build(offset: Any) -> KafkaPartition:
            return KafkaPartition(self._inner.build_part(step_id, for_part, offset))

        inner: _Watched
        if self._guard is None:
            inner = build(resume_state)
        else:
            inner = self._guard.partition(where, resume_state, build)
        return _StoppablePartition(inner, self._stop, self._tracker, where, self._health)
