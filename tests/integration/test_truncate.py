"""A TRUNCATE that late events cannot undo, on real Redis (one server and a Cluster).

The TRUNCATE's position is recorded in every version bucket (each key's slot has its own
copy), and the apply script judges any change of the table at or below it stale, whether
its key was cached when the TRUNCATE ran or not. The table's channels hear one ``truncate``
message, however often the TRUNCATE is delivered.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_cache.core.keys import ns
from cdc_cache.core.positions import SourcePosition
from cdc_cache.core.retry import Backoff, retry_forever
from cdc_cache.mode.controller import Cause
from cdc_cache.mode.holds import Holds
from cdc_cache.plan.cache_ops import (
    CacheOp,
    DeleteKey,
    InvalidatePrefix,
    KeyOp,
    Notify,
    SetRow,
    Truncated,
    ValueFormat,
)
from cdc_cache.plan.notifications import channel_pattern
from cdc_cache.plan.rules import KeyTemplate
from cdc_cache.sink.apply import Outcome, RedisApplier
from cdc_cache.sink.connection import primaries
from cdc_cache.sink.memory import OomGuard
from tests.integration.memory_pressure import out_of_memory

pytestmark = pytest.mark.integration

TABLE = "db.items"
KEYS = ["item:1", "item:2", "item:{x}3", "item:4"]
TTL, TOMBSTONE = 60_000, 3_600_000
CHANNEL = KeyTemplate.parse("items:{warehouse}")


def pos(n: int) -> SourcePosition:
    return SourcePosition(0, 7, n, 0)


def set_row(key: str, n: int, table: str = TABLE) -> SetRow:
    return SetRow(key, pos(n), f'{{"v":{n}}}'.encode(), ValueFormat.JSON, TTL, TOMBSTONE, table)


def delete(key: str, n: int, table: str = TABLE) -> DeleteKey:
    return DeleteKey(key, pos(n), TOMBSTONE, table)


def truncate(n: int, announce: bool = False) -> InvalidatePrefix:
    payload = orjson.dumps({"table": TABLE, "op": "truncate", "position": pos(n).encode()})
    notice = Truncated(channel_pattern(CHANNEL), payload, 100) if announce else Truncated()
    return InvalidatePrefix("item:", TABLE, pos(n), TOMBSTONE, notice)


def apply(redis: Any, *ops: CacheOp) -> list[Outcome]:
    return list(RedisApplier(redis).apply(ops).outcomes)


def test_a_late_older_change_of_a_key_never_cached_is_stale_after_a_truncate(any_redis):
    started = time.monotonic()
    apply(any_redis, truncate(50))
    print(f"TRUNCATE recorded in every bucket in {time.monotonic() - started:.2f}s")
    assert apply(any_redis, set_row("item:1", 40), delete("item:2", 49)) == [
        Outcome.STALE,
        Outcome.STALE,
    ]
    assert any_redis.exists("item:1") == 0
    assert apply(any_redis, set_row("item:1", 51)) == [Outcome.APPLIED]
    assert any_redis.get("item:1") == b'{"v":51}'
    # other tables, and ops that name no table, are not gated by this one's TRUNCATE
    assert apply(any_redis, set_row("item:4", 10, "db.other")) == [Outcome.APPLIED]


def test_a_truncate_replayed_or_older_lowers_nothing(any_redis):
    apply(any_redis, truncate(50), truncate(30), truncate(50))
    assert apply(any_redis, set_row("item:{x}3", 45)) == [Outcome.STALE]


def test_a_truncate_is_recorded_while_redis_refuses_writes_for_memory(any_redis):
    """A TRUNCATE invalidates, like a delete: Redis out of memory must not hold it back."""
    apply(any_redis, set_row("item:1", 10))
    with out_of_memory(any_redis):
        apply(any_redis, truncate(50))
    assert any_redis.exists("item:1") == 0
    assert apply(any_redis, set_row("item:1", 40)) == [Outcome.STALE]


def test_a_truncate_while_redis_is_out_of_memory_holds_ttl_mode_as_a_batch_would(any_redis):
    """As for a batch of changes: ``ttl`` mode held with cause ``redis_oom`` (its own
    scripts, flagged allow-oom, run while Redis is full and would not say so), the TRUNCATE
    recorded and announced while Redis is full (on a Cluster, the announcement relayed from
    its outbox), with no retry waiting for memory, and the hold cleared once Redis takes
    writes again (the TRUNCATE delivered again asks every primary, and announces nothing)."""
    # the channel known, no key under the prefix: deleting keys would meet the refusal
    apply(any_redis, set_row("other:1", 3, "db.other"), Notify("items:north", b"{}", 100))
    holds = Holds()
    applier = RedisApplier(any_redis, memory=OomGuard(holds, settle_s=0))
    retried: list[set[Cause]] = []  # the causes held at each retry

    def memory_freed(delay: float) -> None:  # the writer's sleep between two tries
        retried.append({hold.cause for hold in holds.active()})
        for node in primaries(any_redis):
            node.config_set("maxmemory", "0")

    with out_of_memory(any_redis):
        retry_forever(
            lambda: applier.apply([truncate(50, announce=True)]),
            backoff=Backoff(),
            sleep=memory_freed,
        )
        assert retried == []  # landed whole while full, on one server and on a Cluster
        assert {hold.cause for hold in holds.active()} == {Cause.REDIS_OOM}
        entries = any_redis.xrange(ns().stream_key("items:north"))
        assert [orjson.loads(f[b"p"]).get("op") for _, f in entries].count("truncate") == 1
    applier.apply([truncate(50, announce=True)])  # delivered again: every primary takes it
    assert applier.apply([set_row("item:1", 40), set_row("item:2", 60)]).outcomes == (
        Outcome.STALE,
        Outcome.APPLIED,
    )
    assert holds.active() == ()
    assert applier.sweep_outboxes() == 0
    entries = any_redis.xrange(ns().stream_key("items:north"))
    assert [orjson.loads(f[b"p"]).get("op") for _, f in entries].count("truncate") == 1


def test_without_the_table_named_a_late_older_change_comes_back(any_redis):
    """What the gate prevents: the same late change, not named for its table."""
    apply(any_redis, truncate(50))
    assert apply(any_redis, set_row("item:1", 40, table="")) == [Outcome.APPLIED]
    assert any_redis.exists("item:1") == 1


def test_the_tables_channels_hear_one_truncate_however_often_it_is_delivered(any_redis):
    redis_client = any_redis
    for warehouse, n in (("north", 1), ("south", 2)):
        payload = orjson.dumps({"v": n})
        apply(redis_client, set_row(f"item:{n}", n), Notify(f"items:{warehouse}", payload, 100))
    apply(redis_client, set_row("other:1", 3, "db.other"), Notify("others:all", b"{}", 100))
    for _ in range(3):  # delivered again, and replayed after a crash
        apply(redis_client, truncate(10, announce=True))
    for channel in ("items:north", "items:south"):
        entries = redis_client.xrange(ns().stream_key(channel))
        ops = [orjson.loads(fields[b"p"]).get("op") for _, fields in entries]
        assert ops.count("truncate") == 1, (channel, ops)
    others = redis_client.xrange(ns().stream_key("others:all"))
    assert all(b"truncate" not in fields[b"p"] for _, fields in others)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[KeyOp], int, list[list[CacheOp]]]:
    """Changes at distinct positions and one TRUNCATE among them, delivered in any order,
    some more than once, in batches."""
    numbers = draw(st.lists(st.integers(1, 1_000), min_size=1, max_size=12, unique=True))
    at = draw(st.integers(1, 1_000).filter(lambda n: n not in numbers))
    changes: list[KeyOp] = [
        draw(st.sampled_from([set_row(key, n), delete(key, n)]))
        for n in numbers
        for key in [draw(st.sampled_from(KEYS))]
    ]
    delivery: list[CacheOp] = [*changes, truncate(at)]
    delivery += draw(st.lists(st.sampled_from(delivery), max_size=6))
    delivery = draw(st.permutations(delivery))
    cuts = sorted(draw(st.lists(st.integers(0, len(delivery)), max_size=4)))
    bounds = [0, *cuts, len(delivery)]
    return changes, at, [delivery[a:b] for a, b in itertools.pairwise(bounds)]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(history=histories())
def test_any_delivery_leaves_only_rows_newer_than_the_truncate(redis_client, history) -> None:
    changes, at, batches = history
    redis_client.flushall()
    applier = RedisApplier(redis_client, max_ops_per_call=3)
    for batch in batches:
        applier.apply(batch)
    for key in KEYS:
        newer = [c for c in changes if c.key == key and c.position > pos(at)]
        newest = max(newer, key=lambda c: c.position, default=None)
        if isinstance(newest, SetRow):
            assert redis_client.get(key) == newest.value, key
        else:
            assert redis_client.exists(key) == 0, (key, redis_client.get(key))
