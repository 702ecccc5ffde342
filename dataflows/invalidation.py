"""The invalidation dataflow: Debezium topics → decode → plan → version-gated Redis writes.

Kafka partitions are spread over the workers; each worker keeps its partitions' order
through decode, plan and apply, and cross-partition races on one cache key are settled by
the source positions in Redis. Each decoded batch goes on as one item keyed by the
process (:func:`~dataflows.sink.partition_key`), so it is written by the sink partition
of the process that read it. The Redis sink writes in the background while the next batch
is decoded, and waits for every batch handed over at the end of each epoch, before the
recovery snapshot (which records the source offsets) is taken: progress is only recorded
once the changes before it are in Redis, so a crash replays, it never skips. The lag
tracker hears of a batch once it is written, so a sink that cannot write makes the lag
grow even while the sources read on (threads that do not hold the sink are not held
up). Rejected messages (and changes Redis refuses) go through the same sink: the keys
they still render are deleted with the batch, then they are written to the DLQ topic,
flushed and acknowledged before that snapshot. Each batch's DDL records and rows are checked for
changed columns (:class:`~cdc_cache.mode.schema_watch.SchemaWatch`), and for flattened
records that show a table's deletes do not reach the worker
(:meth:`~cdc_cache.mode.tables.TableFallback.deletes`), before the batch is written.

The source is in ``source``, the sinks in ``sink``, what the flow is built from in
``config``, and how it runs (threads, processes, recovery) in ``run``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import partial

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from confluent_kafka import Message as KafkaMessage

from cdc_cache.continuity.guard import ContinuityGuard
from cdc_cache.continuity.store import ContinuityStore
from cdc_cache.continuity.topic_ids import TopicIds
from cdc_cache.core import labels, metrics
from cdc_cache.core.events import Heartbeat, SchemaChange
from cdc_cache.mode.lag import LagTracker
from cdc_cache.mode.schema_watch import SchemaWatch
from cdc_cache.mode.tables import deletes_seen
from cdc_cache.plan.route import Control, Planned, Routed, route
from cdc_cache.sink.connection import connect
from cdc_cache.source.broker_health import BrokerHealth
from cdc_cache.source.kafka_config import CONSUMER_DEFAULTS
from cdc_cache.source.kafka_logs import with_logger
from dataflows.config import FlowConfig, FlowContext
from dataflows.kafka import Item, KafkaSource, is_record
from dataflows.sink import Batch, RedisSink, RejectsFactory, partition_key
from dataflows.source import StoppableSource

log = logging.getLogger("cdc_cache.dataflow")


def build_flow(config: FlowConfig, context: FlowContext | None = None) -> Dataflow:
    """Assemble the dataflow; nothing connects until Bytewax builds the partitions."""
    context = context or FlowContext()
    rules, lineage, schemas = config.rules, context.lineage, context.schemas
    labels.TABLES.know(rules.tables)  # past the bound, only tables of no rule read _other
    flow = Dataflow("cdc_cache")
    health = BrokerHealth()
    # The settings go to confluent_kafka as they are, so the callbacks pass through.
    common = with_logger({**config.kafka, "error_cb": health.on_error})
    consumer = {**CONSUMER_DEFAULTS, **common, **config.kafka_consumer}
    # An offset the log no longer holds must surface as an error, never be reset silently.
    consumer["auto.offset.reset"] = "error"

    guard = None
    if config.continuity:
        ids = TopicIds({"bootstrap.servers": ",".join(config.brokers), **config.kafka})
        guard = ContinuityGuard(
            ids,
            context.holds,
            lambda: ContinuityStore(connect(config.redis_url, config.redis_auth)),
            restarted=lineage.restarted if lineage is not None else None,
        )
    tracker, tables = context.lag, context.tables
    schema = SchemaWatch(rules, tables)
    messages = op.input(
        "debezium",
        flow,
        StoppableSource(
            KafkaSource(
                config.brokers, config.topics, consumer=consumer, admin=common,
                tail=config.tail, batch_size=config.batch_size,
            ),
            context.stop, tracker, health, guard=guard,
        ),
    )  # fmt: skip

    key = partition_key(config.process)

    def route_batch(batch: list[Item]) -> Iterable[tuple[str, Batch]]:
        records = [item for item in batch if is_record(item)]
        if len(records) < len(batch):
            for item in batch:
                if not is_record(item):
                    _consumer_error(item)
        parse = schemas.parser_for(records) if schemas is not None else None
        if lineage is None:
            routed = [
                route(record, rules, config.source_epoch, config.max_value_bytes, parse)
                for record in records
            ]
        else:
            # Judged partitions' states are recorded before the batch goes on to be applied.
            session = lineage.session(records)
            routed = [
                route(
                    r, rules, session.hint(r), config.max_value_bytes, parse,
                    epoch_of=session.epoch_of,
                )
                for r in records
            ]  # fmt: skip
            session.close()
        schema.observe(routed)
        if tables is not None:
            tables.deletes(deletes_seen(routed))
        return [(key, routed)] if routed else []

    routed = op.flat_map_batch("decode_and_plan", messages, route_batch)
    rejects = RejectsFactory(rules, config.dlq, context.stop, tracker.waited)
    sink = RedisSink(
        config.redis_url, config.backoff, context.stop, context.ttl_cap_ms, rejects,
        auth=config.redis_auth, tables=context.tables, sensitive=rules.sensitive,
        replicas=context.replicas, holds=context.holds,
        invalidate_only=context.invalidate_only, memory=context.memory,
        fanout=config.fanout if rules.tags else None, expiring=rules.expiring,
        process=config.process, processes=config.processes, observe=partial(_observe, tracker),
        waiting=tracker.waited,
    )  # fmt: skip
    op.output("redis", routed, sink)
    return flow


def _observe(tracker: LagTracker, batch: list[Routed]) -> None:
    """Feed the lag tracker a batch once it is applied: commit times, heartbeats, offsets.

    And any sign of life. Once per partition and batch (the newest commit time, the
    connectors named, the offset after the last message), not once per message: the
    tracker takes a lock and reads the clock on every call.
    """
    newest: dict[tuple[str, int], int | None] = {}
    servers: dict[tuple[str, int], set[str]] = {}
    applied: dict[tuple[str, int], int] = {}
    for item in batch:
        record = item.record
        where = (record.topic, record.partition)
        applied[where] = max(applied.get(where, 0), record.offset + 1)
        if isinstance(item, Control) and isinstance(item.item, Heartbeat):
            beat = item.item
            tracker.heartbeat(record.topic, record.partition, beat.emitted_at_ms, beat.server)
            continue
        seen = newest.get(where)
        committed = item.event.committed_at_ms if isinstance(item, Planned) else None
        if committed is not None and (seen is None or committed > seen):
            newest[where] = committed
        server = _server_of(item)
        if server is not None:
            servers.setdefault(where, set()).add(server)
    for (topic, partition), offset in applied.items():
        where = (topic, partition)
        tracker.record(topic, partition, newest.get(where), servers.get(where, ()), offset)


def _server_of(item: Routed) -> str | None:
    """The connector a change or schema change names (``source.name``), if any."""
    if isinstance(item, Planned):
        return item.event.server
    if isinstance(item, Control) and isinstance(item.item, SchemaChange):
        return item.item.server
    return None


def _consumer_error(message: KafkaMessage) -> None:
    """A client-side error (not a record): librdkafka retries it; make it visible."""
    error = message.error()
    assert error is not None  # the source passes on only records and errors
    metrics.CONSUMER_ERRORS.labels(error.name()).inc()
    log.warning("kafka consumer error", extra={"error": str(error), "topic": message.topic()})
