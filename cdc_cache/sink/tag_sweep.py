"""Sweeping cache tags: members' tombstones past their horizon, fills past their TTL.

A row that leaves a tag leaves a tombstone (so an older link op cannot put it back),
and a fill leaves a member that outlives its key once the key expires. Both carry the
Unix minute after which they mean nothing (``lua/tags.lua``): the tombstone horizon, as
for keys, and the fill's expiry. A tag's version has a horizon too: the tombstone TTL after
its last invalidation, past which a link op is too old to be caught up (a replay that old
is out of bounds, as for keys). The sweeper walks every tag hash on every primary, a page
at a time and paced, and removes those, so a tag's hash holds the links of live rows, the
fills that may still be cached and a recent version, not every link ever made (a version
the previous release kept without a horizon gets one, ``lifetime_ms`` from the sweep). One
process of a cluster sweeps (the mode leader); the removal re-checks each minute in Redis,
so overlapping sweeps only repeat work.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from cdc_cache_client.tags import tags_script
from redis.commands.core import Script

from cdc_cache.core.keys import ns
from cdc_cache.core.periodic import Periodic
from cdc_cache.sink.connection import REDIS_ERRORS, Client, primaries
from cdc_cache.sink.invalidate_prefix import glob_escape

log = logging.getLogger("cdc_cache.tags")


@dataclass(frozen=True, slots=True)
class TagSweepReport:
    tags: int
    examined: int
    removed: int


def sweep_tags(
    client: Client,
    *,
    closing: threading.Event | None = None,
    fields_per_s: float = 50_000,
    page: int = 500,
    lifetime_ms: int = 3_600_000,
) -> TagSweepReport:
    """One pass over every tag hash, paced to ``fields_per_s``; ends early on ``closing``.

    ``lifetime_ms`` is the horizon given to a version kept without one (the longest
    tombstone TTL of the rules).
    """
    closing = closing or threading.Event()
    tags = examined = removed = 0
    for node in primaries(client):
        script = Script(node, tags_script())
        for name in node.scan_iter(match=glob_escape(ns().tag_prefix) + "*", count=page):
            if closing.is_set():
                return TagSweepReport(tags, examined, removed)
            tags += 1
            cursor: object = 0
            while True:
                cursor, seen, gone = script(keys=[name], args=["S", cursor, page, lifetime_ms])
                examined += seen
                removed += gone
                closing.wait(seen / fields_per_s)
                if cursor in (0, b"0"):
                    break
    return TagSweepReport(tags, examined, removed)


def tag_sweeper(client: Client, lifetime_ms: int, pause_s: float = 60.0) -> Periodic:
    """A pass of :func:`sweep_tags` every ``pause_s`` in a daemon thread (start, close)."""

    def sweep() -> None:
        report = sweep_tags(client, closing=loop.closing, lifetime_ms=lifetime_ms)
        log.info(
            "tag sweep done",
            extra={"tags": report.tags, "examined": report.examined, "removed": report.removed},
        )

    loop = Periodic(
        "cdc-tag-sweep",
        sweep,
        pause_s,
        errors=REDIS_ERRORS,
        log=log,
        failure="tag sweep interrupted; retried next pass",
    )
    return loop
