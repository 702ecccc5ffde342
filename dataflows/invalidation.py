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
import time
from collections.abc import Callable, Iterable

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING

from cdc_cache import metrics
from cdc_cache.envelope import table_of_topic
from cdc_cache.errors import StopRequested
from cdc_cache.events import Heartbeat
from cdc_cache.lag import LagTracker
from cdc_cache.pipeline import Control, Planned, Rejected, Routed, route
from cdc_cache.redis_apply import RedisApplier
from cdc_cache.rejects import report_rejected
from cdc_cache.retry import Backoff
from cdc_cache.rules import Rules
from cdc_cache.writer import CacheWriter, connect_when_available
from dataflows.kafka_source import ConsumerError, Fetched, KafkaPartitions

log = logging.getLogger("cdc_cache.dataflow")

# A broker that does not answer a waiting fetch as soon as data arrives holds each record
# for up to fetch.wait.max.ms (librdkafka's default is 500 ms): cap what that can add to
# commit-to-applied latency. Brokers that answer early are unaffected. Overridable.
#
# Bytewax runs one consumer per partition, and librdkafka prefetches up to
# queued.max.messages.kbytes (64 MiB by default) for each: a worker that falls behind on
# many partitions would hold that much per partition. 16 MiB is still ~9,000 records of
# a schema-wrapped 1.8 KB change, several polls' worth, so it costs no throughput.
CONSUMER_DEFAULTS: dict[str, str] = {
    "fetch.wait.max.ms": "100",
    "queued.max.messages.kbytes": "16384",
}


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
    lag: LagTracker | None = None,
    ttl_cap_ms: Callable[[], int | None] = lambda: None,
) -> Dataflow:
    """Assemble the dataflow; nothing connects until Bytewax builds the partitions.

    Setting ``stop`` ends every source partition after its current batch, so the flow
    drains, takes its final snapshot and returns: a graceful shutdown. ``lag`` is fed what
    the sources see (commit times, heartbeats, watermarks); ``ttl_cap_ms`` caps the TTL of
    new cache entries (the TTL fallback mode).
    """
    flow = Dataflow("cdc_cache")
    stop = stop or threading.Event()
    tracker = lag or LagTracker(lambda: time.time() * 1000)
    source = KafkaPartitions(
        brokers,
        topics,
        config={**CONSUMER_DEFAULTS, **(kafka_config or {})},
        starting_offset=OFFSET_BEGINNING,
        tail=tail,
        batch_size=batch_size,
        stop=stop,
        tracker=tracker,
    )
    messages = op.input("debezium", flow, source)

    def route_batch(batch: list[Fetched]) -> Iterable[Routed]:
        routed = []
        for message in batch:
            if isinstance(message, ConsumerError):
                _consumer_error(message)
            else:
                routed.append(route(message, rules, source_epoch))
        _observe(tracker, routed)
        return routed

    routed = op.flat_map_batch("decode_and_plan", messages, route_batch)
    split = op.branch("split_rejected", routed, lambda item: isinstance(item, Rejected))
    op.output("reject", split.trues, RejectSink())
    sink = RedisSink(redis_url, backoff or Backoff(), stop, ttl_cap_ms)
    op.output("redis", split.falses, sink)
    return flow


def _observe(tracker: LagTracker, batch: list[Routed]) -> None:
    """Feed the lag tracker: commit times of changes, heartbeats, and any sign of life.

    Once per partition and batch (the newest commit time), not once per message: the
    tracker takes a lock and reads the clock on every call.
    """
    newest: dict[tuple[str, int], int | None] = {}
    for item in batch:
        record = item.record
        where = (record.topic, record.partition)
        if isinstance(item, Control) and isinstance(item.item, Heartbeat):
            tracker.heartbeat(record.topic, record.partition, item.item.emitted_at_ms)
            continue
        seen = newest.get(where)
        committed = item.event.committed_at_ms if isinstance(item, Planned) else None
        if committed is not None and (seen is None or committed > seen):
            newest[where] = committed
        elif where not in newest:
            newest[where] = None
    for (topic, partition), committed in newest.items():
        tracker.record(topic, partition, committed)


def _consumer_error(error: ConsumerError) -> None:
    """A client-side error (not a message): librdkafka retries it; make it visible."""
    metrics.CONSUMER_ERRORS.inc()
    log.warning("kafka consumer error", extra={"error": error.error, "topic": error.topic})


class _RedisPartition(StatelessSinkPartition[Routed]):
    def __init__(self, writer: CacheWriter) -> None:
        self._writer = writer

    def write_batch(self, items: list[Routed]) -> None:
        self._writer.write(items)


class RedisSink(DynamicSink[Routed]):
    """Applies each batch in one Redis round trip per node; clients are built per worker.

    An unreachable Redis, at start or later, is waited for (never skipped); the waits end
    on ``stop``, so a stop request ends them (the unapplied batch is replayed after a
    restart) instead of hanging until killed.
    """

    def __init__(
        self,
        redis_url: str,
        backoff: Backoff,
        stop: threading.Event,
        ttl_cap_ms: Callable[[], int | None],
    ) -> None:
        self._redis_url = redis_url
        self._backoff = backoff
        self._stop = stop
        self._ttl_cap_ms = ttl_cap_ms

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        client = connect_when_available(self._redis_url, self._backoff, self._sleep)
        applier = RedisApplier(client)
        writer = CacheWriter(applier, self._backoff, sleep=self._sleep, ttl_cap_ms=self._ttl_cap_ms)
        return _RedisPartition(writer)

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            msg = "stop requested while Redis was unavailable"
            raise StopRequested(msg)


class _RejectPartition(StatelessSinkPartition[Routed]):
    def write_batch(self, items: list[Routed]) -> None:
        for item in items:
            assert isinstance(item, Rejected)
            topic = item.record.topic
            report_rejected(item.error, table_of_topic(topic) or topic)


class RejectSink(DynamicSink[Routed]):
    """Logs and counts messages that cannot be processed; the stream goes on."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RejectPartition:
        return _RejectPartition()
