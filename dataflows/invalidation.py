"""The invalidation dataflow: Debezium topics → decode → plan → version-gated Redis writes.

Kafka partitions are spread over the workers; each worker keeps its partitions' order
through decode, plan and apply (no re-keying), and cross-partition races on one cache key
are settled by the source positions in Redis. The Redis sink writes synchronously in
``write_batch``, so a recovery snapshot (which records the source offsets) is only taken
once the changes before it are in Redis: a crash replays, it never skips.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING

from cdc_cache import metrics
from cdc_cache.errors import StopRequested
from cdc_cache.events import SourceRecord
from cdc_cache.pipeline import Rejected, Routed, route
from cdc_cache.redis_apply import RedisApplier, connect
from cdc_cache.rejects import report_rejected
from cdc_cache.retry import Backoff
from cdc_cache.rules import Rules
from cdc_cache.writer import CacheWriter

log = logging.getLogger("cdc_cache.dataflow")

Message = KafkaSourceMessage[bytes | None, bytes | None] | KafkaError[bytes | None, bytes | None]


def build_flow(
    *,
    rules: Rules,
    brokers: list[str],
    topics: list[str],
    redis_url: str,
    kafka_config: dict[str, str] | None = None,
    batch_size: int = 1000,
    source_epoch: int = 0,
    tail: bool = True,
    backoff: Backoff | None = None,
    stop: threading.Event | None = None,
) -> Dataflow:
    """Assemble the dataflow; nothing connects until Bytewax builds the partitions.

    Setting ``stop`` ends every source partition after its current batch, so the flow
    drains, takes its final snapshot and returns: a graceful shutdown.
    """
    flow = Dataflow("cdc_cache")
    source = KafkaSource(
        brokers,
        topics,
        tail=tail,
        starting_offset=OFFSET_BEGINNING,
        add_config=dict(kafka_config or {}),
        batch_size=batch_size,
        raise_on_errors=False,
    )
    stop = stop or threading.Event()
    messages = op.input("debezium", flow, StoppableSource(source, stop))

    def route_batch(batch: list[Message]) -> Iterable[Routed]:
        routed = []
        for message in batch:
            if isinstance(message, KafkaError):
                _consumer_error(message)
            else:
                routed.append(route(_record(message), rules, source_epoch))
        return routed

    routed = op.flat_map_batch("decode_and_plan", messages, route_batch)
    split = op.branch("split_rejected", routed, lambda item: isinstance(item, Rejected))
    op.output("reject", split.trues, RejectSink())
    op.output("redis", split.falses, RedisSink(redis_url, backoff or Backoff(), stop))
    return flow


def _consumer_error(error: KafkaError[Any, Any]) -> None:
    """A client-side error (not a message): librdkafka retries it; make it visible."""
    metrics.CONSUMER_ERRORS.inc()
    log.warning("kafka consumer error", extra={"error": str(error.err), "topic": error.msg.topic})


def _record(message: KafkaSourceMessage[Any, Any]) -> SourceRecord:
    timestamp = message.timestamp[1] if message.timestamp else None
    return SourceRecord(
        message.topic or "",
        message.partition or 0,
        message.offset or 0,
        message.key,
        message.value,
        timestamp,
    )


class _StoppablePartition(StatefulSourcePartition[Message, Any]):
    def __init__(self, inner: StatefulSourcePartition[Message, Any], stop: threading.Event):
        self._inner = inner
        self._stop = stop

    def next_batch(self) -> Iterable[Message]:
        if self._stop.is_set():
            raise StopIteration
        return self._inner.next_batch()

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class StoppableSource(FixedPartitionedSource[Message, Any]):
    """A source whose partitions all end once ``stop`` is set (Bytewax has no stop call)."""

    def __init__(self, inner: FixedPartitionedSource[Message, Any], stop: threading.Event):
        self._inner = inner
        self._stop = stop

    def list_parts(self) -> list[str]:
        return self._inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StoppablePartition:
        return _StoppablePartition(
            self._inner.build_part(step_id, for_part, resume_state), self._stop
        )


class _RedisPartition(StatelessSinkPartition[Routed]):
    def __init__(self, writer: CacheWriter) -> None:
        self._writer = writer

    def write_batch(self, items: list[Routed]) -> None:
        self._writer.write(items)


class RedisSink(DynamicSink[Routed]):
    """Applies each batch in one Redis round trip per node; clients are built per worker.

    Retries of an unreachable Redis wait on ``stop``, so a stop request ends the wait (the
    unapplied batch is replayed after a restart) instead of hanging until killed.
    """

    def __init__(self, redis_url: str, backoff: Backoff, stop: threading.Event) -> None:
        self._redis_url = redis_url
        self._backoff = backoff
        self._stop = stop

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        applier = RedisApplier(connect(self._redis_url))
        return _RedisPartition(CacheWriter(applier, self._backoff, sleep=self._sleep))

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            msg = "stop requested while Redis was unavailable"
            raise StopRequested(msg)


class _RejectPartition(StatelessSinkPartition[Routed]):
    def write_batch(self, items: list[Routed]) -> None:
        for item in items:
            assert isinstance(item, Rejected)
            report_rejected(item.error, _table_of(item.record.topic))


class RejectSink(DynamicSink[Routed]):
    """Logs and counts messages that cannot be processed; the stream goes on."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RejectPartition:
        return _RejectPartition()


def _table_of(topic: str) -> str:
    """``<prefix>.<db>.<table>`` → ``<db>.<table>`` (the label stays bounded by topics)."""
    parts = topic.split(".")
    return ".".join(parts[-2:]) if len(parts) >= 3 else topic
