"""The mode controller's hysteresis, as properties over arbitrary lag sequences."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_cache.mode.controller import (
    HOLD_CAUSES,
    TABLE_CAUSES,
    Cause,
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

CONFIG = ModeConfig(slo_s=10, recover_s=4, window_s=5)
TICK_MS = 1000


def run(lags: list[float | None], flags: list[Flag] | None = None) -> list[tuple[int, Mode]]:
    """Feed one signal per second; return (time, mode) of every switch."""
    state = ModeState.initial(0)
    switches = []
    for i, lag in enumerate(lags):
        now = (i + 1) * TICK_MS
        flag = flags[i] if flags else Flag.AUTO
        state, decision = step(state, Signal(now, flag, lag), CONFIG)
        assert decision.mode is state.mode
        if decision.switched:
            switches.append((now, decision.mode))
            assert decision.reason
    return switches


around_slo = st.lists(st.one_of(st.floats(0, 20), st.none()), min_size=1, max_size=200)


@given(around_slo)
def test_never_more_than_one_switch_per_window(lags):
    switches = run(lags)
    for (earlier, _), (later, _) in itertools.pairwise(switches):
        assert later - earlier >= CONFIG.window_s * 1000


@given(st.lists(st.floats(0, 20), max_size=50), st.lists(st.floats(10.01, 1e6), min_size=6))
def test_sustained_lag_always_reaches_ttl(prefix, lagging):
    state = ModeState.initial(0)
    for i, lag in enumerate(prefix + lagging):
        state, _ = step(state, Signal((i + 1) * TICK_MS, Flag.AUTO, lag), CONFIG)
    assert state.mode is Mode.TTL
    assert state.cause is Cause.LAG


@given(st.lists(st.floats(0, 1e6), max_size=50), st.lists(st.floats(0, 3.99), min_size=6))
def test_sustained_low_lag_always_returns_to_cdc(prefix, calm):
    state = ModeState.initial(0, Mode.TTL)
    for i, lag in enumerate(prefix + calm):
        state, _ = step(state, Signal((i + 1) * TICK_MS, Flag.AUTO, lag), CONFIG)
    assert state.mode is Mode.CDC


@settings(max_examples=200)
@given(around_slo, st.sampled_from([Flag.CDC, Flag.TTL]), st.integers(0, 199))
def test_a_forced_flag_wins_at_once(lags, forced, at):
    at = min(at, len(lags) - 1)
    flags = [Flag.AUTO] * at + [forced] * (len(lags) - at)
    state = ModeState.initial(0)
    for i, lag in enumerate(lags):
        state, decision = step(state, Signal((i + 1) * TICK_MS, flags[i], lag), CONFIG)
        if i >= at:
            assert decision.mode.value == forced.value
            assert decision.cause is Cause.FORCED


def test_a_stall_counts_as_lag_and_names_the_partition():
    state = ModeState.initial(0)
    for second in range(1, 8):
        state, _decision = step(state, Signal(second * 1000, Flag.AUTO, 2.0, True, "t[0]"), CONFIG)
    assert state.mode is Mode.TTL and state.cause is Cause.STALLED
    assert "stalled" in state.reason and "t[0]" in state.reason


def test_back_to_auto_follows_the_lag_kept_while_forced():
    state = ModeState.initial(0)
    for second in range(1, 10):
        state, _ = step(state, Signal(second * 1000, Flag.CDC, 50.0), CONFIG)
    assert state.mode is Mode.CDC and state.auto is Mode.TTL
    state, decision = step(state, Signal(10_000, Flag.AUTO, 50.0), CONFIG)
    assert decision.switched and decision.mode is Mode.TTL and decision.cause is Cause.LAG


def test_unknown_lag_holds_the_mode():
    assert run([None] * 100) == []


def test_thresholds_are_validated():
    import pytest

    with pytest.raises(ValueError, match="recover < slo"):
        ModeConfig(slo_s=5, recover_s=5, window_s=1)


hold_causes = st.sampled_from(sorted(HOLD_CAUSES - TABLE_CAUSES))
holds_seq = st.lists(
    st.lists(st.builds(Hold, hold_causes, st.text(min_size=1, max_size=5)), max_size=3).map(
        lambda items: tuple(sorted(set(items)))
    ),
    min_size=1,
    max_size=100,
)


@settings(max_examples=200)
@given(holds_seq, st.lists(st.one_of(st.floats(0, 20), st.none()), min_size=100, max_size=100))
def test_an_active_hold_forces_ttl_at_once_with_its_cause(holds, lags):
    state = ModeState.initial(0)
    for i, active in enumerate(holds):
        state, decision = step(
            state, Signal((i + 1) * TICK_MS, Flag.AUTO, lags[i], holds=active), CONFIG
        )
        if active:
            assert decision.mode is Mode.TTL
            assert decision.cause is min(active).cause
            assert min(active).reason in decision.reason


@given(holds_seq)
def test_holds_do_not_disturb_the_lag_hysteresis(holds):
    """With a calm lag, the mode is cdc again on the first tick without holds."""
    state = ModeState.initial(0)
    for i, active in enumerate([*holds, ()]):
        state, decision = step(
            state, Signal((i + 1) * TICK_MS, Flag.AUTO, 1.0, holds=active), CONFIG
        )
    assert decision.mode is Mode.CDC


@given(holds_seq, st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=3))
def test_a_tables_hold_leaves_the_cache_mode_to_the_other_holds_and_the_lag(holds, tables):
    """A table falling back alone (table_failing) never switches the whole cache."""
    table_held = tuple(Hold(Cause.TABLE_FAILING, f"{t} fails", t) for t in tables)
    with_tables, without = ModeState.initial(0), ModeState.initial(0)
    for i, active in enumerate(holds):
        now = (i + 1) * TICK_MS
        with_tables, decision = step(
            with_tables, Signal(now, Flag.AUTO, 1.0, holds=(*active, *table_held)), CONFIG
        )
        without, expected = step(without, Signal(now, Flag.AUTO, 1.0, holds=active), CONFIG)
        assert decision == expected


def test_a_table_hold_is_labelled_with_its_table():
    assert Hold(Cause.TABLE_FAILING, "x", "inventory.items").label == (
        "table_failing:inventory.items"
    )
    assert Hold(Cause.LINEAGE, "x").label == "lineage"
    assert table_holds([Hold(Cause.LINEAGE, "x"), Hold(Cause.TABLE_FAILING, "r", "db.t")]) == {
        "db.t": "r"
    }


def test_a_forced_flag_wins_over_holds():
    held = (Hold(Cause.REDIS_OOM, "OOM on node a"),)
    _, decision = step(ModeState.initial(0), Signal(1000, Flag.CDC, 1.0, holds=held), CONFIG)
    assert decision.mode is Mode.CDC and decision.cause is Cause.FORCED


def test_only_hold_causes_make_holds():
    import pytest

    with pytest.raises(ValueError, match="not a hold cause"):
        Hold(Cause.LAG, "lag is no hold")


@given(st.sampled_from(list(Flag)), st.sampled_from([None, *Flag]))
def test_only_an_operator_writing_a_flag_ends_a_forced_mode(last, stored):
    """A key that vanished (None) keeps a forced flag, and says so; a stored one wins."""
    flag, lost = kept_flag(stored, last)
    if stored is None:
        assert (flag, lost) == (last, last is not Flag.AUTO)
    else:
        assert (flag, lost) == (stored, False)


def test_a_forced_cdc_names_the_holds_and_the_lag_it_overrides():
    lineage = Hold(Cause.LINEAGE, "db1: a log it cannot order")
    table = Hold(Cause.TABLE_FAILING, "columns changed", "inv.stock")
    state = ModeState.initial(0)
    lagging = run_to(state, [30.0] * 7)  # the lag calls for ttl underneath
    assert overridden(state, Signal(1, Flag.CDC, 0.0)) == ()
    assert overridden(state, Signal(1, Flag.CDC, 0.0, holds=(table,))) == ()  # still capped
    assert overridden(state, Signal(1, Flag.CDC, 0.0, holds=(lineage,))) == ("holds",)
    assert overridden(lagging, Signal(1, Flag.CDC, 30.0)) == ("lag",)
    assert overridden(lagging, Signal(1, Flag.CDC, 30.0, holds=(lineage,))) == ("holds", "lag")
    for flag in (Flag.AUTO, Flag.TTL):
        assert overridden(lagging, Signal(1, flag, 30.0, holds=(lineage,))) == ()


def run_to(state: ModeState, lags: list[float]) -> ModeState:
    """The controller after one auto tick per second with these lags."""
    for i, lag in enumerate(lags):
        state, _ = step(state, Signal((i + 1) * TICK_MS, Flag.AUTO, lag), CONFIG)
    assert state.auto is Mode.TTL
    return state
