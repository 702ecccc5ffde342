"""A repair's position ranks above what its snapshot holds and below what commits later."""

from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import DeleteKey, SetRow, ValueFormat
from cdc_cache.sink.encoding import version_of
from cdc_cache.sink.versions import encode_version, epoch_of
from cdc_cache.tools.repair import repair_position

FILE = "mysql-bin.000007"


@given(st.integers(0, 99999), st.integers(0, 10**7), st.integers(0, 10**12), st.integers(0, 99))
def test_the_epoch_is_read_back_from_any_version(epoch, file, pos, row):
    position = SourcePosition(epoch, file, pos, row)
    assert epoch_of(encode_version(position, delete=False)) == epoch
    assert epoch_of(encode_version(position, delete=True)) == epoch


def set_at(position: SourcePosition) -> str:
    return version_of(SetRow("k", position, b"{}", ValueFormat.JSON, 1, 1))


def delete_at(position: SourcePosition) -> str:
    return version_of(DeleteKey("k", position, 1))


@given(
    snapshot=st.integers(20, 10**9),
    before=st.integers(0, 10**9),
    after=st.integers(0, 10**9),
    row=st.integers(0, 500),
)
def test_a_repair_sorts_between_the_snapshots_changes_and_later_ones(snapshot, before, after, row):
    repair = set_at(repair_position(FILE, snapshot, 2))
    # a change the snapshot holds: its event starts at least an event header before the end
    held = SourcePosition(2, 7, max(snapshot - 19 - before % snapshot, 0), row)
    later = SourcePosition(2, 7, snapshot + after, row)
    next_file = SourcePosition(2, 8, after, row)
    assert set_at(held) < repair and delete_at(held) < repair
    assert repair < delete_at(later) < set_at(later)
    assert repair < delete_at(next_file)
    # a newer lineage always wins, an older one never does
    assert repair < delete_at(SourcePosition(3, 1, 4, 0))
    assert set_at(SourcePosition(1, 99, 10**12, 0)) < repair


def test_postgresql_is_refused_with_why_and_what_to_do_instead():
    import pytest

    from cdc_cache.tools.verify_reads import Database, VerifyError

    with (
        pytest.raises(VerifyError, match=r"PostgreSQL .* delet"),
        Database("postgresql", None).consistent_snapshot(),
    ):
        pass
