"""The TTL fallback mode at work: each worker process's loop around the pure controller.

One :class:`ModeRuntime` per worker process runs the pure controller (``mode.step``) once
a second in a background thread. Exactly one process writes the effective mode: process 0
of a multi-process cluster (or the only process). The others publish their own lag
summary for it to read, and take the effective mode from Redis. Every worker thread of a
process reads the TTL cap from the process's runtime. The records are in ``store``, the
shortened TTLs in ``shortening``.

The leader rewrites ``cdc:mode`` every tick with ``writer`` = ``worker``: a fresh
``updated_ms`` is its heartbeat (a follower's is its lag report, which expires). When it
stops for longer than ``stale_after_ms``, a watchdog (``cdc_cache.fallback.watchdog``)
writes the hash instead (``writer`` = ``watchdog``, the hold ``worker_down``, the tables
the worker left falling back on their own); the leader, seeing the watchdog's record,
takes the decision back and stays in ``ttl`` until its lag has been low for a window.

The heartbeat vouches for the dataflow too: while the flow is stuck (``mode.lag.flow_stall``:
a source partition not polled, or messages left unapplied, for ``stall_after_s``) no tick
runs, so the leader's heartbeat stands still and the watchdog takes over, and a follower's
lag report expires and the leader counts it as stalled. The mode thread itself failing is
logged and ends the worker (``on_failure``): a tick that broke halfway may have published a
switch and not acted on it, which no later tick can be trusted to repair.

Parts of the worker that find the cache cannot be known right raise a hold in the
process's :class:`~cdc_cache.mode.holds.Holds`; a follower process passes its holds to the
leader with its lag summary.

Kept in one module: leading, following and the per-table fallback are one loop sharing
its state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from cdc_cache.core import metrics
from cdc_cache.core.keys import ns
from cdc_cache.fallback.shortening import SHORTEN_KEYS_PER_S, Shortener
from cdc_cache.fallback.store import WATCHDOG, LagSummary, ModeStore
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
    kept_flag,
    overridden,
    step,
    table_holds,
)
from cdc_cache.mode.holds import Holds
from cdc_cache.mode.lag import LagReport, LagTracker, flow_stall
from cdc_cache.mode.record import ModeKeyError, ModeRecord
from cdc_cache.mode.tables import TableConfig, TableFallback
from cdc_cache.sink.connection import REDIS_ERRORS, Client

log = logging.getLogger("cdc_cache.mode")


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
        stall_after_s: float | None = None,
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
        self._flag_lost = False  # a forced flag kept after its key vanished
        self._overrides: tuple[str, ...] = ()  # what a forced cdc overrides
        self._lag_s: float | None = None
        self._holds: tuple[Hold, ...] = ()
        self._redis_ok_ms: float | None = None
        self._problem: str | None = None  # a mode key holds junk: logged once, shown in view
        self._flag_problem: str | None = None
        self._caught_up = False
        self._heard_ms = {process: self._now_ms() for process in range(1, processes)}
        self._holds_of: dict[int, tuple[Hold, ...]] = {}  # each process's last reported
        self._stall_after_s = stall_after_s
        self._stall: str | None = None  # why the flow is judged stuck (None: it moves)
        self.failure: BaseException | None = None  # what ended the mode thread
        self._on_failure: Callable[[], object] = lambda: None
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._shortener = Shortener(client, shorten_keys_per_s, self._closing, clock=clock)

    @property
    def leader(self) -> bool:
        """True in the one process that writes the effective mode."""
        return self._process == 0

    def ttl_cap_ms(self) -> int | None:
        """The TTL no new entry may exceed: the fallback TTL in ``ttl`` mode, else none."""
        with self._lock:
            return self._fallback_ttl_ms if self._state.mode is Mode.TTL else None

    def start(self, on_failure: Callable[[], object] = lambda: None) -> None:
        """Resume the mode a previous run left in Redis, then tick in a daemon thread.

        ``on_failure`` is called if the thread fails (after :attr:`failure` is set).
        """
        self._on_failure = on_failure
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
                "flag_lost": self._flag_lost,
                "overrides": list(self._overrides),
                **({"problem": self._problem} if self._problem else {}),
                **({"flow_stuck": self._stall} if self._stall else {}),
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
        """One controller step: observe, decide, publish, act. Returns the decision.

        None, with nothing published, while the flow is stuck or Redis does not answer.
        """
        if self._flow_stuck():
            return None
        shared_problem = self._share_heartbeats()
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
        except REDIS_ERRORS as exc:
            log.warning(
                "mode: Redis unavailable, keeping the current mode", extra={"error": str(exc)}
            )
            return None
        else:
            self._report(self._flag_problem or shared_problem)
        with self._lock:
            self._redis_ok_ms = self._now_ms()
        return decision

    def _share_heartbeats(self) -> str | None:
        """Pass the heartbeats read here to the other processes, and learn theirs.

        Without them, a process whose partitions hold no heartbeat topic would see its
        idle partitions age past the SLO. Returns what is wrong with the shared key, if
        anything; a Redis outage is left to the tick's own writes to report.
        """
        if self._processes < 2:
            return None
        try:
            shared = self._store.share_heartbeats(
                self._tracker.heartbeats(), int(5000 * self._interval_s)
            )
        except ModeKeyError as exc:
            return str(exc)
        except REDIS_ERRORS:
            return None
        self._tracker.learn_heartbeats(shared)
        return None

    def _flow_stuck(self) -> bool:
        """Judge the flow; log and show when it gets stuck and when it moves again."""
        if self._stall_after_s is None:
            return False
        why = flow_stall(self._tracker.report(), self._stall_after_s)
        with self._lock:
            before, self._stall = self._stall, why
        metrics.FLOW_STUCK.set(0 if why is None else 1)
        if why is not None and before is None:
            log.error(
                "mode: the dataflow is stuck; the mode heartbeat stops so that the watchdog "
                "falls the cache back (worker_down)",
                extra={"reason": why, "flow_stall_s": self._stall_after_s},
            )
        elif why is None and before is not None:
            log.warning("mode: the dataflow moves again; heartbeat resumed", extra={"was": before})
        return why is not None

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
        state, decision = step(before, signal, self._config)
        over = overridden(state, signal)
        tables = table_holds(summary.holds)
        # Published before it is adopted: a tick whose write fails decides nothing, so the
        # next one makes the same switch again, and logs, counts and acts on it then.
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
        with self._lock:
            self._state = state
            self._flag, self._lag_s, self._holds = flag, summary.lag_s, summary.holds
            self._overrides, was = over, self._overrides
        _export_mode(state.mode, flag)
        report_overrides(over, was, state, summary.holds)
        if decision.switched:
            self._switched(before.mode, decision, summary.lag_s)
        if state.mode is Mode.TTL:
            self._start_shortening()
        for table in self._tables_switched(tables):
            self._table_shortener(table).again()
        for table in tables:
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
        """The other processes' summaries; one not heard for over the SLO is stalled.

        As a partition from which nothing arrived: a process not heard since this one
        started counts from then (the processes of a restarted cluster start at their own
        pace), one that stopped reporting from its last report (which expires in Redis).
        The holds a process last reported stand until it reports again: the condition
        behind them (a paused partition, a lineage it cannot order) did not end because
        the process went silent.
        """
        now = self._now_ms()
        summaries = []
        for process in range(1, self._processes):
            summary = self._store.lag_of(process)
            if summary is not None:
                self._heard_ms[process] = now
                self._holds_of[process] = summary.holds
                summaries.append(summary)
                continue
            silent_s = (now - self._heard_ms.setdefault(process, now)) / 1000
            stalled = silent_s > self._config.slo_s
            where = f"process {process} (no lag report for {silent_s:.0f}s)"
            summaries.append(LagSummary(None, stalled, where, self._holds_of.get(process, ())))
        return summaries

    def _read_flag(self) -> Flag:
        """The operator flag; one that cannot be read counts as ``auto`` and is reported.

        A forced flag whose key vanished without an operator writing ``auto`` stays in
        force, logged and exported (``cdc_cache_mode_flag_lost``) until the key is set.
        """
        try:
            stored, self._flag_problem = self._store.stored_flag(), None
        except ModeKeyError as exc:
            self._flag_problem = f"{exc} (ignored: the mode follows the lag)"
            return Flag.AUTO
        flag, lost = kept_flag(stored, self._flag)
        with self._lock:
            was, self._flag_lost = self._flag_lost, lost
        metrics.MODE_FLAG_LOST.set(1 if lost else 0)
        if lost and not was:
            log.error(
                "mode: the operator flag vanished without an operator clearing it; keeping "
                "the forced mode",
                extra={"flag": flag.value, "key": ns().mode_flag,
                       "fix": "set it again, or `cdc-cache mode set auto` to let the lag decide"},
            )  # fmt: skip
        elif was and not lost:
            log.warning("mode: the operator flag is set again", extra={"flag": flag.value})
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
            self._shortener.again()

    def _start_shortening(self) -> None:
        """Keep the keys under the rules' prefixes at the fallback TTL while in ``ttl``.

        Every tick in ``ttl``, not only the one that switched: a restarted leader resuming
        ``ttl``, one taking the decision back from the watchdog, or a run that Redis cut
        short, leaves keys with their long TTL otherwise.
        """
        self._shortener.start(
            self._prefixes, self._fallback_ttl_ms, lambda: self.ttl_cap_ms() is not None
        )

    def _table_shortener(self, table: str) -> Shortener:
        shortener = self._table_shorteners.get(table)
        if shortener is None:
            shortener = Shortener(
                self._client,
                self._shorten_rate,
                self._closing,
                context={"table": table},
                clock=self._clock,
            )
            self._table_shorteners[table] = shortener
        return shortener

    def _start_table_shortening(self, table: str) -> None:
        """Give the keys under ``table``'s prefixes the fallback TTL (the leader only)."""

        def still_failing() -> bool:
            with self._lock:
                return table in self._ttl_tables

        self._table_shortener(table).start(
            self._table_prefixes.get(table, []), self._fallback_ttl_ms, still_failing
        )

    def _take_back(self) -> None:
        """A watchdog decided while no worker was alive: decide again, from ``ttl``.

        Changes may have gone unapplied meanwhile, so the mode stays ``ttl`` until the
        lag has been low for a window, as after any fallback.
        """
        why = "worker back after a watchdog found it down; ttl until the lag is low again"
        with self._lock:
            self._state = ModeState.initial(self._now_ms(), Mode.TTL, Cause.START, why)
        self._shortener.again()  # the watchdog's run stopped when the worker came back
        log.warning("taking the mode decision back from the watchdog", extra={"reason": why})

    def _resume(self) -> None:
        """Start in ``ttl`` if a previous run left it so: its lag is not known to be over."""
        try:
            record = self._store.record()
        except REDIS_ERRORS as exc:
            log.warning("mode: could not read the previous mode", extra={"error": str(exc)})
            return
        if not self.leader:
            return
        with self._lock:
            if record.get("flag") in (Flag.CDC, Flag.TTL):  # kept should its key be gone
                self._flag = Flag(record["flag"])
            if record.get("mode") == Mode.TTL.value:
                why = "resumed ttl mode left by the previous run"
                self._state = ModeState.initial(self._now_ms(), Mode.TTL, Cause.START, why)

    def _run(self) -> None:
        try:
            while not self._closing.wait(self._interval_s):
                self.tick()
        except Exception as exc:  # a bug: nothing decides the mode any more
            self.failure = exc
            log.critical(
                "mode: the mode thread failed; the worker stops (exit 1) and the watchdog "
                "holds ttl until it is back",
                exc_info=exc,
            )
            self._on_failure()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


def report_overrides(
    over: tuple[str, ...], was: tuple[str, ...], state: ModeState, holds: tuple[Hold, ...]
) -> None:
    """Export what a forced ``cdc`` overrides; log when that changes.

    The operator's choice sets aside the evidence that the cache may be wrong (``holds``
    active, a ``lag`` that calls for ``ttl``): nothing else says so while it lasts.
    """
    for each in ("holds", "lag"):
        metrics.MODE_FORCED_OVERRIDE.labels(each).set(1 if each in over else 0)
    if over and over != was:
        log.error(
            "mode: the forced cdc mode overrides evidence that the cache may be wrong",
            extra={
                "over": list(over),
                "holds": sorted({h.label for h in holds if h.cause not in TABLE_CAUSES}),
                "lag": state.auto_reason if state.auto is Mode.TTL else None,
            },
        )
    elif was and not over:
        log.warning("mode: the forced cdc mode no longer overrides holds or lag")


def _export_lag(report: LagReport) -> None:
    for part in report.partitions:
        labels = (part.topic, str(part.partition))
        metrics.CONNECTOR_LAG.labels(*labels).set(part.connector_lag_s)
        metrics.SOURCE_CLOCK_AHEAD.labels(*labels).set(part.ahead_s)
        if part.consumer_lag is not None:
            metrics.CONSUMER_LAG.labels(*labels).set(part.consumer_lag)


def _export_mode(mode: Mode, flag: Flag) -> None:
    for each in Mode:
        metrics.MODE.labels(each.value).set(1 if each is mode else 0)
    for option in Flag:
        metrics.MODE_FLAG.labels(option.value).set(1 if option is flag else 0)
