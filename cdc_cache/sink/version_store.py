"""The version store in Redis: read back, upgraded, and swept past each version's horizon.

Encodings are in ``cdc_cache.sink.versions``. Buckets carry no TTL (so no eviction policy
that spares keys without a TTL can take a version), which makes forgetting explicit:
:class:`VersionSweeper` visits every bucket and removes the fields whose horizon has
passed (a tombstone lives ``tombstone_ttl`` after its delete, a set's version as long as
its value may). Buckets have fixed names (one per slot), so a pass needs no SCAN.

The previous release kept one string key with a TTL per cache key; under the ``volatile-*``
policies those could be evicted. :func:`migrate_legacy` moves them into buckets before the
worker writes anything, keeping the newer version where both exist, so an upgrade never
makes a stale write look newer. The store's layout is then recorded
(``Names.version_layout``), and later starts skip the scan.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from redis import Redis

from cdc_cache.core import metrics
from cdc_cache.core.keys import BUCKETS_PER_SLOT, ns, version_field
from cdc_cache.core.periodic import Periodic
from cdc_cache.plan.rules import Rules
from cdc_cache.sink.connection import REDIS_ERRORS, Client, primaries
from cdc_cache.sink.nodes import buckets_by_node
from cdc_cache.sink.scripts import lua_script, write_record
from cdc_cache.sink.versions import HORIZON_DIGITS, legacy_version, parse_stored

log = logging.getLogger("cdc_cache.versions")

LAYOUT_FORMAT: Final = "2"


def stored_version(client: Client, key: str) -> str | None:
    """The version stored for cache key ``key`` (None: none known)."""
    raw = client.hget(ns().version_key(key), version_field(key))
    return parse_stored(raw)[1] if raw is not None else None


def version_lifetime_ms(rules: Rules) -> int:
    """The longest any version may have to live: every key's TTL and tombstone TTL."""
    lifetimes = [rules.safety_ttl_ms, rules.tombstone_ttl_ms]
    for table in rules.tables.values():
        lifetimes += [table.tombstone_ttl_ms, *(rule.ttl_ms for rule in table.keys)]
    return max(lifetimes)


def horizon_minute(now_s: float, lifetime_ms: int) -> int:
    """The Unix minute after which a version written at ``now_s`` may be forgotten.

    Rounded up, and one minute more, as the apply script does: never early.
    """
    return math.floor(now_s / 60) + 1 + math.ceil(lifetime_ms / 60_000)


# --------------------------------------------------------------------------- migration


def migrate_legacy(
    client: Client, *, lifetime_ms: int, page: int = 500, clock: Callable[[], float] = time.time
) -> int:
    """Move every version key of the previous release into the buckets; how many moved.

    A legacy key keeps its remaining TTL as its horizon (``lifetime_ms`` if it had none).
    A value that is no version (nothing this project wrote) is dropped with its cache
    key, which then counts as never written. Safe to run by several processes at once.
    """
    layout = client.hgetall(ns().version_layout)
    if layout.get(b"format") == LAYOUT_FORMAT.encode():
        return 0
    moved = 0
    for node in primaries(client):
        for names in _scan(node, ns().legacy_version_prefix + "{*", page):
            moved += _migrate_page(node, names, lifetime_ms, clock())
    write_record(
        client,
        ns().version_layout,
        {"format": LAYOUT_FORMAT, "buckets": BUCKETS_PER_SLOT, "migrated": moved},
    )
    if moved:
        log.warning(
            "moved the previous release's version keys into version buckets",
            extra={"moved": moved},
        )
    return moved


@dataclass(frozen=True, slots=True)
class _Legacy:
    """One legacy version key, what it held and its remaining TTL."""

    name: bytes
    key: str
    value: bytes
    pttl_ms: int


def _migrate_page(node: Redis[bytes], names: list[bytes], lifetime_ms: int, now_s: float) -> int:
    found = [(raw, ns().legacy_cache_key(raw.decode("utf-8", "replace"))) for raw in names]
    mine = [(raw, key) for raw, key in found if key is not None]
    pipe = node.pipeline(transaction=False)
    for raw, _ in mine:
        pipe.get(raw)
        pipe.pttl(raw)
    replies = pipe.execute()
    legacy = [
        _Legacy(raw, key, value, int(pttl))
        for (raw, key), value, pttl in zip(mine, replies[::2], replies[1::2], strict=True)
        if isinstance(value, bytes)
    ]
    by_bucket: dict[str, list[tuple[_Legacy, str]]] = defaultdict(list)
    unreadable = []
    for item in legacy:
        try:
            by_bucket[ns().version_key(item.key)].append((item, legacy_version(item.value)))
        except ValueError:
            unreadable.append(item)
    source, _ = lua_script("migrate")
    script = node.register_script(source)
    pipe = node.pipeline(transaction=False)
    for bucket, entries in by_bucket.items():
        args: list[bytes | str] = []
        for item, version in entries:
            lifetime = item.pttl_ms if item.pttl_ms > 0 else lifetime_ms
            horizon = f"{horizon_minute(now_s, lifetime):0{HORIZON_DIGITS}d}"
            args += [item.value, version_field(item.key), version, horizon]
        script(keys=[bucket, *(item.name for item, _ in entries)], args=args, client=pipe)
    for item in unreadable:
        pipe.delete(item.name, item.key)
    if unreadable:
        log.warning(
            "dropped unreadable version keys of the previous release with their cache keys",
            extra={"keys": [item.key for item in unreadable][:20], "count": len(unreadable)},
        )
    return sum(int(n) for n in pipe.execute()[: len(by_bucket)])


def _scan(node: Redis[bytes], pattern: str, page: int) -> Iterator[list[bytes]]:
    cursor = 0
    while True:
        cursor, found = node.scan(cursor=cursor, match=pattern, count=page)
        if found:
            yield found
        if cursor == 0:
            return


# --------------------------------------------------------------------------- sweeping


@dataclass(frozen=True, slots=True)
class SweepReport:
    """One pass over every bucket: versions seen, and those forgotten.

    A bucket also holds a record of each table's last TRUNCATE (``truncated:<table>``,
    :mod:`cdc_cache.sink.truncate`), swept past its horizon like a version but counted
    apart: they are no versions, and one TRUNCATE leaves one in every bucket.
    """

    examined: int
    removed: int
    truncates_examined: int = 0
    truncates_removed: int = 0

    @property
    def kept(self) -> int:
        return self.examined - self.removed

    @property
    def truncates_kept(self) -> int:
        return self.truncates_examined - self.truncates_removed

    def __add__(self, other: SweepReport) -> SweepReport:
        return SweepReport(
            self.examined + other.examined,
            self.removed + other.removed,
            self.truncates_examined + other.truncates_examined,
            self.truncates_removed + other.truncates_removed,
        )


class VersionSweeper:
    """Forgets versions past their horizon, one paced pass over every bucket at a time.

    ``fields_per_s`` bounds the work a pass asks of Redis; ``pause_s`` separates passes
    (a version outlives its horizon by at most about a pass and a pause). One process of a
    cluster sweeps (the mode leader): the removal re-checks the horizon in Redis, so
    overlapping sweepers would only repeat work.
    """

    def __init__(
        self,
        client: Client,
        *,
        fields_per_s: float = 50_000,
        pause_s: float = 60.0,
        page: int = 256,
    ) -> None:
        self._client = client
        self._fields_per_s = fields_per_s
        self._page = page
        self._loop = Periodic(
            "cdc-version-sweep",
            self._pass,
            pause_s,
            errors=REDIS_ERRORS,
            log=log,
            failure="version sweep interrupted; retried next pass",
        )

    def sweep(self, keep_going: Callable[[], bool] = lambda: True) -> SweepReport:
        """One pass over every bucket (stops early when ``keep_going`` turns false)."""
        report = SweepReport(0, 0)
        for node, buckets in buckets_by_node(self._client):
            for start in range(0, len(buckets), self._page):
                if not keep_going():
                    return report
                page = self._sweep_page(node, buckets[start : start + self._page])
                report += page
                metrics.VERSIONS_SWEPT.inc(page.removed)
                seen = page.examined + page.truncates_examined
                self._loop.closing.wait(seen / self._fields_per_s)
        metrics.VERSIONS_KEPT.set(report.kept)
        metrics.TRUNCATE_RECORDS.set(report.truncates_kept)
        return report

    def start(self) -> None:
        """Sweep in a daemon thread, a pass every ``pause_s``, until :meth:`close`."""
        self._loop.start()

    def close(self) -> None:
        self._loop.close()

    def _pass(self) -> None:
        report = self.sweep(keep_going=lambda: not self._loop.closing.is_set())
        log.info(
            "version sweep done",
            extra={
                "examined": report.examined,
                "removed": report.removed,
                "truncate_records": report.truncates_kept,
            },
        )

    @staticmethod
    def _sweep_page(node: Redis[bytes], buckets: list[str]) -> SweepReport:
        source, _ = lua_script("sweep")
        script = node.register_script(source)
        pipe = node.pipeline(transaction=False)
        for bucket in buckets:
            script(keys=[bucket], client=pipe)
        replies = pipe.execute()
        return SweepReport(*(sum(int(r[i]) for r in replies) for i in range(4)))
