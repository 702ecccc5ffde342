"""The flow's sink: version-gated Redis writes (one round trip per node and batch) and DLQ.

It writes synchronously in ``write_batch``, so a recovery snapshot (which records the
source offsets) is only taken once the changes before it are in Redis and the rejected
messages before it are durable on the DLQ topic: a crash replays, it never skips.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from cdc_cache.core.retry import Backoff, retry_forever, stoppable_sleep
from cdc_cache.dlq.rejects import Rejects
from cdc_cache.dlq.topic import DeadLetterWriter
from cdc_cache.mode.holds import Holds
from cdc_cache.mode.tables import TableFallback
from cdc_cache.plan.route import Routed
from cdc_cache.plan.rules import Rules
from cdc_cache.sink.apply import MemoryObserver, RedisApplier
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
    ) -> None:
        self._fanout = fanout
        self._expiring = expiring
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
            replicas=self._replica_wait(client, worker_index),
            tags=self._tag_store(client, applier),
            expiring=self._expiring,
        )
        return _RedisPartition(writer)

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
            shorten=None if shorten is None else lambda prefixes: shorten(client, prefixes),
        )

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


class RejectsFactory:
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
            dict(self._dlq.kafka_config),
            self._dlq.backoff,
            sleep=self._sleep,
        )
        return Rejects(self._rules, writer)
