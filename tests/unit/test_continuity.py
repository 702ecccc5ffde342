"""The continuity rules: when a stored offset still means what it meant (pure)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cdc_cache.cli.continuity import chosen, status_lines
from cdc_cache.continuity.model import (
    GONE_AFTER_ANSWERS,
    GONE_AFTER_S,
    Absence,
    Action,
    Discontinuity,
    Kind,
    Observed,
    SourceState,
    check,
    load_state,
    reread_caught_up,
    unknown_again,
)
from cdc_cache.core.errors import ConfigError

IDS = st.sampled_from(["AaIp5NJJeqObnopSH8K7Iw", "AaIp5OvIcZGcIWi1BuuUGA"])
OFFSETS = st.integers(min_value=0, max_value=10**12)


# --- the snapshot and its migration -------------------------------------------------------


@given(
    st.one_of(st.none(), OFFSETS),
    st.one_of(st.none(), IDS),
    st.one_of(st.none(), OFFSETS),
    st.one_of(st.none(), st.just(-1), OFFSETS),
)
def test_a_state_survives_its_snapshot(offset, topic_id, high, reread_until):
    state = SourceState(offset, topic_id, high, reread_until)
    assert load_state(pickle.loads(pickle.dumps(state.dump()))) == state


@pytest.mark.parametrize(
    ("raw", "offset"), [(None, None), (-2, None), (-1001, None), (0, 0), (12345, 12345)]
)
def test_a_bare_offset_from_an_older_store_is_migrated_with_the_identity_unknown(raw, offset):
    assert load_state(raw) == SourceState(offset, None, None, None)


@pytest.mark.parametrize(
    "raw",
    [
        "12",
        True,
        {"offset": 3},
        {"format": 2, "offset": 3},
        {"format": 1, "offset": "3"},
        {"format": 1, "offset": 3, "topic_id": 7},
    ],
)
def test_a_snapshot_of_unknown_shape_stops_the_worker_rather_than_guess(raw):
    with pytest.raises(ConfigError, match="recovery store"):
        load_state(raw)


def test_the_highest_watermark_seen_only_grows():
    state = SourceState(10, "A", 50)
    assert state.read_to(12, 40) == SourceState(12, "A", 50)
    assert state.read_to(12, 60) == SourceState(12, "A", 60)
    assert state.read_to(12, None) == SourceState(12, "A", 50)


# --- the rules ----------------------------------------------------------------------------


@given(IDS, OFFSETS, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))
def test_a_log_that_still_holds_the_stored_offset_is_continuous(topic_id, low, a, b, c):
    offset = low + a  # low <= offset <= high, high never below the one seen before
    seen_high = offset + b
    state = SourceState(offset, topic_id, seen_high)
    assert check(state, Observed(topic_id, log_start=low, high=seen_high + c)) is None


@given(OFFSETS, st.integers(0, 10**6))
def test_a_new_topic_id_is_a_recreated_topic_whatever_the_offsets_say(offset, grown):
    # the case: the new topic grew past the old offsets, so only the id tells
    state = SourceState(offset, "AaIp5NJJeqObnopSH8K7Iw", offset)
    observed = Observed("AaIp5OvIcZGcIWi1BuuUGA", log_start=0, high=offset + grown)
    assert check(state, observed) is Kind.TOPIC_RECREATED


def test_a_deleted_topic_is_a_discontinuity():
    assert check(SourceState(5, "A", 5), Observed(None, exists=False)) is Kind.TOPIC_RECREATED


@given(OFFSETS, st.integers(1, 10**6))
def test_a_log_ending_below_the_stored_offset_was_truncated_or_recreated(high, short):
    assert check(SourceState(high + short), Observed(None, high=high)) is Kind.LOG_TRUNCATED


@given(OFFSETS, st.integers(1, 10**6), st.integers(0, 10**6))
def test_without_topic_ids_a_high_watermark_below_one_seen_before_is_caught(offset, back, ahead):
    # a broker without ids, a recreated topic that already passed the stored offset
    state = SourceState(offset, None, offset + ahead + back)
    assert check(state, Observed(None, high=offset + ahead)) is Kind.LOG_TRUNCATED


def test_a_truncation_the_client_detected_is_a_discontinuity():
    assert check(SourceState(5, "A", 9), Observed("A", high=9, truncated=True)) is (
        Kind.LOG_TRUNCATED
    )


@given(OFFSETS, st.integers(1, 10**6), st.integers(0, 10**6))
def test_a_log_start_above_the_stored_offset_means_records_were_removed_unread(offset, gap, more):
    observed = Observed("A", log_start=offset + gap, high=offset + gap + more)
    assert check(SourceState(offset, "A", offset), observed) is Kind.BELOW_LOG_START


def test_an_offset_the_broker_refused_as_out_of_range_is_a_discontinuity():
    assert check(SourceState(5, "A", 5), Observed("A", out_of_range=True)) is Kind.BELOW_LOG_START


@given(st.one_of(st.none(), IDS), st.one_of(st.none(), OFFSETS), st.one_of(st.none(), OFFSETS))
def test_nothing_read_yet_has_nothing_to_lose_on_the_same_topic(topic_id, low, high):
    assert check(SourceState(None, topic_id), Observed(topic_id, log_start=low, high=high)) is None


@given(OFFSETS, st.one_of(st.none(), IDS), st.one_of(st.none(), IDS))
def test_an_unknown_id_on_either_side_leaves_the_decision_to_the_watermarks(offset, a, b):
    assume(a is None or b is None)  # both known: the id rule applies
    assert check(SourceState(offset, a, offset), Observed(b, log_start=0, high=offset)) is None


def test_a_reread_is_over_once_it_reached_the_mark_set_when_it_started():
    assert not reread_caught_up(SourceState(None, "A", None, -1))  # mark not known yet
    assert not reread_caught_up(SourceState(None, "A", 9, 10))
    assert not reread_caught_up(SourceState(9, "A", 9, 10))
    assert reread_caught_up(SourceState(10, "A", 10, 10))
    assert not reread_caught_up(SourceState(10, "A", 10, None))  # no re-read at all


# --- what a discontinuity says, and what can be done about it -----------------------------


def found(kind: Kind, observed_id: str = "NEW") -> Discontinuity:
    stored = SourceState(159, "OLD", 159)
    return Discontinuity(kind, "db.inv.stock", 2, stored, Observed(observed_id, True, 0, 19191))


def test_the_reason_names_both_offsets_and_both_topic_ids():
    reason = found(Kind.TOPIC_RECREATED).reason
    assert reason.startswith("db.inv.stock[2]: the topic was deleted or recreated")
    for part in ("offset 159", "topic id OLD", "topic id NEW", "high watermark 19191"):
        assert part in reason, (part, reason)
    assert "cdc-cache continuity reread or cdc-cache continuity accept" in reason


def test_the_key_is_stable_and_tells_discontinuities_apart():
    assert found(Kind.TOPIC_RECREATED).key == found(Kind.TOPIC_RECREATED).key
    assert found(Kind.TOPIC_RECREATED).key != found(Kind.TOPIC_RECREATED, "NEWER").key
    assert found(Kind.TOPIC_RECREATED).key != found(Kind.LOG_TRUNCATED).key


def test_records_removed_unread_cannot_be_reread_only_accepted():
    assert found(Kind.BELOW_LOG_START).ways_forward == (Action.ACCEPT,)
    assert found(Kind.TOPIC_RECREATED).ways_forward == (Action.REREAD, Action.ACCEPT)


def record(kind: Kind, partition: int = 2, state: str = "held") -> dict:
    d = found(kind)
    return {
        "topic": d.topic, "partition": partition, "kind": kind.value, "key": d.key,
        "reason": d.reason, "state": state, "stored": {"offset": 159},
        "ways_forward": [a.value for a in d.ways_forward], "detected_ms": 1_700_000_000_000,
    }  # fmt: skip


def test_a_decision_picks_the_held_partitions_of_the_topic():
    records = {
        "db.inv.stock[1]": record(Kind.TOPIC_RECREATED, 1),
        "db.inv.stock[2]": record(Kind.TOPIC_RECREATED, 2, state="rereading"),
        "other.inv.stock[0]": {**record(Kind.TOPIC_RECREATED, 0), "topic": "other.inv.stock"},
    }
    assert set(chosen(records, "db.inv.stock", None, Action.REREAD)) == {"db.inv.stock[1]"}
    with pytest.raises(ConfigError, match="no held discontinuity"):
        chosen(records, "db.inv.stock", 2, Action.ACCEPT)


def test_a_reread_of_removed_records_is_refused_with_the_way_that_works():
    records = {"db.inv.stock[2]": record(Kind.BELOW_LOG_START)}
    with pytest.raises(ConfigError, match=r"re-snapshot of inv\.stock.*continuity accept"):
        chosen(records, "db.inv.stock", 2, Action.REREAD)
    assert chosen(records, "db.inv.stock", 2, Action.ACCEPT)


def test_status_says_what_broke_and_the_ways_forward():
    lines = status_lines({"db.inv.stock[2]": record(Kind.BELOW_LOG_START)})
    assert lines[0] == "db.inv.stock[2]  below_log_start  held  since 2023-11-14T22:13:20Z"
    assert "ways forward: accept; or re-snapshot inv.stock" in lines[2]
    assert status_lines({}) == [
        "no source discontinuity recorded: every partition reads continuously"
    ]


ANSWERS = st.lists(
    st.tuples(st.floats(0, GONE_AFTER_S, allow_nan=False), st.booleans()), max_size=40
)


def _judged(answers: list[tuple[float, bool]]) -> list[bool]:
    """After each (seconds since the previous, known?) answer: is the topic judged gone."""
    now, absence, judged = 0.0, None, []
    for gap_s, known in answers:
        now += gap_s
        absence = None if known else unknown_again(absence, now)
        judged.append(absence is not None and absence.gone(now))
    return judged


@given(ANSWERS)
def test_a_topic_is_gone_only_after_enough_unknown_answers_in_a_row_over_the_bound(answers):
    now, run = 0.0, []
    for (gap_s, known), gone in zip(answers, _judged(answers), strict=True):
        now += gap_s
        run = [] if known else [*run, now]
        assert gone == (len(run) >= GONE_AFTER_ANSWERS and now - run[0] >= GONE_AFTER_S)


@given(st.lists(st.floats(0, GONE_AFTER_S, allow_nan=False), max_size=40))
def test_unknown_answers_broken_by_a_known_one_within_the_bound_never_judge_it_gone(gaps):
    """A leader election or a restarting broker: unknown for a while, then known again."""
    answers: list[tuple[float, bool]] = []
    spent = 0.0
    for gap_s in gaps:
        if spent + gap_s >= GONE_AFTER_S:
            answers.append((0.0, True))
            spent = 0.0
        spent += gap_s
        answers.append((gap_s, False))
    assert not any(_judged(answers))


def test_one_unknown_answer_is_not_gone_however_long_ago_it_came():
    assert not Absence(since=0.0).gone(now=10 * GONE_AFTER_S)
    assert Absence(since=0.0, answers=GONE_AFTER_ANSWERS).gone(now=GONE_AFTER_S)
