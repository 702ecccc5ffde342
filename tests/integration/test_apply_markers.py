"""The apply script's shared markers (T table, L TTLs) change nothing an op does.

A call says an op's table and TTLs only when they differ from the op's before it, and
every call restates them: a batch cut into calls anywhere must leave Redis exactly as
applying each op in a call of its own does.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.exceptions import ResponseError

from cdc_cache.core.keys import member_field, ns, truncate_field, version_field
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import (
    DeleteKey,
    IndexKind,
    IndexMember,
    KeyOp,
    Notify,
    SetRow,
    ValueFormat,
)
from cdc_cache.sink import encoding
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.connection import primaries
from cdc_cache.sink.encoding import Outcome
from cdc_cache.sink.scripts import apply_script
from cdc_cache.sink.version_store import horizon_minute
from cdc_cache.sink.versions import encode_version, parse_stored, stored

pytestmark = pytest.mark.integration

KEYS = ("row:{1}", "row:{2}", "row:3", "row:4")
INDEXES = ("ix:{1}", "ix:5")  # a sorted set, a set
TABLES = ("", "a", "b")
TRUNCATED_AT = 8  # table "a" was truncated at this position: its older changes are stale
TTL_MS = st.sampled_from([60_000, 120_000, 3_600_000])
TOMBSTONE_MS = st.sampled_from([600_000, 3_600_000])
TTL_SLACK_MS = 3_000  # the two runs apply a few milliseconds apart


def pos(n: int) -> SourcePosition:
    return SourcePosition(0, 3, n, 0)


@st.composite
def key_ops(draw: st.DrawFn) -> KeyOp:
    position, table = pos(draw(st.integers(1, 16))), draw(st.sampled_from(TABLES))
    kind = draw(st.sampled_from(["json", "hash", "delete", "index"]))
    if kind == "delete":
        return DeleteKey(draw(st.sampled_from(KEYS)), position, draw(TOMBSTONE_MS), table)
    if kind == "index":
        index = draw(st.sampled_from(INDEXES))
        zset = index == INDEXES[0]  # an index key keeps its type
        return IndexMember(
            index,
            draw(st.sampled_from(["m1", "m2"])),
            str(draw(st.integers(0, 9))) if zset else None,
            draw(st.booleans()),
            position,
            draw(TTL_MS),
            draw(TOMBSTONE_MS),
            IndexKind.ZSET if zset else IndexKind.SET,
            table,
            rebuild=draw(st.booleans()),
        )
    value: bytes | tuple[tuple[str, str], ...] = (
        b'{"at":%d}' % position.minor
        if kind == "json"
        else (("at", str(position.minor)), ("n", str(draw(st.integers(0, 3)))))
    )
    return SetRow(
        draw(st.sampled_from(KEYS)),
        position,
        value,
        ValueFormat.JSON if kind == "json" else ValueFormat.HASH,
        draw(TTL_MS),
        draw(TOMBSTONE_MS),
        table,
        only_if_cached=draw(st.booleans()),
    )


@st.composite
def batches(draw: st.DrawFn) -> list[KeyOp | Notify]:
    """Key ops, some followed by the notification of their change."""
    ops: list[KeyOp | Notify] = []
    for op in draw(st.lists(key_ops(), min_size=1, max_size=14)):
        ops.append(op)
        if draw(st.integers(0, 3)) == 0:
            ops.append(Notify("changes", b"%d" % len(ops), 100))
    return ops


def seed(redis: Any, cached: list[str]) -> None:
    """What both runs start from: table a's TRUNCATE in every bucket, values of no version."""
    for key in (*KEYS, *INDEXES):
        bucket, _, _ = ns().gate_keys(key)
        truncated = stored(encode_version(pos(TRUNCATED_AT), delete=True), 99_999_999)
        redis.hset(bucket, truncate_field("a"), truncated)
    for key in cached:  # filled by an application: no version yet
        redis.set(key, b"filled", px=600_000)
        redis.set(ns().lease_key(key), b"token")


def state(redis: Any) -> dict[bytes, Any]:
    """Every key, its contents and TTL, with what differs between two equal runs taken out."""
    found: dict[bytes, Any] = {}
    for node in primaries(redis):
        for key in node.scan_iter(count=1000):
            if key == ns().relay_progress_key("changes").encode():
                continue  # entry ids of the outboxes: differ from run to run
            kind = node.type(key).decode()
            ttl = node.pttl(key)
            if kind == "string":
                contents: Any = node.get(key)
            elif kind == "hash":
                contents = {f: _versioned(v) for f, v in node.hgetall(key).items()}
            elif kind == "zset":
                contents = node.zrange(key, 0, -1, withscores=True)
            elif kind == "set":
                contents = sorted(node.smembers(key))
            else:  # a stream: its entries, not their ids
                contents = sorted(tuple(sorted(e.items())) for _, e in node.xrange(key))
            found[key] = (kind, contents, ttl)
    return found


def _versioned(value: bytes) -> Any:
    """A bucket field as (horizon, version); a horizon may be a minute apart between runs."""
    try:
        return parse_stored(value)
    except ValueError:
        return value


def same_state(batched: dict[bytes, Any], alone: dict[bytes, Any]) -> None:
    assert batched.keys() == alone.keys()
    for key, (kind, contents, ttl) in batched.items():
        other_kind, other_contents, other_ttl = alone[key]
        assert (kind, ttl < 0) == (other_kind, other_ttl < 0), key
        assert abs(ttl - other_ttl) <= TTL_SLACK_MS, key
        if kind == "hash":
            assert contents.keys() == other_contents.keys(), key
            for field, got in contents.items():
                want = other_contents[field]
                if isinstance(got, tuple) and isinstance(want, tuple):
                    assert got[1] == want[1] and abs(got[0] - want[0]) <= 1, (key, field)
                else:
                    assert got == want, (key, field)
        else:
            assert contents == other_contents, key


def each_alone(redis: Any, ops: list[KeyOp | Notify]) -> list[Outcome]:
    """Every key op in a call of its own, with the notifications it hosts."""
    outcomes: list[Outcome] = []
    start = 0
    for end in range(1, len(ops) + 1):
        if end == len(ops) or not isinstance(ops[end], Notify):
            outcomes += RedisApplier(redis).apply(ops[start:end]).outcomes
            start = end
    return outcomes


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=batches(),
    cached=st.lists(st.sampled_from(KEYS[:2]), unique=True),
    max_ops=st.integers(1, 5),
    max_args=st.integers(8, 40),
)
def test_a_batch_cut_into_calls_anywhere_does_what_each_op_alone_does(
    any_redis: Any, ops: list[KeyOp | Notify], cached: list[str], max_ops: int, max_args: int
) -> None:
    any_redis.flushall()
    seed(any_redis, cached)
    applier = RedisApplier(any_redis, max_ops_per_call=max_ops, max_args_per_call=max_args)
    batched = applier.apply(ops).outcomes
    after_batch = state(any_redis)
    any_redis.flushall()
    seed(any_redis, cached)
    assert batched == tuple(each_alone(any_redis, ops))
    same_state(after_batch, state(any_redis))


def test_a_call_that_does_not_restate_the_ttls_after_a_cut_is_refused(any_redis: Any) -> None:
    """Markers hold only within their call: a key op without its L marker must not apply."""
    ops = [
        SetRow("row:{1}", pos(1), b"{}", ValueFormat.JSON, 60_000, 600_000, "a"),
        SetRow("row:{1}", pos(2), b"{}", ValueFormat.JSON, 60_000, 600_000, "a"),
    ]
    _, second = encoding.calls(ops, [0, 1], max_ops=1)
    assert second.args[:5] == ("T", "a", "L", 60_000, 600_000)  # restated
    assert RedisApplier(any_redis).apply(ops[:1]).outcomes == (Outcome.APPLIED,)  # loads it
    _, sha = apply_script()
    unmarked = ("T", "a", *second.args[5:])  # the table restated, the TTLs left out
    with pytest.raises(ResponseError, match="no L marker"):
        any_redis.evalsha(sha, len(second.keys), *second.keys, *unmarked)
    assert any_redis.get("row:{1}") == b"{}"


def test_each_op_keeps_its_version_for_the_lifetime_its_kind_and_its_marker_give(
    redis_client: Any,
) -> None:
    """A write keeps its version for the longer TTL, a removal for the tombstone TTL."""
    index, ttl, tombstone = "ix:{1}", 600_000, 3_600_000
    ops = [
        IndexMember(index, "m1", "1", True, pos(1), ttl, tombstone),
        IndexMember(index, "m2", "1", True, pos(1), ttl, tombstone),
        IndexMember(index, "m2", None, False, pos(2), ttl, tombstone * 2),
        SetRow("row:{1}", pos(1), b"{}", ValueFormat.JSON, tombstone * 3, tombstone),
        DeleteKey("row:3", pos(1), tombstone * 4),
    ]
    (call,) = encoding.calls(ops, range(len(ops)))
    assert call.args.count("L") == 4  # m2's removal, the set and the delete each change it
    now_s = redis_client.time()[0]
    RedisApplier(redis_client).apply(ops)
    expected = {
        (index, member_field(index, "m1")): max(ttl, tombstone),
        (index, member_field(index, "m2")): tombstone * 2,
        ("row:{1}", version_field("row:{1}")): tombstone * 3,
        ("row:3", version_field("row:3")): tombstone * 4,
    }
    for (key, field), lifetime in expected.items():
        horizon, _ = parse_stored(redis_client.hget(ns().version_key(key), field))
        assert horizon in (horizon_minute(now_s, lifetime), horizon_minute(now_s + 1, lifetime))
    assert 0 < redis_client.pttl(index) <= ttl
    assert 0 < redis_client.pttl("row:{1}") <= tombstone * 3
