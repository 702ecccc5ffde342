"""The invalidation dataflow: Debezium topics → decode → plan → version-gated Redis writes.

Kafka partitions are spread over the workers; each worker keeps its partitions' order
through decode, plan and apply (no re-keying), and cross-partition races on one cache key
are settled by the source positions in Redis. The Redis sink writes synchronously in
``write_batch``, so a recovery snapshot (which records the source offsets) is only taken
once the changes before it are in Redis: a crash replays, it never skips. Rejected
messages (and changes Redis refuses) go through the same sink: the keys they still
render are deleted with the batch, then they are written to the DLQ topic, flushed and
acknowledged before ``write_batch`` returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from cdc_cache.continuity.guard import ContinuityGuard, GuardedPartition
from cdc_cache.continuity.store import ContinuityStore
from cdc_cache.continuity.topic_ids import TopicIds
from cdc_cache.core import metrics
from cdc_cache.core.events import Heartbeat, SchemaChange, SourceRecord
from cdc_cache.core.retry import Backoff, retry_forever, stoppable_sleep
from cdc_cache.dlq.rejects import Rejects
from cdc_cache.dlq.topic import DeadLetterWriter
from cdc_cache.fallback.runtime import Holds
from cdc_cache.lineage.tracker import LineageTracker
from cdc_cache.mode.lag import LagTracker
from cdc_cache.mode.schema_watch import SchemaWatch
from cdc_cache.mode.tables import TableFallback
from cdc_cache.plan.route import Control, Planned, Routed, route
from cdc_cache.plan.rules import Rules
from cdc_cache.sink.apply import Client, MemoryObserver, RedisApplier, RedisAuth, connect
from cdc_cache.sink.replica_wait import ReplicaRequirement, ReplicaWait
from cdc_cache.sink.writer import CacheWriter, connect_when_available, redis_retry_reporter
from cdc_cache.source.broker_health import BrokerHealth
from cdc_cache.source.kafka_logs import with_logger
from cdc_cache.source.schema_registry import SchemaResolver

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

Message = KafkaSourceMessage[bytes | None, bytes | None] | KafkaError[bytes | None, bytes | None]


def build_flow(
    *,
    rules: Rules,
    brokers: list[str],
    topics: list[str],
    redis_url: str,
    redis_auth: RedisAuth | None = None,
    schemas: SchemaResolver | None = None,
    kafka_config: dict[str, str] | None = None,
    consumer_config: dict[str, str] | None = None,
    batch_size: int = 1000,
    source_epoch: int = 0,
    tail: bool = True,
    backoff: Backoff | None = None,
    stop: threading.Event | None = None,
    lag: LagTracker | None = None,
    ttl_cap_ms: Callable[[], int | None] = lambda: None,
    dlq: DlqTarget | None = None,
    max_value_bytes: int | None = None,
    holds: Holds | None = None,
    tables: TableFallback | None = None,
    continuity: bool = True,
    replicas: ReplicaRequirement | None = None,
    lineage: LineageTracker | None = None,
    invalidate_only: Callable[[], bool] = lambda: False,
    memory: MemoryObserver | None = None,
) -> Dataflow:
    """Assemble the dataflow; nothing connects until Bytewax builds the partitions.

    Setting ``stop`` ends every source partition after its current batch, so the flow
    drains, takes its final snapshot and returns: a graceful shutdown. ``lag`` is fed what
    the sources see (commit times, heartbeats, watermarks); ``ttl_cap_ms`` caps the TTL of
    new cache entries (the TTL fallback mode). With ``schemas`` the topics carry Avro: each
    batch's schemas are resolved (waiting out registry outages) before it is decoded.
    Without ``dlq`` rejections are only logged and counted (tests); the worker always gives
    one. ``holds`` is the mode runtime's registry, where the flow's parts raise a hold
    when they find the cache cannot be known right; ``tables`` its per-table fallback,
    told which tables' changes apply and fail, and capping the TTLs of those that fall
    back. Each batch's DDL records and rows are checked for changed columns
    (:class:`~cdc_cache.mode.schema_watch.SchemaWatch`). Each source partition checks that its
    stored offset still means what it meant (see ``cdc_cache.continuity.guard``);
    ``continuity=False`` leaves Bytewax's bare source, only to show what that check
    prevents. ``kafka_config`` goes to every Kafka client, ``consumer_config`` to the
    consumers only. With ``replicas`` each batch waits until the required Redis replicas
    acknowledged it (``cdc_cache.sink.replica_wait``). With ``lineage`` each change gets the
    epoch of its log lineage, detected per partition (else ``source_epoch``).
    ``invalidate_only`` and ``memory`` go to every Redis applier (see ``redis_memory``).
    """
    holds = holds or Holds()
    flow = Dataflow("cdc_cache")
    health = BrokerHealth()
    # KafkaSource hands add_config to confluent_kafka as is, so the callbacks pass through.
    common = with_logger({**(kafka_config or {}), "error_cb": health.on_error})
    consumer = {**CONSUMER_DEFAULTS, **common, **(consumer_config or {})}
    # An offset the log no longer holds must surface as an error, never be reset silently.
    consumer["auto.offset.reset"] = "error"

    def kafka_source(config: dict[str, Any]) -> KafkaSource:
        return KafkaSource(
            brokers,
            topics,
            tail=tail,
            starting_offset=OFFSET_BEGINNING,
            add_config=cast(dict[str, str], config),
            batch_size=batch_size,
            raise_on_errors=False,
        )

    stop = stop or threading.Event()
    tracker = lag or LagTracker(lambda: time.time() * 1000)
    schema = SchemaWatch(rules, tables)
    guard = None
    if continuity:
        ids = TopicIds({"bootstrap.servers": ",".join(brokers), **(kafka_config or {})})
        guard = ContinuityGuard(
            ids,
            holds,
            lambda: ContinuityStore(connect(redis_url, redis_auth)),
            restarted=lineage.restarted if lineage is not None else None,
        )
    source = StoppableSource(
        kafka_source(consumer), stop, tracker, health, lister=kafka_source(common), guard=guard
    )
    messages = op.input("debezium", flow, source)

    def route_batch(batch: list[Message]) -> Iterable[Routed]:
        records = []
        for message in batch:
            if isinstance(message, KafkaError):
                _consumer_error(message)
            else:
                records.append(_record(message))
        parse = schemas.parser_for(records) if schemas is not None else None
        if lineage is None:
            routed = [
                route(record, rules, source_epoch, max_value_bytes, parse) for record in records
            ]
        else:
            # Judged partitions' states are recorded before the batch goes on to be applied.
            session = lineage.session(records)
            routed = [
                route(r, rules, session.hint(r), max_value_bytes, parse, epoch_of=session.epoch_of)
                for r in records
            ]
            session.close()
        _observe(tracker, routed)
        schema.observe(routed)
        return routed

    routed = op.flat_map_batch("decode_and_plan", messages, route_batch)
    rejects = _RejectsFactory(rules, dlq, stop)
    sink = RedisSink(
        redis_url,
        backoff or Backoff(),
        stop,
        ttl_cap_ms,
        rejects,
        auth=redis_auth,
        tables=tables,
        sensitive=rules.sensitive,
        replicas=replicas,
        holds=holds,
        invalidate_only=invalidate_only,
        memory=memory,
    )
    op.output("redis", routed, sink)
    return flow


def _observe(tracker: LagTracker, batch: list[Routed]) -> None:
    """Feed the lag tracker: commit times of changes, heartbeats, and any sign of life.

    Once per partition and batch (the newest commit time, the connectors named), not once
    per message: the tracker takes a lock and reads the clock on every call.
    """
    newest: dict[tuple[str, int], int | None] = {}
    servers: dict[tuple[str, int], set[str]] = {}
    for item in batch:
        record = item.record
        where = (record.topic, record.partition)
        if isinstance(item, Control) and isinstance(item.item, Heartbeat):
            beat = item.item
            tracker.heartbeat(record.topic, record.partition, beat.emitted_at_ms, beat.server)
            continue
        seen = newest.get(where)
        committed = item.event.committed_at_ms if isinstance(item, Planned) else None
        if committed is not None and (seen is None or committed > seen):
            newest[where] = committed
        elif where not in newest:
            newest[where] = None
        server = _server_of(item)
        if server is not None:
            servers.setdefault(where, set()).add(server)
    for (topic, partition), committed in newest.items():
        tracker.record(topic, partition, committed, servers.get((topic, partition), ()))


def _server_of(item: Routed) -> str | None:
    """The connector a change or schema change names (``source.name``), if any."""
    if isinstance(item, Planned):
        return item.event.server
    if isinstance(item, Control) and isinstance(item.item, SchemaChange):
        return item.item.server
    return None


def _consumer_error(error: KafkaError[Any, Any]) -> None:
    """A client-side error (not a message): librdkafka retries it; make it visible."""
    metrics.CONSUMER_ERRORS.labels(error.err.name()).inc()
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
    def __init__(
        self,
        inner: StatefulSourcePartition[Message, Any],
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

    @property
    def _consumer(self) -> Consumer | None:
        """The consumer whose cached watermarks (from its last fetch) are read.

        Cached, a ListOffsets request is not needed (and reports a wrong "latest" on some
        brokers). A guarded partition builds a new consumer when an operator resolves a
        discontinuity, so it is asked each time.
        """
        if isinstance(self._inner, GuardedPartition):
            return self._inner.consumer
        consumer = getattr(self._inner, "_consumer", None)
        return consumer if isinstance(consumer, Consumer) else None

    def _next_offset(self) -> int | None:
        if isinstance(self._inner, GuardedPartition):
            return self._inner.next_offset
        resume = self._inner.snapshot()
        return resume if isinstance(resume, int) and resume >= 0 else None

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
        elif (consumer := self._consumer) is not None and self._health.should_probe():
            try:
                consumer.get_watermark_offsets(self._where, timeout=0.5, cached=False)
            except KafkaException:
                return  # still down: error_cb has counted it
            self._health.reachable()

    def _observe_offsets(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        low, high = consumer.get_watermark_offsets(self._where, cached=True)
        if high < 0:
            return  # no fetch answered yet
        resume = self._next_offset()
        next_offset = resume if resume is not None else low
        self._tracker.offsets(self._where.topic, self._where.partition, high, next_offset)

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


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
        inner: FixedPartitionedSource[Message, Any],
        stop: threading.Event,
        tracker: LagTracker,
        health: BrokerHealth,
        *,
        lister: FixedPartitionedSource[Message, Any],
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
        index, topic = for_part.split("-", 1)  # KafkaSource names parts "<index>-<topic>"
        where = TopicPartition(topic, int(index))
        inner: StatefulSourcePartition[Message, Any]
        if self._guard is None:
            inner = self._inner.build_part(step_id, for_part, resume_state)
        else:
            inner = self._guard.partition(
                where,
                resume_state,
                lambda offset: self._inner.build_part(step_id, for_part, offset),
            )
        return _StoppablePartition(inner, self._stop, self._tracker, where, self._health)


class _RedisPartition(StatelessSinkPartition[Routed]):
    def __init__(self, writer: CacheWriter) -> None:
        self._writer = writer

    def write_batch(self, items: list[Routed]) -> None:
        self._writer.write(items)


class RedisSink(DynamicSink[Routed]):
    """Applies each batch in one Redis round trip per node; clients are built per worker.

    Rejected messages are dead-lettered from here too, once the keys they still render
    are deleted, so each batch is durable on the DLQ topic before ``write_batch`` returns
    and progress never moves past a failure that could still be lost.

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
        rejects: _RejectsFactory,
        *,
        auth: RedisAuth | None = None,
        tables: TableFallback | None = None,
        sensitive: Callable[[str], frozenset[str]] | None = None,
        replicas: ReplicaRequirement | None = None,
        holds: Holds | None = None,
        invalidate_only: Callable[[], bool] = lambda: False,
        memory: MemoryObserver | None = None,
    ) -> None:
        self._replicas = replicas
        self._holds = holds or Holds()
        self._redis_url = redis_url
        self._invalidate_only = invalidate_only
        self._memory = memory
        self._backoff = backoff
        self._sleep = stoppable_sleep(stop, "Redis")
        self._ttl_cap_ms = ttl_cap_ms
        self._rejects = rejects
        self._auth = auth
        self._tables = tables
        self._sensitive = sensitive

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        client = connect_when_available(self._redis_url, self._backoff, self._sleep, self._auth)
        applier = RedisApplier(client, invalidate_only=self._invalidate_only, memory=self._memory)
        writer = CacheWriter(
            applier,
            self._backoff,
            sleep=self._sleep,
            ttl_cap_ms=self._ttl_cap_ms,
            reject=self._rejects.build().report,
            tables=self._tables,
            sensitive=self._sensitive,
            replicas=self._replica_wait(client, worker_index),
        )
        return _RedisPartition(writer)

    def _replica_wait(self, client: Client, worker_index: int) -> ReplicaWait | None:
        """The wait for replicas of one worker, once it knows the primaries (waits for Redis)."""
        requirement = self._replicas
        if requirement is None:
            return None
        return retry_forever(
            lambda: requirement.for_writer(client, self._holds, f"w{worker_index}", self._sleep),
            backoff=self._backoff,
            on_retry=redis_retry_reporter("reading the primaries' replication"),
            sleep=self._sleep,
        )


@dataclass(frozen=True, slots=True)
class DlqTarget:
    """Where dead letters go: the DLQ topic, its brokers and client options, retry policy."""

    brokers: str
    topic: str
    kafka_config: dict[str, str]
    backoff: Backoff


class _RejectsFactory:
    """Builds one :class:`Rejects` per sink partition (a producer per worker)."""

    def __init__(self, rules: Rules, dlq: DlqTarget | None, stop: threading.Event) -> None:
        self._rules = rules
        self._dlq = dlq
        self._sleep = stoppable_sleep(stop, "the DLQ broker")

    def build(self) -> Rejects:
        if self._dlq is None:
            return Rejects(self._rules, None)
        writer = DeadLetterWriter(
            self._dlq.brokers,
            self._dlq.topic,
            self._dlq.kafka_config,
            self._dlq.backoff,
            sleep=self._sleep,
        )
        return Rejects(self._rules, writer)
