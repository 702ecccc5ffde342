"""The TTL fallback mode at work: the controller's loop, its Redis records, its effects.

One :class:`ModeRuntime` per worker process runs the pure controller (``mode.step``) once
a second in a background thread. Exactly one process writes the effective mode: process 0
of a multi-process cluster (or the only process). The others publish their own lag
summary for it to read, and take the effective mode from Redis. Every worker thread of a
process reads the TTL cap from the process's runtime.

Redis records (applications read ``cdc:mode``; operators set ``cdc:mode:flag``):

- ``cdc:mode:flag``: ``auto`` (or absent), ``cdc`` or ``ttl``;
- ``cdc:mode``: hash with ``mode``, ``flag``, ``cause``, ``reason``, ``since_ms``,
  ``lag_s``, ``holds`` (JSON list of the active holds' causes), ``tables`` (JSON object:
  each table falling back on its own, see ``cdc_cache.mode.tables``, with its reason),
  ``ttl_prefixes`` (JSON list: those tables' key prefixes), ``updated_ms`` and
  ``writer``; the worker's leader also writes ``stale_after_ms`` (its lag SLO plus mode
  window) and ``prefixes`` (JSON list of the rules' key prefixes).

The leader rewrites ``cdc:mode`` every tick with ``writer`` = ``worker``: a fresh
``updated_ms`` is its heartbeat (a follower's is its lag report, which expires). When it
stops for longer than ``stale_after_ms``, a watchdog (``cdc_cache.fallback.watchdog``) writes the
hash instead (``writer`` = ``watchdog``, the hold ``worker_down``, the tables the worker
left falling back on their own) through :meth:`ModeStore.take_over`, which refuses once
the worker has written again; the leader, seeing the watchdog's record, takes the decision
back and stays in ``ttl`` until its lag has been low for a window.

Parts of the worker that find the cache cannot be known right (see ``mode.Hold``) raise a
hold in the process's :class:`Holds`; a follower process passes its holds to the leader
with its lag summary.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import orjson
from redis import exceptions as rex
from redis.commands.core import Script

from cdc_cache.core import metrics
from cdc_cache.core.errors import CdcCacheError
from cdc_cache.core.keys import INTERNAL_PREFIXES, MODE_FLAG_KEY, MODE_KEY
from cdc_cache.mode.controller import (
    TABLE_CAUSES,
    Cause,
    Decision,
    Flag,
    Hold,
    Mode,
    ModeConfig,
    ModeState,
    Signal,
    step,
    table_holds,
)
from cdc_cache.mode.lag import LagReport, LagTracker
from cdc_cache.mode.record import REWRITE, ModeKeyError, ModeRecord, parse_flag, reading
from cdc_cache.mode.tables import TableConfig, TableFallback
from cdc_cache.plan.rules import Rules
from cdc_cache.sink.apply import Client, glob_escape, primaries, write_record

log = logging.getLogger("cdc_cache.mode")

LAG_REPORT_KEY: Final = "cdc:mode:lag:{process}"
SHORTEN_KEYS_PER_S: Final = 20_000  # how fast existing keys are given the fallback TTL
_LAG_REWRITE: Final = "delete it: its worker process writes it again within a second"
WORKER: Final = "worker"  # writers of cdc:mode
WATCHDOG: Final = "watchdog"
# Write the mode hash unless the worker wrote it since the watchdog read it: KEYS[1] the
# hash, ARGV[1] the watchdog's own writer name, ARGV[2] the updated_ms it saw ('' for
# none), then field/value pairs.
_TAKE_OVER: Final = """
local writer = redis.call('HGET', KEYS[1], 'writer')
local updated = redis.call('HGET', KEYS[1], 'updated_ms') or ''
if writer ~= ARGV[1] and updated ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
"""
_REDIS_ERRORS: Final = (rex.RedisError, rex.RedisClusterException, CdcCacheError)


def managed_prefixes(rules: Rules) -> list[str]:
    """The rules' literal key prefixes, without those another prefix already covers."""
    return _outermost(p for table in rules.tables.values() for p in table.truncate_prefixes)


def table_prefixes(rules: Rules) -> dict[str, list[str]]:
    """Each table's literal key prefixes, without those another of them already covers."""
    return {name: _outermost(table.truncate_prefixes) for name, table in rules.tables.items()}


def _outermost(prefixes: Iterable[str]) -> list[str]:
    found = sorted(set(prefixes))
    return [p for p in found if not any(p != q and p.startswith(q) for q in found)]


class Holds:
    """The holds raised in this process, keyed by cause and scope; thread-safe.

    ``scope`` tells instances of one cause apart (a source, a topic partition, a Redis
    node), so each clears on its own. Raising an active hold again only updates its
    reason; raising and clearing are logged once each and exported as
    ``cdc_cache_mode_holds{cause}``. A hold raised ``for_s`` seconds is a *timed* hold:
    it ends by itself then (raised again, it lasts to the later end), for conditions that
    only time resolves, such as entries that must expire.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._active: dict[tuple[Cause, str], tuple[str, float | None]] = {}
        self._clock = clock

    def hold(self, cause: Cause, scope: str, reason: str, *, for_s: float | None = None) -> None:
        """Force ``ttl`` mode for ``reason`` until :meth:`clear` (or for ``for_s`` seconds)."""
        hold = Hold(cause, reason, scope if cause in TABLE_CAUSES else "")  # validates
        with self._lock:
            previous = self._active.get((cause, scope))
            until = None if for_s is None else self._clock() + for_s
            if until is not None and previous is not None and previous[1] is not None:
                until = max(until, previous[1])
            self._active[(cause, scope)] = (reason, until)
            count = sum(c is cause for c, _ in self._active)
        metrics.MODE_HOLDS.labels(cause.value).set(count)
        if previous is None:
            what = f"table {scope}" if cause in TABLE_CAUSES else "the cache"
            log.warning(
                f"hold raised: {what} falls back to ttl mode",
                extra={"cause": hold.label, "scope": scope, "reason": reason, "for_s": for_s},
            )

    def clear(self, cause: Cause, scope: str) -> None:
        """The condition behind a hold is over (nothing happens if it was not held)."""
        with self._lock:
            found = self._active.pop((cause, scope), None)
            count = sum(c is cause for c, _ in self._active)
        if found is not None:
            metrics.MODE_HOLDS.labels(cause.value).set(count)
            log.warning(
                "hold cleared", extra={"cause": cause.value, "scope": scope, "reason": found[0]}
            )

    def active(self) -> tuple[Hold, ...]:
        """The active holds, in a stable order (timed holds that ran out are cleared)."""
        now = self._clock()
        with self._lock:
            ended = [key for key, (_, until) in self._active.items() if until and until <= now]
        for cause, scope in ended:
            self.clear(cause, scope)
        with self._lock:
            return tuple(
                sorted(
                    Hold(cause, reason, scope if cause in TABLE_CAUSES else "")
                    for (cause, scope), (reason, _) in self._active.items()
                )
            )

    def lasting(self, cause: Cause) -> bool:
        """True while a hold of ``cause`` is active that only a condition can end (not time)."""
        with self._lock:
            return any(c is cause and until is None for (c, _), (_, until) in self._active.items())


class ModeStore:
    """The mode's records in Redis (shared by the worker, the CLI and the admin API)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._take_over = Script(client, _TAKE_OVER)

    def flag(self) -> Flag:
        """The operator flag (``auto`` when unset); raises ModeKeyError for anything else."""
        with reading(MODE_FLAG_KEY, "set it with `cdc-cache mode set auto` (or cdc, ttl)"):
            return parse_flag(self._client.get(MODE_FLAG_KEY))

    def set_flag(self, flag: Flag) -> None:
        """Set the operator flag; workers act on it within a second."""
        self._client.set(MODE_FLAG_KEY, flag.value)

    def record(self) -> dict[str, str]:
        """The effective-mode hash as text (empty when no worker has published yet)."""
        with reading(MODE_KEY, REWRITE):
            raw = self._client.hgetall(MODE_KEY)
            return {k.decode(): v.decode() for k, v in raw.items()}

    def publish(
        self,
        state: ModeState,
        flag: Flag,
        lag_s: float | None,
        now_ms: int,
        fallback_ttl_ms: int,
        *,
        holds: tuple[Hold, ...] = (),
        ttl_prefixes: Iterable[str] = (),
        stale_after_ms: int | None = None,
        prefixes: list[str] | None = None,
    ) -> None:
        """Write the effective-mode hash applications read (see cdc_cache.aside.cache_aside).

        Written by the worker, this is its heartbeat; it says how long one may be missed
        (``stale_after_ms``) and which prefixes the rules manage. ``ttl_prefixes`` are the
        key prefixes of the tables held in ``ttl`` on their own (their fills too should be
        capped at the fallback TTL). Written even while Redis is out of memory: that is
        when it matters most.
        """
        fields = _mode_fields(
            state, flag=flag, lag_s=lag_s, now_ms=now_ms, fallback_ttl_ms=fallback_ttl_ms,
            holds=holds, ttl_prefixes=ttl_prefixes, writer=WORKER,
        )  # fmt: skip
        if stale_after_ms is not None:
            fields["stale_after_ms"] = stale_after_ms
        if prefixes is not None:
            fields["prefixes"] = orjson.dumps(prefixes)
        with reading(MODE_KEY, REWRITE):
            write_record(self._client, MODE_KEY, fields)

    def take_over(
        self,
        state: ModeState,
        flag: Flag,
        now_ms: int,
        fallback_ttl_ms: int,
        *,
        holds: tuple[Hold, ...],
        ttl_prefixes: Iterable[str] = (),
        seen_updated_ms: str,
    ) -> bool:
        """Write the mode hash as the watchdog, unless the worker wrote it meanwhile.

        False (nothing written) when the worker wrote it since the watchdog read
        ``seen_updated_ms`` from it: a returning worker is never overwritten. ``holds``
        and ``ttl_prefixes`` carry the tables the worker left in ``ttl`` on their own.
        """
        fields = _mode_fields(
            state, flag=flag, lag_s=None, now_ms=now_ms, fallback_ttl_ms=fallback_ttl_ms,
            holds=holds, ttl_prefixes=ttl_prefixes, writer=WATCHDOG,
        )  # fmt: skip
        pairs = [item for name, value in fields.items() for item in (name, value)]
        with reading(MODE_KEY, REWRITE):
            written = self._take_over(keys=[MODE_KEY], args=[WATCHDOG, seen_updated_ms, *pairs])
        return bool(written)

    def writer(self) -> str:
        """Who wrote the mode hash last: ``worker`` (also when unsaid) or ``watchdog``."""
        with reading(MODE_KEY, REWRITE):
            raw = self._client.hget(MODE_KEY, "writer")
            return WORKER if raw is None else raw.decode()

    def publish_lag(self, process: int, summary: LagSummary, ttl_ms: int) -> None:
        """A non-leader process's lag, for the leader to fold into its decision."""
        key = LAG_REPORT_KEY.format(process=process)
        with reading(key, _LAG_REWRITE):
            write_record(self._client, key, summary.fields(), ttl_ms)

    def lag_of(self, process: int) -> LagSummary | None:
        """Another process's last lag summary, or None if it has not reported lately."""
        key = LAG_REPORT_KEY.format(process=process)
        with reading(key, _LAG_REWRITE):
            raw = self._client.hgetall(key)
            fields = {k.decode(): v.decode() for k, v in raw.items()}
        try:
            return LagSummary.parse(fields)
        except (ValueError, TypeError):  # orjson.JSONDecodeError is a ValueError
            msg = f"{key} holds what no worker wrote there; {_LAG_REWRITE}"
            raise ModeKeyError(msg) from None


def _mode_fields(
    state: ModeState,
    *,
    flag: Flag,
    lag_s: float | None,
    now_ms: int,
    fallback_ttl_ms: int,
    holds: tuple[Hold, ...],
    ttl_prefixes: Iterable[str],
    writer: str,
) -> dict[str | bytes, bytes | float | int | str]:
    """The fields of ``cdc:mode`` every writer (the worker's leader, a watchdog) writes."""
    return {
        "mode": state.mode.value,
        "fallback_ttl_ms": fallback_ttl_ms,
        "flag": flag.value,
        "cause": state.cause.value,
        "reason": state.reason,
        "since_ms": state.since_ms,
        "lag_s": "" if lag_s is None else f"{lag_s:.3f}",
        "holds": orjson.dumps(sorted({hold.label for hold in holds})),
        "tables": orjson.dumps(table_holds(holds)),
        "ttl_prefixes": orjson.dumps(sorted(set(ttl_prefixes))),
        "updated_ms": now_ms,
        "writer": writer,
    }


@dataclass(frozen=True, slots=True)
class LagSummary:
    """What the controller needs from one process: its worst partition and its holds."""

    lag_s: float | None
    stalled: bool
    where: str
    holds: tuple[Hold, ...] = field(default=())

    @classmethod
    def of(cls, report: LagReport, slo_s: float, holds: tuple[Hold, ...] = ()) -> LagSummary:
        """The worst partition of ``report``; a silent partition wins (it is stalled)."""
        silent = [p for p in report.partitions if p.silent_s > slo_s]
        worst = max(silent, key=lambda p: p.silent_s, default=None) or report.worst()
        if worst is None:
            return cls(None, False, "", holds)
        lag = max(p.connector_lag_s for p in report.partitions)
        return cls(lag, bool(silent), f"{worst.topic}[{worst.partition}]", holds)

    @classmethod
    def worst_of(cls, summaries: Iterable[LagSummary]) -> LagSummary:
        """Several processes' summaries folded into one (every process's holds count)."""
        items = list(summaries)
        holds = tuple(sorted({hold for s in items for hold in s.holds}))
        known = [s for s in items if s.lag_s is not None]
        worst = max(known, key=lambda s: (s.stalled, s.lag_s or 0.0), default=None)
        if worst is None:
            return cls(None, any(s.stalled for s in items), "", holds)
        lag = max(s.lag_s or 0.0 for s in known)
        return cls(lag, any(s.stalled for s in items), worst.where, holds)

    def fields(self) -> dict[str | bytes, bytes | float | int | str]:
        """As a Redis hash."""
        lag = "" if self.lag_s is None else repr(self.lag_s)
        holds = orjson.dumps(
            [[hold.cause.value, hold.reason, *([hold.scope] if hold.scope else [])]
             for hold in self.holds]
        ).decode()  # fmt: skip
        return {
            "lag_s": lag,
            "stalled": "1" if self.stalled else "0",
            "where": self.where,
            "holds": holds,
        }

    @classmethod
    def parse(cls, fields: dict[str, str]) -> LagSummary | None:
        """From a Redis hash; None when the hash is gone (the process stopped reporting).

        A hold whose cause this release does not know still forces ``ttl`` (as lineage
        trouble, the cause that needs an operator soonest) rather than being dropped.
        """
        if not fields:
            return None
        lag = fields.get("lag_s", "")
        holds = []
        for cause, reason, *scope in orjson.loads(fields.get("holds") or "[]"):
            known = Cause(cause) if cause in Cause.__members__.values() else None
            if known in TABLE_CAUSES:
                if scope:
                    holds.append(Hold(known, reason, scope[0]))
                    continue
                known = None  # a table hold naming no table: hold everything instead
            holds.append(Hold(known or Cause.LINEAGE, reason if known else f"{cause}: {reason}"))
        return cls(
            float(lag) if lag else None,
            fields.get("stalled") == "1",
            fields.get("where", ""),
            tuple(sorted(holds)),
        )


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
    when ``keep_going`` turns false (the mode went back to ``cdc``).
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
                    k for k in found if not k.decode(errors="replace").startswith(INTERNAL_PREFIXES)
                ]
                if names:
                    pipe = node.pipeline(transaction=False)
                    for name in names:
                        pipe.pexpire(name, ttl_ms, lt=True)
                    shortened += sum(r == 1 for r in pipe.execute(raise_on_error=False))
                    sleep(len(names) / keys_per_s)
                if cursor == 0:
                    break
    return shortened


class Shortener:
    """Runs :func:`shorten_ttls` in a background thread, one run at a time.

    Used by the worker's mode leader when it enters ``ttl`` and by the watchdog when it
    takes over from a worker that is down, and (one per table) by the leader when a table
    falls back on its own. ``closing`` stops a run early; ``context`` (such as the table)
    goes into its log lines.
    """

    def __init__(
        self,
        client: Client,
        keys_per_s: float,
        closing: threading.Event,
        context: Mapping[str, str] | None = None,
    ) -> None:
        self._client = client
        self._keys_per_s = keys_per_s
        self._closing = closing
        self._context = dict(context or {})
        self._thread: threading.Thread | None = None

    def start(self, prefixes: list[str], ttl_ms: int, keep_going: Callable[[], bool]) -> None:
        """Shorten in the background unless a run is under way.

        The run stops early when ``keep_going`` turns false.
        """
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(
            target=self._run,
            args=(prefixes, ttl_ms, keep_going),
            name="-".join(["cdc-ttl", *self._context.values()]),
            daemon=True,
        )
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a run under way."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, prefixes: list[str], ttl_ms: int, keep_going: Callable[[], bool]) -> None:
        started = time.monotonic()
        try:
            count = shorten_ttls(
                self._client,
                prefixes,
                ttl_ms,
                keys_per_s=self._keys_per_s,
                keep_going=lambda: keep_going() and not self._closing.is_set(),
                sleep=self._closing.wait,
            )
        except _REDIS_ERRORS as exc:
            log.error(
                "could not give existing keys the fallback TTL; they keep their rule TTL",
                extra={"error": str(exc), **self._context},
            )
            return
        metrics.TTL_SHORTENED.inc(count)
        log.info(
            "existing keys given the fallback TTL",
            extra={"keys": count, "ttl_ms": ttl_ms,
                   "seconds": round(time.monotonic() - started, 3), **self._context},
        )  # fmt: skip


class ModeRuntime:
    """Runs the mode controller for one worker process and applies its effects.

    ``ttl_cap_ms`` is what the Redis writers ask before each batch; ``view`` and ``ready``
    feed the admin API.
    """

    def __init__(
        self,
        *,
        client: Client,
        tracker: LagTracker,
        config: ModeConfig,
        fallback_ttl_ms: int,
        prefixes: list[str],
        process: int = 0,
        processes: int = 1,
        max_consumer_lag: int = 1000,
        interval_s: float = 1.0,
        shorten_keys_per_s: float = SHORTEN_KEYS_PER_S,
        clock: Callable[[], float] = time.time,
        table_prefixes: Mapping[str, list[str]] | None = None,
        table_config: TableConfig | None = None,
    ) -> None:
        self._store = ModeStore(client)
        self._client = client
        self.holds = Holds()
        self._table_prefixes = dict(table_prefixes or {})
        # Tables falling back on their own: fed by the writers, capped in every process.
        self.tables = TableFallback(
            self._table_prefixes, self.holds, fallback_ttl_ms, table_config, clock
        )
        self._ttl_tables: dict[str, str] = {}
        self._table_shorteners: dict[str, Shortener] = {}
        self._shorten_rate = shorten_keys_per_s
        self._tracker = tracker
        self._config = config
        self._fallback_ttl_ms = fallback_ttl_ms
        self._prefixes = prefixes
        self._process = process
        self._processes = processes
        self._max_consumer_lag = max_consumer_lag
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = ModeState.initial(self._now_ms())
        self._flag = Flag.AUTO
        self._lag_s: float | None = None
        self._holds: tuple[Hold, ...] = ()
        self._redis_ok_ms: float | None = None
        self._problem: str | None = None  # a mode key holds junk: logged once, shown in view
        self._flag_problem: str | None = None
        self._caught_up = False
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._shortener = Shortener(client, shorten_keys_per_s, self._closing)

    @property
    def leader(self) -> bool:
        """True in the one process that writes the effective mode."""
        return self._process == 0

    def ttl_cap_ms(self) -> int | None:
        """The TTL no new entry may exceed: the fallback TTL in ``ttl`` mode, else none."""
        with self._lock:
            return self._fallback_ttl_ms if self._state.mode is Mode.TTL else None

    def start(self) -> None:
        """Resume the mode a previous run left in Redis, then tick in a daemon thread."""
        self._resume()
        self._thread = threading.Thread(target=self._run, name="cdc-mode", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop ticking (and any TTL shortening in progress)."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(10)
        for shortener in (self._shortener, *self._table_shorteners.values()):
            shortener.join(10)

    def set_flag(self, flag: Flag) -> None:
        """Set the operator flag in Redis; the next tick acts on it."""
        self._store.set_flag(flag)

    def view(self) -> dict[str, object]:
        """The effective mode as this process sees it (for ``GET /mode``)."""
        with self._lock:
            state = self._state
            return {
                "mode": state.mode.value,
                "flag": self._flag.value,
                "cause": state.cause.value,
                "reason": state.reason,
                "since_ms": state.since_ms,
                "lag_s": self._lag_s,
                "holds": [{"cause": h.label, "reason": h.reason} for h in self._holds],
                "tables": dict(self._ttl_tables),
                **({"problem": self._problem} if self._problem else {}),
            }

    def ready(self) -> tuple[bool, dict[str, bool]]:
        """Ready once Redis answers and the partitions were caught up at least once.

        And while every source lineage can be told: no ``lineage`` hold in this process
        but timed ones (the settling after a switch is expected, not a problem).
        """
        lineage = not self.holds.lasting(Cause.LINEAGE)
        with self._lock:
            fresh = self._redis_ok_ms is not None and (
                self._now_ms() - self._redis_ok_ms < 3000 * self._interval_s
            )
            checks = {"redis": fresh, "kafka_caught_up": self._caught_up, "lineage": lineage}
        return all(checks.values()), checks

    def tick(self) -> Decision | None:
        """One controller step: observe, decide, publish, act. Returns the decision."""
        report = self._tracker.report()
        _export_lag(report)
        local = LagSummary.of(report, self._config.slo_s, self.holds.active())
        with self._lock:
            if not self._caught_up and report.partitions:
                self._caught_up = report.caught_up(self._max_consumer_lag)
        decision = None
        try:
            decision = self._lead(local) if self.leader else self._follow(local)
        except ModeKeyError as exc:  # Redis answered: what it holds is the problem
            self._report(str(exc))
        except _REDIS_ERRORS as exc:
            log.warning(
                "mode: Redis unavailable, keeping the current mode", extra={"error": str(exc)}
            )
            return None
        else:
            self._report(self._flag_problem)
        with self._lock:
            self._redis_ok_ms = self._now_ms()
        return decision

    def _report(self, problem: str | None) -> None:
        """Log a mode key holding junk once (and its end), not on every tick."""
        with self._lock:
            before, self._problem = self._problem, problem
        if problem is not None and problem != before:
            log.error("mode: a mode key cannot be read; fix it", extra={"problem": problem})
        elif problem is None and before is not None:
            log.warning("mode: the mode keys are readable again", extra={"was": before})

    def _lead(self, local: LagSummary) -> Decision:
        now = self._now_ms()
        flag = self._read_flag()
        if self._store.writer() == WATCHDOG:
            self._take_back()
        summary = LagSummary.worst_of([local, *self._others()])
        signal = Signal(now, flag, summary.lag_s, summary.stalled, summary.where, summary.holds)
        with self._lock:
            before = self._state
            self._state, decision = step(before, signal, self._config)
            self._flag, self._lag_s, self._holds = flag, summary.lag_s, summary.holds
            state = self._state
        tables = table_holds(summary.holds)
        self._store.publish(
            state,
            flag,
            summary.lag_s,
            now,
            self._fallback_ttl_ms,
            holds=summary.holds,
            ttl_prefixes=[p for table in tables for p in self._table_prefixes.get(table, ())],
            stale_after_ms=int((self._config.slo_s + self._config.window_s) * 1000),
            prefixes=self._prefixes,
        )
        _export_mode(state.mode, flag)
        if decision.switched:
            self._switched(before.mode, decision, summary.lag_s)
        for table in self._tables_switched(tables):
            self._start_table_shortening(table)
        return decision

    def _follow(self, local: LagSummary) -> Decision:
        ttl_ms = int(5000 * self._interval_s)
        self._store.publish_lag(self._process, local, ttl_ms)
        record = ModeRecord.parse(self._store.record())
        with self._lock:
            before = self._state
            mode = record.mode if record else Mode.CDC
            flag = record.flag if record else Flag.AUTO
            cause = record.cause if record else before.cause
            reason = record.reason if record else before.reason
            if mode is not before.mode:
                self._state = ModeState.initial(self._now_ms(), mode, cause, reason)
            self._flag, self._lag_s, self._holds = flag, local.lag_s, local.holds
        _export_mode(mode, flag)
        self._tables_switched(record.tables if record else {})
        return Decision(mode, mode is not before.mode, cause, reason)

    def _tables_switched(self, tables: dict[str, str]) -> list[str]:
        """Adopt the tables falling back on their own; returns those that just began to.

        Each switch is logged with its cause ``table_failing:<table>``; the writers of
        this process cap those tables' TTLs from now on.
        """
        with self._lock:
            before, self._ttl_tables = self._ttl_tables, dict(tables)
        self.tables.set_effective(tables)
        for table in before.keys() - tables.keys():
            metrics.TABLE_FALLBACK.labels(table).set(0)
            log.warning(
                "table back to cdc mode: its changes apply again",
                extra={"table": table, "cause": f"{Cause.TABLE_FAILING}:{table}"},
            )
        began = sorted(tables.keys() - before.keys())
        for table in began:
            metrics.TABLE_FALLBACK.labels(table).set(1)
            log.warning(
                "table falls back to ttl mode on its own",
                extra={
                    "table": table,
                    "cause": f"{Cause.TABLE_FAILING}:{table}",
                    "reason": tables[table],
                    "ttl_ms": self._fallback_ttl_ms,
                },
            )
        return began

    def _others(self) -> list[LagSummary]:
        """The other processes' summaries; one that stopped reporting counts as stalled."""
        return [
            self._store.lag_of(process) or LagSummary(None, True, f"process {process}")
            for process in range(1, self._processes)
        ]

    def _read_flag(self) -> Flag:
        """The operator flag; one that cannot be read counts as ``auto`` and is reported."""
        try:
            flag, self._flag_problem = self._store.flag(), None
        except ModeKeyError as exc:
            flag, self._flag_problem = Flag.AUTO, f"{exc} (ignored: the mode follows the lag)"
        return flag

    def _switched(self, old: Mode, decision: Decision, lag_s: float | None) -> None:
        metrics.MODE_SWITCHES.labels(decision.mode.value, decision.cause.value).inc()
        log.warning(
            "cache mode switched",
            extra={
                "from": old.value,
                "to": decision.mode.value,
                "cause": decision.cause.value,
                "reason": decision.reason,
                "lag_s": lag_s,
            },
        )
        if decision.mode is Mode.TTL:
            self._start_shortening()

    def _start_shortening(self) -> None:
        self._shortener.start(
            self._prefixes, self._fallback_ttl_ms, lambda: self.ttl_cap_ms() is not None
        )

    def _start_table_shortening(self, table: str) -> None:
        """Give the keys under ``table``'s prefixes the fallback TTL (the leader only)."""

        def still_failing() -> bool:
            with self._lock:
                return table in self._ttl_tables

        shortener = self._table_shorteners.get(table)
        if shortener is None:
            shortener = Shortener(
                self._client, self._shorten_rate, self._closing, context={"table": table}
            )
            self._table_shorteners[table] = shortener
        shortener.start(self._table_prefixes.get(table, []), self._fallback_ttl_ms, still_failing)

    def _take_back(self) -> None:
        """A watchdog decided while no worker was alive: decide again, from ``ttl``.

        Changes may have gone unapplied meanwhile, so the mode stays ``ttl`` until the
        lag has been low for a window, as after any fallback.
        """
        why = "worker back after a watchdog found it down; ttl until the lag is low again"
        with self._lock:
            self._state = ModeState.initial(self._now_ms(), Mode.TTL, Cause.START, why)
        log.warning("taking the mode decision back from the watchdog", extra={"reason": why})

    def _resume(self) -> None:
        """Start in ``ttl`` if a previous run left it so: its lag is not known to be over."""
        try:
            record = self._store.record()
        except _REDIS_ERRORS as exc:
            log.warning("mode: could not read the previous mode", extra={"error": str(exc)})
            return
        if self.leader and record.get("mode") == Mode.TTL.value:
            why = "resumed ttl mode left by the previous run"
            with self._lock:
                self._state = ModeState.initial(self._now_ms(), Mode.TTL, Cause.START, why)

    def _run(self) -> None:
        while not self._closing.wait(self._interval_s):
            self.tick()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


def _export_lag(report: LagReport) -> None:
    for part in report.partitions:
        labels = (part.topic, str(part.partition))
        metrics.CONNECTOR_LAG.labels(*labels).set(part.connector_lag_s)
        if part.consumer_lag is not None:
            metrics.CONSUMER_LAG.labels(*labels).set(part.consumer_lag)


def _export_mode(mode: Mode, flag: Flag) -> None:
    for each in Mode:
        metrics.MODE.labels(each.value).set(1 if each is mode else 0)
    for option in Flag:
        metrics.MODE_FLAG.labels(option.value).set(1 if option is flag else 0)
