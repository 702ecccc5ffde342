"""The TTL fallback mode at work: the controller's loop, its Redis records, its effects.

One :class:`ModeRuntime` per worker process runs the pure controller (``mode.step``) once
a second in a background thread. Exactly one process writes the effective mode: process 0
of a multi-process cluster (or the only process). The others publish their own lag
summary for it to read, and take the effective mode from Redis. Every worker thread of a
process reads the TTL cap from the process's runtime.

Redis records (applications read ``cdc:mode``; operators set ``cdc:mode:flag``):

- ``cdc:mode:flag``: ``auto`` (or absent), ``cdc`` or ``ttl``;
- ``cdc:mode``: hash with ``mode``, ``flag``, ``cause``, ``reason``, ``since_ms``,
  ``lag_s``, ``holds`` (JSON list of the active holds' causes) and ``updated_ms``.

Parts of the worker that find the cache cannot be known right (see ``mode.Hold``) raise a
hold in the process's :class:`Holds`; a follower process passes its holds to the leader
with its lag summary.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import orjson
from redis import exceptions as rex

from cdc_cache import metrics
from cdc_cache.errors import CdcCacheError, ConfigError
from cdc_cache.keys import INTERNAL_PREFIXES, MODE_FLAG_KEY, MODE_KEY
from cdc_cache.lag import LagReport, LagTracker
from cdc_cache.mode import (
    Cause,
    Decision,
    Flag,
    Hold,
    Mode,
    ModeConfig,
    ModeState,
    Signal,
    step,
)
from cdc_cache.redis_apply import Client, glob_escape, primaries, write_record
from cdc_cache.rules import Rules

log = logging.getLogger("cdc_cache.mode")

LAG_REPORT_KEY: Final = "cdc:mode:lag:{process}"
_REDIS_ERRORS: Final = (rex.RedisError, rex.RedisClusterException, CdcCacheError)


def managed_prefixes(rules: Rules) -> list[str]:
    """The rules' literal key prefixes, without those another prefix already covers."""
    found = sorted({p for table in rules.tables.values() for p in table.truncate_prefixes})
    return [p for p in found if not any(p != q and p.startswith(q) for q in found)]


def parse_flag(value: str | bytes | None) -> Flag:
    """The flag stored in Redis; absent means ``auto``; anything else is refused."""
    text = value.decode() if isinstance(value, bytes) else value
    if text is None:
        return Flag.AUTO
    try:
        return Flag(text.strip().lower())
    except ValueError:
        msg = f"{MODE_FLAG_KEY} holds {text!r}; set it to auto, cdc or ttl (cdc-cache mode set)"
        raise ConfigError(msg) from None


class Holds:
    """The holds raised in this process, keyed by cause and scope; thread-safe.

    ``scope`` tells instances of one cause apart (a source, a topic partition, a Redis
    node), so each clears on its own. Raising an active hold again only updates its
    reason; raising and clearing are logged once each and exported as
    ``cdc_cache_mode_holds{cause}``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[tuple[Cause, str], str] = {}

    def hold(self, cause: Cause, scope: str, reason: str) -> None:
        """Force ``ttl`` mode for ``reason`` until :meth:`clear` of the same cause and scope."""
        Hold(cause, reason)  # validates the cause
        with self._lock:
            new = (cause, scope) not in self._active
            self._active[(cause, scope)] = reason
            count = sum(c is cause for c, _ in self._active)
        metrics.MODE_HOLDS.labels(cause.value).set(count)
        if new:
            log.warning(
                "hold raised: the cache falls back to ttl mode",
                extra={"cause": cause.value, "scope": scope, "reason": reason},
            )

    def clear(self, cause: Cause, scope: str) -> None:
        """The condition behind a hold is over (nothing happens if it was not held)."""
        with self._lock:
            reason = self._active.pop((cause, scope), None)
            count = sum(c is cause for c, _ in self._active)
        if reason is not None:
            metrics.MODE_HOLDS.labels(cause.value).set(count)
            log.warning(
                "hold cleared", extra={"cause": cause.value, "scope": scope, "reason": reason}
            )

    def active(self) -> tuple[Hold, ...]:
        """The active holds, in a stable order."""
        with self._lock:
            return tuple(sorted(Hold(cause, reason) for (cause, _), reason in self._active.items()))


class ModeStore:
    """The mode's records in Redis (shared by the worker, the CLI and the admin API)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def flag(self) -> Flag:
        """The operator flag (``auto`` when unset)."""
        return parse_flag(self._client.get(MODE_FLAG_KEY))

    def set_flag(self, flag: Flag) -> None:
        """Set the operator flag; workers act on it within a second."""
        self._client.set(MODE_FLAG_KEY, flag.value)

    def record(self) -> dict[str, str]:
        """The effective-mode hash as text (empty when no worker has published yet)."""
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
    ) -> None:
        """Write the effective-mode hash applications read (see cdc_cache.client).

        Written even while Redis is out of memory: that is when it matters most.
        """
        write_record(
            self._client,
            MODE_KEY,
            {
                "mode": state.mode.value,
                "fallback_ttl_ms": fallback_ttl_ms,
                "flag": flag.value,
                "cause": state.cause.value,
                "reason": state.reason,
                "since_ms": state.since_ms,
                "lag_s": "" if lag_s is None else f"{lag_s:.3f}",
                "holds": orjson.dumps(sorted({hold.cause.value for hold in holds})),
                "updated_ms": now_ms,
            },
        )

    def publish_lag(self, process: int, summary: LagSummary, ttl_ms: int) -> None:
        """A non-leader process's lag, for the leader to fold into its decision."""
        write_record(self._client, LAG_REPORT_KEY.format(process=process), summary.fields(), ttl_ms)

    def lag_of(self, process: int) -> LagSummary | None:
        """Another process's last lag summary, or None if it has not reported lately."""
        raw = self._client.hgetall(LAG_REPORT_KEY.format(process=process))
        return LagSummary.parse({k.decode(): v.decode() for k, v in raw.items()})


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
        holds = orjson.dumps([[hold.cause.value, hold.reason] for hold in self.holds]).decode()
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
        for cause, reason in orjson.loads(fields.get("holds") or "[]"):
            known = Cause(cause) if cause in Cause.__members__.values() else None
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
        shorten_keys_per_s: float = 20_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = ModeStore(client)
        self._client = client
        self.holds = Holds()
        self._tracker = tracker
        self._config = config
        self._fallback_ttl_ms = fallback_ttl_ms
        self._prefixes = prefixes
        self._process = process
        self._processes = processes
        self._max_consumer_lag = max_consumer_lag
        self._interval_s = interval_s
        self._shorten_rate = shorten_keys_per_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = ModeState.initial(self._now_ms())
        self._flag = Flag.AUTO
        self._lag_s: float | None = None
        self._holds: tuple[Hold, ...] = ()
        self._redis_ok_ms: float | None = None
        self._caught_up = False
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._shortener: threading.Thread | None = None

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
        for thread in (self._thread, self._shortener):
            if thread is not None:
                thread.join(10)

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
                "holds": [{"cause": h.cause.value, "reason": h.reason} for h in self._holds],
            }

    def ready(self) -> tuple[bool, dict[str, bool]]:
        """Ready once Redis answers and the partitions were caught up at least once."""
        with self._lock:
            fresh = self._redis_ok_ms is not None and (
                self._now_ms() - self._redis_ok_ms < 3000 * self._interval_s
            )
            checks = {"redis": fresh, "kafka_caught_up": self._caught_up}
        return all(checks.values()), checks

    def tick(self) -> Decision | None:
        """One controller step: observe, decide, publish, act. Returns the decision."""
        report = self._tracker.report()
        _export_lag(report)
        local = LagSummary.of(report, self._config.slo_s, self.holds.active())
        with self._lock:
            if not self._caught_up and report.partitions:
                self._caught_up = report.caught_up(self._max_consumer_lag)
        try:
            decision = self._lead(local) if self.leader else self._follow(local)
        except _REDIS_ERRORS as exc:
            log.warning(
                "mode: Redis unavailable, keeping the current mode", extra={"error": str(exc)}
            )
            return None
        with self._lock:
            self._redis_ok_ms = self._now_ms()
        return decision

    def _lead(self, local: LagSummary) -> Decision:
        now = self._now_ms()
        flag = self._read_flag()
        summary = LagSummary.worst_of([local, *self._others()])
        signal = Signal(now, flag, summary.lag_s, summary.stalled, summary.where, summary.holds)
        with self._lock:
            before = self._state
            self._state, decision = step(before, signal, self._config)
            self._flag, self._lag_s, self._holds = flag, summary.lag_s, summary.holds
            state = self._state
        self._store.publish(
            state, flag, summary.lag_s, now, self._fallback_ttl_ms, holds=summary.holds
        )
        _export_mode(state.mode, flag)
        if decision.switched:
            self._switched(before.mode, decision, summary.lag_s)
        return decision

    def _follow(self, local: LagSummary) -> Decision:
        ttl_ms = int(5000 * self._interval_s)
        self._store.publish_lag(self._process, local, ttl_ms)
        record = self._store.record()
        mode = Mode(record.get("mode", Mode.CDC.value))
        flag = parse_flag(record.get("flag"))
        with self._lock:
            before = self._state
            cause = Cause(record.get("cause", before.cause.value))
            reason = record.get("reason", before.reason)
            if mode is not before.mode:
                self._state = ModeState.initial(self._now_ms(), mode, cause, reason)
            self._flag, self._lag_s, self._holds = flag, local.lag_s, local.holds
        _export_mode(mode, flag)
        return Decision(mode, mode is not before.mode, cause, reason)

    def _others(self) -> list[LagSummary]:
        """The other processes' summaries; one that stopped reporting counts as stalled."""
        return [
            self._store.lag_of(process) or LagSummary(None, True, f"process {process}")
            for process in range(1, self._processes)
        ]

    def _read_flag(self) -> Flag:
        try:
            return self._store.flag()
        except ConfigError as exc:
            log.warning("mode flag ignored", extra={"error": str(exc)})
            return Flag.AUTO

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
        if self._shortener is not None and self._shortener.is_alive():
            return
        self._shortener = threading.Thread(target=self._shorten, name="cdc-ttl", daemon=True)
        self._shortener.start()

    def _shorten(self) -> None:
        started = time.monotonic()
        try:
            count = shorten_ttls(
                self._client,
                self._prefixes,
                self._fallback_ttl_ms,
                keys_per_s=self._shorten_rate,
                keep_going=lambda: self.ttl_cap_ms() is not None and not self._closing.is_set(),
                sleep=self._closing.wait,
            )
        except _REDIS_ERRORS as exc:
            log.error(
                "could not give existing keys the fallback TTL; they keep their rule TTL",
                extra={"error": str(exc)},
            )
            return
        metrics.TTL_SHORTENED.inc(count)
        log.info(
            "existing keys given the fallback TTL",
            extra={"keys": count, "ttl_ms": self._fallback_ttl_ms,
                   "seconds": round(time.monotonic() - started, 3)},
        )  # fmt: skip

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
