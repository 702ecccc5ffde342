"""The cache mode controller: ``(state, signal) -> (state, decision)``, no I/O.

``cdc``: invalidations keep the cache fresh. ``ttl``: the connector lags (or is stalled),
so entries get a short TTL that bounds staleness. Hysteresis keeps the mode from flapping:
``ttl`` is entered only after lag stayed above the SLO for a whole window, and left only
after it stayed below the lower recovery threshold for a whole window, so two automatic
switches are always at least a window apart. An operator flag (``cdc``/``ttl``) overrides
the automatic choice at once; meanwhile the automatic mode keeps following the lag, so
setting the flag back to ``auto`` lands on what the lag calls for.

A *hold* is a condition under which the worker cannot know the cache is right (a source
lineage it cannot order, Redis refusing writes for memory, replicas behind, a gap in a
topic, the worker itself gone): while any hold is active the automatic mode is ``ttl``
with the hold's cause, at once and without a window, since waiting would serve rows
nobody can vouch for. When the last hold clears the mode follows the lag again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum


class Mode(StrEnum):
    """The effective cache mode."""

    CDC = "cdc"
    TTL = "ttl"


class Flag(StrEnum):
    """The operator's flag: follow the lag, or force a mode."""

    AUTO = "auto"
    CDC = "cdc"
    TTL = "ttl"


class Cause(StrEnum):
    """Why the mode is what it is (a bounded metric label; the reason text has details)."""

    START = "start"
    LAG = "lag"
    STALLED = "stalled"
    RECOVERED = "recovered"
    FORCED = "forced"
    AUTO = "auto"
    # Holds (see Hold): the worker cannot know the cache is right.
    LINEAGE = "lineage"
    REDIS_OOM = "redis_oom"
    REDIS_REPLICATION = "redis_replication"
    SOURCE_DISCONTINUITY = "source_discontinuity"
    WORKER_DOWN = "worker_down"
    TABLE_FAILING = "table_failing"  # one table only (see TABLE_CAUSES)


HOLD_CAUSES = frozenset(
    {
        Cause.LINEAGE,
        Cause.REDIS_OOM,
        Cause.REDIS_REPLICATION,
        Cause.SOURCE_DISCONTINUITY,
        Cause.WORKER_DOWN,
        Cause.TABLE_FAILING,
    }
)
# Holds that force ttl on one table (their scope) rather than on the whole cache.
TABLE_CAUSES = frozenset({Cause.TABLE_FAILING})


@dataclass(frozen=True, slots=True, order=True)
class Hold:
    """A condition that forces ``ttl`` while it lasts; ``reason`` says what and where.

    A hold of a table cause names its table in ``scope`` and forces ``ttl`` on that
    table only (see ``cdc_cache.mode.tables``); every other hold forces it on everything.
    """

    cause: Cause
    reason: str
    scope: str = ""

    def __post_init__(self) -> None:
        if self.cause not in HOLD_CAUSES:
            msg = f"{self.cause!r} is not a hold cause; use one of {sorted(HOLD_CAUSES)}"
            raise ValueError(msg)

    @property
    def label(self) -> str:
        """The cause as shown to operators: ``table_failing:<table>`` for a table's hold."""
        if self.cause in TABLE_CAUSES:
            return f"{self.cause.value}:{self.scope}"
        return self.cause.value


def table_holds(holds: Iterable[Hold]) -> dict[str, str]:
    """The tables held in ``ttl`` on their own, with the reason of each."""
    return {hold.scope: hold.reason for hold in sorted(holds) if hold.cause in TABLE_CAUSES}


@dataclass(frozen=True, slots=True)
class ModeConfig:
    """Thresholds in seconds; ``recover_s`` < ``slo_s`` gives the hysteresis band."""

    slo_s: float
    recover_s: float
    window_s: float

    def __post_init__(self) -> None:
        if not 0 <= self.recover_s < self.slo_s or self.window_s < 0:
            msg = (
                f"mode thresholds slo={self.slo_s}s recover={self.recover_s}s "
                f"window={self.window_s}s: need 0 <= recover < slo and window >= 0"
            )
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class Signal:
    """What the controller sees at one tick.

    ``lag_s`` is the worst connector lag (None while no partition is known yet);
    ``stalled`` says nothing at all arrived for longer than the SLO somewhere; ``where``
    names the worst partition, for the reason text; ``holds`` are the active holds
    (those of one table leave the cache's mode alone).
    """

    now_ms: int
    flag: Flag
    lag_s: float | None
    stalled: bool = False
    where: str = ""
    holds: tuple[Hold, ...] = ()


@dataclass(frozen=True, slots=True)
class ModeState:
    """The effective mode, and the automatic one underneath with its hysteresis timers."""

    mode: Mode
    cause: Cause
    reason: str
    since_ms: int
    auto: Mode
    auto_cause: Cause
    auto_reason: str
    breach_since_ms: int | None = None
    calm_since_ms: int | None = None

    @classmethod
    def initial(
        cls,
        now_ms: int,
        mode: Mode = Mode.CDC,
        cause: Cause = Cause.START,
        reason: str = "worker started",
    ) -> ModeState:
        """A controller in ``mode`` (``cdc`` by default: no evidence of lag yet)."""
        return cls(mode, cause, reason, now_ms, mode, cause, reason)


@dataclass(frozen=True, slots=True)
class Decision:
    """The effective mode after a tick; ``switched`` marks a change (log and count it)."""

    mode: Mode
    switched: bool
    cause: Cause
    reason: str


def kept_flag(stored: Flag | None, last: Flag) -> tuple[Flag, bool]:
    """The flag in force, and True when it is a forced one kept after its key vanished.

    ``stored`` is the flag key's value (None: no key), ``last`` the flag in force before.
    Operators hand the mode back to the lag by writing ``auto``; a key that is merely gone
    (Redis restarted empty, the key evicted or deleted) must not do it unseen, so a forced
    ``last`` stays in force until an operator sets the flag again.
    """
    if stored is None and last is not Flag.AUTO:
        return last, True
    return stored or Flag.AUTO, False


def overridden(state: ModeState, signal: Signal) -> tuple[str, ...]:
    """What a forced ``cdc`` overrides: active ``holds`` (not one table's), ``lag``.

    Each is the worker's evidence that the cache may be wrong, set aside by the operator:
    ``state`` is the controller's after ``signal``, its automatic mode ``ttl`` meaning the
    lag (or a stall) calls for ``ttl``.
    """
    if signal.flag is not Flag.CDC:
        return ()
    held = any(hold.cause not in TABLE_CAUSES for hold in signal.holds)
    return tuple(
        over for over, found in (("holds", held), ("lag", state.auto is Mode.TTL)) if found
    )


def step(state: ModeState, signal: Signal, config: ModeConfig) -> tuple[ModeState, Decision]:
    """Advance the controller by one tick."""
    auto = _step_auto(state, signal, config)
    if signal.flag is not Flag.AUTO:
        target, cause = Mode(signal.flag.value), Cause.FORCED
        reason = f"forced by the operator flag ({signal.flag})"
    elif holds := [hold for hold in signal.holds if hold.cause not in TABLE_CAUSES]:
        first = min(holds)
        target, cause, reason = Mode.TTL, first.cause, first.reason
        if len(holds) > 1:
            reason += f" (and {len(holds) - 1} more hold(s))"
    else:
        target, cause, reason = auto.auto, auto.auto_cause, auto.auto_reason
    switched = target is not state.mode
    since = signal.now_ms if switched else state.since_ms
    new = replace(auto, mode=target, cause=cause, reason=reason, since_ms=since)
    return new, Decision(target, switched, cause, reason)


def _step_auto(state: ModeState, signal: Signal, config: ModeConfig) -> ModeState:
    """Only the automatic mode and its timers move; the effective fields stay."""
    now, lag, window_ms = signal.now_ms, signal.lag_s, config.window_s * 1000
    if state.auto is Mode.CDC:
        breach = signal.stalled or (lag is not None and lag > config.slo_s)
        since = _held_since(state.breach_since_ms, now) if breach else None
        if since is None or now - since < window_ms:
            return replace(state, breach_since_ms=since)
        cause = Cause.STALLED if signal.stalled else Cause.LAG
        return _auto_switch(state, Mode.TTL, cause, _lag_text(signal, config, above=True))
    calm = not signal.stalled and lag is not None and lag < config.recover_s
    since = _held_since(state.calm_since_ms, now) if calm else None
    if since is None or now - since < window_ms:
        return replace(state, calm_since_ms=since)
    return _auto_switch(state, Mode.CDC, Cause.RECOVERED, _lag_text(signal, config, above=False))


def _held_since(since_ms: int | None, now_ms: int) -> int:
    return now_ms if since_ms is None else since_ms


def _auto_switch(state: ModeState, mode: Mode, cause: Cause, reason: str) -> ModeState:
    return replace(
        state, auto=mode, auto_cause=cause, auto_reason=reason,
        breach_since_ms=None, calm_since_ms=None,
    )  # fmt: skip


def _lag_text(signal: Signal, config: ModeConfig, *, above: bool) -> str:
    where = f" on {signal.where}" if signal.where else ""
    lag = f"{signal.lag_s:.1f}s" if signal.lag_s is not None else "unknown"
    if above and signal.stalled:
        return f"stalled: no change nor heartbeat for over {config.slo_s:g}s{where} (lag {lag})"
    if above:
        return f"lag {lag}{where} above the {config.slo_s:g}s SLO for {config.window_s:g}s"
    return f"lag {lag} below {config.recover_s:g}s for {config.window_s:g}s"
