from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.core.positions import SourcePosition
from cdc_cache.sink.versions import (
    encode_number,
    encode_version,
    is_delete,
    legacy_version,
    parse_stored,
    stored,
)

POSITIONS = st.builds(
    SourcePosition,
    st.integers(0, 10**5 - 1),
    st.integers(0, 10**20 - 1),
    st.integers(0, 10**20 - 1),
    st.integers(0, 10**10 - 1),
)


@given(st.integers(0, 10**30), st.integers(0, 10**30))
def test_numbers_sort_as_their_encodings(a: int, b: int) -> None:
    assert (a < b) == (encode_number(a) < encode_number(b))
    assert (a == b) == (encode_number(a) == encode_number(b))


@given(st.integers(0, 10**30), st.integers(0, 10**30))
def test_no_number_encoding_is_a_prefix_of_another(a: int, b: int) -> None:
    if a != b:
        assert not encode_number(b).startswith(encode_number(a))


@given(POSITIONS, st.booleans())
def test_a_version_is_its_positions_numbers_encoded_then_its_rank(
    position: SourcePosition, delete: bool
) -> None:
    parts = (position.epoch, position.major, position.minor, position.row)
    rank = "0" if delete else "1"
    expected = "".join(encode_number(n) for n in parts) + rank
    assert encode_version(position, delete=delete) == expected


@given(POSITIONS, st.booleans(), POSITIONS, st.booleans())
def test_versions_sort_as_position_then_rank(
    a: SourcePosition, a_delete: bool, b: SourcePosition, b_delete: bool
) -> None:
    va, vb = encode_version(a, delete=a_delete), encode_version(b, delete=b_delete)
    assert ((a, not a_delete) < (b, not b_delete)) == (va < vb)
    assert va.isdigit() and vb.isdigit()  # collation-proof: digits sort alike in every locale


def test_a_binlog_version_is_short() -> None:
    assert encode_version(SourcePosition(0, 42, 123_456, 0), delete=False) == "0242612345601"


@given(POSITIONS, st.booleans())
def test_previous_release_versions_read_as_todays(position: SourcePosition, delete: bool) -> None:
    legacy = position.encode() + (".d" if delete else ".s")
    assert legacy_version(legacy) == encode_version(position, delete=delete)
    assert is_delete(legacy_version(legacy)) == delete


@pytest.mark.parametrize("text", ["", "x.s", "00000.1.s", "12.q", b"\xff".decode("latin-1")])
def test_what_no_release_wrote_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"version|position"):
        legacy_version(text)


def test_stored_versions_carry_their_horizon() -> None:
    assert parse_stored(stored("0242612345601", 29_000_000)) == (29_000_000, "0242612345601")
    with pytest.raises(ValueError, match="not a stored version"):
        parse_stored(b"garbage")
