"""Sweeping cache tags: members' tombstones past their horizon, fills past their TTL.

A row that leaves a tag leaves a tombstone (so an older link op cannot put it back),
and a fill leaves a member that outlives its key once the key expires. Both carry the
Unix minute after which they mean nothing (``lua/tags.lua``): the tombstone horizon, as
for keys, and the fill's expiry. The sweeper walks every tag hash on every primary, a page
at a time and paced, and removes those, so a tag's hash holds the links of live rows and
the fills that may still be cached, not every link ever made. The version field stays:
it is one field per parent row ever invalidated. One process of a cluster sweeps (the
mode leader); the removal re-checks each minute in Redis, so overlapping sweeps only
repeat work.
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
) -> TagSweepReport:
    """One pass over every tag hash, paced to ``fields_per_s``; ends early on ``closing``."""
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
                cursor, seen, gone = script(keys=[name], args=["S", cursor, page])
                examined += seen
                removed += gone
                closing.wait(seen / fields_per_s)
                if cursor in (0, b"0"):
                    break
    return TagSweepReport(tags, examined, removed)


def tag_sweeper(client: Client, pause_s: float = 60.0) -> Periodic:
    """A pass of :func:`sweep_tags` every ``pause_s`` in a daemon thread (start, close)."""

    def sweep() -> None:
        report = sweep_tags(client, closing=loop.closing)
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
