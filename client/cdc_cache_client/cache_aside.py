"""Cache-aside reads for applications, safe against the fill/invalidation race.

A plain fill (GET misses, load the row, SET it) races with cdc-cache: the reader loads the
old row, the row changes and the worker deletes or rewrites the key, then the reader's SET
puts the old row back, stale until its TTL ends. :class:`CacheAside` closes that window
with a lease: on a miss it stores a random token in the key's lease key
(:meth:`Names.lease_key <cdc_cache_client.keys.Names.lease_key>`, same Redis Cluster slot
as the key) *before* loading, and fills only if
the token is still there. The worker's apply script deletes the lease key of every key it
applies a change to, so a change applied between the load and the fill voids the fill; the
loaded value is returned to the caller but not cached. A loader that finds no row is cached
as a short-lived negative marker under the same rule.

While another reader holds the lease, a reader waits up to ``lease_wait_ms`` for its fill
(one database load per miss instead of one per reader), then loads without caching.

The effective mode
------------------
The worker publishes the effective mode in the Redis hash ``<namespace>:mode`` (``cdc:mode``
unless the worker's ``namespace`` setting says otherwise; give :class:`CacheAside` the same
``namespace``):

==================  ========================================================================
``mode``            ``cdc`` (invalidations keep the cache fresh) or ``ttl`` (the connector
                    lags; staleness is bounded only by TTLs)
``reason``          why the mode was entered (for people; not read here)
``since_ms``        when, in Unix milliseconds (for people; not read here)
``fallback_ttl_ms`` the short TTL of ``ttl`` mode, in milliseconds
``ttl_prefixes``    JSON list: key prefixes of the tables in ``ttl`` mode on their own
                    (see ``cdc_cache.mode.tables``), in either mode
``updated_ms``      when the worker (or a watchdog standing in for it) last wrote the hash
``stale_after_ms``  how old the hash may get before it says nothing (the worker's lag SLO
                    plus its mode window)
==================  ========================================================================

The hash is read at most once per ``mode_refresh_s``. In ``ttl`` mode fills get
``min(ttl, fallback_ttl_ms)``, and so do fills of keys under ``ttl_prefixes``; without the
field, the ``fallback_ttl_ms`` given to :class:`CacheAside`. An unknown mode counts as
``ttl``, the side on which staleness stays bounded.

A fill acting on a ``cdc`` read just before the worker switched to ``ttl`` can land after
the worker gave the existing keys the fallback TTL. The worker goes through them once
more :data:`MODE_GRACE_S` after the switch; a fill that returns later than that after the
mode read it acted on reads the mode again and, should it say ``ttl`` now, shortens its key
(``PEXPIRE ... LT``): if it still says ``cdc``, the switch came after the fill landed, and
the worker's own pass shortens it.

A worker rewrites the hash every second. When it is down and no watchdog stands in, the
hash keeps saying whatever it said last, often ``cdc``, while no invalidation is applied:
so a hash whose ``updated_ms`` is older than ``stale_after_ms`` (the smaller of the hash's
and the helper's own) counts as ``ttl``. Clocks of hosts differ a little; the bound is
minutes by default, far above usual skew. A missing hash means ``cdc`` at first (a worker
writes it within a second of starting, or of Redis coming back empty), and ``ttl`` once
it has been missing for longer than the helper's ``stale_after_ms`` by its own clock: no
worker runs under this namespace then (Redis restarted empty while the worker is down,
or the helper was given another namespace than the worker's), so nothing invalidates.

Tags
----
``get(key, loader, tags=["brand:7"])`` puts the key under cache tags (surrogate keys) that
the rules invalidate (``invalidate_tags``, or a parent row's tag such as
``catalog.brands:7``, see :mod:`cdc_cache.plan.dependencies`), so a key the rules cannot
describe (a search result, an aggregate) is deleted when a row it was computed from
changes. The lease rule extends to tags: the fill reads its tags' versions before it
loads, adds its key to each tag before it writes, and writes only if no tag's version
moved meanwhile (an invalidation after the load began voids the fill, like a change of
the key itself). An invalidation that ran earlier is seen by the load; one that runs
later finds the key under the tag and deletes it.

:attr:`CacheAside.fills` counts what the fills did (loaded, landed, voided by a change of
the key, voided by a tag's invalidation): an application exports them as it likes.

Values are bytes, read and written with GET/SET: use the helper on string keys (rules
``format: json``, or keys the rules only delete) and fill them in the same shape the rules
write, since a worker SET and an application fill land in the same key. (The worker's
``cdc_cache.aside.cache_aside.CacheAside`` adds ``get_row``, which renders a rule's key and
serializes a loaded row exactly as the worker does.)

Runs on Python 3.9 and later with redis-py alone. Kept in one module: the lease protocol
and the mode it honours are one read path, and about a fifth of the module is this
description of them.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, Union

from redis.commands.core import Script

from cdc_cache_client.keys import DEFAULT_NAMESPACE, Names
from cdc_cache_client.tags import check_tag, member, tags_script

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import RedisCluster

    Client = Union["Redis[bytes]", "RedisCluster[bytes]"]

log = logging.getLogger("cdc_cache.client")

NEGATIVE: Final = b"\x00cdc:absent"  # no JSON document or text value is this byte string

# Hit: {1, value}. Miss: take the lease if nobody holds it ({2}), else {0}.
_GET_OR_LEASE: Final = """
local value = redis.call('GET', KEYS[1])
if value then return {1, value} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0}
"""
# Write the value only while the lease is still ours: 1 filled, 0 voided by a change.
_FILL: Final = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
return 1
"""
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
_HIT, _LEASED = 1, 2
_POLL_S: Final = 0.01
# How long after ttl began the worker gives the keys the fallback TTL once more: a fill that
# returns within this of the mode read it acted on landed before that pass.
MODE_GRACE_S: Final = 5.0


@dataclass(frozen=True)
class FillCounts:
    """What a helper's fills did since it was made.

    ``loads``: misses that took the lease and ran the loader; each then ``landed``, was
    voided because a change of the key was applied (``voided_by_change``) or because one
    of its tags was invalidated (``voided_by_tag``) while it loaded, or its loader raised.
    """

    loads: int = 0
    landed: int = 0
    voided_by_change: int = 0
    voided_by_tag: int = 0


@dataclass(frozen=True)
class CacheMode:
    """The effective cache mode and the TTL cap it puts on fills (None: no cap).

    ``table_prefixes`` are the key prefixes of tables in ``ttl`` mode on their own; their
    keys' fills are capped at ``table_cap_ms`` whatever the mode.
    """

    name: str
    ttl_cap_ms: int | None
    table_prefixes: tuple[str, ...] = ()
    table_cap_ms: int | None = None

    def cap_for(self, key: str) -> int | None:
        """The TTL cap of a fill of ``key``."""
        if self.table_cap_ms is not None and key.startswith(self.table_prefixes):
            return min(self.table_cap_ms, self.ttl_cap_ms or self.table_cap_ms)
        return self.ttl_cap_ms


_CDC: Final = CacheMode("cdc", None)


class CacheAside:
    """Cache-aside reads with leases for one Redis deployment (single server or Cluster).

    ``ttl_ms`` is the TTL of a filled value, ``negative_ttl_ms`` that of a "no such row"
    marker; ``lease_ttl_ms`` must exceed the loader's usual run time (a fill after it ends
    is dropped); ``fallback_ttl_ms`` caps fills in ``ttl`` mode when the worker did not
    publish its own; ``stale_after_ms`` is how old the mode hash may get before it counts
    as ``ttl`` (None trusts it however old: the worker being down goes unnoticed);
    ``namespace`` is the worker's ``namespace`` setting (its lease, tag and mode keys). The
    client must return bytes (redis-py's default). Thread-safe as the client is.
    """

    def __init__(
        self,
        redis: Client,
        *,
        ttl_ms: int,
        negative_ttl_ms: int = 30_000,
        lease_ttl_ms: int = 5_000,
        lease_wait_ms: int = 200,
        fallback_ttl_ms: int = 60_000,
        mode_refresh_s: float = 1.0,
        stale_after_ms: int | None = 90_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        positive = {
            "ttl_ms": ttl_ms,
            "negative_ttl_ms": negative_ttl_ms,
            "lease_ttl_ms": lease_ttl_ms,
            "fallback_ttl_ms": fallback_ttl_ms,
        }
        for name, value in positive.items():
            if value <= 0:
                msg = f"CacheAside: {name}={value}; give a positive number of milliseconds"
                raise ValueError(msg)
        if lease_wait_ms < 0 or mode_refresh_s < 0 or (stale_after_ms or 0) < 0:
            msg = "CacheAside: lease_wait_ms, mode_refresh_s, stale_after_ms: none may be < 0"
            raise ValueError(msg)
        if redis.get_connection_kwargs().get("decode_responses"):
            msg = "CacheAside needs a Redis client with decode_responses=False (values are bytes)"
            raise ValueError(msg)
        self._redis = redis
        self._names = Names(namespace)
        self._ttl_ms = ttl_ms
        self._negative_ttl_ms = negative_ttl_ms
        self._lease_ttl_ms = lease_ttl_ms
        self._lease_wait_s = lease_wait_ms / 1000
        self._fallback_ttl_ms = fallback_ttl_ms
        self._mode_refresh_s = mode_refresh_s
        self._stale_after_ms = stale_after_ms
        self._clock = clock
        self._wall_clock = wall_clock
        self._stale = False
        self._absent_told = False
        self._absent_since: float | None = None  # by ``clock``, while the hash is missing
        self._mode: tuple[float, CacheMode] | None = None  # when it was read, by ``clock``
        self._get_or_lease = Script(redis, _GET_OR_LEASE)
        self._fill = Script(redis, _FILL)
        self._release = Script(redis, _RELEASE)
        self._tags = Script(redis, tags_script())
        self._counts = FillCounts()
        self._counts_lock = threading.Lock()

    @property
    def fills(self) -> FillCounts:
        """What this helper's fills did so far (see :class:`FillCounts`)."""
        return self._counts

    def _count(self, outcome: str) -> None:
        with self._counts_lock:
            counts = self._counts
            self._counts = replace(counts, **{outcome: getattr(counts, outcome) + 1})

    def get(
        self,
        key: str,
        loader: Callable[[], bytes | None],
        *,
        ttl_ms: int | None = None,
        tags: Sequence[str] = (),
    ) -> bytes | None:
        """The cached value of ``key``; on a miss, ``loader()``'s (None: no such row).

        ``loader`` reads the source of truth; its result is cached (for ``ttl_ms``, default
        the helper's) under ``tags`` unless a change to ``key`` was applied, or one of
        ``tags`` invalidated, while it ran. Redis errors propagate as redis-py exceptions;
        an exception from ``loader`` releases the lease. A malformed tag is a ValueError.
        """
        if ttl_ms is not None and ttl_ms <= 0:
            msg = f"CacheAside.get({key!r}): ttl_ms={ttl_ms}; give a positive number or None"
            raise ValueError(msg)
        if isinstance(tags, str):
            msg = f"CacheAside.get({key!r}): tags={tags!r}; give a list of tags"
            raise ValueError(msg)
        tags = tuple(dict.fromkeys(check_tag(tag, namespace=self._names.namespace) for tag in tags))
        token = secrets.token_hex(16)
        lease = self._names.lease_key(key)
        deadline = self._clock() + self._lease_wait_s
        while True:
            reply = self._get_or_lease(keys=[key, lease], args=[token, self._lease_ttl_ms])
            if reply[0] == _HIT:
                value: bytes = reply[1]
                return None if value == NEGATIVE else value
            if reply[0] == _LEASED:
                ttl = self._ttl_ms if ttl_ms is None else ttl_ms
                return self._load_and_fill(key, lease, token, loader, ttl, tags=tags)
            if self._clock() >= deadline:
                return loader()  # another reader's fill is slow: do not wait on it longer
            time.sleep(_POLL_S)

    def mode(self) -> CacheMode:
        """The effective mode, read from the mode hash at most once per refresh period."""
        return self._mode_read()[1]

    def _mode_read(self, *, fresh: bool = False) -> tuple[float, CacheMode]:
        """When the mode was read (by ``clock``, before reading) and what it said."""
        now = self._clock()
        if not fresh and self._mode is not None and now < self._mode[0] + self._mode_refresh_s:
            return self._mode
        self._mode = (now, self._read_mode())
        return self._mode

    def _load_and_fill(
        self,
        key: str,
        lease: str,
        token: str,
        loader: Callable[[], bytes | None],
        ttl_ms: int,
        *,
        tags: tuple[str, ...],
    ) -> bytes | None:
        seen = [self._redis.hget(self._names.tag_key(tag), "") or b"" for tag in tags]
        self._count("loads")
        try:
            value = loader()
            if value == NEGATIVE:
                msg = f"loader for {key!r} returned the negative marker; return None instead"
                raise ValueError(msg)
        except BaseException:
            self._release(keys=[lease], args=[token])
            raise
        stored, ttl = (NEGATIVE, self._negative_ttl_ms) if value is None else (value, ttl_ms)
        read_at, mode = self._mode_read()
        cap = mode.cap_for(key)
        if cap is not None:
            ttl = min(ttl, cap)
        for tag, before in zip(tags, seen):
            reply = self._tags(
                keys=[self._names.tag_key(tag)], args=["F", member(key, ""), token, ttl]
            )
            if reply != before:
                self._release(keys=[lease], args=[token])
                log.debug("fill of %r dropped: tag %r was invalidated while it loaded", key, tag)
                self._count("voided_by_tag")
                return value
        if self._fill(keys=[key, lease], args=[token, stored, ttl]):
            self._count("landed")
            if self._clock() - read_at > MODE_GRACE_S:
                self._recheck(key, ttl)
        else:
            log.debug("fill of %r dropped: a change was applied while it loaded", key)
            self._count("voided_by_change")
        return value

    def _recheck(self, key: str, ttl_ms: int) -> None:
        """Cap a fill that landed too late for the worker's pass after a switch to ttl."""
        cap = self._mode_read(fresh=True)[1].cap_for(key)
        if cap is not None and cap < ttl_ms:
            self._redis.pexpire(key, cap, lt=True)
            log.debug("fill of %r capped after it landed: the mode changed meanwhile", key)

    def _read_mode(self) -> CacheMode:
        fields = self._redis.hgetall(self._names.mode)
        if not fields and not self._absent_told:
            self._absent_told = True
            log.warning(
                "%s is absent: no worker publishes a mode under namespace %r (reading cdc "
                "until it has been absent for stale_after_ms, then ttl); give CacheAside "
                "the worker's namespace setting",
                self._names.mode, self._names.namespace,
            )  # fmt: skip
        name = fields.get(b"mode", b"cdc").decode("utf-8", "replace")
        if self._too_old(fields):
            name = "ttl"
        prefixes = _prefixes(fields.get(b"ttl_prefixes"))
        if name == "cdc" and not prefixes:
            return _CDC
        cap = self._cap(fields.get(b"fallback_ttl_ms"))
        return CacheMode(name, None if name == "cdc" else cap, prefixes, cap if prefixes else None)

    def _cap(self, raw: bytes | None) -> int:
        if raw is None:
            return self._fallback_ttl_ms
        if raw.isdigit() and int(raw) > 0:
            return int(raw)
        log.warning(
            "%s has fallback_ttl_ms=%r, not a positive number of milliseconds; capping fills "
            "at %d ms",
            self._names.mode, raw, self._fallback_ttl_ms,
        )  # fmt: skip
        return self._fallback_ttl_ms

    def _too_old(self, fields: dict[bytes, bytes]) -> bool:
        """True when the hash was last written, or seen, longer ago than the bound.

        A missing hash counts from when this helper first found it missing (logged once).
        """
        if self._stale_after_ms is None:
            return False
        if fields:
            self._absent_since = None
            updated = fields.get(b"updated_ms", b"")
            if not updated.isdigit():
                return False
            published = fields.get(b"stale_after_ms", b"")
            bound = min(self._stale_after_ms, int(published) if published.isdigit() else 1 << 62)
            age_ms = self._wall_clock() * 1000 - int(updated)
        else:
            now = self._clock()
            if self._absent_since is None:
                self._absent_since = now
            bound, age_ms = self._stale_after_ms, (now - self._absent_since) * 1000
        stale = age_ms > bound
        if stale != self._stale:
            self._stale = stale
            if stale:
                log.warning(
                    "%s was last written, or seen, %.0f s ago (bound %d ms): no worker keeps "
                    "it fresh, so fills are capped as in ttl mode",
                    self._names.mode, age_ms / 1000, bound,
                )  # fmt: skip
            else:
                log.warning(
                    "%s is fresh again: the worker (or a watchdog) writes it", self._names.mode
                )
        return stale


def _prefixes(raw: bytes | None) -> tuple[str, ...]:
    """The ``ttl_prefixes`` field; unreadable, it caps every key (the bounded side)."""
    if raw is None:
        return ()
    try:
        found = json.loads(raw)
    except ValueError:
        found = None
    if not isinstance(found, list) or not all(isinstance(p, str) for p in found):
        log.warning("the mode hash has ttl_prefixes=%r, not a JSON list; capping every fill", raw)
        return ("",)
    return tuple(found)
