"""Redis under memory pressure: supported eviction policies, checks, what is watched.

The ``maxmemory-policy`` of every primary is checked at start; while the worker runs it
watches headroom, evictions and refusals for memory. Why each policy is or is not
supported (README, "Redis memory"):

- ``volatile-lru``, ``volatile-lfu``, ``volatile-random``, ``volatile-ttl`` evict only keys
  with a TTL. Version buckets have none (``cdc_cache.sink.versions``), so versions and
  tombstones stay; what goes are cache entries (a miss, filled again from the database)
  and leases (the fill they guard is dropped). When nothing evictable is left, Redis
  refuses writes as under ``noeviction``.
- ``noeviction`` evicts nothing and refuses writes once full (OOM). The apply script's
  calls are then sent again as invalidations through its ``allow-oom`` form (deletes and
  their tombstones land), the worker holds ``ttl`` mode with cause ``redis_oom`` (which
  shortens the TTLs of cached entries and so frees memory), and the hold clears once writes
  have been accepted for ``mode_window_s``.
- ``allkeys-lru``, ``allkeys-lfu``, ``allkeys-random`` evict any key, a version or a
  tombstone apart from its cache entry: the next late or repeated change then passes the
  gate and writes an older row image or resurrects a deleted row. Refused at start, unless
  the operator opts into ``eviction_fallback: invalidate_only``: the worker then writes no
  values at all, only invalidations (deletes are right whatever was evicted), and
  applications fill the cache on misses. The same mode engages when a primary's policy
  becomes unsafe while the worker runs, and stays for one version lifetime after every
  primary is safe again (versions lost meanwhile cannot be told from ones never written).
- Without ``maxmemory`` (0) Redis evicts nothing and refuses nothing for memory: any
  policy is fine.

Kept in one module: the check at start and the watch share each primary's state and
the ``redis_oom`` hold; what is pure (which policies are safe, a node's figures, a
refusal) is small and stands first.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cdc_cache.core import metrics
from cdc_cache.core.errors import ConfigError
from cdc_cache.core.keys import ns
from cdc_cache.core.periodic import Periodic
from cdc_cache.mode.controller import Cause
from cdc_cache.mode.holds import Holds
from cdc_cache.sink.connection import REDIS_ERRORS, Client, node_name, primaries
from cdc_cache.sink.scripts import accepts_writes, write_record

log = logging.getLogger("cdc_cache.memory")

SAFE_POLICIES: Final = (
    "noeviction",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
)
_POLICIES: Final = (*SAFE_POLICIES, "allkeys-lru", "allkeys-lfu", "allkeys-random")
SETTING: Final = "eviction_fallback"
MIN_REDIS_MAJOR: Final = 7
UNSAFE_UNTIL_FIELD: Final = "unsafe_until_ms"  # in the layout record: invalidate only until then


class EvictionFallback(StrEnum):
    """What the worker does on a Redis whose eviction policy may evict versions."""

    REFUSE = "refuse"
    INVALIDATE_ONLY = "invalidate_only"


@dataclass(frozen=True, slots=True)
class NodeMemory:
    """One primary's memory settings and state, from INFO memory and INFO stats."""

    node: str
    maxmemory: int
    policy: str
    counted: int  # used_memory minus what Redis does not count against maxmemory
    evicted_keys: int
    version: str = "7.0.0"

    @property
    def evicts_versions(self) -> bool:
        """True when eviction may take a version or tombstone apart from its cache key."""
        return self.maxmemory > 0 and self.policy not in SAFE_POLICIES

    @property
    def headroom(self) -> int | None:
        """Bytes left before Redis evicts or refuses writes (None: no maxmemory)."""
        return self.maxmemory - self.counted if self.maxmemory > 0 else None

    @property
    def too_old(self) -> bool:
        """Before Redis 7.0: no script flags, so no script that runs while out of memory."""
        major = self.version.split(".", 1)[0]
        return not major.isdigit() or int(major) < MIN_REDIS_MAJOR

    @classmethod
    def parse(
        cls,
        node: str,
        memory: dict[str, object],
        stats: dict[str, object],
        server: dict[str, object] | None = None,
    ) -> NodeMemory:
        """From the dicts redis-py makes of ``INFO memory``, ``stats`` and ``server``."""
        used = int(str(memory.get("used_memory", 0)))
        uncounted = int(str(memory.get("mem_not_counted_for_evict", 0)))
        return cls(
            node,
            int(str(memory.get("maxmemory", 0))),
            str(memory.get("maxmemory_policy", "noeviction")),
            used - uncounted,
            int(str(stats.get("evicted_keys", 0))),
            str((server or {}).get("redis_version", "7.0.0")),
        )


def refusal(unsafe: Sequence[NodeMemory]) -> str:
    """The startup error for primaries whose policy may evict versions."""
    where = ", ".join(f"{n.node} has maxmemory-policy {n.policy}" for n in unsafe)
    return (
        f"Redis {where}: it may evict cdc-cache's version records apart from their cache "
        "keys, after which a late or repeated change writes an older row or resurrects a "
        f"deleted one. Set maxmemory-policy to one of {', '.join(SAFE_POLICIES)} "
        f"(volatile-lru is the usual choice), or set {SETTING}: invalidate_only to run with "
        "invalidations only (no values written; see README, Redis memory)"
    )


def read_memory(client: Client) -> list[NodeMemory]:
    """INFO memory and stats of every primary."""
    found = []
    for node in primaries(client):
        pipe = node.pipeline(transaction=False)
        pipe.info("memory")
        pipe.info("stats")
        pipe.info("server")
        memory, stats, server = pipe.execute()
        found.append(NodeMemory.parse(node_name(node), memory, stats, server))
    return found


class OomGuard:
    """Which primaries refuse writes for memory; holds ``ttl`` mode (cause ``redis_oom``).

    A node's hold is raised at its first refusal and cleared once it accepted a write
    after ``settle_s`` without refusals, so a node at the edge of its memory does not make
    the mode flap. Thread-safe: the flow's writers and the watch share one per process.
    """

    def __init__(
        self, holds: Holds, settle_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._holds = holds
        self._settle_s = settle_s
        self._clock = clock
        self._lock = threading.Lock()
        self._refused_at: dict[str, float] = {}

    def refused(self, node: str, error: str) -> None:
        """``node`` refused a call for memory: hold ``ttl`` mode."""
        metrics.REDIS_OOM_REFUSALS.inc()
        with self._lock:
            self._refused_at[node] = self._clock()
        self._holds.hold(
            Cause.REDIS_OOM,
            node,
            f"Redis {node} refuses writes for memory ({error.split(' script:', 1)[0]}); "
            "changes are applied as invalidations",
        )

    def accepted(self, node: str) -> None:
        """``node`` took a write-capable call; the hold clears once it has settled."""
        with self._lock:
            since = self._refused_at.get(node)
            if since is None or self._clock() - since < self._settle_s:
                return
            del self._refused_at[node]
        self._holds.clear(Cause.REDIS_OOM, node)

    def held(self) -> list[str]:
        """The nodes held for memory now."""
        with self._lock:
            return sorted(self._refused_at)


class MemoryWatch:
    """The worker's eye on Redis memory, once per ``interval_s`` in a daemon thread.

    Exports each primary's maxmemory, headroom, policy and evictions; engages
    invalidate-only writing while a primary's policy may evict versions (and for
    ``lifetime_ms`` after, remembered in Redis across restarts); and probes the nodes held
    for memory, so the hold clears even when no change arrives.
    """

    def __init__(
        self,
        client: Client,
        *,
        fallback: EvictionFallback,
        lifetime_ms: int,
        guard: OomGuard,
        interval_s: float = 1.0,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000,
    ) -> None:
        self.client = client
        self._fallback = fallback
        self._lifetime_ms = lifetime_ms
        self.guard = guard
        self._clock_ms = clock_ms
        self._invalidate_only = False
        self._unsafe_until = 0.0
        self._evicted: dict[str, int] = {}
        self._loop = Periodic(
            "cdc-redis-memory",
            self.tick,
            interval_s,
            errors=REDIS_ERRORS,
            log=log,
            failure="could not read Redis memory",
        )

    def invalidate_only(self) -> bool:
        """Whether values may not be written now (asked by the appliers once per batch)."""
        return self._invalidate_only

    def check(self) -> list[NodeMemory]:
        """The check at start: refuse an unsafe policy, or engage invalidate-only writing.

        Raises ConfigError (exit 2) for a Redis before 7.0, and for a policy that may evict
        versions unless the operator opted into ``eviction_fallback: invalidate_only``.
        """
        nodes = read_memory(self.client)
        old = [f"{n.node} runs Redis {n.version}" for n in nodes if n.too_old]
        if old:
            msg = (
                f"{', '.join(old)}: cdc-cache needs Redis 7.0 or later (its scripts declare "
                "Redis 7 flags so that invalidations land while Redis is out of memory); "
                "upgrade Redis or point redis_url at a newer server"
            )
            raise ConfigError(msg)
        unsafe = [n for n in nodes if n.evicts_versions]
        if unsafe and self._fallback is EvictionFallback.REFUSE:
            raise ConfigError(refusal(unsafe))
        for node in nodes:
            log.info(
                "redis memory",
                extra={"node": node.node, "maxmemory": node.maxmemory, "policy": node.policy},
            )
        self._observe(nodes)
        return nodes

    def tick(self) -> None:
        """Read every primary once, export what was seen, and act on it."""
        self._observe(read_memory(self.client))
        for name in self.guard.held():
            node = next((n for n in primaries(self.client) if node_name(n) == name), None)
            if node is not None and accepts_writes(node):
                self.guard.accepted(name)

    def start(self) -> None:
        """Tick once per interval in a daemon thread until :meth:`close`."""
        self._loop.start()

    def close(self) -> None:
        self._loop.close()

    def _observe(self, nodes: Sequence[NodeMemory]) -> None:
        for node in nodes:
            _export(node)
            seen = self._evicted.get(node.node)
            if seen is not None and node.evicted_keys > seen:
                metrics.REDIS_EVICTIONS.labels(node.node).inc(node.evicted_keys - seen)
            self._evicted[node.node] = node.evicted_keys
        unsafe = [n for n in nodes if n.evicts_versions]
        now = self._clock_ms()
        if unsafe:  # remembered here and in Redis (for restarts; it may be evicted, too)
            self._unsafe_until = now + self._lifetime_ms
            write_record(
                self.client, ns().version_layout, {UNSAFE_UNTIL_FIELD: int(self._unsafe_until)}
            )
        else:
            raw = self.client.hget(ns().version_layout, UNSAFE_UNTIL_FIELD)
            self._unsafe_until = max(self._unsafe_until, float(raw) if raw else 0.0)
        self._set_invalidate_only(now < self._unsafe_until, unsafe)

    def _set_invalidate_only(self, engaged: bool, unsafe: Sequence[NodeMemory]) -> None:
        metrics.INVALIDATE_ONLY.set(1 if engaged else 0)
        if engaged == self._invalidate_only:
            return
        self._invalidate_only = engaged
        if engaged:
            log.error(
                "writing invalidations only: an eviction policy may evict versions",
                extra={
                    "nodes": {n.node: n.policy for n in unsafe},
                    "setting": f"{SETTING}={self._fallback.value}",
                },
            )
        else:
            log.warning("writing values again: every primary's eviction policy keeps versions")


def _export(node: NodeMemory) -> None:
    metrics.REDIS_MAXMEMORY.labels(node.node).set(node.maxmemory)
    if node.headroom is not None:
        metrics.REDIS_MEMORY_HEADROOM.labels(node.node).set(node.headroom)
    else:
        with contextlib.suppress(KeyError):
            metrics.REDIS_MEMORY_HEADROOM.remove(node.node)
    for policy in {*_POLICIES, node.policy}:
        metrics.REDIS_EVICTION_POLICY.labels(node.node, policy).set(policy == node.policy)
