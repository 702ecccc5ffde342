"""What the invalidation flow is built from: one frozen config, and the worker's live parts.

:class:`FlowConfig` holds values, read once from the worker's settings
(``cdc_cache.app.worker.flow_config``): where the flow reads, where it writes, with which
limits. :class:`FlowContext` holds the objects the worker shares with the flow while it
runs: the stop request, the lag tracker and the TTL cap of the mode runtime, the holds
registry, the lineage tracker, the schema lookups, the replicas to wait for, the Redis
memory watch. Tests build
both with only what they need; the defaults are a bare flow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cdc_cache.core.retry import Backoff
from cdc_cache.lineage.tracker import LineageTracker
from cdc_cache.mode.holds import Holds
from cdc_cache.mode.lag import LagTracker
from cdc_cache.mode.tables import TableFallback
from cdc_cache.plan.rules import Rules
from cdc_cache.sink.apply import MemoryObserver
from cdc_cache.sink.connection import RedisAuth
from cdc_cache.sink.replica_wait import ReplicaRequirement
from cdc_cache.sink.tags import Fanout
from cdc_cache.source.schema_registry import SchemaResolver


@dataclass(frozen=True, slots=True)
class DlqTarget:
    """Where dead letters go: the DLQ topic, its brokers and client options, retry policy."""

    brokers: str
    topic: str
    kafka_config: Mapping[str, str]
    backoff: Backoff


@dataclass(frozen=True, slots=True)
class FlowConfig:
    """The flow's settings: read these topics from these brokers, write this Redis.

    ``kafka`` goes to every Kafka client, ``kafka_consumer`` to the consumers only (over
    ``kafka``). ``backoff`` paces the retries while Redis cannot be reached. Without
    ``dlq`` rejections are only logged and counted (tests); the worker always gives one.
    ``source_epoch`` is every change's epoch when no lineage tracker numbers them.
    ``tail=False`` ends each partition at the end of its topic (tests and replays).
    ``continuity=False`` leaves Bytewax's bare source, only to show what the check of
    each stored offset (``cdc_cache.continuity.guard``) prevents. ``process`` is this
    process's number in a cluster of ``processes``: its decoded batches go to its own sink
    partition.
    """

    rules: Rules
    brokers: tuple[str, ...]
    topics: tuple[str, ...]
    redis_url: str
    redis_auth: RedisAuth | None = None
    kafka: Mapping[str, str] = field(default_factory=dict)
    kafka_consumer: Mapping[str, str] = field(default_factory=dict)
    batch_size: int = 250
    source_epoch: int = 0
    max_value_bytes: int | None = None
    fanout: Fanout = field(default_factory=Fanout)
    backoff: Backoff = field(default_factory=Backoff)
    dlq: DlqTarget | None = None
    tail: bool = True
    continuity: bool = True
    process: int = 0
    processes: int = 1


def _never() -> bool:
    return False


def _no_cap() -> int | None:
    return None


def _wall_clock_ms() -> float:
    return time.time() * 1000


@dataclass(frozen=True, slots=True)
class FlowContext:
    """The live objects the worker shares with the flow.

    Setting ``stop`` ends every source partition after its current batch, so the flow
    drains, takes its final snapshot and returns: a graceful shutdown. ``lag`` is fed what
    the sources see (commit times, heartbeats, watermarks); ``ttl_cap_ms`` caps the TTL of
    new cache entries (the TTL fallback mode). ``holds`` is the mode runtime's registry,
    where the flow's parts raise a hold when they find the cache cannot be known right;
    ``tables`` its per-table fallback, told which tables' changes apply and fail, and
    capping the TTLs of those that fall back.
    With ``schemas`` the topics carry Avro: each batch's schemas are resolved (waiting out
    registry outages) before it is decoded. With ``replicas`` each batch waits until the
    required Redis replicas acknowledged it (``cdc_cache.sink.replica_wait``). With
    ``lineage`` each change gets the epoch of its log lineage, detected per partition.
    ``invalidate_only`` and ``memory`` go to every Redis applier (see
    ``cdc_cache.sink.memory``).
    """

    stop: threading.Event = field(default_factory=threading.Event)
    lag: LagTracker = field(default_factory=lambda: LagTracker(_wall_clock_ms))
    ttl_cap_ms: Callable[[], int | None] = _no_cap
    holds: Holds = field(default_factory=Holds)
    tables: TableFallback | None = None
    schemas: SchemaResolver | None = None
    replicas: ReplicaRequirement | None = None
    lineage: LineageTracker | None = None
    invalidate_only: Callable[[], bool] = _never
    memory: MemoryObserver | None = None
