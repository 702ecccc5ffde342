"""The lineage registry on real Redis, single server and Cluster: one epoch per switch
whoever asks first, the operator's floor, partition states, and the epochs replays get."""

from __future__ import annotations

import os
import threading
import traceback
from dataclasses import replace
from typing import Any

import orjson
import pytest
from redis.exceptions import ResponseError

from cdc_cache.app.replay import Replayer
from cdc_cache.core.errors import ConfigError
from cdc_cache.core.events import Origin, SourceRecord
from cdc_cache.core.positions import MAX_EPOCH
from cdc_cache.core.retry import Backoff
from cdc_cache.lineage.model import Limits, PartitionState, dump_state, enter
from cdc_cache.lineage.registry import STATE_BYTES_WHILE_FULL, LineageRegistry, source_key
from cdc_cache.lineage.tracker import LineageConfig, LineageTracker
from cdc_cache.mode.controller import Cause
from cdc_cache.mode.holds import Holds
from cdc_cache.plan.route import Planned, route
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.connection import is_oom, primaries
from cdc_cache.sink.memory import OomGuard
from cdc_cache.sink.scripts import accepts_writes
from cdc_cache.sink.writer import CacheWriter
from tests.integration.memory_pressure import out_of_memory
from tests.workload import RULES_YAML, Message, Workload

pytestmark = pytest.mark.integration

RULES = parse_rules(RULES_YAML)
SWITCH = {"reason": "test"}


def test_one_successor_per_lineage_whoever_asks_first(redis_target) -> None:
    registry = LineageRegistry(redis_target.client)
    assert registry.ensure("db", 0) == (0, 0)
    barrier = threading.Barrier(8)
    answers: list[tuple[int, bool, int]] = []

    def ask(number: int) -> None:
        barrier.wait()
        answers.append(registry.successor("db", 0, 0, {"asked_by": number}))

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {(epoch, latest) for epoch, _, latest in answers} == {(1, 1)}
    assert sum(assigned for _, assigned, _ in answers) == 1
    (first,) = registry.switches("db").values()
    assert first["asked_by"] in range(8)
    assert registry.successor("db", 1, 0, SWITCH) == (2, True, 2)
    assert registry.successor("db", 0, 0, SWITCH) == (1, False, 2)  # a lagging partition
    assert registry.ensure("db", 0) == (0, 2)


def test_the_operators_floor_numbers_lineages_above_it(redis_target) -> None:
    registry = LineageRegistry(redis_target.client)
    assert registry.ensure("db", 3) == (3, 3)
    assert registry.successor("db", 3, 3, SWITCH)[0] == 4
    assert registry.ensure("db", 10) == (3, 10)  # source_epoch raised above the lineages
    assert registry.successor("db", 4, 10, SWITCH)[0] == 11
    assert registry.ensure("other", 0) == (0, 0)  # sources are numbered apart


def test_partition_states_give_each_offset_its_epoch(redis_target) -> None:
    registry = LineageRegistry(redis_target.client)
    state = enter(PartitionState.start("db", 0), 10, 0)
    state = enter(state, 25, 1, (1, 4, 0), Origin("server:2"))
    registry.save({("db.inv.t", 0): state})
    assert registry.load([("db.inv.t", 0), ("db.inv.t", 1)]) == {
        ("db.inv.t", 0): state,
        ("db.inv.t", 1): None,
    }
    assert [registry.epoch_at(("db.inv.t", 0), offset) for offset in (3, 24, 25, 99)] == [
        0, 0, 1, 1
    ]  # fmt: skip
    assert registry.epoch_at(("db.inv.t", 1), 3) is None


def test_partitions_in_two_processes_agree_and_an_old_change_replays_stale(redis_target) -> None:
    """Two processes each read one partition of a source that fails over; they reach the
    switch at different times and get the same epoch; a dead letter of the old lineage,
    replayed after the switch, is stale, as it would not be with the current epoch."""
    client = redis_target.client
    workload = Workload(seed=5, topic="db5.inventory.stock")
    old = [m for tx in workload.transactions(60) for m in tx]
    new = workload.failover(server_id=2, binlog_file=1)
    new += [m for tx in workload.transactions(60) for m in tx]
    streams: dict[int, list[Message]] = {0: [], 1: []}
    for message in old + new:
        streams[orjson.loads(message.key)["id"] % 2].append(message)
    applier = RedisApplier(client)
    epochs: dict[int, set[int]] = {0: set(), 1: set()}
    first_new = {p: next(i for i, m in enumerate(s) if m in new) for p, s in streams.items()}

    def process(partition: int, upto: int) -> None:
        tracker = LineageTracker(
            lambda: LineageRegistry(client), Holds(), LineageConfig(0, Limits())
        )
        records = [
            SourceRecord(workload.topic, partition, offset, m.key, m.value)
            for offset, m in enumerate(streams[partition][:upto])
        ]
        session = tracker.session(records)
        routed = [route(r, RULES, session.hint(r), epoch_of=session.epoch_of) for r in records]
        session.close()
        planned = [item for item in routed if isinstance(item, Planned)]
        applier.apply([op for item in planned for op in item.ops])
        for record, item in zip(records, routed, strict=True):
            if isinstance(item, Planned) and record.offset >= first_new[partition]:
                epochs[partition].add(item.event.position.epoch)

    process(0, len(streams[0]))  # process A reads its partition past the switch
    process(1, first_new[1])  # process B is still before it, then crashes
    process(1, len(streams[1]))  # and a new process B replays from offset 0 onwards
    assert epochs == {0: {1}, 1: {1}}
    registry = client.hgetall(source_key("dbserver1"))
    assert registry[b"latest"] == b"1" and b"switch:1" in registry

    # A dead letter of the old lineage on partition 0, replayed after the switch.
    offset, message = next(
        (o, m) for o, m in enumerate(streams[0]) if m.value and b'"op":"u"' in m.value
    )
    record = SourceRecord(workload.topic, 0, offset, message.key, message.value)
    cache_before = _dump(client)
    outcome = Replayer(RULES, client, _Fetch(record), lineage=LineageRegistry(client)).replay(
        {"id": "old", "source": {"topic": record.topic, "partition": 0, "offset": offset}}
    )
    assert outcome.outcome == "stale", outcome
    assert _dump(client) == cache_before
    # With the partition's current epoch instead, the old change would win.
    current = Replayer(RULES, client, _Fetch(record), epoch=1).replay(
        {"id": "naive", "source": {"topic": record.topic, "partition": 0, "offset": offset}}
    )
    assert current.outcome == "applied"


def test_a_snapshot_read_delivered_again_stays_below_the_truncate(redis_target) -> None:
    """The connector's snapshot, changes, a TRUNCATE, then some snapshot reads delivered
    again (after later inserts too), through decode, lineage, plan and the apply script:
    the reads keep their lineage's epoch, so the TRUNCATE's position (and the later rows'
    versions) judge them stale and no truncated row comes back. Taken for a new lineage,
    they had a higher epoch and were written back."""
    client = redis_target.client
    workload = Workload(seed=11, topic="db11.inventory.stock")
    workload.transactions(30)  # the table before the connector started
    snapshot = workload.failover(server_id=1, binlog_file=3)  # the connector's first snapshot
    streamed = [m for tx in workload.transactions(20) for m in tx]
    truncate = workload.truncate()
    inserted = [m for tx in workload.transactions(10) for m in tx]
    again = snapshot[::2]
    assert again and workload.rows
    stream = [*snapshot, *streamed, truncate, *inserted[:5], *again, *inserted[5:]]
    tracker = LineageTracker(lambda: LineageRegistry(client), Holds(), LineageConfig(0, Limits()))
    applier = RedisApplier(client)
    epochs = set()
    for start in range(0, len(stream), 16):
        records = [
            SourceRecord(workload.topic, 0, offset, m.key, m.value)
            for offset, m in enumerate(stream[start : start + 16], start)
        ]
        session = tracker.session(records)
        routed = [route(r, RULES, session.hint(r), epoch_of=session.epoch_of) for r in records]
        session.close()
        planned = [item for item in routed if isinstance(item, Planned)]
        applier.apply([op for item in planned for op in item.ops])
        epochs |= {item.event.position.epoch for item in planned}
    cached = {key.decode(): orjson.loads(value) for key, value in _dump(client).items()}
    expected = workload.expected_cache()
    assert {k: v for k, v in cached.items() if expected.get(k) != v} == {}
    assert cached == expected
    assert epochs == {0}
    assert b"switch:1" not in client.hgetall(source_key("dbserver1"))


def test_a_partition_first_read_after_a_failover_starts_in_the_new_lineage(redis_target) -> None:
    """Partition 1 gets its first message only after the source failed over (none of its
    rows changed before); partition 0 carried the old lineage, its TRUNCATE and the
    switch. Through decode, lineage, plan and the apply script, partition 1's rows are
    cached: started in the source's first lineage, they sorted below the old lineage's
    TRUNCATE and were dropped as stale."""
    client = redis_target.client
    workload = Workload(seed=13, topic="db13.inventory.stock", binlog_file=7)
    streams: dict[int, list[Message]] = {0: [m for tx in workload.transactions(20) for m in tx]}
    streams[0].append(workload.truncate())
    streams[0] += workload.failover(server_id=2, binlog_file=1)  # nothing left to snapshot
    streams[0] += [m for tx in workload.transactions(3) for m in tx]
    streams[1] = [m for tx in workload.transactions(20) for m in tx]
    epochs: dict[int, set[int]] = {0: set(), 1: set()}
    for partition in (0, 1):  # a new process each, partition 1 once 0 is past the switch
        holds = Holds()
        tracker = LineageTracker(lambda: LineageRegistry(client), holds, LineageConfig(0, Limits()))
        records = [
            SourceRecord(workload.topic, partition, offset, m.key, m.value)
            for offset, m in enumerate(streams[partition])
        ]
        session = tracker.session(records)
        routed = [route(r, RULES, session.hint(r), epoch_of=session.epoch_of) for r in records]
        session.close()
        planned = [item for item in routed if isinstance(item, Planned)]
        RedisApplier(client).apply([op for item in planned for op in item.ops])
        epochs[partition] = {item.event.position.epoch for item in planned}
        assert not holds.lasting(Cause.LINEAGE)
    cached = {key.decode(): orjson.loads(value) for key, value in _dump(client).items()}
    expected = workload.expected_cache()
    assert expected and {k: v for k, v in expected.items() if cached.get(k) != v} == {}
    assert cached == expected
    assert epochs == {0: {0, 1}, 1: {1}}


class _Fetch:
    def __init__(self, record: SourceRecord) -> None:
        self.record = record

    def fetch(self, topic: str, partition: int, offset: int) -> SourceRecord | None:
        return self.record


def _dump(client: Any) -> dict[bytes, Any]:
    return {key: client.get(key) for key in client.scan_iter(match="stock:*")}


def test_no_epoch_is_numbered_beyond_what_a_position_holds(redis_target) -> None:
    registry = LineageRegistry(redis_target.client)
    registry.ensure("db", MAX_EPOCH)
    with pytest.raises(ResponseError, match="no epoch left"):
        registry.successor("db", MAX_EPOCH, MAX_EPOCH, SWITCH)


def test_a_damaged_partition_state_stops_the_worker_with_what_to_fix(redis_target) -> None:
    redis_target.client.hset("cdc:lineage:partitions", "db.inv.t/0", b"{not json")
    with pytest.raises(ConfigError, match="HDEL"):
        LineageRegistry(redis_target.client).load([("db.inv.t", 0)])


def test_while_redis_is_full_a_partition_state_grows_no_further_than_its_bound(
    redis_target,
) -> None:
    """The states saved while Redis is out of memory stay bounded: one up to
    STATE_BYTES_WHILE_FULL is saved, one past it that would grow is refused (and waits)."""
    client = redis_target.client
    registry = LineageRegistry(client)
    where = ("db.inv.t", 0)
    state = PartitionState.start("db", 0)
    lates = tuple((offset, 0) for offset in range(10**9, 10**9 + 400))
    large = replace(state, lates=lates)
    assert len(dump_state(large)) > STATE_BYTES_WHILE_FULL
    with out_of_memory(client):
        registry.save({where: replace(state, offset=7)})
        with pytest.raises(ResponseError) as refused:
            registry.save({where: large})
        assert is_oom(refused.value)
        assert registry.load([where])[where] == replace(state, offset=7)
    registry.save({where: large})
    with out_of_memory(client):
        registry.save({where: replace(large, offset=9)})  # overwritten, no larger
        with pytest.raises(ResponseError) as refused:
            registry.save({where: replace(large, lates=(*lates, (2 * 10**9, 0)))})
        assert is_oom(refused.value)
    assert registry.load([where])[where] == replace(large, offset=9)


def test_a_batch_judged_while_redis_is_out_of_memory_lands_its_deletes(redis_target) -> None:
    """Lineage detection on, through route, the lineage session and the writer: while Redis
    is full a batch's partition states are recorded (one partition read before, one read
    for the first time) and its changes land as deletes, with no retry waiting for memory."""
    client = redis_target.client
    workload = Workload(seed=17, topic="db17.inventory.stock")
    holds = Holds()
    retried: list[list[str]] = []  # who waited: the worker's frames at each retry

    def memory_freed(delay: float) -> None:  # any wait for Redis (tracker or writer)
        stack = traceback.extract_stack()
        retried.append([f.name for f in stack if f"{os.sep}cdc_cache{os.sep}" in f.filename])
        for node in primaries(client):
            node.config_set("maxmemory", "0")

    backoff = Backoff(initial=0.01, maximum=0.01)
    tracker = LineageTracker(
        lambda: LineageRegistry(client), holds, LineageConfig(0, Limits()),
        backoff=backoff, sleep=memory_freed,
    )  # fmt: skip
    applier = RedisApplier(client, memory=OomGuard(holds, settle_s=60))
    writer = CacheWriter(applier, backoff, sleep=memory_freed)

    def batch(messages: list[Message], partition: int, first: int) -> list[str]:
        records = [
            SourceRecord(workload.topic, partition, offset, m.key, m.value)
            for offset, m in enumerate(messages, first)
        ]
        session = tracker.session(records)
        routed = [route(r, RULES, session.hint(r), epoch_of=session.epoch_of) for r in records]
        session.close()
        writer.write(routed)
        planned = [item for item in routed if isinstance(item, Planned)]
        return [op.key for item in planned for op in item.ops]

    before = [m for tx in workload.transactions(20) for m in tx]
    cached = batch(before, 0, 0)
    assert client.exists(*cached) > 0
    during = [m for tx in workload.transactions(20) for m in tx]
    half = len(during) // 2
    with out_of_memory(client):
        assert not any(accepts_writes(node) for node in primaries(client))
        touched = batch(during[:half], 0, len(before)) + batch(during[half:], 1, 0)
        assert retried == []  # landed while full, not once memory was freed
        assert client.exists(*touched) == 0  # sets sent as deletes
        assert Cause.REDIS_OOM in {hold.cause for hold in holds.active()}
        states = LineageRegistry(client).load([(workload.topic, 0), (workload.topic, 1)])
    assert [s.offset if s else None for s in states.values()] == [
        len(before) + half - 1,
        len(during) - half - 1,
    ]
