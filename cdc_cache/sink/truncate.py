"""A TRUNCATE recorded where late changes meet it: the table's position in every bucket.

The apply script judges every change of a table at or below the table's last TRUNCATE
stale (``lua/apply.lua``, the T op), whether its key was cached when the TRUNCATE ran or
not. A script can only read its own slot, so each version bucket (one per slot) holds a
copy, ``truncated:<table>``, raised and never lowered (``lua/truncate.lua``), with a horizon
like a tombstone's so the sweeper forgets it. On one server a single call covers every
bucket and announces the TRUNCATE on the table's channels, only when it raised the
position: a TRUNCATE delivered twice or replayed after a crash announces nothing again.
On a Cluster each slot's bucket gets its own call; the first bucket's call announces the
TRUNCATE into its slot's outbox, relayed to the channels like any notification
(``cdc_cache.sink.outbox``).
"""

from __future__ import annotations

import logging
import re

from redis import RedisCluster

from cdc_cache.core.errors import ApplyError
from cdc_cache.core.keys import ns
from cdc_cache.plan.cache_ops import InvalidatePrefix, Truncated
from cdc_cache.sink.connection import Client
from cdc_cache.sink.nodes import buckets_by_node
from cdc_cache.sink.outbox import OutboxRelay
from cdc_cache.sink.scripts import lua_script
from cdc_cache.sink.versions import encode_version

log = logging.getLogger("cdc_cache.redis_apply")


def record_truncate(client: Client, op: InvalidatePrefix, truncated: Truncated) -> int:
    """Raise ``op.table``'s truncate position in every version bucket; how many it raised."""
    source, _ = lua_script("truncate")
    head = (op.table, encode_version(op.position, delete=True), op.tombstone_ttl_ms)
    cluster = isinstance(client, RedisCluster)
    channels = _channels(client, truncated.channels)
    announce = [truncated.maxlen or 1, truncated.payload, *channels]
    raised = 0
    outbox = None
    for node, buckets in buckets_by_node(client):
        script = node.register_script(source)
        if cluster:  # the first bucket announces, through its slot's outbox
            pipe = node.pipeline(transaction=False)
            for bucket in buckets:
                if outbox is None and channels:
                    outbox = ns().outbox_key(bucket)
                    script(keys=[bucket, outbox], args=[*head, 1, *announce], client=pipe)
                else:
                    script(keys=[bucket], args=[*head, 1, 1, b""], client=pipe)
            raised += sum(int(n) for n in pipe.execute())
            continue
        keys = [*buckets, *(k for c in channels for k in (ns().stream_key(c), ns().channels))]
        raised += int(script(keys=keys, args=[*head, len(buckets), *announce]))
    if outbox is not None:
        OutboxRelay(client).relay([outbox])
    log.info(
        "recorded the TRUNCATE of table %s at %s in %d version buckets",
        op.table, op.position, raised,
    )  # fmt: skip
    return raised


def _channels(client: Client, pattern: str | None) -> list[str]:
    """The channels ever notified whose names ``pattern`` matches."""
    if pattern is None:
        return []
    matcher = re.compile(pattern)
    found = []
    for raw in client.smembers(ns().channels):
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            msg = f"{ns().channels} holds {raw!r}, no channel name; remove it (SREM)"
            raise ApplyError(msg) from exc
        if matcher.fullmatch(name):
            found.append(name)
    return sorted(found)
