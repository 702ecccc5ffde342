"""The dead-man's switch: when no worker is alive, the cache falls back to ``ttl`` anyway.

The worker decides the mode, so when the worker itself is gone (a crash loop, an OOM kill,
a lost node) nobody would switch it, and applications would trust invalidations that no
longer come. The worker's mode leader rewrites the hash ``cdc:mode`` every second with a
new ``updated_ms`` (``writer`` = ``worker``): that is its heartbeat. A :class:`Watchdog`,
running where something outlives the worker (inside ``cdc-cache gateway``, or as
``cdc-cache watchdog``), watches it:

- **Down**: the heartbeat stood still for longer than the bound (the worker's lag SLO plus
  its mode window, published in the hash as ``stale_after_ms``; ``down_after_s``
  overrides it) by the watchdog's own clock, so clock skew between hosts does not matter.
  The watchdog then runs the same controller step as the worker with the hold
  ``worker_down`` (so the operator flag still wins), writes the result as the worker
  would, and gives the keys under the rules' prefixes (published by the worker) the
  fallback TTL with the worker's own :class:`~cdc_cache.fallback.shortening.Shortener`. The tables
  the worker left in ``ttl`` on their own (``tables``, ``ttl_prefixes``) stay so: nobody
  can tell they fit the rules again, and a forced ``cdc`` must not lift their caps.
- **Several instances**: only the one holding the lock ``cdc:watchdog:lock`` (renewed every
  tick, expiring after three) acts; the others watch, ready to take over. A record a
  watchdog wrote means the worker is still down, so a new lock holder acts at once.
- **The worker returns**: every write goes through :meth:`ModeStore.take_over`, a
  compare-and-set that refuses once the worker wrote the hash again, so a returning worker
  is never overwritten; the watchdog sees the heartbeat move and steps back, and the
  worker decides again (from ``ttl``, back to ``cdc`` only after its lag was low for a
  window).

Kept in one module: the lock, the heartbeat watch and the stand-in writes are one loop
whose steps share its state; the records and the shortening it uses are ``store`` and
``shortening``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import orjson

from cdc_cache.core import metrics
from cdc_cache.core.keys import ns
from cdc_cache.fallback.runtime import report_overrides
from cdc_cache.fallback.shortening import SHORTEN_KEYS_PER_S, Shortener
from cdc_cache.fallback.store import WATCHDOG, ModeStore, run_on_key
from cdc_cache.mode.controller import (
    Cause,
    Flag,
    Hold,
    Mode,
    ModeConfig,
    ModeState,
    Signal,
    overridden,
    step,
)
from cdc_cache.mode.record import ModeKeyError
from cdc_cache.sink.connection import REDIS_ERRORS, Client

log = logging.getLogger("cdc_cache.watchdog")

DEFAULT_DOWN_AFTER_S: Final = 90.0  # the worker's defaults: lag_slo_s 60 + mode_window_s 30
DEFAULT_FALLBACK_TTL_MS: Final = 60_000  # the worker's default fallback_ttl_s
# The watchdog sees no lag: only the flag and the hold decide, so these never come into play.
_NO_LAG: Final = ModeConfig(slo_s=1.0, recover_s=0.0, window_s=0.0)
# Take the lock (or renew it while it is ours): 1 when this instance holds it.
_LOCK: Final = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_UNLOCK: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Beat:
    """What one look at the mode hash says about the worker."""

    down: bool
    still_s: float  # how long the heartbeat has not moved, as far as this watchdog saw
    seen: str  # the hash's updated_ms, for the compare-and-set ('' when there is none)


class BeatWatch:
    """How long the worker's heartbeat has stood still, by this watchdog's clock (pure).

    A heartbeat first seen is taken as fresh: a watchdog that starts after the worker
    stopped waits one bound before acting. A record written by a watchdog means no
    worker wrote since one found it down: still down. A record that vanishes (Redis
    restarted empty, the hash deleted to repair it) is no write either: the heartbeat
    stands still from where it was.
    """

    def __init__(self, now: float) -> None:
        self._token: str | None = None
        self._since = now

    def observe(self, record: Mapping[str, str], bound_s: float, now: float) -> Beat:
        """Look at ``record`` (the mode hash as text) at ``now`` (monotonic seconds)."""
        seen = record.get("updated_ms", "")
        if record.get("writer") == WATCHDOG:
            return Beat(True, now - self._since, seen)
        if seen != self._token and (seen or self._token is None):
            self._token, self._since = seen, now
        still = now - self._since
        return Beat(still > bound_s, still, seen)


def down_after_s(record: Mapping[str, str], override_s: float | None) -> float:
    """The bound: ``override_s``, else the worker's published one, else the default."""
    if override_s is not None:
        return override_s
    published = record.get("stale_after_ms", "")
    return int(published) / 1000 if published.isdigit() else DEFAULT_DOWN_AFTER_S


def tables_left(record: Mapping[str, str]) -> tuple[tuple[Hold, ...], list[str]]:
    """The tables the worker left in ``ttl`` on their own (as holds) and their prefixes.

    Carried as they are while the worker is down. Prefixes that cannot be read carry as
    ``[""]``, every fill capped, which is how applications read them; tables that cannot
    be read carry as none (their prefixes still cap their fills).
    """
    try:
        tables = orjson.loads(record.get("tables") or "{}")
    except orjson.JSONDecodeError:
        tables = None
    holds: tuple[Hold, ...] = ()
    if isinstance(tables, dict) and all(isinstance(r, str) for r in tables.values()):
        holds = tuple(Hold(Cause.TABLE_FAILING, r, table) for table, r in sorted(tables.items()))
    try:
        prefixes = orjson.loads(record.get("ttl_prefixes") or "[]")
    except orjson.JSONDecodeError:
        prefixes = None
    if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
        prefixes = [""]
    return holds, prefixes


def _left_by_worker(record: Mapping[str, str], now_ms: int) -> ModeState:
    """The mode the worker left, as a controller state to take over from."""
    mode = Mode.TTL if record.get("mode") == Mode.TTL.value else Mode.CDC
    cause = record.get("cause", "")
    since = record.get("since_ms", "")
    return ModeState.initial(
        int(since) if since.isdigit() else now_ms,
        mode,
        Cause(cause) if cause in Cause.__members__.values() else Cause.START,
        record.get("reason", "left by the worker"),
    )


class Watchdog:
    """Watches the worker's heartbeat; decides the mode in its place while it is down.

    Only while this instance holds the lock (see the module's docstring).

    Also the backend of the admin API's ``/readyz`` and ``GET /mode`` for
    ``cdc-cache watchdog``.
    """

    def __init__(
        self,
        client: Client,
        *,
        down_after_s: float | None = None,
        fallback_ttl_ms: int = DEFAULT_FALLBACK_TTL_MS,
        interval_s: float = 1.0,
        shorten_keys_per_s: float = SHORTEN_KEYS_PER_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = ModeStore(client)
        self._down_after_s = down_after_s
        self._fallback_ttl_ms = fallback_ttl_ms
        self._interval_s = interval_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock_ms = int(max(3 * interval_s, 2.0) * 1000)
        self._client = client
        self._watch = BeatWatch(clock())
        self._closing = threading.Event()
        self._shortener = Shortener(client, shorten_keys_per_s, self._closing, clock=clock)
        self._shorten_prefixes: list[str] = []  # the worker's, read when ttl began
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()
        self._state: ModeState | None = None  # set while this instance decides the mode
        self._overrides: tuple[str, ...] = ()  # what a forced cdc overrides meanwhile
        self._beat: Beat | None = None
        self._leader = False
        self._redis_ok_at: float | None = None
        self._problem: str | None = None  # why it cannot look (logged once)
        self._flag_problem: str | None = None
        metrics.WATCHDOG_WORKER_UP.set(math.nan)  # unknown until the first look

    @property
    def acting(self) -> bool:
        """True while this instance decides the mode in the worker's place."""
        with self._guard:
            return self._state is not None

    def tick(self) -> None:
        """Look at the heartbeat once; take over, keep deciding, or step back."""
        try:
            record = self._store.record()
            leader = bool(
                run_on_key(self._client, _LOCK, ns().watchdog_lock, [self._id, self._lock_ms])
            )
        except REDIS_ERRORS as exc:
            self._blind(exc)
            return
        now = self._clock()
        if self._problem is not None:
            log.warning("watchdog: it can look at the mode again", extra={"was": self._problem})
        self._redis_ok_at, self._problem = now, None
        bound = down_after_s(record, self._down_after_s)
        beat = self._watch.observe(record, bound, now)
        with self._guard:
            self._beat, self._leader = beat, leader
        metrics.WATCHDOG_WORKER_UP.set(0 if beat.down else 1)
        metrics.WATCHDOG_HEARTBEAT_STILL.set(beat.still_s)
        metrics.WATCHDOG_LEADER.set(1 if leader else 0)
        if not beat.down:
            self._step_back("the worker's heartbeat moves again: it decides the mode")
        elif not leader:
            self._step_back("another watchdog holds the lock and decides")
        else:
            try:
                self._decide(record, beat, bound)
            except REDIS_ERRORS as exc:
                self._blind(exc)

    def _blind(self, exc: BaseException) -> None:
        """It cannot look: say so once, claim nothing, and look again next interval.

        Redis does not answer, or a mode key holds what no worker wrote there.
        """
        if isinstance(exc, ModeKeyError):
            problem = f"a mode key cannot be read; fix it: {exc}"
        else:
            problem = f"Redis unavailable: {exc}"
        if problem != self._problem:
            log.error("watchdog: %s", problem)
        self._problem, self._redis_ok_at = problem, None
        metrics.WATCHDOG_WORKER_UP.set(math.nan)
        metrics.WATCHDOG_LEADER.set(0)

    def _flag(self) -> Flag:
        """The operator flag; one that cannot be read counts as ``auto`` (logged once)."""
        try:
            flag, problem = self._store.flag(), None
        except ModeKeyError as exc:
            flag, problem = Flag.AUTO, str(exc)
        if problem is not None and problem != self._flag_problem:
            log.error("watchdog: mode flag ignored; fix it", extra={"problem": problem})
        self._flag_problem = problem
        return flag

    def _decide(self, record: Mapping[str, str], beat: Beat, bound_s: float) -> None:
        now_ms = int(self._wall_clock() * 1000)
        hold = Hold(
            Cause.WORKER_DOWN,
            f"no worker heartbeat for {beat.still_s:.0f}s (bound {bound_s:g}s); "
            "a watchdog decides until a worker is back",
        )
        with self._guard:
            taking_over = self._state is None
            before = _left_by_worker(record, now_ms) if self._state is None else self._state
        flag = self._flag()
        tables, ttl_prefixes = tables_left(record)
        holds = (hold, *tables)
        signal = Signal(now_ms, flag, None, holds=holds)
        state, decision = step(before, signal, _NO_LAG)
        ttl_ms = _positive(record.get("fallback_ttl_ms", ""), self._fallback_ttl_ms)
        if not self._store.take_over(
            state,
            flag,
            now_ms,
            ttl_ms,
            holds=holds,
            ttl_prefixes=ttl_prefixes,
            seen_updated_ms=beat.seen,
        ):
            self._step_back("the worker wrote the mode meanwhile: it decides")
            return
        over = overridden(state, signal)
        with self._guard:
            self._state = state
            was, self._overrides = self._overrides, over
        report_overrides(over, was, state, holds)
        if taking_over:
            metrics.WATCHDOG_TAKEOVERS.inc()
            metrics.MODE_HOLDS.labels(Cause.WORKER_DOWN.value).set(1)
            log.error(
                "no worker heartbeat: the watchdog decides the cache mode",
                extra={"mode": state.mode.value, "cause": state.cause.value,
                       "reason": hold.reason, "since_s": round(beat.still_s, 1)},
            )  # fmt: skip
        if decision.switched:
            metrics.MODE_SWITCHES.labels(decision.mode.value, decision.cause.value).inc()
            log.warning(
                "cache mode switched",
                extra={"from": before.mode.value, "to": decision.mode.value,
                       "cause": decision.cause.value, "reason": decision.reason},
            )  # fmt: skip
        if state.mode is Mode.TTL:
            if taking_over or decision.switched:
                self._shortener.again()
                self._shorten_prefixes = _prefixes(record)
            self._shortener.start(self._shorten_prefixes, ttl_ms, lambda: self.acting)

    def _step_back(self, why: str) -> None:
        with self._guard:
            was, self._state = self._state, None
            overrides, self._overrides = self._overrides, ()
        if was is not None:
            report_overrides((), overrides, was, ())
            metrics.MODE_HOLDS.labels(Cause.WORKER_DOWN.value).set(0)
            log.warning("watchdog steps back", extra={"reason": why})

    def start(self) -> Watchdog:
        """Tick in a daemon thread until :meth:`close`."""
        self._thread = threading.Thread(target=self.run, name="cdc-watchdog", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Tick every interval until :meth:`stop` (in the calling thread)."""
        log.info("watchdog watching the worker's heartbeat", extra={"instance": self._id})
        self.tick()
        while not self._closing.wait(self._interval_s):
            self.tick()

    def stop(self) -> None:
        """Make :meth:`run` return after the current tick (safe in a signal handler)."""
        self._closing.set()

    def close(self, timeout_s: float = 20.0) -> None:
        """Stop ticking and shortening, and hand the lock to another instance at once.

        Returns within ``timeout_s`` even when Redis does not answer (a tick or the
        release stuck on a socket read): the lock then expires on its own.
        """
        deadline = time.monotonic() + timeout_s
        self._closing.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        self._shortener.join(max(0.0, deadline - time.monotonic()))
        release = threading.Thread(target=self._release, name="cdc-watchdog-unlock", daemon=True)
        release.start()
        release.join(max(0.0, deadline - time.monotonic()))
        if release.is_alive():
            log.warning(
                "watchdog: Redis does not answer; not waiting for it to release the lock, "
                "which expires on its own",
                extra={"lock_expires_in_s": self._lock_ms / 1000},
            )

    def _release(self) -> None:
        try:
            run_on_key(self._client, _UNLOCK, ns().watchdog_lock, [self._id])
        except REDIS_ERRORS as exc:
            log.warning("watchdog: could not release its lock", extra={"error": str(exc)})

    def view(self) -> dict[str, object]:
        """What this instance sees (``GET /mode`` of ``cdc-cache watchdog``)."""
        with self._guard:
            beat, state = self._beat, self._state
            return {
                "worker": "unknown" if beat is None else ("down" if beat.down else "up"),
                "heartbeat_still_s": None if beat is None else round(beat.still_s, 3),
                "leader": self._leader,
                "acting": state is not None,
                "mode": None if state is None else state.mode.value,
                "cause": None if state is None else state.cause.value,
            }

    def ready(self) -> tuple[bool, dict[str, bool]]:
        """Ready while Redis answered within three intervals."""
        at = self._redis_ok_at
        fresh = at is not None and self._clock() - at < 3 * self._interval_s + 1
        return fresh, {"redis": fresh}

    def set_flag(self, flag: Flag) -> None:
        """Set the operator flag (the admin API's ``PUT /mode``)."""
        self._store.set_flag(flag)


def _positive(raw: str, default: int) -> int:
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


def _prefixes(record: Mapping[str, str]) -> list[str]:
    """The rules' key prefixes the worker published; none (and an error) if it did not."""
    try:
        found = orjson.loads(record.get("prefixes") or "null")
    except orjson.JSONDecodeError:
        found = None
    if isinstance(found, list) and all(isinstance(p, str) for p in found):
        return found
    log.error(
        "the mode hash names no key prefixes (no worker of this version published them): "
        "existing keys keep their TTLs; only new fills are capped"
    )
    return []
