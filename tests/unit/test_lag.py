"""Lag tracking with a fake clock: commit times, heartbeats, watermarks, silence."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.mode.lag import MAX_FEEDERS, MAX_SERVERS, LagTracker, flow_stall


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000.0

    def __call__(self) -> float:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += seconds * 1000


@pytest.fixture
def clock() -> Clock:
    return Clock()


def lag_of(tracker: LagTracker, topic: str, partition: int = 0):
    return next(
        p for p in tracker.report().partitions if (p.topic, p.partition) == (topic, partition)
    )


def test_connector_lag_is_now_minus_the_newest_commit(clock):
    tracker = LagTracker(clock)
    tracker.record("db1.inv.stock", 0, int(clock.ms) - 4000)
    tracker.record("db1.inv.stock", 0, int(clock.ms) - 7000)  # older, arrived later
    clock.advance(1)
    part = lag_of(tracker, "db1.inv.stock")
    assert part.connector_lag_s == pytest.approx(5.0)
    assert part.silent_s == pytest.approx(1.0)


def test_a_commit_time_in_the_future_counts_as_now(clock):
    """One change stamped years ahead (a hostile message, a source clock set wrong once)
    must not read as no lag until then: the changes after it lag as they do."""
    tracker = LagTracker(clock)
    tracker.record("db1.inv.stock", 0, int(clock.ms) + 10**12)
    clock.advance(30)
    tracker.record("db1.inv.stock", 0, int(clock.ms) - 60_000)  # the backlog read after it
    assert lag_of(tracker, "db1.inv.stock").connector_lag_s == pytest.approx(30.0)
    clock.advance(600)
    assert lag_of(tracker, "db1.inv.stock").connector_lag_s == pytest.approx(630.0)


def test_a_heartbeat_from_the_future_counts_as_now_here_and_where_it_is_learned(clock):
    here, there = LagTracker(clock), LagTracker(clock)
    for tracker in (here, there):
        tracker.track("db1.inv.stock", 0)
        tracker.offsets("db1.inv.stock", 0, 5, 5)  # caught up: heartbeats keep it fresh
    here.heartbeat("__debezium-heartbeat.db1", 0, int(clock.ms) + 10**12)
    there.learn_heartbeats(here.heartbeats())
    clock.advance(90)  # the connector fell silent
    for tracker in (here, there):
        assert lag_of(tracker, "db1.inv.stock").connector_lag_s == pytest.approx(90.0)


def test_consumer_lag_comes_from_watermark_and_next_offset(clock):
    tracker = LagTracker(clock)
    tracker.track("t", 1)
    assert lag_of(tracker, "t", 1).consumer_lag is None
    tracker.offsets("t", 1, high=120, next_offset=100)
    assert lag_of(tracker, "t", 1).consumer_lag == 20
    assert not tracker.report().caught_up(10)
    tracker.offsets("t", 1, high=120, next_offset=120)
    assert tracker.report().caught_up(0)


def test_a_partition_that_never_heard_anything_lags_since_it_was_tracked(clock):
    tracker = LagTracker(clock)
    tracker.track("t", 0)
    clock.advance(30)
    part = lag_of(tracker, "t")
    assert part.connector_lag_s == pytest.approx(30) and part.silent_s == pytest.approx(30)


def test_heartbeats_keep_a_caught_up_idle_partition_fresh(clock):
    tracker = LagTracker(clock)
    tracker.record("db1.inv.stock", 0, int(clock.ms))
    tracker.offsets("db1.inv.stock", 0, high=5, next_offset=5)
    for _ in range(10):
        clock.advance(10)
        tracker.heartbeat("__debezium-heartbeat.db1", 0, int(clock.ms) - 500)
    stock = lag_of(tracker, "db1.inv.stock")
    assert stock.connector_lag_s == pytest.approx(0.5) and stock.silent_s == 0
    assert lag_of(tracker, "__debezium-heartbeat.db1").connector_lag_s == pytest.approx(0.5)


def test_idle_partitions_of_the_heartbeat_topic_are_not_stalled(clock):
    tracker = LagTracker(clock)
    for partition in (0, 1, 2):
        tracker.track("__debezium-heartbeat.db1", partition)
        tracker.offsets("__debezium-heartbeat.db1", partition, high=0, next_offset=0)
    for _ in range(10):
        clock.advance(10)
        tracker.heartbeat("__debezium-heartbeat.db1", 1, int(clock.ms) - 500)
    idle = lag_of(tracker, "__debezium-heartbeat.db1", 2)
    assert idle.connector_lag_s == pytest.approx(0.5) and idle.silent_s == 0


def test_the_idle_schema_change_topic_of_a_connector_is_not_stalled(clock):
    tracker = LagTracker(clock)
    tracker.track("db1", 0)
    tracker.offsets("db1", 0, high=3, next_offset=3)
    tracker.track("db10", 0)
    tracker.offsets("db10", 0, high=3, next_offset=3)
    for _ in range(10):
        clock.advance(10)
        tracker.heartbeat("__debezium-heartbeat.db1", 0, int(clock.ms) - 500)
    ddl = lag_of(tracker, "db1")
    assert ddl.connector_lag_s == pytest.approx(0.5) and ddl.silent_s == 0
    assert lag_of(tracker, "db10").silent_s == pytest.approx(100), "another connector's"


def test_heartbeats_do_not_hide_a_backlog_or_another_connector(clock):
    tracker = LagTracker(clock)
    tracker.record("db1.inv.stock", 0, int(clock.ms))
    tracker.offsets("db1.inv.stock", 0, high=900, next_offset=5)
    tracker.record("db10.inv.stock", 0, int(clock.ms))
    tracker.offsets("db10.inv.stock", 0, high=5, next_offset=5)
    clock.advance(60)
    tracker.heartbeat("__debezium-heartbeat.db1", 0, int(clock.ms))
    assert lag_of(tracker, "db1.inv.stock").connector_lag_s == pytest.approx(60)
    assert lag_of(tracker, "db10.inv.stock").connector_lag_s == pytest.approx(60)


def test_silence_after_heartbeats_stop_grows_lag(clock):
    tracker = LagTracker(clock)
    tracker.offsets("db1.inv.stock", 0, high=0, next_offset=0)
    tracker.heartbeat("__debezium-heartbeat.db1", 0, int(clock.ms))
    clock.advance(12)
    report = tracker.report()
    assert report.worst() is not None and report.worst().connector_lag_s == pytest.approx(12)
    assert all(p.silent_s == pytest.approx(12) for p in report.partitions)


def test_a_silent_partition_makes_the_summary_stalled(clock):
    from cdc_cache.fallback.store import LagSummary

    tracker = LagTracker(clock)
    tracker.record("a.db.t", 0, int(clock.ms))
    tracker.track("a.db.u", 1)
    clock.advance(20)
    tracker.record("a.db.t", 0, int(clock.ms) - 1000)
    summary = LagSummary.of(tracker.report(), slo_s=10)
    assert summary.stalled and summary.where == "a.db.u[1]"
    assert summary.lag_s == pytest.approx(20)
    assert LagSummary.parse({k: str(v) for k, v in summary.fields().items()}) == summary  # type: ignore[misc]
    merged = LagSummary.worst_of([summary, LagSummary(99.0, False, "b.db.t[0]")])
    assert merged.stalled and merged.lag_s == 99.0


def test_holds_travel_from_a_follower_to_the_leader_and_clear():
    from cdc_cache.fallback.store import LagSummary
    from cdc_cache.mode.controller import Cause, Hold
    from cdc_cache.mode.holds import Holds

    holds = Holds()
    holds.hold(Cause.SOURCE_DISCONTINUITY, "t[0]", "offset 42 below log start 90 on t[0]")
    holds.hold(Cause.SOURCE_DISCONTINUITY, "t[0]", "offset 42 below log start 95 on t[0]")
    holds.hold(Cause.REDIS_OOM, "node-a", "OOM")
    assert holds.active() == (
        Hold(Cause.REDIS_OOM, "OOM"),
        Hold(Cause.SOURCE_DISCONTINUITY, "offset 42 below log start 95 on t[0]"),
    )
    follower = LagSummary(1.0, False, "t[0]", holds.active())
    wire = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in follower.fields().items()}
    assert LagSummary.parse(wire) == follower
    merged = LagSummary.worst_of([LagSummary(None, False, ""), follower])
    assert merged.holds == follower.holds
    holds.clear(Cause.REDIS_OOM, "node-a")
    holds.clear(Cause.SOURCE_DISCONTINUITY, "t[0]")
    holds.clear(Cause.SOURCE_DISCONTINUITY, "t[0]")
    assert holds.active() == ()


def test_a_hold_of_an_unknown_cause_from_a_newer_process_still_holds():
    from cdc_cache.fallback.store import LagSummary
    from cdc_cache.mode.controller import Cause

    parsed = LagSummary.parse(
        {"lag_s": "", "stalled": "0", "where": "", "holds": '[["future", "x"]]'}
    )
    assert parsed is not None and [h.cause for h in parsed.holds] == [Cause.LINEAGE]
    assert "future" in parsed.holds[0].reason


SHARED = "inventory.cdc"  # every table of connector prod.eu.db1, routed into one topic


@pytest.mark.parametrize("learned", [True, False])
def test_an_idle_table_on_a_busy_shared_topic_stays_fresh_through_its_connector(clock, learned):
    """Partition 1 carries only an idle table's keys; the busy table writes partition 0.

    The topic names no connector: which one feeds it is learned from its changes. Without
    that (``learned=False``, as when only topic names counted) the idle partition stalls.
    """
    servers = {"prod.eu.db1"} if learned else set()
    tracker = LagTracker(clock)
    tracker.record(SHARED, 1, int(clock.ms), servers)  # the idle table's last change
    for partition in (0, 1):
        tracker.offsets(SHARED, partition, high=5, next_offset=5)
    for _ in range(12):
        clock.advance(10)
        tracker.record(SHARED, 0, int(clock.ms) - 200, servers)
        tracker.heartbeat("__debezium-heartbeat.prod.eu.db1", 0, int(clock.ms) - 500)
    idle = lag_of(tracker, SHARED, 1)
    if learned:
        assert idle.connector_lag_s == pytest.approx(0.5) and idle.silent_s == 0
    else:
        assert idle.connector_lag_s == pytest.approx(120) and idle.silent_s == pytest.approx(120)
    assert lag_of(tracker, SHARED, 0).connector_lag_s == pytest.approx(0.2)


def test_a_topic_fed_by_two_connectors_is_as_fresh_as_the_staler_one(clock):
    tracker = LagTracker(clock)
    tracker.record(SHARED, 0, int(clock.ms), {"shard1", "shard2"})
    tracker.offsets(SHARED, 0, high=1, next_offset=1)
    for _ in range(6):
        clock.advance(10)
        tracker.heartbeat("__debezium-heartbeat.shard1", 0, int(clock.ms))
    tracker.heartbeat("__debezium-heartbeat.shard2", 0, int(clock.ms) - 45_000)
    part = lag_of(tracker, SHARED)
    assert part.connector_lag_s == pytest.approx(45)
    clock.advance(30)  # shard2 goes silent; shard1 keeps beating
    tracker.heartbeat("__debezium-heartbeat.shard1", 0, int(clock.ms))
    assert lag_of(tracker, SHARED).silent_s == pytest.approx(30)


def test_connector_names_from_messages_are_bounded_and_past_the_bound_lag_is_not_hidden(clock):
    """Each name a message gave was kept for good: a stream of made-up ``source.name``s grew
    the worker without end. Past the bound, the topic's lag counts from its changes alone."""
    tracker = LagTracker(clock)
    tracker.record(SHARED, 0, int(clock.ms), {"shard1"})
    tracker.offsets(SHARED, 0, high=1, next_offset=1)
    clock.advance(60)
    tracker.heartbeat("__debezium-heartbeat.shard1", 0, int(clock.ms))
    assert lag_of(tracker, SHARED).connector_lag_s == 0  # its heartbeat keeps it fresh
    for n in range(MAX_FEEDERS):
        tracker.record(SHARED, 0, None, {f"forged{n}"})
        tracker.heartbeat(f"__debezium-heartbeat.forged{n}", 0, int(clock.ms))
    assert len(tracker._feeds[SHARED]) == 1  # one marker in place of the names
    assert lag_of(tracker, SHARED).connector_lag_s == pytest.approx(60)  # from the change
    for n in range(2 * MAX_SERVERS):
        tracker.heartbeat(f"__debezium-heartbeat.more{n}", 0, int(clock.ms))
    tracker.learn_heartbeats({f"learned{n}": (clock.ms, clock.ms) for n in range(10)})
    assert len(tracker._servers) == MAX_SERVERS
    assert "shard1" in tracker.heartbeats()  # the ones kept before the bound stay


def test_a_renamed_heartbeat_topic_keeps_its_other_partitions_fresh(clock):
    tracker = LagTracker(clock)
    for partition in (0, 1):
        tracker.track("heartbeats.prod.eu.db1", partition)
        tracker.offsets("heartbeats.prod.eu.db1", partition, high=0, next_offset=0)
    for _ in range(10):
        clock.advance(10)
        tracker.heartbeat("heartbeats.prod.eu.db1", 1, int(clock.ms) - 500, server="prod.eu.db1")
    assert lag_of(tracker, "heartbeats.prod.eu.db1", 0).connector_lag_s == pytest.approx(0.5)


def test_a_dotted_prefix_does_not_lend_its_heartbeats_to_a_shorter_one(clock):
    tracker = LagTracker(clock)
    tracker.record("prod.eu.db1.inv.stock", 0, int(clock.ms))
    tracker.offsets("prod.eu.db1.inv.stock", 0, high=1, next_offset=1)
    clock.advance(60)
    tracker.heartbeat("__debezium-heartbeat.prod.eu", 0, int(clock.ms))
    assert lag_of(tracker, "prod.eu.db1.inv.stock").connector_lag_s == pytest.approx(60)
    tracker.heartbeat("__debezium-heartbeat.prod.eu.db1", 0, int(clock.ms))
    assert lag_of(tracker, "prod.eu.db1.inv.stock").connector_lag_s == pytest.approx(0)


def test_a_timed_hold_ends_by_itself_and_raised_again_lasts_to_the_later_end():
    from cdc_cache.mode.controller import Cause
    from cdc_cache.mode.holds import Holds

    now = [1000.0]
    holds = Holds(clock=lambda: now[0])
    holds.hold(Cause.LINEAGE, "settle:db", "switched", for_s=60)
    holds.hold(Cause.LINEAGE, "db/t[0]", "cannot tell")
    assert len(holds.active()) == 2 and holds.lasting(Cause.LINEAGE)
    now[0] += 50
    holds.hold(Cause.LINEAGE, "settle:db", "re-snapshotted", for_s=30)  # now ends at +80
    holds.clear(Cause.LINEAGE, "db/t[0]")
    assert not holds.lasting(Cause.LINEAGE)  # a timed hold is no lasting one
    now[0] += 25
    assert [h.reason for h in holds.active()] == ["re-snapshotted"]
    now[0] += 5
    assert holds.active() == ()


def test_heartbeats_read_by_another_process_keep_idle_partitions_here_fresh(clock):
    reader, other = LagTracker(clock), LagTracker(clock)
    other.record("db1.inv.stock", 2, int(clock.ms))
    other.offsets("db1.inv.stock", 2, high=5, next_offset=5)
    for _ in range(10):
        clock.advance(10)
        reader.heartbeat("__debezium-heartbeat.db1", 0, int(clock.ms) - 500)
        other.learn_heartbeats(reader.heartbeats())
    stock = lag_of(other, "db1.inv.stock", 2)
    assert stock.connector_lag_s == pytest.approx(0.5) and stock.silent_s == 0


def test_learned_heartbeats_are_not_passed_on_and_never_replace_newer_ones(clock):
    reader, other = LagTracker(clock), LagTracker(clock)
    other.record("db1.inv.stock", 0, int(clock.ms))
    other.offsets("db1.inv.stock", 0, high=5, next_offset=5)
    reader.heartbeat("__debezium-heartbeat.db1", 0, int(clock.ms))
    other.learn_heartbeats(reader.heartbeats())
    assert other.heartbeats() == {}, "an old copy passed on could overwrite the newer one"
    clock.advance(5)
    stale = reader.heartbeats()
    reader.heartbeat("__debezium-heartbeat.db1", 0, int(clock.ms))
    other.learn_heartbeats(reader.heartbeats())
    other.learn_heartbeats(stale)
    assert lag_of(other, "db1.inv.stock").connector_lag_s == 0


def test_a_source_clock_ahead_of_the_worker_is_shown_not_hidden_in_a_zero_lag(clock):
    """A database clock 120 s ahead makes a change committed 90 s ago look 30 s in the
    future: the lag reads 0 (the controller cannot see the 90 s), so the skew is reported."""
    tracker = LagTracker(clock)
    tracker.record("db1.inv.stock", 0, int(clock.ms) - 90_000 + 120_000)
    part = lag_of(tracker, "db1.inv.stock")
    assert part.connector_lag_s == 0.0
    assert part.ahead_s == pytest.approx(30.0)
    clock.advance(45)  # nothing newer: counted from when it was seen, no longer ahead
    part = lag_of(tracker, "db1.inv.stock")
    assert (part.connector_lag_s, part.ahead_s) == (pytest.approx(45.0), 0.0)


def test_a_time_ahead_is_shown_until_a_later_change_says_otherwise(clock):
    """One hostile stamp years ahead must not keep the skew alert firing for years."""
    tracker = LagTracker(clock)
    tracker.record("db1.inv.stock", 0, int(clock.ms) + 10**12)
    assert lag_of(tracker, "db1.inv.stock").ahead_s == pytest.approx(10**9)
    clock.advance(1)
    tracker.record("db1.inv.stock", 0, int(clock.ms) - 2_000)
    assert lag_of(tracker, "db1.inv.stock").ahead_s == 0.0


def test_heartbeats_from_a_connector_clock_ahead_are_shown_too(clock):
    tracker = LagTracker(clock)
    tracker.offsets("db1.inv.stock", 0, high=10, next_offset=10)
    tracker.record("db1.inv.stock", 0, int(clock.ms) - 5_000)
    tracker.heartbeat("__debezium-heartbeat.db1", 0, int(clock.ms) + 8_000)
    assert lag_of(tracker, "db1.inv.stock").ahead_s == pytest.approx(8.0)


def test_what_was_read_and_not_applied_is_backlog_heartbeats_do_not_hide(clock):
    """Threads that do not hold the sink read on while it cannot write (or another
    process's heartbeats arrive): the partition is not caught up, so it is not fresh."""
    tracker = LagTracker(clock)
    tracker.track("db1.inv.stock", 0, resume=100)
    tracker.record("db1.inv.stock", 0, int(clock.ms), applied_to=100)
    tracker.offsets("db1.inv.stock", 0, high=150, next_offset=150)  # read, not applied
    for _ in range(9):
        clock.advance(10)
        tracker.heartbeat("__debezium-heartbeat.db1", 0, int(clock.ms))
        tracker.offsets("db1.inv.stock", 0, high=150, next_offset=150)
    stock = lag_of(tracker, "db1.inv.stock")
    assert stock.consumer_lag == 50
    assert stock.connector_lag_s == pytest.approx(90) and stock.silent_s == pytest.approx(90)
    assert not tracker.report().caught_up(10)

    tracker.record("db1.inv.stock", 0, int(clock.ms) - 1000, applied_to=150)  # written now
    stock = lag_of(tracker, "db1.inv.stock")
    assert stock.consumer_lag == 0 and stock.connector_lag_s == 0


def test_a_partition_read_again_from_its_start_counts_from_where_it_reads(clock):
    """A re-read (a recreated topic) reads below what was applied before: its backlog is
    what lies between its read position and the end, not nothing."""
    tracker = LagTracker(clock)
    tracker.record("t", 0, int(clock.ms), applied_to=500)
    tracker.offsets("t", 0, high=400, next_offset=10)
    assert lag_of(tracker, "t").consumer_lag == 390


# -- whether the flow moves -------------------------------------------------------------------

BOUND_S = 10.0


def test_an_idle_flow_is_polled_and_never_stuck(clock):
    tracker = LagTracker(clock)
    tracker.track("db1.inv.stock", 0, 40)
    for _ in range(60):  # an hour without a change: polled, nothing waits
        clock.advance(60)
        tracker.polled("db1.inv.stock", 0)
        tracker.offsets("db1.inv.stock", 0, 40, 40)
    assert flow_stall(tracker.report(), BOUND_S) is None


def test_a_partition_no_longer_polled_is_a_stuck_dataflow_thread(clock):
    tracker = LagTracker(clock)
    tracker.track("db1.inv.stock", 0, 40)
    tracker.polled("db1.inv.stock", 0)
    tracker.offsets("db1.inv.stock", 0, 40, 40)
    clock.advance(BOUND_S)
    assert flow_stall(tracker.report(), BOUND_S) is None
    clock.advance(1)
    assert "db1.inv.stock[0] not polled for 11s" in str(flow_stall(tracker.report(), BOUND_S))
    tracker.polled("db1.inv.stock", 0)
    assert flow_stall(tracker.report(), BOUND_S) is None


def test_messages_read_and_never_applied_are_stuck_writes_while_polls_go_on(clock):
    tracker = LagTracker(clock)
    tracker.track("db1.inv.stock", 0, 40)
    tracker.offsets("db1.inv.stock", 0, 50, 50)  # read up to 50, applied up to 40
    for _ in range(11):
        clock.advance(1)
        tracker.polled("db1.inv.stock", 0)
    assert "10 messages unapplied and none applied for 11s" in str(
        flow_stall(tracker.report(), BOUND_S)
    )
    tracker.record("db1.inv.stock", 0, applied_to=45)  # a batch is applied: it moves
    assert flow_stall(tracker.report(), BOUND_S) is None


def test_a_write_waiting_to_retry_is_not_stuck_until_the_waits_stop(clock):
    tracker = LagTracker(clock)
    tracker.track("db1.inv.stock", 0, 40)
    tracker.offsets("db1.inv.stock", 0, 50, 50)
    for _ in range(30):  # Redis refuses for 30 s: the dataflow thread waits for the writer
        tracker.waited(1)
        clock.advance(1)
    tracker.waited(30)  # the backoff grew past the bound
    clock.advance(30)
    assert flow_stall(tracker.report(), BOUND_S) is None
    clock.advance(BOUND_S)  # the attempt after the wait never returns
    assert flow_stall(tracker.report(), BOUND_S) is not None


def test_a_paused_partition_and_a_closed_one_are_not_stuck(clock):
    tracker = LagTracker(clock)
    tracker.track("db1.inv.stock", 0, 40)
    tracker.offsets("db1.inv.stock", 0, 50, 40)  # fetched past its stored offset, then held
    tracker.track("db1.inv.sku", 0, 7)
    tracker.released("db1.inv.sku", 0)  # the flow restarts onto new topics
    for _ in range(30):
        clock.advance(1)
        tracker.polled("db1.inv.stock", 0, paused=True)
    assert flow_stall(tracker.report(), BOUND_S) is None


@given(
    steps=st.lists(
        st.tuples(st.floats(0, 5 * BOUND_S), st.integers(0, 100)), min_size=1, max_size=30
    )
)
def test_a_flow_polled_within_the_bound_that_applies_all_it_reads_is_never_stuck(steps):
    """However long it idles between changes, and whatever arrives."""
    clock = Clock()
    tracker = LagTracker(clock)
    tracker.track("t", 0, 0)
    offset = 0
    for idle_s, arriving in steps:
        for _ in range(math.ceil(idle_s / BOUND_S)):  # polled at least once per bound
            clock.advance(min(idle_s, BOUND_S))
            tracker.polled("t", 0)
        offset += arriving
        tracker.offsets("t", 0, offset, offset)
        tracker.record("t", 0, applied_to=offset)
        assert flow_stall(tracker.report(), BOUND_S) is None
