"""Keys already cached given the fallback TTL, one page at a time, at a bounded rate.

On entering ``ttl`` (the whole cache, or one table alone) every key under the rules'
literal prefixes gets at most the fallback TTL (``SCAN`` + ``PEXPIRE ... LT`` on every
primary), so no entry outlives it; the worker's leader and the watchdog both use it.

A fill can land after the run passed its key by a writer that still acted on ``cdc``: an
application's ``CacheAside`` reads the mode hash at most once per ``mode_refresh_s``, a
follower process once a tick. So the keys are gone through once more, in a run that
starts :data:`~cdc_cache_client.cache_aside.MODE_GRACE_S` after ``ttl`` began: whatever
lands later acted on a mode read after ``ttl`` was published, and is capped. A
``CacheAside`` fill that lands more than that after its mode read checks the mode again
itself. A Lua fill cannot read the mode hash instead: on Redis Cluster the hash and the
key are in different slots, which one script cannot touch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from cdc_cache_client.cache_aside import MODE_GRACE_S

from cdc_cache.core import metrics
from cdc_cache.core.keys import ns
from cdc_cache.plan.rules import Rules
from cdc_cache.sink.connection import REDIS_ERRORS, Client, primaries
from cdc_cache.sink.invalidate_prefix import glob_escape

log = logging.getLogger("cdc_cache.mode")

SHORTEN_KEYS_PER_S: Final = 20_000  # how fast existing keys are given the fallback TTL


def managed_prefixes(rules: Rules) -> list[str]:
    """The rules' literal key prefixes, without those another prefix already covers."""
    return _outermost(p for table in rules.tables.values() for p in table.truncate_prefixes)


def table_prefixes(rules: Rules) -> dict[str, list[str]]:
    """Each table's literal key prefixes, without those another of them already covers."""
    return {name: _outermost(table.truncate_prefixes) for name, table in rules.tables.items()}


def _outermost(prefixes: Iterable[str]) -> list[str]:
    found = sorted(set(prefixes))
    return [p for p in found if not any(p != q and p.startswith(q) for q in found)]


def shorten_ttls(
    client: Client,
    prefixes: Iterable[str],
    ttl_ms: int,
    *,
    keys_per_s: float,
    page: int = 500,
    keep_going: Callable[[], bool] = lambda: True,
    sleep: Callable[[float], object] = time.sleep,
) -> int:
    """Give every key under ``prefixes`` at most ``ttl_ms`` to live; returns how many got it.

    ``PEXPIRE key ttl LT`` only ever shortens (a key without a TTL counts as infinite), so
    it is safe next to concurrent writes and re-runs. One SCAN page at a time on every
    primary, at most ``keys_per_s``, so the cache's servers are never flooded; stops early
    when ``keep_going`` turns false (the mode went back to ``cdc``). A PEXPIRE that Redis
    refuses (a former primary now read-only, a slot moved away, a missing permission)
    raises once its page was sent: a key left with its long TTL must not pass unnoticed.
    """
    shortened = 0
    for node in primaries(client):
        for prefix in prefixes:
            cursor = 0
            while keep_going():
                cursor, found = node.scan(
                    cursor=cursor, match=glob_escape(prefix) + "*", count=page
                )
                names = [
                    k
                    for k in found
                    if not k.decode(errors="replace").startswith(ns().internal_prefixes)
                ]
                if names:
                    pipe = node.pipeline(transaction=False)
                    for name in names:
                        pipe.pexpire(name, ttl_ms, lt=True)
                    shortened += sum(r == 1 for r in pipe.execute())
                    sleep(len(names) / keys_per_s)
                if cursor == 0:
                    break
    return shortened


class Shortener:
    """Runs :func:`shorten_ttls` in a background thread, until a run went through every key.

    One run at a time. Used by the worker's mode leader while in ``ttl``, by the watchdog
    while it stands in for a worker that is down, and (one per table) by the leader while a
    table falls back on its own. Their loops call :meth:`start` on every tick of such a
    state and :meth:`again` when it begins anew: a run cut short (a restart mid-run, the
    decision taken back from the watchdog, a Redis error) is started again on the next
    tick, so the staleness the fallback TTL bounds is bounded whatever interrupted it.
    Only a run that started ``grace_s`` (by ``clock``) after the first start since
    :meth:`again` counts as done: the keys filled meanwhile by writers still acting on
    ``cdc`` are shortened by it. ``closing`` stops a run early; ``context`` (such as the
    table) goes into its log lines.
    """

    def __init__(
        self,
        client: Client,
        keys_per_s: float,
        closing: threading.Event,
        context: Mapping[str, str] | None = None,
        *,
        grace_s: float = MODE_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._grace_s = grace_s
        self._clock = clock
        self._keys_per_s = keys_per_s
        self._closing = closing
        self._context = dict(context or {})
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._asked = 0  # how many times the keys were asked to be shortened (anew)
        self._done = -1  # the last of those asks a run went through every key for
        self._began: float | None = None  # when the first run of the current ask started
        self._passed = -1  # the last ask a run went through every key for within the grace
        self._error: str | None = None  # the last run's error (logged once until it changes)

    def again(self) -> None:
        """The keys must be shortened anew (``ttl`` entered again): the next start runs."""
        with self._lock:
            self._asked += 1
            self._began = None

    def start(self, prefixes: list[str], ttl_ms: int, keep_going: Callable[[], bool]) -> None:
        """Shorten in the background, unless a run is under way or went through every key.

        Through every key since the last :meth:`again`, that is, in a run that started
        once the grace was over; a run went through them within it, the next waits for its
        end. The run stops early when ``keep_going`` turns false.
        """
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
            if running or self._done == self._asked or self._closing.is_set():
                return
            now = self._clock()
            if self._began is None:
                self._began = now
            final = now >= self._began + self._grace_s
            if self._passed == self._asked and not final:
                return
            self._thread = threading.Thread(
                target=self._run,
                args=(prefixes, ttl_ms, keep_going, self._asked, final),
                name="-".join(["cdc-ttl", *self._context.values()]),
                daemon=True,
            )
            self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a run under way."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(
        self,
        prefixes: list[str],
        ttl_ms: int,
        keep_going: Callable[[], bool],
        asked: int,
        final: bool,
    ) -> None:
        started = time.monotonic()
        cut_short = threading.Event()

        def going() -> bool:
            if keep_going() and not self._closing.is_set():
                return True
            cut_short.set()
            return False

        try:
            count = shorten_ttls(
                self._client,
                prefixes,
                ttl_ms,
                keys_per_s=self._keys_per_s,
                keep_going=going,
                sleep=self._closing.wait,
            )
        except REDIS_ERRORS as exc:
            if str(exc) != self._error:
                log.error(
                    "could not give existing keys the fallback TTL; trying again",
                    extra={"error": str(exc), **self._context},
                )
            self._error = str(exc)
            return
        metrics.TTL_SHORTENED.inc(count)
        if not cut_short.is_set():
            with self._lock:
                if final:
                    self._done = max(self._done, asked)
                self._passed = max(self._passed, asked)
            self._error = None
        log.info(
            "giving existing keys the fallback TTL stopped early"
            if cut_short.is_set()
            else "existing keys given the fallback TTL",
            extra={"keys": count, "ttl_ms": ttl_ms, "after_grace": final,
                   "seconds": round(time.monotonic() - started, 3), **self._context},
        )  # fmt: skip
