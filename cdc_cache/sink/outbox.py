"""Notifications on Redis Cluster: slot outboxes relayed to channel streams, each entry once.

A channel's stream lives in another slot than the row's key, so the apply script cannot
append to it in the call that writes the row. It appends the notification to the outbox
of the row's slot instead (``lua/apply.lua``, the O op), only when the write applied, in
the same call: a crash cannot separate the two. The relay then moves outbox entries to
their channels' streams through ``lua/relay.lua``, which runs in the channel's slot and
appends only the entries newer than the last one it recorded for that outbox (the
progress hash beside the stream), so several relays, a relay repeated after a crash, and
the sweep send nothing twice. An outbox is trimmed only below what every one of its
channels has taken. The channel registry (``cdc:channels``, another slot) is updated by an
idempotent SADD before the relay's calls, and the trim waits for both.

While Redis is out of memory the relay runs all the same, as the apply script's
invalidations do (both scripts and the registry's SADD are flagged ``allow-oom``; reading
and trimming an outbox is never refused): a batch's notifications reach their channels
then, as on one server, and no batch waits for memory. What it writes is bounded (each
stream by its MAXLEN, the progress hash by one field per outbox, the registry by one
member per channel), and the outboxes it empties would otherwise grow while Redis is full.

The writer relays the outboxes of a batch before the batch returns (before the recovery
snapshot); :meth:`OutboxRelay.sweep` relays every non-empty outbox (one per slot, found by
name, without SCAN), at start and in a thread beside the flow (:func:`outbox_sweeper`), for
what a crash or a failed relay left behind: a sweep looks at every slot (0.4 s on a
3-primary Cluster), which no batch should wait for.

Order: entries of one outbox reach a channel in outbox order, so one row's changes (one
key, one slot) arrive in the order they applied; rows in different slots have no order
between them.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis import RedisCluster
from redis import exceptions as rex

from cdc_cache.core import metrics
from cdc_cache.core.errors import ApplyError, RedisUnavailable
from cdc_cache.core.keys import SLOTS, ns
from cdc_cache.core.periodic import Periodic
from cdc_cache.plan.cache_ops import CacheOp, DeleteKey, IndexMember, Notify, SetRow
from cdc_cache.sink.connection import REDIS_ERRORS, Client, is_transient, misconfiguration
from cdc_cache.sink.scripts import add_members, lua_script

log = logging.getLogger("cdc_cache.outbox")

PAGE: Final = 1000  # outbox entries read per outbox and round
SWEEP_S: Final = 60.0  # every outbox relayed this often (Cluster), whatever the batches wrote
PROGRESS_LIFETIME_MS: Final = 7 * 24 * 3600 * 1000  # refreshed by every relay call


@dataclass(frozen=True, slots=True)
class Entry:
    """One notification in an outbox: its id there, channel, stream bound and payload."""

    id: bytes
    channel: str
    maxlen: int
    payload: bytes


def entry_of(raw_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    """An outbox entry as XRANGE returns it (fields ``c``, ``m``, ``p`` of the O op)."""
    try:
        return Entry(raw_id, fields[b"c"].decode(), int(fields[b"m"]), fields[b"p"])
    except (KeyError, ValueError) as exc:
        msg = f"outbox entry {raw_id!r} is malformed (not written by the apply script?): {fields!r}"
        raise ApplyError(msg) from exc


def by_channel(entries: Sequence[Entry]) -> dict[str, list[Entry]]:
    """Entries grouped by channel, each group in outbox order."""
    grouped: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        grouped[entry.channel].append(entry)
    return dict(grouped)


def after(entry_id: bytes) -> str:
    """The smallest stream id above ``entry_id`` (XTRIM MINID keeps it and what follows)."""
    ms, _, seq = entry_id.decode().partition("-")
    return f"{ms}-{int(seq) + 1}"


class OutboxRelay:
    """Moves outbox entries to channel streams, each once; safe with several instances.

    ``check_progress=False`` appends without the progress check: only to prove that it is
    what keeps re-sent entries out of the streams.
    """

    def __init__(
        self,
        client: Client,
        *,
        page: int = PAGE,
        check_progress: bool = True,
    ) -> None:
        self._client = client
        self._page = page
        self._check = "1" if check_progress else "0"

    def after_batch(self, ops: Sequence[CacheOp]) -> int:
        """Relay the outboxes of a batch's notifications, applied or not; how many entries.

        Those not applied too: a batch replayed after a crash finishes its first run's
        relay.
        """
        outboxes = {
            ns().outbox_key(host.key)
            for host, op in itertools.pairwise(ops)
            if isinstance(op, Notify) and isinstance(host, (SetRow, DeleteKey, IndexMember))
        }
        return self.relay(outboxes) if outboxes else 0

    def relay(self, outboxes: Iterable[str]) -> int:
        """Relay everything ``outboxes`` hold; how many entries were appended to streams."""
        todo = sorted(set(outboxes))
        appended = 0
        while todo:
            pipe = self._client.pipeline(transaction=False)
            for outbox in todo:
                pipe.xrange(outbox, count=self._page)
            pages = pipe.execute()
            done, trims = self._relay_pages(dict(zip(todo, pages, strict=True)))
            appended += done
            pipe = self._client.pipeline(transaction=False)
            for outbox, minid in trims.items():
                pipe.xtrim(outbox, minid=minid, approximate=False)
            pipe.execute()
            # a full page: read on, unless an entry is held (it would be read again and again)
            todo = [
                outbox
                for outbox, page in zip(todo, pages, strict=True)
                if len(page) == self._page and trims.get(outbox) == after(page[-1][0])
            ]
        return appended

    def sweep(self) -> int:
        """Relay every non-empty outbox (what a crash left behind); how many entries."""
        names = [ns().outbox_for_slot(slot) for slot in range(SLOTS)]
        pipe = self._client.pipeline(transaction=False)  # follows a moved slot
        for name in names:
            pipe.exists(name)
        pending = [name for name, found in zip(names, pipe.execute(), strict=True) if found]
        appended = self.relay(pending)
        if appended:
            log.info(
                "relayed %d notifications left in outboxes",
                appended,
                extra={"outboxes": len(pending)},
            )
        return appended

    def _relay_pages(self, pages: dict[str, list[Any]]) -> tuple[int, dict[str, str]]:
        """Relay one page per outbox; the trim point of each outbox (below its first failure)."""
        calls: list[tuple[str, list[Entry], list[Any]]] = []
        channels: set[str] = set()
        for outbox, page in pages.items():
            entries = [entry_of(raw_id, fields) for raw_id, fields in page]
            for channel, group in by_channel(entries).items():
                channels.add(channel)
                args = [outbox, max(e.maxlen for e in group), PROGRESS_LIFETIME_MS, self._check]
                calls.append((outbox, group, args + [x for e in group for x in (e.id, e.payload)]))
        if not calls:
            return 0, {}
        add_members(self._client, ns().channels, sorted(channels))
        replies = self._run(calls)
        trims = {o: after(p[-1][0]) for o, p in pages.items() if p}
        appended = 0
        for (outbox, group, _), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                self._stuck(outbox, group, reply)
                keep = group[0].id.decode()
                trims[outbox] = min(trims[outbox], keep, key=_id_order)
                continue
            appended += int(reply)
            metrics.REDIS_OPS.labels("relay", "applied").inc(int(reply))
            metrics.REDIS_OPS.labels("relay", "duplicate").inc(len(group) - int(reply))
        return appended, trims

    def _run(self, calls: list[tuple[str, list[Entry], list[Any]]]) -> list[Any]:
        """One relay script call per (outbox, channel), pipelined; the script loaded if missing."""
        source, sha = lua_script("relay")
        todo = list(range(len(calls)))
        replies: list[Any] = [None] * len(calls)
        for attempt in range(2):
            pipe = self._client.pipeline(transaction=False)
            for i in todo:
                channel = calls[i][1][0].channel
                keys = (ns().stream_key(channel), ns().relay_progress_key(channel))
                pipe.execute_command("EVALSHA", sha, 2, *keys, *calls[i][2], **self._route(keys[0]))
            missing = []
            for i, reply in zip(todo, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(reply, rex.NoScriptError):
                    missing.append(i)
                elif isinstance(reply, Exception) and (
                    is_transient(reply) or misconfiguration(reply) is not None
                ):
                    raise reply
                else:
                    replies[i] = reply
            if not missing:
                return replies
            if attempt == 0:
                self._client.execute_command("SCRIPT LOAD", source)  # every primary
            todo = missing
        msg = "relay script vanished right after SCRIPT LOAD (failover or SCRIPT FLUSH?)"
        raise RedisUnavailable(msg)

    def _route(self, key: str) -> dict[str, Any]:
        if isinstance(self._client, RedisCluster):
            return {"target_nodes": self._client.get_node_from_key(key)}
        return {}

    @staticmethod
    def _stuck(outbox: str, group: list[Entry], error: Exception) -> None:
        metrics.REDIS_OPS.labels("relay", "refused").inc(len(group))
        log.error(
            "notifications held in their outbox: Redis refused their channel's stream; "
            "repair the key (delete what is not a stream) and they are relayed",
            extra={
                "outbox": outbox,
                "key": ns().stream_key(group[0].channel),
                "entries": len(group),
                "error": str(error),
            },
        )


def _id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def outbox_sweeper(client: Client, pause_s: float = SWEEP_S) -> Periodic:
    """:meth:`OutboxRelay.sweep` every ``pause_s`` in a daemon thread (start, close)."""
    relay = OutboxRelay(client)

    def sweep() -> None:
        relay.sweep()

    return Periodic(
        "cdc-outbox-sweep",
        sweep,
        pause_s,
        errors=REDIS_ERRORS,
        log=log,
        failure="outbox sweep interrupted; retried next pass",
    )
