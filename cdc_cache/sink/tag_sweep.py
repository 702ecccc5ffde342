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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from redis import exceptions as rex
from redis.commands.core import Script

from cdc_cache.core.errors import CdcCacheError
from cdc_cache.core.keys import TAG_PREFIX
from cdc_cache.core.periodic import Periodic
from cdc_cache.sink.connection import Client, primaries
from cdc_cache.sink.invalidate_prefix import glob_escape
from cdc_cache.sink.scripts import lua_script

log = logging.getLogger("cdc_cache.tags")

_REDIS_ERRORS: Final = (rex.RedisError, rex.RedisClusterException, CdcCacheError)


@dataclass(frozen=True, slots=True)
class TagSweepReport:
    tags: int
    examined: int
    removed: int


class TagSweeper:
    """Removes expired members from every tag hash, a paced pass every ``pause_s``."""

    def __init__(
        self,
        client: Client,
        *,
        fields_per_s: float = 50_000,
        pause_s: float = 60.0,
        page: int = 500,
    ) -> None:
        self._client = client
        self._fields_per_s = fields_per_s
        self._page = page
        self._loop = Periodic(
            "cdc-tag-sweep",
            self._pass,
            pause_s,
            errors=_REDIS_ERRORS,
            log=log,
            failure="tag sweep interrupted; retried next pass",
        )

    def sweep(self, keep_going: Callable[[], bool] = lambda: True) -> TagSweepReport:
        """One pass over every tag (stops early when ``keep_going`` turns false)."""
        tags = examined = removed = 0
        for node in primaries(self._client):
            script = Script(node, lua_script("tags")[0])
            for name in node.scan_iter(match=glob_escape(TAG_PREFIX) + "*", count=self._page):
                if not keep_going():
                    return TagSweepReport(tags, examined, removed)
                tags += 1
                cursor: object = 0
                while True:
                    reply = script(keys=[name], args=["S", cursor, self._page])
                    cursor, seen, gone = reply
                    examined += seen
                    removed += gone
                    self._loop.closing.wait(seen / self._fields_per_s)
                    if cursor in (0, b"0"):
                        break
        return TagSweepReport(tags, examined, removed)

    def start(self) -> None:
        """Sweep in a daemon thread, a pass every ``pause_s``, until :meth:`close`."""
        self._loop.start()

    def close(self) -> None:
        self._loop.close()

    def _pass(self) -> None:
        report = self.sweep(keep_going=lambda: not self._loop.closing.is_set())
        log.info(
            "tag sweep done",
            extra={"tags": report.tags, "examined": report.examined, "removed": report.removed},
        )
