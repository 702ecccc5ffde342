"""The mode's records in Redis: what applications read, what operators set, lag reports.

Applications read ``cdc:mode``; operators set ``cdc:mode:flag``:

- ``cdc:mode:flag``: ``auto``, ``cdc`` or ``ttl``; absent reads as ``auto``, except that
  the leader keeps a forced flag whose key vanished (only writing ``auto`` clears one);
- ``cdc:mode``: hash with ``mode``, ``flag``, ``cause``, ``reason``, ``since_ms``,
  ``lag_s``, ``holds`` (JSON list of the active holds' causes), ``tables`` (JSON object:
  each table falling back on its own, see ``cdc_cache.mode.tables``, with its reason),
  ``ttl_prefixes`` (JSON list: those tables' key prefixes), ``updated_ms`` and
  ``writer``; the worker's leader also writes ``stale_after_ms`` (its lag SLO plus mode
  window) and ``prefixes`` (JSON list of the rules' key prefixes).

A follower process writes its :class:`LagSummary` (``cdc:mode:lag:<process>``, expiring)
for the leader to read. The processes of a cluster share the connectors' heartbeats
(``cdc:mode:heartbeats``: connector → ``[emitted_ms, read_ms]``, expiring): a connector's
heartbeats land in one partition, read by one process, and keep every process's idle
partitions fresh. A watchdog writes ``cdc:mode`` only through
:meth:`ModeStore.take_over`, which refuses once the worker has written again.

Kept in one module: the mode's records share one key layout and are written by the
leader, its followers and the watchdog alike; each reads the others' fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from cdc_cache.core.keys import ns
from cdc_cache.mode.controller import (
    TABLE_CAUSES,
    Cause,
    Flag,
    Hold,
    ModeState,
    table_holds,
)
from cdc_cache.mode.lag import LagReport
from cdc_cache.mode.record import ModeKeyError, parse_flag, reading, rewrite
from cdc_cache.sink.connection import Client
from cdc_cache.sink.scripts import write_record

_LAG_REWRITE: Final = "delete it: its worker process writes it again within a second"
WORKER: Final = "worker"  # writers of the mode hash
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


def run_on_key(client: Client, script: str, key: str, args: Sequence[Any]) -> Any:
    """Run ``script`` on the node serving ``key`` (EVAL: the script travels with the call).

    For the watchdog's calls: a script unknown to Redis would be loaded (SCRIPT LOAD) on
    every primary of a Cluster, and one primary that stopped answering would hold the
    watchdog up when it is needed, though the node serving the mode keys answers.
    """
    return client.execute_command("EVAL", script, 1, key, *args)


class ModeStore:
    """The mode's records in Redis (shared by the worker, the CLI and the admin API)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def flag(self) -> Flag:
        """The operator flag (``auto`` when unset); raises ModeKeyError for anything else."""
        return self.stored_flag() or Flag.AUTO

    def stored_flag(self) -> Flag | None:
        """The operator flag, None when its key is absent (never set, or gone).

        ``cdc-cache mode set auto`` writes ``auto``: an absent key after a forced mode
        was lost, not cleared (see :func:`~cdc_cache.mode.controller.kept_flag`).
        """
        with reading(ns().mode_flag, "set it with `cdc-cache mode set auto` (or cdc, ttl)"):
            raw = self._client.get(ns().mode_flag)
            return None if raw is None else parse_flag(raw)

    def set_flag(self, flag: Flag) -> None:
        """Set the operator flag; workers act on it within a second."""
        self._client.set(ns().mode_flag, flag.value)

    def record(self) -> dict[str, str]:
        """The effective-mode hash as text (empty when no worker has published yet)."""
        with reading(ns().mode, rewrite()):
            raw = self._client.hgetall(ns().mode)
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
        with reading(ns().mode, rewrite()):
            write_record(self._client, ns().mode, fields)

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
        with reading(ns().mode, rewrite()):
            written = run_on_key(
                self._client, _TAKE_OVER, ns().mode, [WATCHDOG, seen_updated_ms, *pairs]
            )
        return bool(written)

    def writer(self) -> str:
        """Who wrote the mode hash last: ``worker`` (also when unsaid) or ``watchdog``."""
        with reading(ns().mode, rewrite()):
            raw = self._client.hget(ns().mode, "writer")
            return WORKER if raw is None else raw.decode()

    def publish_lag(self, process: int, summary: LagSummary, ttl_ms: int) -> None:
        """A non-leader process's lag, for the leader to fold into its decision."""
        key = ns().lag_report(process)
        with reading(key, _LAG_REWRITE):
            write_record(self._client, key, summary.fields(), ttl_ms)

    def share_heartbeats(
        self, beats: dict[str, tuple[float | None, float]], ttl_ms: int
    ) -> dict[str, tuple[float | None, float]]:
        """Add the heartbeats read here to the shared ones; returns every process's.

        A field holding something no worker wrote is left out (its connector's partitions
        then look as old as their last change: ttl mode, never a stale cdc).
        """
        pipe = self._client.pipeline(transaction=False)
        if beats:
            pipe.hset(ns().heartbeats, mapping={k: orjson.dumps(v) for k, v in beats.items()})
            pipe.pexpire(ns().heartbeats, ttl_ms)
        pipe.hgetall(ns().heartbeats)
        with reading(ns().heartbeats, _LAG_REWRITE):
            raw = pipe.execute()[-1]
        shared = {}
        for name, value in raw.items():
            try:
                emitted, read = orjson.loads(value)
                shared[name.decode()] = (None if emitted is None else float(emitted), float(read))
            except (ValueError, TypeError):  # orjson.JSONDecodeError is a ValueError
                continue
        return shared

    def lag_of(self, process: int) -> LagSummary | None:
        """Another process's last lag summary, or None if it has not reported lately."""
        key = ns().lag_report(process)
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
        known = [s.lag_s for s in items if s.lag_s is not None]
        # named in the reason: a stalled one first (a silent process has no lag to compare)
        worst = max(
            items, key=lambda s: (s.stalled, s.lag_s is not None, s.lag_s or 0.0), default=None
        )
        where = worst.where if worst is not None else ""
        return cls(max(known, default=None), any(s.stalled for s in items), where, holds)

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
