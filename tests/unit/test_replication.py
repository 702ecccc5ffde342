"""What a primary's INFO says, and whether a primary switch kept every durable write."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.sink.failover import PrimaryRegistry
from cdc_cache.sink.replication import PrimaryRecord, ReplicationInfo, Switch, classify

OLD, NEW, OTHER = "a" * 40, "b" * 40, "c" * 40

# INFO replication of a primary with one replica, as redis-py parses it (Redis 7.0).
PRIMARY_INFO = {
    "role": "master",
    "connected_slaves": 2,
    "slave0": {"ip": "127.0.0.1", "port": 6380, "state": "online", "offset": 900, "lag": 1},
    "slave1": {"ip": "127.0.0.1", "port": 6381, "state": "wait_bgsave", "offset": 0, "lag": 0},
    "master_failover_state": "no-failover",
    "master_replid": OLD,
    "master_replid2": 0,  # "0000…" parses as an int
    "master_repl_offset": 1000,
    "second_repl_offset": -1,
}


def promoted(held: int, offset: int | None = None) -> ReplicationInfo:
    """A replica of OLD promoted after receiving OLD's stream up to ``held``."""
    return ReplicationInfo("master", NEW, OLD, held if offset is None else offset, held + 1)


def test_info_of_a_primary_gives_its_id_offset_and_online_replicas():
    info = ReplicationInfo.parse(PRIMARY_INFO)
    assert (info.primary, info.replid, info.replid2, info.offset) == (True, OLD, "", 1000)
    assert info.online() == 1
    assert info.lag_bytes() == 100  # the syncing replica does not count
    assert info.ack_age_s() == 1


def test_without_an_online_replica_there_is_no_lag_to_report():
    info = ReplicationInfo.parse({**PRIMARY_INFO, "connected_slaves": 0})
    assert (info.online(), info.lag_bytes(), info.ack_age_s()) == (0, 0, 0)


def test_a_promoted_replica_holds_its_former_primarys_stream_up_to_the_switch():
    info = ReplicationInfo.parse(
        {**PRIMARY_INFO, "master_replid": NEW, "master_replid2": OLD,
         "master_repl_offset": 1500, "second_repl_offset": 801}
    )  # fmt: skip
    assert info.holds_history_of(OLD) == 800
    assert info.holds_history_of(NEW) == 1500
    assert info.holds_history_of(OTHER) == -1


offsets = st.integers(min_value=0, max_value=10**9)


@given(seen=offsets, more=offsets)
def test_the_same_primary_moving_on_is_no_switch(seen, more):
    record = PrimaryRecord(OLD, seen, durable=seen // 2)
    assert classify(record, ReplicationInfo("master", OLD, "", seen + more, -1)) is Switch.NONE


@given(durable=offsets, held=offsets, extra=offsets)
def test_a_switch_is_complete_exactly_when_the_new_primary_holds_every_durable_write(
    durable, held, extra
):
    record = PrimaryRecord(OLD, max(durable, held) + extra, durable)
    switch = classify(record, promoted(held))
    assert switch is (Switch.COMPLETE if held >= durable else Switch.INCOMPLETE)


@given(seen=offsets, held=offsets)
def test_without_replica_confirmation_every_switch_is_incomplete(seen, held):
    record = PrimaryRecord(OLD, seen, durable=None)
    assert classify(record, promoted(held)) is Switch.INCOMPLETE


@given(seen=offsets, durable=offsets, offset=offsets)
def test_a_server_without_the_old_history_lost_everything(seen, durable, offset):
    restarted = ReplicationInfo("master", OTHER, "", offset, -1)
    assert classify(PrimaryRecord(OLD, seen, durable), restarted) is Switch.INCOMPLETE


def test_the_same_id_with_a_shorter_stream_is_a_switch():
    """A primary restarted from a persisted id but without its last writes."""
    record = PrimaryRecord(OLD, seen=1000, durable=900)
    assert classify(record, ReplicationInfo("master", OLD, "", 950, -1)) is Switch.COMPLETE
    assert classify(record, ReplicationInfo("master", OLD, "", 850, -1)) is Switch.INCOMPLETE


def test_the_registry_reports_each_switch_once_and_follows_the_new_primary():
    heard = []
    registry = PrimaryRegistry(tracked=True, on_switch=lambda *args: heard.append(args))
    first = ReplicationInfo("master", OLD, "", 100, -1)
    assert registry.observe("primary", first) is Switch.NONE
    registry.confirmed("primary", OLD, 500)
    registry.confirmed("primary", OTHER, 10_000)  # another server's offset: ignored

    assert registry.observe("primary", promoted(500, offset=600)) is Switch.COMPLETE
    assert registry.observe("primary", promoted(500, offset=700)) is Switch.NONE  # the same
    assert [(node, switch) for node, switch, _ in heard] == [("primary", Switch.COMPLETE)]
    assert "every confirmed write" in heard[0][2]


def test_a_cluster_replica_promoted_at_another_address_continues_its_primary():
    registry = PrimaryRegistry(tracked=True)
    registry.observe("10.0.0.1:6379", ReplicationInfo("master", OLD, "", 100, -1))
    registry.observe("10.0.0.2:6379", ReplicationInfo("master", OTHER, "", 100, -1))
    registry.confirmed("10.0.0.1:6379", OLD, 400)
    assert registry.observe("10.0.0.3:6379", promoted(399)) is Switch.INCOMPLETE
    assert registry.observe("10.0.0.3:6379", promoted(399, offset=450)) is Switch.NONE


def test_without_confirmation_the_registry_calls_a_switch_incomplete():
    heard = []
    registry = PrimaryRegistry(tracked=False, on_switch=lambda *args: heard.append(args))
    registry.observe("primary", ReplicationInfo("master", OLD, "", 100, -1))
    assert registry.observe("primary", promoted(100)) is Switch.INCOMPLETE
    assert "redis_replicas 0" in heard[0][2]
