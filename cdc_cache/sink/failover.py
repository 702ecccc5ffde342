"""Redis failovers: which primaries the worker writes to, when one is replaced, what it cost.

One :class:`ReplicationMonitor` per worker process reads ``INFO replication`` from every
primary once a second: the replicas' lag goes to metrics, and the primary's identity
(replication id and offset) to the :class:`PrimaryRegistry`, which the replica waits of
every worker thread (``cdc_cache.sink.replica_wait``) also report to. When the server answering
as a primary is not the one known before (Sentinel promoted a replica, a Cluster replica
took over its slots, a primary restarted empty), the registry classifies the switch
(``replication.classify``):

- ``complete``: the new primary holds every write the replicas confirmed. The batches
  whose confirmation was still pending are applied again by their writers, so nothing is
  lost; the switch is logged and counted.
- ``incomplete``: writes acknowledged by the old primary may be missing (no replica
  confirmation was asked for, or the promoted replica had not received them). The cache
  cannot be known right: a ``redis_replication`` hold forces ``ttl`` mode at once, the
  keys under the rules' prefixes get the fallback TTL on the new primary, and the hold is
  released one fallback TTL later, when every entry that could be stale has expired.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from redis import Redis, RedisCluster
from redis.sentinel import SentinelConnectionPool

from cdc_cache.core import metrics
from cdc_cache.mode.controller import Cause
from cdc_cache.mode.holds import Holds
from cdc_cache.sink.connection import REDIS_ERRORS, Client
from cdc_cache.sink.replication import PrimaryRecord, ReplicationInfo, Switch, classify

log = logging.getLogger("cdc_cache.failover")

PRIMARY: Final = "primary"  # the node name of a single primary (plain or Sentinel-managed)
FAILOVER_SCOPE: Final = "failover"

OnSwitch = Callable[[str, Switch, str], None]


class PrimaryRegistry:
    """The primaries of one worker process, by node name; thread-safe.

    ``tracked`` says whether writes are confirmed on replicas (``redis_replicas`` > 0);
    without it nothing is known durable, so every switch is incomplete. ``on_switch``
    hears each switch once, whichever thread saw it first.
    """

    def __init__(self, *, tracked: bool, on_switch: OnSwitch | None = None) -> None:
        self._tracked = tracked
        self._on_switch = on_switch
        self._lock = threading.Lock()
        self._records: dict[str, PrimaryRecord] = {}

    def observe(self, node: str, info: ReplicationInfo) -> Switch:
        """Record what ``node``'s primary said; classify and report a switch."""
        with self._lock:
            before_node, before = self._predecessor(node, info)
            if before is None:
                self._records[node] = PrimaryRecord.first(info, tracked=self._tracked)
                return Switch.NONE
            switch = classify(before, info)
            if switch is Switch.NONE:
                self._records[node] = before.seen_at(info)
                return switch
            self._records.pop(before_node, None)
            self._records[node] = PrimaryRecord.first(info, tracked=self._tracked)
        reason = _describe(before_node, node, switch, before, info)
        metrics.REDIS_FAILOVERS.labels(switch.value).inc()
        log.warning(
            "redis primary switched",
            extra={"node": node, "was": before_node, "outcome": switch.value, "reason": reason},
        )
        if self._on_switch is not None:
            self._on_switch(node, switch, reason)
        return switch

    def confirmed(self, node: str, replid: str, offset: int) -> None:
        """Writes of ``node``'s primary ``replid`` up to ``offset`` reached the replicas."""
        with self._lock:
            record = self._records.get(node)
            if record is not None and record.replid == replid:
                self._records[node] = record.confirmed(offset)

    def _predecessor(self, node: str, info: ReplicationInfo) -> tuple[str, PrimaryRecord | None]:
        """The record ``info`` continues: the same id, or the primary it was promoted from."""
        same = self._records.get(node)
        if same is not None and same.replid == info.replid:
            return node, same
        for other, record in self._records.items():
            if info.replid2 and record.replid == info.replid2:
                return other, record
        return node, same


def _describe(
    before_node: str, node: str, switch: Switch, before: PrimaryRecord, info: ReplicationInfo
) -> str:
    where = node if before_node == node else f"{before_node} -> {node}"
    held = info.holds_history_of(before.replid)
    history = (
        f"holds the old primary's stream up to offset {held}"
        if held >= 0
        else "holds none of the old primary's stream (restarted or replaced)"
    )
    if switch is Switch.COMPLETE:
        return f"redis primary {where} switched; the new one {history}, every confirmed write"
    durable = (
        "no replica confirmation is configured (redis_replicas 0)"
        if before.durable is None
        else f"writes were confirmed up to offset {before.durable}"
    )
    return (
        f"redis primary {where} switched and writes may be lost: the new one {history}, {durable}"
    )


class ReplicationMonitor:
    """Reads every primary's replication once a second; answers incomplete switches.

    ``shorten(keep_going)`` gives the keys under the rules' prefixes the fallback TTL on
    the current primaries (returns how many); the ``redis_replication`` hold raised for an
    incomplete switch is released ``hold_s`` after that finished.
    """

    def __init__(
        self,
        client: Client,
        holds: Holds,
        *,
        tracked: bool,
        shorten: Callable[[Callable[[], bool]], int],
        hold_s: float,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = PrimaryRegistry(tracked=tracked, on_switch=self._switched)
        self._client = client
        self._holds = holds
        self._shorten = shorten
        self._hold_s = hold_s
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._shorten_due = False
        self._release_at: float | None = None
        self._labels: set[str] = set()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Read the primaries once now (their identity before any write), then each second."""
        self.tick()
        self._thread = threading.Thread(target=self._run, name="cdc-replication", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching (and any TTL shortening in progress)."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(10)

    def tick(self) -> None:
        """Read, export, detect; then run the response to an incomplete switch, if due."""
        try:
            primaries = read_primaries(self._client)
        except REDIS_ERRORS as exc:
            log.warning("replication: cannot read the primaries", extra={"error": str(exc)})
            primaries = []
        labels = set()
        for node, label, info in primaries:
            labels.add(label)
            metrics.REDIS_REPLICAS_ONLINE.labels(label).set(info.online())
            metrics.REDIS_REPLICA_LAG_BYTES.labels(label).set(info.lag_bytes())
            metrics.REDIS_REPLICA_ACK_AGE.labels(label).set(info.ack_age_s())
            self.registry.observe(node, info)
        if primaries:
            for gone in self._labels - labels:
                for gauge in (
                    metrics.REDIS_REPLICAS_ONLINE,
                    metrics.REDIS_REPLICA_LAG_BYTES,
                    metrics.REDIS_REPLICA_ACK_AGE,
                ):
                    gauge.remove(gone)
            self._labels = labels
        self._respond()

    def _switched(self, node: str, switch: Switch, reason: str) -> None:
        if switch is not Switch.INCOMPLETE:
            return
        self._holds.hold(Cause.REDIS_REPLICATION, FAILOVER_SCOPE, reason)
        with self._lock:
            self._shorten_due = True
            self._release_at = None

    def _respond(self) -> None:
        with self._lock:
            due, self._shorten_due = self._shorten_due, False
            release_at = self._release_at
        if due:
            try:
                count = self._shorten(lambda: not self._closing.is_set())
            except REDIS_ERRORS as exc:
                log.error(
                    "could not give the new primary's keys the fallback TTL; retrying",
                    extra={"error": str(exc)},
                )
                with self._lock:
                    self._shorten_due = True
                return
            metrics.TTL_SHORTENED.inc(count)
            log.warning(
                "after an incomplete failover, existing keys got the fallback TTL; ttl mode "
                "holds until they have expired",
                extra={"keys": count, "hold_s": self._hold_s},
            )
            with self._lock:
                if not self._shorten_due:
                    self._release_at = self._clock() + self._hold_s
            return
        if release_at is not None and self._clock() >= release_at:
            with self._lock:
                self._release_at = None
            self._holds.clear(Cause.REDIS_REPLICATION, FAILOVER_SCOPE)

    def _run(self) -> None:
        while not self._closing.wait(self._interval_s):
            self.tick()


def read_primaries(client: Client) -> list[tuple[str, str, ReplicationInfo]]:
    """``(node, address, INFO replication)`` of every primary of ``client``.

    A single server (or Sentinel's primary) is the node ``primary``; Cluster nodes are
    named by address, from a fresh slot map, and a node that does not answer is left out.
    A server answering as a replica is left out too (a Sentinel-managed client then
    reconnects, finding the new primary).
    """
    if isinstance(client, RedisCluster):
        client.nodes_manager.initialize()
        found = []
        for node in client.get_primaries():
            try:
                raw = client.get_redis_connection(node).info("replication")
            except REDIS_ERRORS as exc:  # one node down: the others are still read
                log.warning("replication: a primary does not answer",
                            extra={"node": node.name, "error": str(exc)})  # fmt: skip
                continue
            info = ReplicationInfo.parse(raw)
            if info.primary:
                found.append((str(node.name), str(node.name), info))
        return found
    info = ReplicationInfo.parse(client.info("replication"))
    if not info.primary:
        client.connection_pool.disconnect()
        return []
    return [(PRIMARY, address_of(client), info)]


def address_of(client: Redis[Any]) -> str:
    """``host:port`` of a single client's server (Sentinel's current primary for one)."""
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        host, port = pool.get_master_address()
        return f"{host}:{port}"
    options = pool.connection_kwargs
    return f"{options.get('host', '?')}:{options.get('port', '?')}"
