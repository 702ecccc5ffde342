"""The flow's Kafka source: its Kafka partitions (``kafka``), stoppable, watched and guarded.

Each partition reports its watermarks and next offset to the lag tracker, and each poll
(the tracker tells a stuck flow by polls that stop), and whether the brokers answer to the
broker health; with a continuity guard, it checks its stored offset
before passing anything on (``cdc_cache.continuity.guard``). Bytewax has no stop call:
setting ``stop`` ends every partition after its current batch.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, Protocol

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, KafkaException, TopicPartition

from cdc_cache.continuity.guard import ContinuityGuard
from cdc_cache.mode.lag import LagTracker
from cdc_cache.source.broker_health import BrokerHealth
from dataflows.kafka import Item, KafkaPartition, KafkaSource, is_record, part_of


class _Passing:
    """Passes on to the partition it wraps what it does not change."""

    _inner: Any

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()  # type: ignore[no-any-return]

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class _Watched(Protocol):
    """What a stoppable partition wraps: a Kafka partition, guarded or not."""

    @property
    def consumer(self) -> Consumer | None: ...

    @property
    def next_offset(self) -> int | None: ...

    @property
    def paused(self) -> bool: ...

    def next_batch(self) -> list[Any]: ...

    def next_awake(self) -> datetime | None: ...

    def snapshot(self) -> Any: ...

    def close(self) -> None: ...


class _StoppablePartition(_Passing, StatefulSourcePartition[Item, Any]):
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
        tracker.track(where.topic, where.partition, inner.next_offset)

    def close(self) -> None:
        self._tracker.released(self._where.topic, self._where.partition)
        self._inner.close()

    def next_batch(self) -> list[Item]:
        if self._stop.is_set():
            self._tracker.released(self._where.topic, self._where.partition)
            raise StopIteration
        self._tracker.polled(self._where.topic, self._where.partition, paused=self._inner.paused)
        batch: list[Item] = self._inner.next_batch()
        self._observe_broker(batch)
        self._observe_offsets()
        return batch

    def _observe_broker(self, batch: list[Item]) -> None:
        """Records fetched mean the brokers answer; when idle and in doubt, ask one."""
        if any(map(is_record, batch)):
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


class StoppableSource(FixedPartitionedSource[Item, Any]):
    """A source whose partitions all end once ``stop`` is set (Bytewax has no stop call).

    Each partition also reports its high watermark and next offset to the lag tracker,
    and whether the brokers answer to ``health``; with a ``guard``, it checks its stored
    offset before passing anything on.
    """

    def __init__(
        self,
        inner: KafkaSource,
        stop: threading.Event,
        tracker: LagTracker,
        health: BrokerHealth,
        *,
        guard: ContinuityGuard | None = None,
    ):
        self._inner = inner
        self._stop = stop
        self._tracker = tracker
        self._health = health
        self._guard = guard

    def list_parts(self) -> list[str]:
        return self._inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StoppablePartition:
        where = part_of(for_part)

        def build(offset: Any) -> KafkaPartition:
            return self._inner.build_part(step_id, for_part, offset)

        inner: _Watched
        if self._guard is None:
            inner = build(resume_state)
        else:
            inner = self._guard.partition(where, resume_state, build)
        return _StoppablePartition(inner, self._stop, self._tracker, where, self._health)
