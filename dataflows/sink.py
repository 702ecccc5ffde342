"""The flow's sink: version-gated Redis writes (one round trip per node and batch) and DLQ.

Each batch is handed to a background thread (:class:`~cdc_cache.sink.background.
BackgroundWriter`) that writes the batches in the order they came, while the worker
decodes the next one: the Redis round trip overlaps decoding. At most
:data:`IN_FLIGHT_BATCHES` batches are handed over and not yet written. At the end of every
epoch Bytewax asks the sink for its snapshot before it records the epoch's recovery
snapshot (which holds the source offsets); ``snapshot`` returns only once every batch
handed over so far is in Redis and its rejected messages are durable on the DLQ topic. So
the recorded progress never runs ahead of Redis: a crash replays, it never skips.

Bytewax routes a :class:`~bytewax.outputs.FixedPartitionedSink`'s items by key into the
sorted list of all partitions of the cluster. There are :data:`SINK_PARTITIONS` of them,
whatever the process count; process ``p`` of ``n`` lists those whose number is ``p`` mod
``n``, and the flow keys its batches with :func:`partition_key` of its process, so each
process writes what it decoded (no exchange between processes). A later run with another
process count still lists every partition an earlier run recorded, so it resumes. The
worker threads of one process share its partition: Bytewax funnels their batches to the
one thread that holds it, each thread's in order.

``CacheWriter.write`` runs on the background thread. What it shares with the dataflow
thread is locked: the per-table fallback (the schema watch reports changed columns to it
from the dataflow thread; a cap it sets reaches the batch observed with it, and perhaps
one still in flight, which only shortens TTLs), the holds, the mode runtime's TTL cap,
the Redis memory watch; the metrics are prometheus_client's, thread-safe. A partition's
Redis client, DLQ producer, replica wait and tag store are built on the dataflow thread
and used only by its background thread afterwards. The lineage sessions and schema watch
are fed on the dataflow thread alone; the lag tracker (locked) on the background thread,
with each batch once written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from cdc_cache.core.errors import ConfigError
from cdc_cache.core.retry import Backoff, retry_forever, stoppable_sleep
from cdc_cache.dlq.rejects import Rejects
from cdc_cache.dlq.topic import DeadLetterWriter
from cdc_cache.mode.holds import Holds
from cdc_cache.mode.tables import TableFallback
from cdc_cache.plan.route import Routed
from cdc_cache.plan.rules import Rules
from cdc_cache.sink.apply import MemoryObserver, RedisApplier
from cdc_cache.sink.background import BackgroundWriter
from cdc_cache.sink.connection import (
    Client,
    RedisAuth,
    connect_when_available,
    redis_retry_reporter,
)
from cdc_cache.sink.replica_wait import ReplicaRequirement, ReplicaWait
from cdc_cache.sink.tags import Fanout, TagStore
from cdc_cache.sink.writer import CacheWriter
from dataflows.config import DlqTarget

SINK_PARTITIONS = 1024
"""The sink's partitions in every run: the most processes a cluster may have. Fixed, so
that a rescaled cluster lists every partition an earlier run recorded a snapshot of."""

IN_FLIGHT_BATCHES = 4
"""Batches handed to the background writer and not yet written, at most. Two already
overlap one round trip with one decode; two more absorb uneven batches. More would only
hold more memory (batch_size messages each) and lengthen the wait at each epoch's end."""

Batch = list[Routed]


def partition_key(process: int) -> str:
    """The key that routes a batch to the sink partition of process ``process``."""
    return str(process)


def _partition_name(number: int) -> str:
    # Zero-padded: Bytewax sorts the names as strings, and the n-th must be partition n.
    return f"{number:04d}"


class _RedisPartition(StatefulSinkPartition[Batch, None]):
    def __init__(
        self,
        writer: CacheWriter,
        depth: int,
        name: str,
        observe: Callable[[Batch], object] | None = None,
    ) -> None:
        def write(items: Batch) -> None:
            writer.write(items)
            if observe is not None:
                observe(items)

        self._background: BackgroundWriter[Routed] = BackgroundWriter(write, depth, name)

    def write_batch(self, values: list[Batch]) -> None:
        items = values[0] if len(values) == 1 else [item for batch in values for item in batch]
        self._background.submit(items)

    def snapshot(self) -> None:
        """Nothing to resume from (the source offsets are the progress): waits for Redis."""
        self._background.drain()

    def close(self) -> None:
        self._background.close()


class RedisSink(FixedPartitionedSink[Batch, None]):
    """Applies each batch in one Redis round trip per node; clients are built per partition.

    Rejected messages are dead-lettered from here too, once the keys they still render
    are deleted, so each batch is durable on the DLQ topic before the epoch's snapshot
    is taken and progress never moves past a failure that could still be lost.

    An unreachable Redis, at start or later, is waited for (never skipped); the waits end
    on ``stop``, so a stop request ends them (the unapplied batch is replayed after a
    restart) instead of hanging until killed. ``observe`` hears of each batch once it is
    written, ``waiting`` of each wait to retry (the lag tracker).
    """

    def __init__(
        self,
        redis_url: str,
        backoff: Backoff,
        stop: threading.Event,
        ttl_cap_ms: Callable[[], int | None],
        rejects: RejectsFactory,
        *,
        auth: RedisAuth | None = None,
        tables: TableFallback | None = None,
        sensitive: Callable[[str], frozenset[str]] | None = None,
        replicas: ReplicaRequirement | None = None,
        holds: Holds | None = None,
        invalidate_only: Callable[[], bool] = lambda: False,
        memory: MemoryObserver | None = None,
        fanout: Fanout | None = None,
        expiring: bool = False,
        process: int = 0,
        processes: int = 1,
        depth: int = IN_FLIGHT_BATCHES,
        observe: Callable[[Batch], object] | None = None,
        waiting: Callable[[float], object] | None = None,
    ) -> None:
        if processes > SINK_PARTITIONS:
            msg = f"a cluster has at most {SINK_PARTITIONS} processes, addresses name {processes}"
            raise ConfigError(msg)
        self._process = process
        self._processes = processes
        self._depth = depth
        self._observe = observe
        self._fanout = fanout
        self._expiring = expiring
        self._replicas = replicas
        self._holds = holds or Holds()
        self._redis_url = redis_url
        self._invalidate_only = invalidate_only
        self._memory = memory
        self._backoff = backoff
        self._sleep = stoppable_sleep(stop, "Redis", waiting)
        self._pace = _paced(waiting)
        self._ttl_cap_ms = ttl_cap_ms
        self._rejects = rejects
        self._auth = auth
        self._tables = tables
        self._sensitive = sensitive

    def list_parts(self) -> list[str]:
        return [_partition_name(n) for n in range(self._process, SINK_PARTITIONS, self._processes)]

    def part_fn(self, item_key: str) -> int:
        return int(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _RedisPartition:
        number = int(for_part)
        client = connect_when_available(self._redis_url, self._backoff, self._sleep, self._auth)
        applier = RedisApplier(client, invalidate_only=self._invalidate_only, memory=self._memory)
        retry_forever(  # on Cluster: what a crash left in the outboxes, relayed before anything
            applier.sweep_outboxes,
            backoff=self._backoff,
            on_retry=redis_retry_reporter("relaying the notification outboxes"),
            sleep=self._sleep,
        )
        writer = CacheWriter(
            applier,
            self._backoff,
            sleep=self._sleep,
            ttl_cap_ms=self._ttl_cap_ms,
            reject=self._rejects.build().report,
            tables=self._tables,
            sensitive=self._sensitive,
            replicas=self._replica_wait(client, number),
            tags=self._tag_store(client, applier),
            expiring=self._expiring,
        )
        return _RedisPartition(writer, self._depth, f"redis-sink-{for_part}", self._observe)

    def _tag_store(self, client: Client, applier: RedisApplier) -> TagStore | None:
        """Where the rules' tag and link ops go (None: the rules have none)."""
        fanout = self._fanout
        if fanout is None:
            return None
        shorten = fanout.shorten
        return TagStore(
            client,
            applier,
            page_size=fanout.page,
            fanout_limit=fanout.limit,
            shorten=None
            if shorten is None
            else lambda prefixes: shorten(client, prefixes, self._pace),
        )

    def _replica_wait(self, client: Client, number: int) -> ReplicaWait | None:
        """The wait for replicas of one partition, once it knows the primaries (waits for Redis)."""
        requirement = self._replicas
        if requirement is None:
            return None
        return retry_forever(
            lambda: requirement.for_writer(client, self._holds, f"w{number}", self._sleep),
            backoff=self._backoff,
            on_retry=redis_retry_reporter("reading the primaries' replication"),
            sleep=self._sleep,
        )


class RejectsFactory:
    """Builds one :class:`Rejects` per sink partition (a producer per process)."""

    def __init__(
        self,
        rules: Rules,
        dlq: DlqTarget | None,
        stop: threading.Event,
        waiting: Callable[[float], object] | None = None,
    ) -> None:
        self._rules = rules
        self._dlq = dlq
        self._sleep = stoppable_sleep(stop, "the DLQ broker", waiting)

    def build(self) -> Rejects:
        if self._dlq is None:
            return Rejects(self._rules, None)
        writer = DeadLetterWriter(
            self._dlq.brokers,
            self._dlq.topic,
            dict(self._dlq.kafka_config),
            self._dlq.backoff,
            sleep=self._sleep,
        )
        return Rejects(self._rules, writer)


def _paced(waiting: Callable[[float], object] | None) -> Callable[[float], None]:
    """``time.sleep`` that tells ``waiting`` first: a long fan-out's pacing is no stuck flow."""

    def sleep(seconds: float) -> None:
        if waiting is not None:
            waiting(seconds)
        time.sleep(seconds)

    return sleep
