"""Per-table TTL fallback: a table whose changes keep failing caches with short TTLs alone.

After a migration the rules may no longer fit a table (a projected column was dropped):
each of its changes then fails, has its keys deleted (:mod:`cdc_cache.plan.invalidations`)
and goes to the DLQ. Keys no image can render, and entries applications fill meanwhile,
are only bounded by their TTL, so such a table falls back to TTL caching on its own:
its keys get the fallback TTL and its new writes are capped, while every other table
stays in ``cdc`` mode. The cause is ``table_failing:<table>``.

A table falls back when ``failures`` of its changes failed within ``window_s``, or at
once when its columns no longer fit the rules (see :mod:`cdc_cache.mode.schema_watch`). It
returns once its columns fit again, no change failed for ``window_s``, and a batch of
its changes applied as planned: a table that stays quiet stays in fallback, since
nothing shows the rules fit it again.

:func:`step` is the pure controller; :class:`TableFallback` runs it for one worker process
and raises a ``table_failing`` hold per table (see :class:`cdc_cache.mode.holds.Holds`),
which followers pass to the leader like every hold.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

from cdc_cache.dlq.entries import Failure
from cdc_cache.mode.controller import Cause

if TYPE_CHECKING:
    from cdc_cache.mode.holds import Holds


@dataclass(frozen=True, slots=True)
class TableConfig:
    """``failures`` failed changes within ``window_s`` make a table fall back."""

    failures: int = 5
    window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.failures < 1 or self.window_s <= 0:
            msg = (
                f"table fallback after {self.failures} failures in {self.window_s}s: "
                "need at least 1 failure and a positive window"
            )
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class TableState:
    """One table's controller state.

    ``failed_ms``: times of its latest failures (at most ``failures`` of them);
    ``applied_since``: a batch of its changes applied as planned after the last failure;
    ``schema_problem``: why its columns do not fit the rules, if they do not.
    """

    failing: bool = False
    reason: str = ""
    failed_ms: tuple[int, ...] = ()
    applied_since: bool = False
    schema_problem: str | None = None


@dataclass(frozen=True, slots=True)
class TableSignal:
    """One batch's news about a table: how many of its changes failed and applied."""

    now_ms: int
    failed: int = 0
    applied: int = 0
    kind: str = ""  # the last failure's kind (render_failed, ...), for the reason


def step(state: TableState, signal: TableSignal, config: TableConfig) -> TableState:
    """The table's state after a batch (``failed`` or ``applied`` may be zero)."""
    failed_ms = state.failed_ms
    applied_since = state.applied_since
    if signal.failed:
        failed_ms = (*failed_ms, *[signal.now_ms] * min(signal.failed, config.failures))
        failed_ms = failed_ms[-config.failures :]
        applied_since = False
    elif signal.applied:
        applied_since = True
    new = replace(state, failed_ms=failed_ms, applied_since=applied_since)
    return _decide(new, signal.now_ms, config, signal.kind if signal.failed else None)


def with_schema(
    state: TableState, problem: str | None, now_ms: int, config: TableConfig
) -> TableState:
    """The table's state once its columns were checked: ``problem`` None means they fit."""
    reason = state.reason
    if problem is None and state.schema_problem is not None and state.failing:
        reason = "its columns fit the rules again; back once its changes apply"
    return _decide(replace(state, schema_problem=problem, reason=reason), now_ms, config, None)


def _decide(state: TableState, now_ms: int, config: TableConfig, kind: str | None) -> TableState:
    """Fall back on a schema problem or too many recent failures; return once quiet.

    ``kind`` is the kind of this batch's last failure (None when none failed).
    """
    recent = [t for t in state.failed_ms if now_ms - t < config.window_s * 1000]
    if state.schema_problem is not None:
        return replace(state, failing=True, reason=state.schema_problem)
    if len(recent) >= config.failures:
        if state.failing and kind is None:
            return state
        last = f" (last: {kind})" if kind else ""
        reason = (
            f"{len(recent)} changes failed within {config.window_s:g}s{last}; "
            "see the dead-letter queue"
        )
        return replace(state, failing=True, reason=reason)
    quiet = not recent and (state.applied_since or not state.failed_ms)
    if state.failing and quiet:
        return replace(state, failing=False, reason="")
    return state


class TableFallback:
    """The per-table controller of one worker process, and the TTL caps it implies.

    Writers report each batch (:meth:`observe`), the schema watch each check of a
    table's columns (:meth:`schema`); a table that switches raises or clears its
    ``table_failing`` hold. :meth:`caps` gives the writers the fallback TTL of every
    table that falls back here or, as the mode runtime learns (:meth:`set_effective`),
    in any process. Tables the rules do not cover are ignored. Thread-safe.
    """

    def __init__(
        self,
        tables: Iterable[str],
        holds: Holds,
        fallback_ttl_ms: int,
        config: TableConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config or TableConfig()
        self._holds = holds
        self._ttl_ms = fallback_ttl_ms
        self._clock = clock
        self._lock = threading.Lock()
        self._states = {table: TableState() for table in tables}
        self._local: frozenset[str] = frozenset()
        self._effective: frozenset[str] = frozenset()
        self._caps: Mapping[str, int] = {}

    def observe(self, applied: Mapping[str, int], failures: Sequence[Failure]) -> None:
        """One batch: changes applied as planned per table, and the failed changes."""
        failed: dict[str, int] = {}
        kinds: dict[str, str] = {}
        for failure in failures:
            failed[failure.table] = failed.get(failure.table, 0) + 1
            kinds[failure.table] = failure.error.kind
        now = self._now_ms()
        for table in applied.keys() | failed.keys():
            signal = TableSignal(
                now, failed.get(table, 0), applied.get(table, 0), kinds.get(table, "")
            )
            self._update(table, partial(step, signal=signal, config=self._config))

    def schema(self, table: str, problem: str | None) -> None:
        """The table's columns were checked against the rules (``problem`` None: they fit)."""
        now = self._now_ms()
        self._update(table, lambda state: with_schema(state, problem, now, self._config))

    def set_effective(self, tables: Iterable[str]) -> None:
        """The tables falling back in any process (the leader's view, or its published one)."""
        with self._lock:
            self._effective = frozenset(tables)
            self._refresh()

    def caps(self) -> Mapping[str, int]:
        """The TTL cap of every table falling back (no lock: the mapping is replaced whole)."""
        return self._caps

    def state(self, table: str) -> TableState | None:
        """The controller state of ``table`` (None if the rules do not cover it)."""
        with self._lock:
            return self._states.get(table)

    def _update(self, table: str, change: Callable[[TableState], TableState]) -> None:
        with self._lock:
            before = self._states.get(table)
            if before is None:
                return
            after = change(before)
            self._states[table] = after
            if after.failing:
                self._local |= {table}
            else:
                self._local -= {table}
            self._refresh()
            # Under the lock, so that the holds follow the states in the same order.
            if after.failing and after.reason != before.reason:
                self._holds.hold(Cause.TABLE_FAILING, table, after.reason)
            elif before.failing and not after.failing:
                self._holds.clear(Cause.TABLE_FAILING, table)

    def _refresh(self) -> None:
        self._caps = dict.fromkeys(self._local | self._effective, self._ttl_ms)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)
