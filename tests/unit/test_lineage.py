"""Lineage evidence and the per-partition judgement, change by change."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cdc_cache.core.events import Origin
from cdc_cache.core.positions import SourceKind, SourcePosition
from cdc_cache.lineage.model import (
    Change,
    Limits,
    Lineage,
    PartitionState,
    Run,
    Verdict,
    advance,
    begin,
    dump_state,
    enter,
    epoch_at,
    judge,
    known_lineages,
    load_state,
    place,
    placed,
)
from cdc_cache.source.origin import origin_of

LIMITS = Limits(rewind_files=1, rewind_wal_bytes=1000)
S1 = Origin("server:1")
S2 = Origin("server:2")
NONE = Origin()
SNAPSHOT = Origin(snapshot=True)


def change(offset: int, file: int, pos: int, origin: Origin = S1, row: int = 0) -> Change:
    return Change(offset, SourcePosition(0, file, pos, row), origin)


def pg(offset: int, commit: int, lsn: int, origin: Origin = NONE) -> Change:
    return Change(offset, SourcePosition(0, commit, lsn, 0, SourceKind.POSTGRES), origin)


def step(state: PartitionState, item: Change, next_epoch: int):
    """Judge and advance one change; a NEW lineage gets next_epoch (then one more)."""
    state = begin(state, item.offset) if item.offset > state.offset else state
    judgement = judge(state, item, LIMITS)
    epoch = judgement.epoch
    if judgement.verdict is Verdict.NEW:
        epoch, next_epoch = next_epoch, next_epoch + 1
    return advance(state, item, judgement, epoch), (judgement.verdict, epoch), next_epoch


def feed(changes: list[Change], state: PartitionState | None = None, next_epoch: int = 1):
    """Judge and advance each change; NEW lineages get next_epoch, next_epoch + 1, ..."""
    state = state or PartitionState.start("db", 0)
    verdicts = []
    for item in changes:
        state, verdict, next_epoch = step(state, item, next_epoch)
        verdicts.append(verdict)
    return state, verdicts


class TestOrigin:
    def test_server_id_names_the_server_and_zero_means_unknown(self) -> None:
        assert origin_of({"name": "dbserver1", "server_id": 7}).server == "server:7"
        assert origin_of({"server_id": "7"}).server == "server:7"
        assert origin_of({"server_id": 0, "snapshot": "true"}).server is None
        assert origin_of({"server_id": True}).server is None

    def test_mysql_gtid_is_a_uuid_stream_with_a_sequence(self) -> None:
        found = origin_of({"gtid": "3E11FA47-71CA-11E1-9E33-C80AA9429562:23"})
        assert found.gtid == ("3e11fa47-71ca-11e1-9e33-c80aa9429562", 23)
        assert found.server == "uuid:3e11fa47-71ca-11e1-9e33-c80aa9429562"

    def test_mariadb_gtid_is_a_domain_stream_and_names_its_server(self) -> None:
        found = origin_of({"gtid": "0-2-15"})
        assert found.gtid == ("domain:0", 15)
        assert found.server == "server:2"
        assert origin_of({"gtid": "0-2-15", "server_id": 9}).server == "server:9"

    @pytest.mark.parametrize("gtid", ["", "nonsense", "uuid:", ":5", "1-2", "a-b-c"])
    def test_a_malformed_gtid_is_no_evidence_and_no_error(self, gtid: str) -> None:
        assert origin_of({"gtid": gtid}).gtid is None

    @given(st.one_of(st.text(), st.integers()), st.text())
    @example("²", "")
    @example(7, "²")
    def test_no_server_id_or_gtid_makes_reading_the_evidence_raise(
        self, server_id: object, gtid: str
    ) -> None:
        """Evidence is optional: a change whose evidence is malformed (``"²"`` passes
        ``str.isdigit`` but not ``int``) is still a change, never an undecodable one."""
        origin_of({"server_id": server_id, "gtid": gtid})
        origin_of({"server_id": server_id, "gtid": f"3E11FA47-71CA-11E1-9E33-C80AA9429562:{gtid}"})

    @pytest.mark.parametrize(
        ("value", "snapshot"),
        [("true", True), ("first", True), ("last", True), ("last_in_data_collection", True),
         (True, True), ("false", False), ("incremental", False), (None, False)],
    )  # fmt: skip
    def test_initial_and_blocking_snapshots_count_incremental_chunks_do_not(
        self, value: object, snapshot: bool
    ) -> None:
        assert origin_of({"snapshot": value}).snapshot is snapshot


class TestJudge:
    def test_changes_in_log_order_and_duplicates_stay_in_their_lineage(self) -> None:
        _, verdicts = feed([change(0, 5, 100), change(1, 5, 200), change(2, 5, 200)])
        assert verdicts == [(Verdict.IN_ORDER, 0)] * 3

    def test_a_snapshot_of_a_lower_binlog_file_starts_a_new_lineage(self) -> None:
        state, verdicts = feed(
            [change(0, 4, 825), change(1, 1, 3889, SNAPSHOT), change(2, 1, 4037, S2)]
        )
        assert verdicts == [(Verdict.IN_ORDER, 0), (Verdict.NEW, 1), (Verdict.IN_ORDER, 1)]
        assert state.bounds == ((0, 0), (1, 1))
        assert state.current.servers == {"server:2"}

    def test_another_server_sorting_lower_starts_a_new_lineage(self) -> None:
        _, verdicts = feed([change(0, 9, 100), change(1, 9, 50, S2)])
        assert verdicts[1] == (Verdict.NEW, 1)

    def test_another_server_sorting_higher_continues_the_lineage(self) -> None:
        _, verdicts = feed([change(0, 9, 100), change(1, 12, 4, S2)])
        assert verdicts[1] == (Verdict.IN_ORDER, 0)

    def test_the_same_server_going_back_within_the_rewind_limit_is_a_resend(self) -> None:
        state, verdicts = feed(
            [change(0, 9, 100), change(1, 10, 4), change(2, 9, 60), change(3, 10, 4)]
        )
        assert [v for v, _ in verdicts] == [
            Verdict.IN_ORDER, Verdict.IN_ORDER, Verdict.RESENT, Verdict.IN_ORDER
        ]  # fmt: skip
        assert state.last == (10, 4, 0)

    def test_the_same_server_going_back_further_without_gtids_cannot_be_told(self) -> None:
        # RESET MASTER (a new numbering) and connector offsets reset (the log read again)
        # look alike: hold, keeping the epoch (a log read again is stale, as it must be).
        state, verdicts = feed([change(0, 873, 100), change(1, 1, 4)])
        assert verdicts[1] == (Verdict.UNKNOWN, 0)
        assert state.rewind is not None and "GTID" in state.rewind.reason

    def test_a_server_seen_earlier_in_the_lineage_resending_is_no_switch(self) -> None:
        # A binlog with changes of two origin servers (a replica's log): a resend of
        # either is a resend.
        _, verdicts = feed([change(0, 9, 100), change(1, 9, 200, S2), change(2, 9, 150, S1)])
        assert verdicts[2] == (Verdict.RESENT, 0)

    def test_gtid_sequences_tell_a_resend_from_new_transactions_at_any_distance(self) -> None:
        def gtid(seq: int) -> Origin:
            return Origin("uuid:a", ("a", seq))

        _, verdicts = feed(
            [change(0, 50, 1, gtid(10)), change(1, 51, 1, gtid(11)),
             change(2, 40, 1, gtid(10)),   # far back, but transaction 10 was seen: a resend
             change(3, 41, 1, gtid(12))],  # back, but a transaction never seen: another log
        )  # fmt: skip
        assert verdicts[2] == (Verdict.RESENT, 0)
        assert verdicts[3] == (Verdict.NEW, 1)

    def test_no_identity_within_the_limit_is_a_resend_beyond_it_unknown(self) -> None:
        state, verdicts = feed([change(0, 9, 100, NONE), change(1, 8, 5, NONE)])
        assert verdicts[1] == (Verdict.RESENT, 0)
        state, verdicts = feed([change(2, 3, 5, NONE)], state)
        assert verdicts == [(Verdict.UNKNOWN, 0)]
        assert state.rewind is not None and state.rewind.high == (9, 100, 0)

    def test_an_unknown_rewind_stays_held_until_positions_pass_the_newest_again(self) -> None:
        state, _ = feed([change(0, 9, 100, NONE), change(1, 3, 5, NONE), change(2, 5, 1, NONE)])
        assert state.rewind is not None
        state, verdicts = feed([change(3, 9, 100, NONE)], state)
        assert verdicts == [(Verdict.IN_ORDER, 0)]
        assert state.rewind is None

    def test_a_snapshot_ends_an_unknown_rewind_with_a_new_lineage(self) -> None:
        state, _ = feed([change(0, 9, 100, NONE), change(1, 3, 5, NONE)])
        state, verdicts = feed([change(2, 2, 7, SNAPSHOT)], state)
        assert verdicts == [(Verdict.NEW, 1)]
        assert state.rewind is None

    def test_a_late_change_of_the_previous_lineage_keeps_its_epoch(self) -> None:
        state, _ = feed(
            [change(0, 5, 100), change(1, 5, 200), change(2, 3, 1, SNAPSHOT), change(3, 3, 50, S2)]
        )
        assert state.epoch == 1
        # Server 1 wrote lineage 0, not this one, and the change sorts below the newest.
        _, verdicts = feed([change(4, 3, 20, S1)], state)
        assert verdicts == [(Verdict.LATE, 0)]

    def test_a_late_transaction_is_recognised_by_gtid_even_sorting_higher(self) -> None:
        old = Origin("uuid:a", ("a", 7))
        state, _ = feed([change(0, 50, 1, old), change(1, 2, 1, Origin("uuid:b", ("b", 1)))])
        assert state.epoch == 1
        _, verdicts = feed([change(2, 60, 1, old)], state)
        assert verdicts == [(Verdict.LATE, 0)]

    def test_a_new_snapshot_of_the_same_log_is_a_resnapshot_keeping_the_epoch(self) -> None:
        # The initial snapshot's rows, then streaming; later a connector with fresh offsets
        # snapshots the same log again, further on.
        state, verdicts = feed(
            [change(0, 1, 50, SNAPSHOT), change(1, 1, 50, SNAPSHOT), change(2, 1, 90),
             change(3, 2, 10, SNAPSHOT), change(4, 2, 10, SNAPSHOT), change(5, 2, 40)]
        )  # fmt: skip
        assert [v for v, _ in verdicts] == [
            Verdict.IN_ORDER, Verdict.IN_ORDER, Verdict.IN_ORDER,
            Verdict.RESNAPSHOT, Verdict.IN_ORDER, Verdict.IN_ORDER,
        ]  # fmt: skip
        assert {epoch for _, epoch in verdicts} == {0}
        assert state.snapshot == (2, 10, 0)

    def test_a_read_of_the_lineages_snapshot_delivered_again_is_a_resend(self) -> None:
        # The snapshot's reads share its position; one delivered again after later
        # changes (a retried produce) is that snapshot's, not a new log's: it keeps the
        # epoch, so the Redis gate judges it stale against what the log did since.
        state, verdicts = feed(
            [change(0, 1, 50, SNAPSHOT), change(1, 1, 90), change(2, 1, 50, SNAPSHOT),
             change(3, 2, 10, SNAPSHOT), change(4, 2, 40), change(5, 1, 50, SNAPSHOT),
             change(6, 2, 10, SNAPSHOT)]
        )  # fmt: skip
        assert verdicts[2] == (Verdict.RESENT, 0)
        assert verdicts[3] == (Verdict.RESNAPSHOT, 0)
        assert verdicts[5:] == [(Verdict.RESENT, 0)] * 2  # also the older snapshot's
        assert state.epoch == 0 and state.last == (2, 40, 0) and state.snapshot == (2, 10, 0)
        assert judge(state, change(7, 1, 50, SNAPSHOT), LIMITS).reason.startswith(
            "a read of this lineage's snapshot delivered again"
        )

    def test_a_read_of_an_earlier_lineages_snapshot_delivered_again_is_late(self) -> None:
        # Lineage 0 snapshotted at 5:10; the new primary's snapshot (2:4) starts lineage 1.
        state, _ = feed(
            [change(0, 5, 10, SNAPSHOT), change(1, 5, 90), change(2, 2, 4, SNAPSHOT),
             change(3, 2, 40, S2)]
        )  # fmt: skip
        assert state.epoch == 1
        # Sorting above lineage 1's newest (no re-snapshot) or below it: lineage 0's.
        _, verdicts = feed([change(4, 5, 10, SNAPSHOT)], state)
        assert verdicts == [(Verdict.LATE, 0)]
        _, verdicts = feed([change(4, 9, 9, S2), change(5, 5, 10, SNAPSHOT)], state)
        assert verdicts[1] == (Verdict.LATE, 0)
        # Lineage 1's own snapshot delivered again is a resend in lineage 1.
        _, verdicts = feed([change(4, 2, 4, SNAPSHOT)], state)
        assert verdicts == [(Verdict.RESENT, 1)]

    def test_a_snapshot_read_at_a_position_no_snapshot_here_had_is_a_new_lineage(self) -> None:
        state, _ = feed([change(0, 5, 10, SNAPSHOT), change(1, 5, 90)])
        _, verdicts = feed([change(2, 5, 11, SNAPSHOT)], state)
        assert verdicts == [(Verdict.NEW, 1)]

    def test_a_partition_remembers_its_last_snapshots_per_lineage(self) -> None:
        changes = [change(n, 1 + n, 10, SNAPSHOT if n % 2 == 0 else S1) for n in range(12)]
        state, _ = feed(changes)
        assert state.current.snapshots == ((5, 10, 0), (7, 10, 0), (9, 10, 0), (11, 10, 0))

    def test_replayed_offsets_take_the_epoch_recorded_for_them(self) -> None:
        state, _ = feed([change(10, 5, 100), change(11, 1, 4, SNAPSHOT), change(12, 1, 9, S2)])
        assert [judge(state, change(o, 1, 1), LIMITS).epoch for o in (9, 10, 11, 12)] == [
            0, 0, 1, 1
        ]  # fmt: skip
        assert judge(state, change(10, 1, 1), LIMITS).verdict is Verdict.REPLAYED
        assert epoch_at(state, 10_000) == 1

    def test_postgres_rewinds_are_measured_in_wal_bytes(self) -> None:
        state, verdicts = feed([pg(0, 10_000, 10_000), pg(1, 9_500, 9_500)])
        assert verdicts[1] == (Verdict.RESENT, 0)
        _, verdicts = feed([pg(2, 5_000, 5_000)], state)
        assert verdicts == [(Verdict.UNKNOWN, 0)]
        _, verdicts = feed([pg(2, 5_000, 5_000, Origin(snapshot=True))], state)
        assert verdicts == [(Verdict.NEW, 1)]

    def test_an_operator_floor_enters_a_lineage_without_comparing_positions(self) -> None:
        state, _ = feed([change(0, 9, 100, NONE), change(1, 3, 5, NONE)])
        state = enter(state, 2, 7)
        assert state.rewind is None and state.last is None
        _, verdicts = feed([change(2, 1, 1, NONE)], state)
        assert verdicts == [(Verdict.IN_ORDER, 7)]

    def test_a_new_lineage_needs_its_epoch(self) -> None:
        state, _ = feed([change(0, 9, 100)])
        item = change(1, 1, 1, SNAPSHOT)
        with pytest.raises(ValueError, match="registry"):
            advance(state, item, judge(state, item, LIMITS))


def test_partition_states_survive_their_json_form() -> None:
    gtid = Origin("uuid:a", ("a", 3))
    state, _ = feed(
        [change(0, 9, 100, gtid), change(1, 2, 1, SNAPSHOT), change(2, 5, 9, S2),
         change(3, 1, 1, NONE)]
    )  # fmt: skip
    assert state.rewind is not None and state.earlier and state.earlier[0].gtids
    assert state.current.snapshots == ((2, 1, 0),) and state.earlier[0].snapshots == ()
    assert load_state(dump_state(state)) == state
    with pytest.raises(ValueError, match="lineage state"):
        load_state(b'{"source": "db"}')


def test_a_state_an_earlier_release_saved_keeps_its_snapshot_position() -> None:
    # Earlier releases kept one snapshot position per partition, beside its lineage.
    state, _ = feed([change(0, 1, 50, SNAPSHOT), change(1, 1, 90)])
    doc = orjson.loads(dump_state(state))
    assert doc["snapshot"] == [1, 50, 0]  # still written, for a worker of that release
    del doc["current"]["snapshots"]
    old = load_state(orjson.dumps(doc))
    assert old == state
    assert judge(old, change(2, 1, 50, SNAPSHOT), LIMITS).verdict is Verdict.RESENT


_ORIGINS = st.sampled_from(
    [S1, S2, NONE, SNAPSHOT, Origin("uuid:a", ("a", 0)), Origin("uuid:b", ("b", 0))]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(-2, 6), st.integers(0, 500), _ORIGINS),
        max_size=60,
    )
)
def test_the_hot_path_reaches_the_state_change_by_change_judging_would(steps) -> None:
    """Run.take accepts only changes judge would call in order, and fold gives the same
    state as judge and advance, change by change (GTID sequences grow with the offset)."""
    changes, offset, file = [], 0, 5
    for skip, file_step, pos, drawn in steps:
        offset += skip + 1
        file = max(1, file + file_step - 2)
        origin = drawn
        if drawn.gtid is not None:
            origin = Origin(drawn.server, (drawn.gtid[0], offset))
        changes.append(change(offset, file, pos, origin))
    slow, slow_verdicts = feed(changes)
    fast, fast_verdicts, run, epoch = PartitionState.start("db", 0), [], None, 1
    for item in changes:
        if run is not None and run.take(item.offset, item.position, item.origin):
            fast_verdicts.append((Verdict.IN_ORDER, run.epoch))
            continue
        fast, verdict, epoch = step(run.fold() if run is not None else fast, item, epoch)
        fast_verdicts.append(verdict)
        run = Run(fast)
    assert (run.fold() if run is not None else fast) == slow
    assert fast_verdicts == slow_verdicts


class TestPlacingAPartitionsFirstChange:
    """A partition first judged after the source switched lineage: where it starts."""

    @staticmethod
    def lineages():
        # Lineage 0 written by server 1 on one partition; lineage 1 reached by another
        # with its snapshot at 2:4 and server 2; lineage 2 registered, nothing recorded.
        old, _ = feed([change(0, 9, 100, S1)])
        new, _ = feed([change(0, 9, 100, S1), change(1, 2, 4, SNAPSHOT), change(2, 2, 9, S2)])
        return known_lineages([old, new], latest=2)

    def test_the_source_partitions_evidence_is_merged_per_lineage(self) -> None:
        found = self.lineages()
        assert [(lin.epoch, set(lin.servers), lin.snapshots) for lin in found] == [
            (0, {"server:1"}, ()), (1, {"server:2"}, ((2, 4, 0),)), (2, set(), ())
        ]  # fmt: skip

    @pytest.mark.parametrize(
        ("item", "epoch"),
        [
            (change(0, 2, 4, SNAPSHOT), 1),  # a read of lineage 1's snapshot
            (change(0, 2, 50, S2), 1),  # lineage 1's server
            (change(0, 9, 300, S1), 0),  # the old server: the old lineage (the skew)
            (change(0, 1, 7, Origin("server:3")), 2),  # no lineage had it: the unknown one
        ],
    )
    def test_evidence_that_fits_one_lineage_places_it(self, item: Change, epoch: int) -> None:
        lineages = self.lineages()
        judgement = place(lineages, item)
        assert (judgement.verdict, judgement.epoch) == (Verdict.IN_ORDER, epoch)
        state = placed("db", lineages, item, judgement)
        assert state.epoch == epoch and state.rewind is None
        assert [lin.epoch for lin in state.earlier] == list(range(epoch - 1, -1, -1))

    @pytest.mark.parametrize(
        "item",
        [
            change(0, 1, 7, NONE),  # no identity: PostgreSQL, flattened topics
            change(0, 1, 4, SNAPSHOT),  # a snapshot no partition recorded
        ],
    )
    def test_a_change_nothing_places_starts_in_the_first_lineage_held(self, item: Change) -> None:
        lineages = self.lineages()
        judgement = place(lineages, item)
        assert (judgement.verdict, judgement.epoch) == (Verdict.UNKNOWN, 0)
        assert "after the source switched lineage (lineages 0, 1, 2)" in judgement.reason
        state = placed("db", lineages, item, judgement)
        assert state.epoch == 0 and state.rewind is not None
        # Held whatever its positions do, until its own stream shows a switch.
        state, verdicts = feed([item, change(1, 5, 9, NONE)], state)
        assert verdicts[0] == (Verdict.IN_ORDER, 0) and state.rewind is not None
        state, verdicts = feed([change(2, 1, 2, SNAPSHOT)], state, next_epoch=1)
        assert verdicts == [(Verdict.NEW, 1)] and state.rewind is None
        assert load_state(dump_state(state)) == state

    def test_a_server_two_lineages_had_is_not_placed(self) -> None:
        # Failed over and back: server 1 wrote lineages 0 and 2.
        lineages = [Lineage(0, frozenset({"server:1"})), Lineage(1, frozenset({"server:2"})),
                    Lineage(2, frozenset({"server:1"}))]  # fmt: skip
        judgement = place(lineages, change(0, 1, 9, S1))
        assert judgement.verdict is Verdict.UNKNOWN and "fits several" in judgement.reason

    def test_one_lineage_known_places_every_change_in_it(self) -> None:
        assert place(known_lineages([], latest=3), change(0, 1, 1, NONE)).epoch == 3
