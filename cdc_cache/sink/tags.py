"""Cache tags in Redis: membership kept by rows and fills, invalidation in pages.

The Redis side of :mod:`cdc_cache.plan.dependencies`. Each tag is one hash
(``keys.tag_key``, written only by ``lua/tags.lua``) holding its version and its members;
the keys it names are deleted through the version-gated apply script
(:class:`~cdc_cache.sink.apply.RedisApplier`), in their own slots.

- A link op is one script call on the tag; when the tag's version is newer than the link
  (its parent changed before the link was seen), the key is then deleted at that version
  (the catch-up). The call returns the version even for a stale or duplicate link op, so a
  replay after a crash between the two steps does the catch-up again.
- An invalidation raises the tag's version, then walks the members ``page_size`` at a
  time, each page one gated delete call per slot, and finally takes out the members that
  fills put there whose keys it deleted (only if no newer fill put them back). A crash
  half-way leaves the rest to the replay of the same change: the version stays, the
  pages run again, and deletes that already applied are duplicates.
- Above ``fanout_limit`` members, a tag whose keys have known prefixes (a parent row's tag)
  is not walked: the TTLs under those prefixes are shortened instead (``shorten``, the
  ``ttl`` mode's own step), so staleness is bounded by the fallback TTL and the stream does
  not stall; ``cdc_cache_fanout_fallbacks_total`` counts it and a log line names the tag.
  An application tag has no prefix to shorten, so it is walked whatever its size.

Nothing here must be atomic with anything else: each step is idempotent and gated by its
own version (see the convergence argument in :mod:`cdc_cache.plan.dependencies`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from cdc_cache_client.tags import member, member_key, tags_script
from redis.commands.core import Script

from cdc_cache.core import metrics
from cdc_cache.core.keys import ns
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import (
    DeleteKey,
    DependencyOp,
    InvalidateTag,
    LinkKey,
)
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.connection import Client, translated_errors
from cdc_cache.sink.encoding import Outcome

log = logging.getLogger("cdc_cache.tags")

DEFAULT_FANOUT_LIMIT: Final = 100_000
DEFAULT_PAGE_SIZE: Final = 1_000
_CHANGED: Final = (Outcome.APPLIED, Outcome.INVALIDATED)


Shorten = Callable[[Client, Sequence[str], Callable[[float], object]], object]


@dataclass(frozen=True, slots=True)
class Fanout:
    """How tag invalidations run (settings ``fanout_page``, ``fanout_limit``).

    ``page`` members per page; above ``limit`` members, ``shorten(client, prefixes, pace)``
    gives the keys under the dependent keys' prefixes the fallback TTL instead, waiting
    ``pace(seconds)`` between pages (None: no fallback, every invalidation is walked).
    """

    limit: int = DEFAULT_FANOUT_LIMIT
    page: int = DEFAULT_PAGE_SIZE
    shorten: Shorten | None = None


@dataclass
class DependencyResult:
    """What applying a batch's dependency ops did."""

    deleted: int = 0  # keys deleted because a row they depend on changed
    fallbacks: int = 0  # invalidations answered by shortening TTLs


class TagStore:
    """Applies tag and link ops (:data:`~cdc_cache.plan.cache_ops.DependencyOp`) to Redis.

    ``shorten`` gives every key under the prefixes it gets a TTL no longer than the
    fallback TTL (None: no fallback, every invalidation is walked).
    """

    def __init__(
        self,
        client: Client,
        applier: RedisApplier,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        fanout_limit: int = DEFAULT_FANOUT_LIMIT,
        shorten: Callable[[Sequence[str]], object] | None = None,
    ) -> None:
        self._applier = applier
        self._page_size = page_size
        self._fanout_limit = fanout_limit
        self._shorten = shorten
        self._script = Script(client, tags_script())

    def apply(self, ops: Iterable[DependencyOp]) -> DependencyResult:
        """Apply ``ops`` in order; raises TransientError (retry the batch) or ApplyError."""
        result = DependencyResult()
        for op in ops:
            if isinstance(op, LinkKey):
                result.deleted += self._link(op)
            elif isinstance(op, InvalidateTag):
                self._invalidate(op, result)
            else:  # the join row's own key, or a TRUNCATE's prefix
                applied = self._applier.apply([op])
                result.deleted += sum(o in _CHANGED for o in applied.outcomes)
                result.deleted += sum(applied.invalidated)
        return result

    def _call(self, tag: str, *args: object) -> object:
        with translated_errors(f"updating cache tag {tag!r}"):
            return self._script(keys=[ns().tag_key(tag)], args=list(args))

    def _link(self, op: LinkKey) -> int:
        version = self._call(
            op.tag,
            "L",
            member(op.key, op.link),
            op.position.encode(),
            int(op.present),
            op.tombstone_ttl_ms,
        )
        assert isinstance(version, bytes)
        if not (op.present and version and version.decode() > op.position.encode()):
            return 0
        caught_up = SourcePosition.decode(version)
        outcomes = self._applier.apply([DeleteKey(op.key, caught_up, op.tombstone_ttl_ms)])
        deleted = outcomes.count(Outcome.APPLIED) + outcomes.count(Outcome.INVALIDATED)
        metrics.DEPENDENCY_DELETES.labels("catch_up").inc(deleted)
        return deleted

    def _invalidate(self, op: InvalidateTag, result: DependencyResult) -> None:
        members = self._call(op.tag, "N")
        assert isinstance(members, int)
        metrics.FANOUT_KEYS.observe(members)
        lifetime = op.tombstone_ttl_ms
        if members > self._fanout_limit and op.prefixes and self._shorten is not None:
            self._call(op.tag, "I", op.position.encode(), 0, 1, lifetime)  # the version moves
            log.warning(
                "tag %r has %d members, above fanout_limit %d: shortening the TTLs under "
                "%s instead of deleting each key",
                op.tag, members, self._fanout_limit, ", ".join(op.prefixes),
            )  # fmt: skip
            self._shorten(op.prefixes)
            metrics.FANOUT_FALLBACKS.inc()
            result.fallbacks += 1
            return
        metrics.FANOUT_PENDING.inc(members)
        try:
            self._walk(op, result)
        finally:
            metrics.FANOUT_PENDING.dec(members)

    def _walk(self, op: InvalidateTag, result: DependencyResult) -> None:
        cursor: object = 0
        while True:
            reply = self._call(
                op.tag, "I", op.position.encode(), cursor, self._page_size, op.tombstone_ttl_ms
            )
            assert isinstance(reply, list)
            cursor, pairs = reply[0], reply[1:]
            found = [(member_key(pairs[i]), pairs[i + 1]) for i in range(0, len(pairs), 2)]
            keys = list(dict.fromkeys(key for (key, _), _ in found))
            deletes = [DeleteKey(key, op.position, op.tombstone_ttl_ms) for key in keys]
            outcomes = self._applier.apply(deletes).outcomes if deletes else ()
            deleted = {key for key, o in zip(keys, outcomes, strict=True) if o in _CHANGED}
            metrics.DEPENDENCY_DELETES.labels("invalidation").inc(len(deleted))
            result.deleted += len(deleted)
            fills = [
                item
                for (key, link), value in found
                if link == "" and key in deleted
                for item in (member(key, link), value)
            ]
            if fills:
                self._call(op.tag, "R", *fills)
            if cursor in (0, b"0"):
                return
