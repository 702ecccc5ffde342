"""A batch is done only once the replicas the operator requires hold its writes.

Redis acknowledges a write before any replica has it; if the primary dies then, the
replica promoted in its place never had it. With ``redis_replicas`` N > 0, the writer
follows each applied batch with, on every primary the batch touched, one pipeline of
three commands: a small marker write (``cdc:w:{tag}``), ``WAIT N timeout`` and
``INFO replication``. WAIT covers every write the primary made before the marker, the
batch's included, whichever connection made them; the INFO tells which server answered.
The writer returns (and Bytewax may snapshot past the batch) only after every primary
reported N acknowledgements, so a recovery snapshot never moves past writes that exist on
the primary alone.

While a primary's replicas stay behind longer than the timeout the wait is repeated (the
flow waits: nothing is skipped) and a ``redis_replication`` hold puts the cache in ``ttl``
mode until they catch up. When the server answering is not the one that took the batch's
writes (a failover between the writes and the wait), the wait raises
:class:`PrimaryChanged` and the batch is applied again on the new primary; version gating
makes that idempotent.

Kept in one module: which primaries a batch's wait covers, who answered it and what a
failover costs are judged on one writer's state (the servers it saw, its holds).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from redis import RedisCluster
from redis.cluster import ClusterNode

from cdc_cache.core import metrics
from cdc_cache.core.errors import RedisUnavailable
from cdc_cache.core.keys import key_slot, ns, slot_tag, tag_for_slot
from cdc_cache.mode.controller import Cause
from cdc_cache.mode.holds import Holds
from cdc_cache.plan.cache_ops import CacheOp, DependencyOp, KeyOp, Notify
from cdc_cache.sink.connection import Client, cluster_primaries, translated_errors
from cdc_cache.sink.failover import PRIMARY, PrimaryRegistry, read_primaries
from cdc_cache.sink.replication import ReplicationInfo

log = logging.getLogger("cdc_cache.replica_wait")

MARKER_TTL_MS: Final = 600_000
# The marker is written even while Redis is out of memory (a few bytes with a TTL): the
# batch's invalidations land then too, and their wait must not stall the flow. It returns
# the replication id of the server that wrote it, which the WAIT and INFO after it must
# come from: when a node's connection fails, the cluster client sends again the commands
# of that node, and those that name no key (WAIT, INFO) to its default node instead.
_MARKER: Final = """#!lua flags=allow-oom
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')"""

T = TypeVar("T")


class PrimaryChanged(RedisUnavailable):
    """The server answering as primary did not take the batch's writes: apply it again."""


def marker_key(tag: str) -> str:
    """The marker written before WAIT, in the slot of ``tag`` (one per primary)."""
    return ns().replica_marker(tag)


# A primary touched by a batch: its node (None for a single server) and a key of its slots.
Touched = dict[str, tuple[ClusterNode | None, str]]


class ReplicaWait:
    """Waits, after each batch, for ``replicas`` acknowledgements from every primary touched.

    One per writer (worker thread), on the writer's client. ``scope`` tells this writer's
    holds from the other threads'. ``sleep(0)`` is called between waits, so a stop request
    (a stoppable sleep) ends them.
    """

    def __init__(
        self,
        client: Client,
        registry: PrimaryRegistry,
        holds: Holds,
        *,
        replicas: int,
        timeout_ms: int,
        scope: str = "",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if replicas < 1 or timeout_ms < 1:
            msg = f"replicas ({replicas}) and timeout_ms ({timeout_ms}) must be positive"
            raise ValueError(msg)
        self._client = client
        self._registry = registry
        self._holds = holds
        self._replicas = replicas
        self._timeout_ms = timeout_ms
        self._scope = scope
        self._sleep = sleep
        self._seen: dict[str, str] = {}
        self._behind: set[str] = set()

    def start(self) -> ReplicaWait:
        """Learn which servers are the primaries now, before this writer writes anything."""
        with translated_errors("reading the primaries' replication"):
            for node, _, info in read_primaries(self._client):
                self._registry.observe(node, info)
                self._seen[node] = info.replid
        return self

    def guarded(
        self, apply: Callable[[], T], ops: Sequence[CacheOp | DependencyOp]
    ) -> Callable[[], T]:
        """``apply`` (the writes of ``ops``) followed by the wait, as one retryable step.

        A transient failure of the wait retries only the wait; a :class:`PrimaryChanged`
        retries the writes too. The wait covers the primaries the ops belonged to before
        the writes and after them (a slot may move meanwhile); once a wait failed, only
        those of before that are still primaries (:meth:`_still_primaries`).
        """
        applied: list[T] = []  # the writes' result, once they were made
        before: Touched = {}

        def attempt() -> T:
            nonlocal before
            if not applied:
                before = self.touched(ops)
                applied.append(apply())
                waited = before
            else:
                waited = self._still_primaries(before)
            try:
                self.confirm({**waited, **self.touched(ops)})
            except PrimaryChanged:
                applied.clear()
                raise
            return applied[0]

        return attempt

    def touched(self, ops: Sequence[CacheOp | DependencyOp]) -> Touched:
        """The primaries ``ops`` write to, as the client's slot map says now.

        A prefix invalidation scans every primary, and tag and link ops write to their
        tags' slots and delete keys found there, in any slot: they count as touching every
        primary. A notification's relay writes to its channel's stream and the channel
        registry, in their own slots. A single server is one primary.
        """
        client = self._client
        if not isinstance(client, RedisCluster):
            return {PRIMARY: (None, "0")}
        if any(not isinstance(op, KeyOp | Notify) for op in ops):  # a prefix, a tag, a link
            return {
                str(node.name): (node, _key_on(client, node)) for node in client.get_primaries()
            }
        by_slot: dict[int, str] = {}
        for op in ops:
            if isinstance(op, KeyOp):
                by_slot.setdefault(key_slot(op.key), op.key)
            elif isinstance(op, Notify):  # relayed to its channel's stream, and registered
                for key in (ns().stream_key(op.channel), ns().channels):
                    by_slot.setdefault(key_slot(key), key)
        touched: Touched = {}
        for key in by_slot.values():
            node = client.get_node_from_key(key)
            if node is None:
                msg = f"no primary serves the slot of {key!r}: the cluster is failing over"
                raise RedisUnavailable(msg)
            touched.setdefault(str(node.name), (node, key))
        return touched

    def _still_primaries(self, touched: Touched) -> Touched:
        """Those of ``touched`` that the cluster's slot map, read afresh, names as primaries.

        One that is not lost its slots (its replica took them over, or they moved): the
        ops' slots lead to their new primary, whose identity check has the batch applied
        again there. Waiting for the one gone would hold the writer until it came back.
        Each keeps a key of a slot it serves now, for its marker.
        """
        client = self._client
        if not isinstance(client, RedisCluster):
            return touched
        serving = {str(node.name): node for node in cluster_primaries(client)}
        return {
            name: (serving[name], _key_on(client, serving[name]))
            for name in touched
            if name in serving
        }

    def confirm(self, touched: Touched) -> None:
        """Return once every primary in ``touched`` has ``replicas`` acknowledgements.

        Raises PrimaryChanged when a primary is not the server seen before, and
        RedisUnavailable (transient) for a server that fails or answers as a replica.
        """
        started = time.perf_counter()
        pending = dict(touched)
        while pending:
            with translated_errors(f"waiting for {self._replicas} replica(s)"):
                replies = self._wait(pending)
            for node, (_, info) in replies.items():
                self._check_identity(node, info)
            late = {}
            for node, (acked, info) in replies.items():
                if acked >= self._replicas:
                    self._registry.confirmed(node, info.replid, info.offset)
                else:
                    late[node] = pending[node]
                    self._fell_behind(node, acked, info)
            metrics.REPLICA_WAITS.labels("acknowledged").inc(len(replies) - len(late))
            if late:
                metrics.REPLICA_WAITS.labels("timed_out").inc(len(late))
                self._sleep(0)
            pending = late
        self._caught_up()
        metrics.REPLICA_WAIT_SECONDS.observe(time.perf_counter() - started)

    def _wait(self, touched: Touched) -> dict[str, tuple[int, ReplicationInfo]]:
        """One pipeline: marker, WAIT and INFO on each primary (same connection per node).

        Raises RedisUnavailable when a node's WAIT and INFO came from another server than
        its marker: their answers say nothing of it.
        """
        pipe = self._client.pipeline(transaction=False)
        now = int(time.time() * 1000)
        for node, key in touched.values():
            route: dict[str, Any] = {} if node is None else {"target_nodes": node}
            marker = marker_key(slot_tag(key)) if node is not None else marker_key("0")
            pipe.execute_command("EVAL", _MARKER, 1, marker, now, MARKER_TTL_MS, **route)
            pipe.execute_command("WAIT", self._replicas, self._timeout_ms, **route)
            pipe.execute_command("INFO", "replication", **route)
        replies = pipe.execute()
        answered = {}
        for i, name in enumerate(touched):
            marked, acked, info = replies[3 * i], replies[3 * i + 1], replies[3 * i + 2]
            parsed = ReplicationInfo.parse(info)
            if not marked or marked.decode() != parsed.replid:
                msg = (
                    f"the wait for {name} was answered by another server than the one that "
                    "wrote its marker (the client sent it elsewhere): waiting again"
                )
                raise RedisUnavailable(msg)
            answered[name] = (int(acked), parsed)
        return answered

    def _check_identity(self, node: str, info: ReplicationInfo) -> None:
        if not info.primary:
            self._forget_routes()
            msg = f"the primary {node} answers as a replica: a failover is under way"
            raise RedisUnavailable(msg)
        self._registry.observe(node, info)
        known, self._seen[node] = self._seen.get(node), info.replid
        if known != info.replid:
            msg = (
                f"the server answering for {node} is not the one that took the batch's "
                "writes (a failover): applying the batch again"
            )
            raise PrimaryChanged(msg)

    def _forget_routes(self) -> None:
        """Drop connections to a demoted primary (Sentinel) or refresh the slot map."""
        if isinstance(self._client, RedisCluster):
            self._client.nodes_manager.initialize()
        else:
            self._client.connection_pool.disconnect()

    def _fell_behind(self, node: str, acked: int, info: ReplicationInfo) -> None:
        reason = (
            f"{acked} of the {self._replicas} required replicas of {node} acknowledged within "
            f"{self._timeout_ms} ms ({info.online()} online, {info.lag_bytes()} bytes behind); "
            "the worker waits for them"
        )
        self._holds.hold(Cause.REDIS_REPLICATION, self._hold_scope(node), reason)
        if node not in self._behind:
            self._behind.add(node)
            log.warning("replicas behind: waiting", extra={"node": node, "reason": reason})

    def _caught_up(self) -> None:
        """The batch is acknowledged: this writer waits for no replica any more.

        Holds of primaries it waited for are all released, including one a failover
        replaced meanwhile (the batch was then confirmed on its successor).
        """
        for node in sorted(self._behind):
            self._holds.clear(Cause.REDIS_REPLICATION, self._hold_scope(node))
            log.warning("replicas caught up", extra={"node": node})
        self._behind.clear()

    def _hold_scope(self, node: str) -> str:
        return f"replicas:{node}:{self._scope}"


def _key_on(client: RedisCluster[Any], node: ClusterNode) -> str:
    """A key that hashes to one of ``node``'s slots (its slot's own tag, for the marker)."""
    for slot, owners in client.nodes_manager.slots_cache.items():
        if owners and owners[0].name == node.name:
            return tag_for_slot(int(slot))
    msg = f"the cluster's slot map has no slot on primary {node.name}"
    raise RedisUnavailable(msg)


@dataclass(frozen=True, slots=True)
class ReplicaRequirement:
    """What every writer of a process waits for: ``replicas`` acks within ``timeout_ms``.

    The writers report what they see to the process's ``registry`` (one per process).
    """

    replicas: int
    timeout_ms: int
    registry: PrimaryRegistry

    def for_writer(
        self, client: Client, holds: Holds, scope: str, sleep: Callable[[float], None]
    ) -> ReplicaWait:
        """A started wait on ``client`` (a writer's own); ``scope`` names the writer."""
        wait = ReplicaWait(
            client, self.registry, holds,
            replicas=self.replicas, timeout_ms=self.timeout_ms, scope=scope, sleep=sleep,
        )  # fmt: skip
        return wait.start()
