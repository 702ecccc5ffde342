"""Source positions from real recordings are totally ordered in stream order."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.core.events import ChangeEvent, Op
from cdc_cache.core.positions import ENCODED_LENGTH, MAX_EPOCH, SourceKind, SourcePosition
from tests.unit.test_envelope import SOURCES, changes, load


def _stream(source: str) -> list[ChangeEvent]:
    return list(changes(source, "schemas").values())


@pytest.mark.parametrize("source", SOURCES)
def test_streamed_changes_have_strictly_increasing_positions(source: str) -> None:
    streamed = [e for e in _stream(source) if not e.snapshot]
    # A primary-key update is a delete of the old key and a create of the new key that
    # share one position; they touch different rows, so compare (position, key).
    for prev, nxt in itertools.pairwise(streamed):
        if prev.position == nxt.position:
            assert (prev.op, nxt.op) == (Op.DELETE, Op.CREATE)
            assert prev.key != nxt.key
        else:
            assert prev.position < nxt.position, (prev, nxt)


@pytest.mark.parametrize("source", SOURCES)
def test_statements_in_one_transaction_updating_one_row_are_ordered(source: str) -> None:
    records = {r.seq: r.scenario for r in load(source, "schemas")}
    twice = [e for seq, e in changes(source, "schemas").items() if records[seq] == "txn_same_row"]
    assert [e.after["qty"] for e in twice if e.after] == [100, 101]
    assert twice[0].key == twice[1].key
    assert twice[0].position < twice[1].position


@pytest.mark.parametrize("source", SOURCES)
def test_rows_of_one_statement_are_told_apart(source: str) -> None:
    records = {r.seq: r.scenario for r in load(source, "schemas")}
    multi = [e for seq, e in changes(source, "schemas").items() if records[seq] == "multi_row"]
    assert len(multi) == 2
    assert multi[0].position < multi[1].position
    if source == "mariadb":
        assert multi[0].position.minor == multi[1].position.minor
        assert [e.position.row for e in multi] == [0, 1]


@pytest.mark.parametrize("source", SOURCES)
def test_snapshot_rows_order_before_later_changes(source: str) -> None:
    events = _stream(source)
    snapshot = [e for e in events if e.snapshot]
    later = [e for e in events if not e.snapshot]
    assert snapshot and later
    assert max(e.position for e in snapshot) < min(e.position for e in later)


positions = st.builds(
    SourcePosition,
    st.integers(0, MAX_EPOCH),
    st.integers(0, 10**20 - 1),
    st.integers(0, 10**20 - 1),
    st.integers(0, 10**10 - 1),
)


@given(positions, positions)
def test_encoded_order_matches_tuple_order(a: SourcePosition, b: SourcePosition) -> None:
    assert (a < b) == (a.encode() < b.encode())
    assert (a == b) == (a.encode() == b.encode())


@given(positions)
def test_encode_round_trips(p: SourcePosition) -> None:
    encoded = p.encode()
    assert len(encoded) == ENCODED_LENGTH
    assert SourcePosition.decode(encoded) == p
    assert SourcePosition.decode(encoded.encode()) == p


@pytest.mark.parametrize("source", SOURCES)
def test_recorded_positions_round_trip_and_keep_order(source: str) -> None:
    ordered = sorted({e.position for e in _stream(source)})
    assert [SourcePosition.decode(p.encode()) for p in ordered] == ordered
    assert sorted(p.encode() for p in ordered) == [p.encode() for p in ordered]


_FIELD = st.integers(min_value=0, max_value=3)


@given(st.tuples(_FIELD, _FIELD, _FIELD, _FIELD), st.tuples(_FIELD, _FIELD, _FIELD, _FIELD))
def test_positions_are_equal_and_hash_alike_exactly_when_their_coordinates_are(
    a: tuple[int, int, int, int], b: tuple[int, int, int, int]
) -> None:
    # what keys dicts of positions (and of the deletes holding them): the kind never counts
    left = SourcePosition(*a, SourceKind.BINLOG)
    right = SourcePosition(*b, SourceKind.POSTGRES)
    assert (left == right) is (a == b)
    assert len({left, right}) == (1 if a == b else 2)
    assert (left < right) is (a < b)
