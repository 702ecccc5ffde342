"""A prefix of cache keys invalidated (a TRUNCATE): every primary SCANned, keys deleted.

The TRUNCATE's position is recorded first (``cdc_cache.sink.truncate``), so no change older
than it lands once its keys are gone.

Each key found is deleted version-gated, as a delete of its own at the truncate's
position, through the applier; keys with a lease and no value yet (an application fill
in progress) are found through their lease keys, so that the fill is voided too.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence

from redis import Redis

from cdc_cache.core.errors import ApplyError
from cdc_cache.core.keys import ns
from cdc_cache.plan.cache_ops import DeleteKey, InvalidatePrefix
from cdc_cache.sink.connection import Client, primaries
from cdc_cache.sink.encoding import Outcome
from cdc_cache.sink.truncate import record_truncate

log = logging.getLogger("cdc_cache.redis_apply")


def glob_escape(text: str) -> str:
    """Escape SCAN MATCH metacharacters so ``text`` matches only itself."""
    return "".join(f"\\{ch}" if ch in "\\*?[]" else ch for ch in text)


def invalidate_prefix(
    client: Client,
    op: InvalidatePrefix,
    delete: Callable[[Sequence[DeleteKey]], list[Outcome]],
    scan_count: int,
) -> int:
    """Delete the keys under ``op``'s prefix with ``delete``; how many it applied.

    ``scan_count`` is the SCAN COUNT hint, which also bounds how many keys one call of
    ``delete`` gets.
    """
    if not op.prefix or op.prefix.startswith(ns().internal_prefixes):
        msg = (
            f"InvalidatePrefix for table {op.table} has prefix {op.prefix!r}: it must be "
            f"non-empty and outside {' and '.join(map(repr, ns().internal_prefixes))}; "
            "fix the table's key templates"
        )
        raise ApplyError(msg)
    if op.truncated is not None:
        record_truncate(client, op, op.truncated)
    under = glob_escape(op.prefix) + "*"
    patterns = (under, glob_escape(ns().lease_prefix) + "{*}:" + under)
    scanned = deleted = 0
    for node, pattern in itertools.product(primaries(client), patterns):
        for found in _scan(node, pattern, scan_count):
            names = [_cache_key(_key_text(raw), op.prefix) for raw in found]
            batch = [
                DeleteKey(name, op.position, op.tombstone_ttl_ms)
                for name in names
                if name is not None
            ]
            scanned += len(batch)
            deleted += delete(batch).count(Outcome.APPLIED)
    log.info(
        "invalidated prefix %r of table %s at %s: %d keys deleted of %d found",
        op.prefix, op.table, op.position, deleted, scanned,
    )  # fmt: skip
    return deleted


def _scan(node: Redis[bytes], pattern: str, count: int) -> Iterator[list[bytes]]:
    """One node's keys matching ``pattern``, a SCAN page at a time."""
    cursor = 0
    while True:
        cursor, found = node.scan(cursor=cursor, match=pattern, count=count)
        yield found
        if cursor == 0:
            return


def _cache_key(name: str, prefix: str) -> str | None:
    """The cache key a SCAN hit stands for (itself, or the key a lease is held on), if any."""
    if name.startswith(ns().internal_prefixes):
        name = ns().leased_key(name) or ""
    return name if name.startswith(prefix) else None


def _key_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"key {raw!r} under an invalidated prefix is not UTF-8; delete it by hand"
        raise ApplyError(msg) from exc
