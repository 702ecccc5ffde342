"""Notifications written by the apply script: exactly when the host write applied, in the
same script call, into a bounded stream per channel; on Redis Cluster through the outbox of
the row's slot and the relay, exactly once through crashes and repeated relays."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from cdc_cache.core.errors import ApplyError
from cdc_cache.core.events import ChangeEvent, Op, SourceRecord
from cdc_cache.core.keys import ns
from cdc_cache.core.positions import SourcePosition
from cdc_cache.core.retry import Backoff
from cdc_cache.mode.controller import Cause
from cdc_cache.mode.holds import Holds
from cdc_cache.plan.cache_ops import Notify
from cdc_cache.plan.planner import plan
from cdc_cache.plan.route import Planned
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.connection import primaries
from cdc_cache.sink.encoding import Outcome
from cdc_cache.sink.memory import OomGuard
from cdc_cache.sink.outbox import OutboxRelay, outbox_sweeper
from cdc_cache.sink.scripts import accepts_writes
from cdc_cache.sink.writer import CacheWriter
from tests.integration.memory_pressure import out_of_memory
from tests.integration.waiting import wait_until
from tests.workload import NOTIFY_RULES_YAML

pytestmark = pytest.mark.integration

A, S, D = Outcome.APPLIED, Outcome.STALE, Outcome.DUPLICATE
RULES = parse_rules(NOTIFY_RULES_YAML)


def change(n: int, qty: int, warehouse: str = "north", op: Op = Op.UPDATE) -> ChangeEvent:
    row = {"id": 1, "sku_id": 7, "warehouse": warehouse, "qty": qty}
    before = {**row, "qty": qty - 1} if op is Op.UPDATE else None
    return ChangeEvent("inventory.stock", op, before, row, {"id": 1}, SourcePosition(0, 1, n, 0), n)


def entries(redis: Any, channel: str) -> list[dict[str, Any]]:
    return [orjson.loads(f[b"p"]) for _, f in redis.xrange(ns().stream_key(channel))]


def test_each_applied_change_notifies_once_replays_and_stale_changes_never(
    any_redis: Any,
) -> None:
    redis_client = any_redis
    applier = RedisApplier(redis_client)
    first, second = plan(change(10, 1), RULES), plan(change(20, 2), RULES)
    assert list(applier.apply(first).outcomes) == [A, A, A]
    assert list(applier.apply(first).outcomes) == [D, D, D]  # duplicate
    assert list(applier.apply(second).outcomes) == [A, A, A]
    assert list(applier.apply(first).outcomes) == [S, S, S]  # replayed after a newer one
    assert [e["values"]["qty"] for e in entries(redis_client, "inventory:north")] == [1, 2]
    assert redis_client.smembers(ns().channels) == {b"inventory:north"}


def test_notification_stays_with_its_host_when_a_batch_is_split(any_redis: Any) -> None:
    redis_client = any_redis
    ops = [op for n in range(1, 40) for op in plan(change(n, n), RULES)]
    applier = RedisApplier(redis_client, max_ops_per_call=2, max_args_per_call=9)
    applier.apply(ops)
    applier.apply(ops)
    assert [e["values"]["qty"] for e in entries(redis_client, "inventory:north")] == list(
        range(1, 40)
    )


def test_stream_is_bounded_by_maxlen(any_redis: Any) -> None:
    redis_client = any_redis
    applier = RedisApplier(redis_client)
    for n in range(1, 400):
        applier.apply(plan(change(n, n), RULES))
    assert 50 <= redis_client.xlen(ns().stream_key("inventory:north")) < 200
    assert entries(redis_client, "inventory:north")[-1]["values"]["qty"] == 399


def test_wrong_typed_stream_fails_before_any_write(redis_client: Any) -> None:
    """On one server; on a Cluster the notification waits in its outbox (test below)."""
    redis_client.set(ns().stream_key("inventory:north"), b"x")
    with pytest.raises(ApplyError, match="WRONGTYPE"):
        RedisApplier(redis_client).apply(plan(change(5, 1), RULES))
    assert redis_client.exists("stock:7:north") == 0


def test_notification_without_a_host_is_refused(any_redis: Any) -> None:
    redis_client = any_redis
    with pytest.raises(ApplyError, match="needs a key op before it"):
        RedisApplier(redis_client).apply([Notify("inventory:x", b"{}", 10)])
    assert redis_client.exists(ns().stream_key("inventory:x")) == 0


def many_rows(first: int, count: int) -> list[Any]:
    """Changes of ``count`` rows (spread over slots) on two channels."""
    ops = []
    for n in range(first, first + count):
        row = {"id": n, "sku_id": n, "warehouse": ("north", "south")[n % 2], "qty": n}
        event = ChangeEvent(
            "inventory.stock", Op.CREATE, None, row, {"id": n}, SourcePosition(0, 1, n, 0), n
        )
        ops += plan(event, RULES)
    return ops


def sent(redis: Any) -> list[int]:
    return sorted(
        e["values"]["qty"] for c in ("north", "south") for e in entries(redis, f"inventory:{c}")
    )


def outbox_entries(redis: Any, ops: list[Any]) -> dict[str, list[Any]]:
    names = {ns().outbox_key(op.key) for op in ops if not isinstance(op, Notify)}
    return {name: redis.xrange(name) for name in names if redis.xlen(name)}


def test_a_crash_between_outbox_and_relay_is_finished_by_the_sweep(
    redis_cluster_client: Any,
) -> None:
    redis = redis_cluster_client
    ops = many_rows(1, 60)
    crashed = RedisApplier(redis)
    crashed.relay_outboxes = False  # the worker dies right after the apply script's calls
    assert set(crashed.apply(ops).outcomes) == {A}
    assert sent(redis) == []
    assert len(outbox_entries(redis, ops)) > 10  # held in the rows' own slots

    restarted = RedisApplier(redis)
    assert restarted.sweep_outboxes() == 60
    assert sent(redis) == list(range(1, 61))
    assert outbox_entries(redis, ops) == {}  # trimmed once relayed
    assert redis.smembers(ns().channels) == {b"inventory:north", b"inventory:south"}
    assert restarted.sweep_outboxes() == 0
    assert set(restarted.apply(ops).outcomes) == {D}  # the batch replayed: nobody again
    assert sent(redis) == list(range(1, 61))


def test_the_sweeper_beside_the_flow_relays_what_a_crash_left_without_any_batch(
    redis_cluster_client: Any,
) -> None:
    redis = redis_cluster_client
    crashed = RedisApplier(redis)
    crashed.relay_outboxes = False
    crashed.apply(many_rows(1, 20))
    sweeper = outbox_sweeper(redis, pause_s=0.1)
    sweeper.start()
    try:
        wait_until("the sweep", lambda: sent(redis) == list(range(1, 21)), timeout=30)
    finally:
        sweeper.close()


@pytest.mark.parametrize("check_progress", [True, False], ids=["progress", "no_progress_check"])
def test_entries_relayed_again_after_a_relay_crash_are_not_sent_twice(
    redis_cluster_client: Any, check_progress: bool
) -> None:
    """A relay that appended to the streams but died before trimming the outbox."""
    redis = redis_cluster_client
    ops = many_rows(1, 40)
    crashed = RedisApplier(redis)
    crashed.relay_outboxes = False
    crashed.apply(ops)
    left = outbox_entries(redis, ops)
    relay = OutboxRelay(redis, check_progress=check_progress)
    assert relay.relay(left) == 40
    for name, items in left.items():  # the outboxes as they were before the trim
        redis.delete(name)
        for entry_id, fields in items:
            redis.xadd(name, fields, id=entry_id)
    again = relay.relay(left) + OutboxRelay(redis, check_progress=check_progress).sweep()
    if check_progress:
        assert again == 0
        assert sent(redis) == list(range(1, 41))
    else:  # without the check the same entries reach the streams twice
        assert again == 40
        assert sent(redis) == sorted(2 * list(range(1, 41)))


def test_wrong_typed_stream_on_a_cluster_holds_its_notifications_until_repaired(
    redis_cluster_client: Any,
) -> None:
    redis = redis_cluster_client
    redis.set(ns().stream_key("inventory:north"), b"x")
    ops = many_rows(1, 10)
    applier = RedisApplier(redis)
    assert set(applier.apply(ops).outcomes) == {A}  # the cache is written all the same
    assert sorted(e["values"]["qty"] for e in entries(redis, "inventory:south")) == [1, 3, 5, 7, 9]
    assert sum(len(v) for v in outbox_entries(redis, ops).values()) == 5  # held, not lost
    redis.delete(ns().stream_key("inventory:north"))
    assert applier.sweep_outboxes() == 5
    assert sent(redis) == list(range(1, 11))


def deleted(n: int, sku: int, warehouse: str) -> Planned:
    """The delete of row ``sku`` at position ``n``, as the writer gets it."""
    row = {"id": sku, "sku_id": sku, "warehouse": warehouse, "qty": 0}
    event = ChangeEvent(
        "inventory.stock", Op.DELETE, row, None, {"id": sku}, SourcePosition(0, 1, n, 0), n
    )
    return Planned(SourceRecord("t", 0, n, None, None), event, tuple(plan(event, RULES)))


def test_a_delete_and_its_notification_land_while_redis_is_out_of_memory(any_redis: Any) -> None:
    """On one server and on a Cluster alike: the batch returns while Redis is full, its
    deletes and tombstones in place, ``ttl`` mode held, each notification in its channel
    once (a channel seen for the first time too), with no retry waiting for memory."""
    redis = any_redis
    RedisApplier(redis).apply(plan(change(10, 1), RULES))  # stock:7:north cached, notified
    assert redis.exists("stock:7:north") == 1
    holds = Holds()
    retried: list[set[Cause]] = []  # the causes held at each retry

    def memory_freed(delay: float) -> None:  # the writer's sleep between two tries
        retried.append({hold.cause for hold in holds.active()})
        for node in primaries(redis):
            node.config_set("maxmemory", "0")

    applier = RedisApplier(redis, memory=OomGuard(holds, settle_s=60))
    writer = CacheWriter(applier, Backoff(initial=0.01, maximum=0.01), sleep=memory_freed)
    with out_of_memory(redis):
        assert not any(accepts_writes(node) for node in primaries(redis))
        writer.write([deleted(20, 7, "north"), deleted(21, 8, "south")])
        assert retried == []  # landed while full, not once memory was freed
        assert redis.exists("stock:7:north") == 0
        assert {hold.cause for hold in holds.active()} == {Cause.REDIS_OOM}
        assert [e["op"] for e in entries(redis, "inventory:north")] == ["u", "d"]
        assert [e["op"] for e in entries(redis, "inventory:south")] == ["d"]
        assert redis.smembers(ns().channels) == {b"inventory:north", b"inventory:south"}
        assert applier.sweep_outboxes() == 0  # no outbox left to grow, nothing sent twice
    assert [e["op"] for e in entries(redis, "inventory:north")] == ["u", "d"]
    assert [e["op"] for e in entries(redis, "inventory:south")] == ["d"]
    assert applier.apply(plan(change(15, 9), RULES)).outcomes[0] == S  # the tombstone holds
