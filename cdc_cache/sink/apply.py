"""Apply planned cache operations to Redis, each gated by the source position of its key.

Redis keeps, for every managed key, the version (position) of the last change applied to
it, in a version bucket of the key's slot (``keys.version_key``, ``cdc_cache.sink.versions``).
A Lua script (``lua/apply.lua``) writes an op only when its version is strictly newer, so
duplicates, replays and late arrivals converge to the newest row image, and a delete
leaves a version tombstone that a late older write cannot get past. An applied op also
voids the key's lease (``keys.lease_key``), which is how an application fill through
``cdc_cache.aside.cache_aside`` learns that the row it loaded may be stale.

When Redis refuses a call for memory (OOM), its ops are sent again as invalidations
(sets become deletes) through the same script flagged ``allow-oom``: deletes and their
tombstones land even then, and the :class:`MemoryObserver` hears of the refusal (the
worker falls back to ``ttl`` mode). ``invalidate_only`` does the same for every batch, for
eviction policies that could evict versions (see ``cdc_cache.sink.memory``). A TRUNCATE's
scripts are flagged ``allow-oom`` and never refused, so before one the primaries are asked
whether they take writes, and the observer hears it as from a batch.

A batch costs one round trip: one EVALSHA on a single server; on Redis Cluster one EVALSHA
per hash slot (a key, its version key and its lease key share a slot), pipelined so that
each primary is written to once. There a notification goes to the outbox of its row's
slot, and the batch's outboxes are relayed to the channels' streams before ``apply``
returns, while Redis is out of memory too (:mod:`cdc_cache.sink.outbox`). The script's
arguments are encoded in :mod:`cdc_cache.sink.encoding` (pure), prefix invalidations run
in :mod:`cdc_cache.sink.invalidate_prefix`, and errors are translated as
:mod:`cdc_cache.sink.connection` says.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis import RedisCluster
from redis import exceptions as rex

from cdc_cache.core.errors import ApplyError, ConfigError, RedisUnavailable
from cdc_cache.core.keys import key_slot, ns
from cdc_cache.plan.cache_ops import CacheOp, InvalidatePrefix, KeyOp, Notify, as_invalidation
from cdc_cache.sink import scripts
from cdc_cache.sink.connection import (
    Client,
    is_oom,
    is_transient,
    misconfiguration,
    node_name,
    primaries,
    translated_errors,
)
from cdc_cache.sink.encoding import (
    MAX_ARGS_PER_CALL,
    MAX_OPS_PER_CALL,
    Call,
    Outcome,
    calls,
    outcome_of,
)
from cdc_cache.sink.invalidate_prefix import invalidate_prefix
from cdc_cache.sink.outbox import OutboxRelay


class MemoryObserver(Protocol):
    """Hears, per Redis node, whether it took a write-capable call or refused it for memory."""

    def refused(self, node: str, error: str) -> None:
        """``node`` refused a call for memory (OOM); its ops were applied as invalidations."""

    def accepted(self, node: str) -> None:
        """``node`` took a call that may write values."""


class _NoObserver:
    def refused(self, node: str, error: str) -> None:
        """Nobody listens."""

    def accepted(self, node: str) -> None:
        """Nobody listens."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """One outcome per SetRow/DeleteKey and one deleted-key count per InvalidatePrefix.

    Both are in input order.
    """

    outcomes: tuple[Outcome, ...]
    invalidated: tuple[int, ...]

    def count(self, outcome: Outcome) -> int:
        """How many key ops ended with ``outcome`` (for applied/stale/duplicate metrics)."""
        return self.outcomes.count(outcome)


class _Refused:
    """A call Redis refused for memory (OOM), with the error's text."""

    def __init__(self, error: str) -> None:
        self.error = error


class RedisApplier:
    """Applies batches of cache ops to one Redis deployment (single server or cluster).

    ``max_ops_per_call`` and ``max_args_per_call`` bound one script call: a script blocks
    the server while it runs, so a huge batch is split into several calls (sent in the same
    pipeline, in order). ``scan_count`` is the SCAN COUNT hint of a prefix invalidation,
    which also bounds how many keys one of its calls deletes.

    ``invalidate_only`` is asked once per batch: while it is true every set is applied as
    a delete (an eviction policy that may evict versions, see ``cdc_cache.sink.memory``).
    ``memory`` hears which nodes refuse calls for memory and which take them. ``relay``
    moves notifications from outboxes to channel streams on a Cluster;
    ``relay_outboxes = False`` leaves them there, as a crash right after the apply would.
    """

    def __init__(
        self,
        client: Client,
        *,
        max_ops_per_call: int = MAX_OPS_PER_CALL,
        max_args_per_call: int = MAX_ARGS_PER_CALL,
        scan_count: int = 500,
        invalidate_only: Callable[[], bool] = lambda: False,
        memory: MemoryObserver | None = None,
        relay: OutboxRelay | None = None,
    ) -> None:
        if min(max_ops_per_call, max_args_per_call, scan_count) <= 0:
            msg = "max_ops_per_call, max_args_per_call and scan_count must be positive"
            raise ConfigError(msg)
        self._client = client
        self._max_ops = max_ops_per_call
        self._max_args = max_args_per_call
        self._scan_count = scan_count
        self._invalidate_only = invalidate_only
        self._memory = memory or _NoObserver()
        self._cluster = isinstance(client, RedisCluster)
        self._relay = relay if relay is not None else OutboxRelay(client)
        self.relay_outboxes = True  # False only to leave a crash's state behind (tests)

    def apply(self, ops: Sequence[CacheOp]) -> ApplyResult:
        """Apply ``ops`` in order; raises TransientError (retry the batch) or ApplyError.

        Key ops between two prefix invalidations go out together; an InvalidatePrefix runs
        after the key ops before it and before those after it.
        """
        outcomes: list[Outcome] = []
        invalidated: list[int] = []
        pending: list[KeyOp | Notify] = []
        with translated_errors(f"applying a batch of {len(ops)} ops"):
            for op in ops:
                if isinstance(op, InvalidatePrefix):
                    outcomes += self._apply_key_ops(pending)
                    pending = []
                    if op.truncated is not None:
                        self._judge_memory()
                    invalidated.append(
                        invalidate_prefix(self._client, op, self._apply_key_ops, self._scan_count)
                    )
                else:
                    pending.append(op)
            outcomes += self._apply_key_ops(pending)
            if self._cluster and self.relay_outboxes:  # before the batch returns
                self._relay.after_batch(ops)
        return ApplyResult(tuple(outcomes), tuple(invalidated))

    def sweep_outboxes(self) -> int:
        """Relay what every outbox holds (Cluster; a crash's leftovers); how many entries."""
        return self._relay.sweep() if self._cluster else 0

    def discard(self, keys: Sequence[str]) -> int:
        """Delete ``keys`` and their leases with no version gate; how many keys existed.

        Only for keys whose gate cannot run (a version key of another type refuses every
        op on its key): deleting is always safe, and no change can write such a key again
        until its version key is repaired, so nothing older can come back either.
        """
        with translated_errors(f"deleting {len(keys)} keys without their versions"):
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.delete(key)  # one key per DEL: a Cluster pipeline takes no more
                pipe.delete(ns().lease_key(key))
            replies = pipe.execute()
        return sum(int(found) for found in replies[::2])

    def _judge_memory(self) -> None:
        """Tell ``memory`` which primaries refuse writes for memory, as a batch's calls would.

        Before a TRUNCATE: its scripts (and on a Cluster its announcement's relay) are
        flagged ``allow-oom`` and run while Redis is full, so no refusal of theirs would say
        so. A TRUNCATE holds ``ttl`` mode like a batch of changes.
        """
        for node in primaries(self._client):
            refusal = scripts.oom_refusal(node)
            if refusal is None:
                self._memory.accepted(node_name(node))
            else:
                self._memory.refused(node_name(node), refusal)

    def _apply_key_ops(self, ops: Sequence[KeyOp | Notify]) -> list[Outcome]:
        """Apply key ops, one call per slot and chunk; refused calls again as invalidations."""
        if not ops:
            return []
        groups: dict[int, list[int]] = defaultdict(list)
        slot = 0
        for index, op in enumerate(ops):
            if self._cluster:  # a notification goes with its host (into its slot's outbox)
                if not isinstance(op, Notify):
                    slot = key_slot(op.key)
                elif index == 0:  # no host: the script refuses it
                    slot = key_slot(ns().outbox_key(op.channel))
            groups[slot].append(index)
        sent: list[KeyOp | Notify] = (
            [as_invalidation(op) for op in ops] if self._invalidate_only() else list(ops)
        )
        calls = [call for indices in groups.values() for call in self._calls(sent, indices)]
        codes: list[int | None] = [None] * len(ops)
        refused: list[Call] = []
        for call, reply in zip(calls, self._run(calls), strict=True):
            node = self._node(call)
            if isinstance(reply, _Refused):
                self._memory.refused(node, reply.error)
                refused.append(call)
                continue
            self._memory.accepted(node)
            for index, code in zip(call.ops, reply, strict=True):
                codes[index] = int(code)
        if refused:
            for index in (index for call in refused for index in call.ops):
                sent[index] = as_invalidation(sent[index])
            retry = [again for call in refused for again in self._calls(sent, call.ops)]
            for call, reply in zip(retry, self._run(retry, allow_oom=True), strict=True):
                if isinstance(reply, _Refused):  # pragma: no cover - allow-oom is never refused
                    raise RedisUnavailable(reply.error)
                for index, code in zip(call.ops, reply, strict=True):
                    codes[index] = int(code)
        return [outcome_of(*sent_as) for sent_as in zip(ops, sent, codes, strict=True)]

    def _calls(self, ops: Sequence[KeyOp | Notify], indices: Sequence[int]) -> Iterator[Call]:
        return calls(
            ops, indices, max_ops=self._max_ops, max_args=self._max_args, outbox=self._cluster
        )

    def _run(self, calls: Sequence[Call], *, allow_oom: bool = False) -> list[list[int] | _Refused]:
        """Send every call in one pipeline; load the script and resend if a node lacks it.

        A call refused for memory comes back as :class:`_Refused`.
        """
        source, sha = scripts.apply_script(allow_oom=allow_oom)  # per call: swappable
        replies: list[list[int] | _Refused | None] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = self._client.pipeline(transaction=False)
            for i in todo:
                call = calls[i]
                pipe.execute_command(
                    "EVALSHA", sha, len(call.keys), *call.keys, *call.args, **self._route(call)
                )
            missing = []
            for i, reply in zip(todo, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(reply, rex.NoScriptError):
                    missing.append(i)
                elif is_oom(reply):
                    replies[i] = _Refused(str(reply))
                elif isinstance(reply, Exception):
                    if is_transient(reply) or misconfiguration(reply) is not None:
                        raise reply
                    msg = f"apply script failed on the call for {calls[i].keys[0]!r}: {reply}"
                    raise ApplyError(msg) from reply
                else:
                    replies[i] = reply
            if not missing:
                return [reply for reply in replies if reply is not None]
            if attempt == 0:
                self._client.execute_command("SCRIPT LOAD", source)  # every primary
            todo = missing
        msg = "apply script vanished right after SCRIPT LOAD (failover or SCRIPT FLUSH?)"
        raise RedisUnavailable(msg)

    def _node(self, call: Call) -> str:
        """The name (host:port) of the node a call goes to."""
        if isinstance(self._client, RedisCluster):
            node = self._client.get_node_from_key(call.keys[0])
            return str(node.name) if node is not None else "?"
        return node_name(self._client)

    def _route(self, call: Call) -> dict[str, Any]:
        """Name a cluster call's node up front, from the client's slot map.

        Left to itself, the cluster pipeline asks a server for the keys of every EVALSHA
        (COMMAND GETKEYS), one round trip each. A stale route is answered with MOVED,
        which the pipeline follows.
        """
        if isinstance(self._client, RedisCluster):
            return {"target_nodes": self._client.get_node_from_key(call.keys[0])}
        return {}
