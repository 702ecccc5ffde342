"""The watchdog's view of the worker's heartbeat, by its own clock (pure parts)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.fallback.watchdog import (
    DEFAULT_DOWN_AFTER_S,
    BeatWatch,
    _left_by_worker,
    down_after_s,
    tables_left,
)
from cdc_cache.mode.controller import Cause, Hold, Mode


def worker_record(updated_ms: int) -> dict[str, str]:
    return {"writer": "worker", "updated_ms": str(updated_ms), "mode": "cdc"}


def test_a_moving_heartbeat_is_up_and_a_still_one_is_down_after_the_bound() -> None:
    watch = BeatWatch(now=0.0)
    for second in range(10):  # the worker writes every second
        beat = watch.observe(worker_record(1000 * second), 5.0, float(second))
        assert not beat.down and beat.still_s == 0.0
    assert not watch.observe(worker_record(9000), 5.0, 14.0).down
    beat = watch.observe(worker_record(9000), 5.0, 14.5)
    assert beat.down and beat.still_s == 5.5 and beat.seen == "9000"
    assert not watch.observe(worker_record(20_000), 5.0, 15.0).down  # back


def test_the_clock_of_the_worker_does_not_matter_only_whether_its_beat_moves() -> None:
    watch = BeatWatch(now=100.0)
    far_future = worker_record(10**15)  # a worker whose clock is way ahead
    assert not watch.observe(far_future, 5.0, 100.0).down
    assert watch.observe(far_future, 5.0, 106.0).down


def test_a_heartbeat_first_seen_counts_as_fresh() -> None:
    watch = BeatWatch(now=50.0)
    assert not watch.observe(worker_record(1), 5.0, 50.0).down  # written long ago, maybe
    assert watch.observe(worker_record(1), 5.0, 56.0).down


def test_a_missing_record_is_a_heartbeat_that_never_moves() -> None:
    watch = BeatWatch(now=0.0)
    assert not watch.observe({}, 5.0, 1.0).down
    beat = watch.observe({}, 5.0, 6.5)
    assert beat.down and beat.seen == ""


def test_a_record_that_vanishes_is_no_heartbeat() -> None:
    """Redis restarted empty (or an operator deleted the hash to repair it) while the
    worker is down: only a worker's write moves the heartbeat, a vanished record does not."""
    watch = BeatWatch(now=0.0)
    assert not watch.observe(worker_record(9000), 5.0, 0.0).down
    assert watch.observe(worker_record(9000), 5.0, 6.0).down
    beat = watch.observe({}, 5.0, 7.0)
    assert beat.down and beat.still_s == 7.0 and beat.seen == ""
    assert watch.observe({}, 5.0, 8.0).down
    assert not watch.observe(worker_record(20_000), 5.0, 9.0).down  # a worker wrote


def test_a_record_a_watchdog_wrote_means_still_down_at_once() -> None:
    watch = BeatWatch(now=0.0)
    record = {"writer": "watchdog", "updated_ms": "123", "mode": "ttl"}
    assert watch.observe(record, 5.0, 0.5).down
    assert watch.observe({**record, "updated_ms": "124"}, 5.0, 1.0).down  # its own writes
    assert not watch.observe(worker_record(125), 5.0, 1.5).down  # a worker wrote


@given(writes=st.lists(st.floats(0, 60), min_size=1, max_size=30), bound=st.floats(0.5, 10))
def test_up_while_a_write_came_within_the_bound_down_one_look_after(
    writes: list[float], bound: float
) -> None:
    """Looking every 0.25 s: up while the last write is at most ``bound`` old, down once it
    is older than ``bound`` plus one look."""
    writes = sorted(set(writes))
    watch = BeatWatch(now=writes[0])
    updated, last_write, now = -1, writes[0], writes[0]
    pending = list(writes)
    while now < writes[-1] + bound + 1:
        while pending and pending[0] <= now:
            updated, last_write = updated + 1, pending.pop(0)
        beat = watch.observe(worker_record(updated), bound, now)
        age = now - last_write
        if age <= bound:
            assert not beat.down
        if age > bound + 0.25:
            assert beat.down
        now += 0.25


def test_the_bound_is_the_override_else_what_the_worker_published_else_the_default() -> None:
    assert down_after_s({"stale_after_ms": "5000"}, None) == 5.0
    assert down_after_s({"stale_after_ms": "5000"}, 2.0) == 2.0
    assert down_after_s({}, None) == DEFAULT_DOWN_AFTER_S
    assert down_after_s({"stale_after_ms": "junk"}, None) == DEFAULT_DOWN_AFTER_S


def test_the_watchdog_takes_over_from_the_mode_the_worker_left() -> None:
    left = _left_by_worker(
        {"mode": "ttl", "cause": "lag", "reason": "lag 9s", "since_ms": "77"}, now_ms=1000
    )
    assert (left.mode, left.cause, left.reason, left.since_ms) == (
        Mode.TTL,
        Cause.LAG,
        "lag 9s",
        77,
    )
    unknown = _left_by_worker({"mode": "weird", "cause": "future"}, now_ms=1000)
    assert (unknown.mode, unknown.cause, unknown.since_ms) == (Mode.CDC, Cause.START, 1000)


def test_the_tables_the_worker_left_in_ttl_are_carried_as_their_holds_and_prefixes() -> None:
    holds, prefixes = tables_left(
        {"tables": '{"db.items": "5 changes failed"}', "ttl_prefixes": '["item:"]'}
    )
    assert holds == (Hold(Cause.TABLE_FAILING, "5 changes failed", "db.items"),)
    assert prefixes == ["item:"]
    assert tables_left({}) == ((), [])  # a worker of a version without them


def test_unreadable_table_fields_carry_the_bounded_side() -> None:
    """Prefixes that cannot be read cap every fill, as applications read them."""
    holds, prefixes = tables_left({"tables": "[1]", "ttl_prefixes": "{oops"})
    assert (holds, prefixes) == ((), [""])
    assert tables_left({"tables": '{"db.items": 7}', "ttl_prefixes": "[1]"}) == ((), [""])
