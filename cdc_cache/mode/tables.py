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

A table also falls back at once when one of its flattened records lacks ``__deleted``
(:func:`with_deletes`): the ``ExtractNewRecordState`` SMT is not in rewrite mode, so the
table's deletes reach the worker as bare tombstones, or not at all, and its deleted rows
would stay cached for their whole TTL. The change still applies, capped. The table returns
once its records carry the field again and none lacked it for ``window_s``.

:func:`step` is the pure controller; :class:`TableFallback` runs it for one worker process
and raises a ``table_failing`` hold per table (see :class:`cdc_cache.mode.holds.Holds`),
which followers pass to the leader like every hold.

Kept in one module: every cause of a table's fallback (failures, columns, deletes) feeds
the one state and the one decision, which the runner applies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Final

from cdc_cache.core import metrics
from cdc_cache.dlq.entries import Failure
from cdc_cache.mode.controller import Cause
from cdc_cache.plan.route import Control, Routed

if TYPE_CHECKING:
    from cdc_cache.mode.holds import Holds

log = logging.getLogger("cdc_cache.mode")

DELETES_FIX: Final = (
    "set delete.tombstone.handling.mode=rewrite (or rewrite-with-tombstone; older Debezium: "
    "delete.handling.mode=rewrite) on the connector's ExtractNewRecordState transform"
)
DELETES_HIDDEN: Final = (
    "its flattened records carry no __deleted field, so its deletes reach the worker as "
    f"tombstones or not at all; {DELETES_FIX}"
)


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
    ``schema_problem``: why its columns do not fit the rules, if they do not;
    ``deletes_hidden_ms``: when a record last hid its deletes, until it returns from that.
    """

    failing: bool = False
    reason: str = ""
    failed_ms: tuple[int, ...] = ()
    applied_since: bool = False
    schema_problem: str | None = None
    deletes_hidden_ms: int | None = None


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
    changed = replace(state, schema_problem=problem)
    return _with_problem(state, changed, "its columns fit the rules again", now_ms, config)


def with_deletes(state: TableState, hidden: bool, now_ms: int, config: TableConfig) -> TableState:
    """The table's state once a batch of its changes was read.

    ``hidden``: one of them was a flattened record without ``__deleted``, which only the
    SMT's rewrite mode adds: in any other mode a delete comes as a bare tombstone (a key
    without the row its cache keys are rendered from) or not at all. That one record
    shows it, so the table falls back at once. Otherwise (every change carried the field,
    or was no flattened record) it returns once no record hid its deletes for
    ``window_s``: partitions read behind the others may still hold records from before
    the connector was fixed.
    """
    since = state.deletes_hidden_ms
    if hidden:
        since = now_ms
    elif since is not None and now_ms - since >= config.window_s * 1000:
        since = None
    changed = replace(state, deletes_hidden_ms=since)
    return _with_problem(state, changed, "its deletes reach the worker again", now_ms, config)


def _with_problem(
    state: TableState, changed: TableState, gone: str, now_ms: int, config: TableConfig
) -> TableState:
    """``changed`` decided; the reason says ``gone`` when the problem it fell back for is."""
    if state.failing and _problem(state) is not None and _problem(changed) is None:
        changed = replace(changed, reason=f"{gone}; back once its changes apply")
    return _decide(changed, now_ms, config, None)


def _problem(state: TableState) -> str | None:
    """Why the table falls back whatever its failures say (columns, then deletes), if so."""
    if state.schema_problem is not None:
        return state.schema_problem
    return None if state.deletes_hidden_ms is None else DELETES_HIDDEN


def _decide(state: TableState, now_ms: int, config: TableConfig, kind: str | None) -> TableState:
    """Fall back on a problem (columns, deletes) or too many recent failures; return once quiet.

    ``kind`` is the kind of this batch's last failure (None when none failed).
    """
    recent = [t for t in state.failed_ms if now_ms - t < config.window_s * 1000]
    problem = _problem(state)
    if problem is not None:
        return replace(state, failing=True, reason=problem)
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


def deletes_seen(batch: Iterable[Routed]) -> dict[str, bool]:
    """Each table a batch has changes of, and whether one of them hid its deletes."""
    seen: dict[str, bool] = {}
    for item in batch:
        event = None if isinstance(item, Control) else item.event
        if event is not None:
            seen[event.table] = event.deletes_hidden or seen.get(event.table, False)
    return seen


class TableFallback:
    """The per-table controller of one worker process, and the TTL caps it implies.

    Writers report each batch (:meth:`observe`), the schema watch each check of a
    table's columns (:meth:`schema`), the flow what each batch it read shows of the
    tables' deletes (:meth:`deletes`); a table that switches raises or clears its
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
        self._hiding: frozenset[str] = frozenset()  # tables whose deletes a record hid
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

    def deletes(self, seen: Mapping[str, bool]) -> None:
        """A batch was read: whether a change of each table hid its deletes.

        ``seen`` is :func:`deletes_seen` of the batch, told before the batch is written, so
        the change that hid them is capped too.
        """
        if not self._hiding and not any(seen.values()):
            return  # the usual case: a scan of a small dictionary per batch
        now = self._now_ms()
        for table, hidden in seen.items():
            self._update(
                table, partial(with_deletes, hidden=hidden, now_ms=now, config=self._config)
            )

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
            hidden = after.deletes_hidden_ms is not None
            if hidden != (before.deletes_hidden_ms is not None):
                self._deletes_switched(table, hidden)

    def _deletes_switched(self, table: str, hidden: bool) -> None:
        """A table's records began or ceased to hide its deletes: logged and shown."""
        self._hiding = self._hiding | {table} if hidden else self._hiding - {table}
        metrics.DELETES_HIDDEN.labels(table).set(int(hidden))
        if hidden:
            log.error(
                "a flattened record carries no __deleted field: the table's deletes do not "
                "reach the worker, so it falls back to ttl mode",
                extra={"table": table, "fix": DELETES_FIX},
            )
        else:
            log.warning(
                "the table's flattened records carry __deleted again", extra={"table": table}
            )

    def _refresh(self) -> None:
        self._caps = dict.fromkeys(self._local | self._effective, self._ttl_ms)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)
