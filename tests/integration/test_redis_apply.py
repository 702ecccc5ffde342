from __future__ import annotations

import itertools
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis, RedisCluster
from redis.connection import AbstractConnection

from cdc_cache.core.errors import ApplyError, ConfigError, TransientError
from cdc_cache.core.keys import key_slot, ns, version_field
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import (
    CacheOp,
    DeleteKey,
    InvalidatePrefix,
    KeyOp,
    SetRow,
    ValueFormat,
)
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.connection import connect, primaries
from cdc_cache.sink.encoding import Outcome, version_of
from cdc_cache.sink.scripts import accepts_writes
from cdc_cache.sink.version_store import horizon_minute, stored_version
from cdc_cache.sink.versions import encode_version, parse_stored
from cdc_cache.tools.devstack.redis import RedisServer
from tests.integration.memory_pressure import out_of_memory

pytestmark = pytest.mark.integration

A, S, D, INV = Outcome.APPLIED, Outcome.STALE, Outcome.DUPLICATE, Outcome.INVALIDATED
TTL = 60_000
TOMBSTONE = 3_600_000


def pos(n: int) -> SourcePosition:
    return SourcePosition(0, 7, n, 0)


def value(n: int) -> bytes:
    return f'{{"v":{n}}}'.encode()


def set_json(key: str, n: int, ttl: int = TTL, tombstone: int = TOMBSTONE) -> SetRow:
    return SetRow(key, pos(n), value(n), ValueFormat.JSON, ttl, tombstone)


def set_hash(key: str, n: int, fields: dict[str, str]) -> SetRow:
    return SetRow(key, pos(n), tuple(fields.items()), ValueFormat.HASH, TTL, TOMBSTONE)


def delete(key: str, n: int, tombstone: int = TOMBSTONE) -> DeleteKey:
    return DeleteKey(key, pos(n), tombstone)


def outcomes(redis: Any, *ops: CacheOp, **kw: int) -> list[Outcome]:
    return list(RedisApplier(redis, **kw).apply(ops).outcomes)


def version(redis: Any, key: str) -> str | None:
    return stored_version(redis, key)


def sv(n: int) -> str:
    """The version a set at pos(n) leaves."""
    return encode_version(pos(n), delete=False)


def dv(n: int) -> str:
    """The version a delete at pos(n) leaves."""
    return encode_version(pos(n), delete=True)


def assert_pttl(redis: Any, key: str, expected_ms: int) -> None:
    assert expected_ms - 5_000 < redis.pttl(key) <= expected_ms


def assert_horizon(redis: Any, key: str, lifetime_ms: int) -> None:
    """The version of ``key`` may be forgotten after its lifetime (rounded up to minutes,
    plus one), and its bucket has no TTL: no eviction policy that spares such keys takes it."""
    raw = redis.hget(ns().version_key(key), version_field(key))
    horizon, _ = parse_stored(raw)
    now_s = redis.time()[0] if not isinstance(redis, RedisCluster) else time.time()
    assert horizon == horizon_minute(now_s, lifetime_ms) or horizon == horizon_minute(
        now_s - 1, lifetime_ms
    )
    assert redis.pttl(ns().version_key(key)) == -1


def all_keys(redis: Any) -> set[str]:
    return {k.decode() for node in primaries(redis) for k in node.scan_iter(count=1000)}


def test_newer_set_wins(any_redis: Any) -> None:
    assert outcomes(any_redis, set_json("user:1", 1)) == [A]
    assert outcomes(any_redis, set_json("user:1", 2)) == [A]
    assert any_redis.get("user:1") == value(2)
    assert version(any_redis, "user:1") == sv(2)


def test_older_set_after_newer_is_stale(any_redis: Any) -> None:
    outcomes(any_redis, set_json("user:1", 5))
    assert outcomes(any_redis, set_json("user:1", 4)) == [S]
    assert any_redis.get("user:1") == value(5)
    assert version(any_redis, "user:1") == sv(5)


def test_same_position_is_duplicate(any_redis: Any) -> None:
    outcomes(any_redis, set_json("user:1", 5))
    replay = SetRow("user:1", pos(5), b"other", ValueFormat.JSON, TTL, TOMBSTONE)
    # the delete at the set's position ranks below it (see version_of): skipped as stale
    assert outcomes(any_redis, replay, delete("user:1", 5)) == [D, S]
    assert any_redis.get("user:1") == value(5)


def test_delete_leaves_tombstone_against_late_older_set(any_redis: Any) -> None:
    outcomes(any_redis, set_json("user:1", 1))
    assert outcomes(any_redis, delete("user:1", 3)) == [A]
    assert any_redis.exists("user:1") == 0
    assert version(any_redis, "user:1") == dv(3)

    assert outcomes(any_redis, set_json("user:1", 2)) == [S]
    assert any_redis.exists("user:1") == 0
    assert outcomes(any_redis, set_json("user:1", 4)) == [A]
    assert any_redis.get("user:1") == value(4)


def test_delete_of_unknown_key_still_leaves_tombstone(any_redis: Any) -> None:
    assert outcomes(any_redis, delete("never:seen", 9)) == [A]
    assert outcomes(any_redis, set_json("never:seen", 8)) == [S]
    assert any_redis.exists("never:seen") == 0


def test_applied_ops_void_the_lease_and_skipped_ops_keep_it(any_redis: Any) -> None:
    keys = ["set", "del", "stale", "dup"]
    outcomes(any_redis, set_json("stale", 5), set_json("dup", 5))
    for key in keys:
        any_redis.set(ns().lease_key(key), b"token")
    batch = [set_json("set", 1), delete("del", 1), set_json("stale", 4), set_json("dup", 5)]
    assert outcomes(any_redis, *batch) == [A, A, S, D]
    assert [any_redis.exists(ns().lease_key(k)) for k in keys] == [0, 0, 1, 1]


def test_ttls_and_version_horizons(any_redis: Any) -> None:
    outcomes(
        any_redis,
        set_json("short", 1, ttl=50_000, tombstone=100_000),
        set_json("long", 1, ttl=200_000, tombstone=100_000),
        delete("gone", 1, tombstone=30_000),
    )
    assert_pttl(any_redis, "short", 50_000)
    assert_horizon(any_redis, "short", 100_000)
    assert_pttl(any_redis, "long", 200_000)
    assert_horizon(any_redis, "long", 200_000)
    assert_horizon(any_redis, "gone", 30_000)


def test_hash_format_replaces_the_whole_hash(any_redis: Any) -> None:
    key = "stock:{sku1}:w1"
    outcomes(any_redis, set_hash(key, 1, {"qty": "5", "warehouse": "w1", "old": "x"}))
    assert outcomes(any_redis, set_hash(key, 2, {"qty": "4", "warehouse": "w1"})) == [A]
    assert any_redis.hgetall(key) == {b"qty": b"4", b"warehouse": b"w1"}
    assert_pttl(any_redis, key, TTL)
    assert_horizon(any_redis, key, TOMBSTONE)


def test_hash_with_many_fields(any_redis: Any) -> None:
    fields = {f"f{i}": str(i) for i in range(1_000)}
    assert outcomes(any_redis, set_hash("wide", 1, fields)) == [A]
    assert any_redis.hlen("wide") == 1_000


def test_ops_for_one_key_in_a_batch_apply_in_order(any_redis: Any) -> None:
    batch = [
        set_json("k", 1),
        set_json("k", 3),
        set_json("k", 2),
        delete("k", 4),
        set_json("k", 4),
        set_json("k", 6),
        delete("k", 5),
        set_json("k", 6),
    ]
    # set@4 after delete@4 applies: at one position a set ranks above a delete
    expected = [A, A, S, A, A, A, S, D]
    assert outcomes(any_redis, *batch) == expected
    assert any_redis.get("k") == value(6)
    # The same order holds when the batch is split into many script calls.
    any_redis.flushall()
    assert outcomes(any_redis, *batch, max_ops_per_call=3) == expected
    assert any_redis.get("k") == value(6)


def test_chunking_keeps_results_in_input_order(any_redis: Any) -> None:
    batch = [set_json(f"c:{i % 37}", i) for i in range(200)]
    whole = outcomes(any_redis, *batch)
    any_redis.flushall()
    assert outcomes(any_redis, *batch, max_ops_per_call=5, max_args_per_call=12) == whole
    assert whole == [A] * 200


class RoundTrips:
    """Counts client writes per server port: one pipelined write is one round trip."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.by_port: Counter[int] = Counter()
        original = AbstractConnection.send_packed_command

        def counting(conn: Any, command: Any, check_health: bool = True) -> None:
            self.by_port[conn.port] += 1
            original(conn, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)


def evalsha_calls(node: Redis) -> int:
    stats = node.info("commandstats").get("cmdstat_evalsha", {"calls": 0})
    return int(stats["calls"])


def test_thousand_op_batch_is_one_round_trip_per_node(
    any_redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    applier = RedisApplier(any_redis)
    keys = [f"item:{i}" for i in range(1_000)]
    applier.apply([set_json(k, 1) for k in keys])  # connections and script warm
    nodes = primaries(any_redis)
    for node in nodes:
        node.config_resetstat()

    trips = RoundTrips(monkeypatch)
    result = applier.apply([set_json(k, 2) for k in keys])
    counted = dict(trips.by_port)
    monkeypatch.undo()

    assert result.count(A) == 1_000
    ports = {node.connection_pool.connection_kwargs["port"] for node in nodes}
    assert counted == dict.fromkeys(ports, 1)
    evalshas = sum(evalsha_calls(node) for node in nodes)
    slots = len({key_slot(k) for k in keys}) if isinstance(any_redis, RedisCluster) else 1
    assert evalshas == slots


def test_stale_cluster_route_is_followed(
    redis_cluster_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = {node.name: node for node in redis_cluster_client.get_primaries()}

    def misroute(key: str) -> Any:
        right = redis_cluster_client.nodes_manager.get_node_from_slot(key_slot(key))
        return next(node for name, node in wrong.items() if name != right.name)

    monkeypatch.setattr(redis_cluster_client, "get_node_from_key", misroute)
    batch = [set_json(f"moved:{i}", 1) for i in range(20)]
    assert outcomes(redis_cluster_client, *batch) == [A] * 20
    monkeypatch.undo()
    assert redis_cluster_client.get("moved:7") == value(1)


def test_script_missing_from_server_is_loaded_and_retried(any_redis: Any) -> None:
    applier = RedisApplier(any_redis)
    applier.apply([set_json("a", 1)])
    any_redis.script_flush()
    assert list(applier.apply([set_json("a", 2), set_json("b", 1)]).outcomes) == [A, A]


def test_invalidate_prefix_deletes_exactly_the_keys_under_it(any_redis: Any) -> None:
    doomed = [f"t:{i}" for i in range(40)] + ["t:{tag}:x", "t:"]
    outcomes(any_redis, *(set_json(k, 10) for k in doomed))
    any_redis.set("t:unversioned", b"filled by the application")
    outcomes(any_redis, set_json("t:newer", 90), set_json("tx:1", 10), set_json("u:t:1", 10))
    any_redis.set("q?:1", b"literal")
    any_redis.set("qa:1", b"not under q?:")

    truncate = InvalidatePrefix("t:", "db.t", pos(50), TOMBSTONE)
    result = RedisApplier(any_redis, scan_count=7).apply([truncate])

    assert result.invalidated == (len(doomed) + 1,)
    assert result.outcomes == ()
    remaining = all_keys(any_redis)
    assert not {*doomed, "t:unversioned"} & remaining
    assert {"t:newer", "tx:1", "u:t:1", "q?:1", "qa:1"} <= remaining
    assert version(any_redis, "t:3") == dv(50)
    assert version(any_redis, "t:newer") == sv(90)
    assert version(any_redis, "tx:1") == sv(10)

    escaped = RedisApplier(any_redis).apply([InvalidatePrefix("q?:", "db.q", pos(60), TOMBSTONE)])
    assert escaped.invalidated == (1,)
    assert any_redis.exists("q?:1") == 0
    assert any_redis.get("qa:1") == b"not under q?:"


def test_invalidate_prefix_keeps_batch_order(any_redis: Any) -> None:
    batch: list[CacheOp] = [
        set_json("t:before", 40),
        InvalidatePrefix("t:", "db.t", pos(50), TOMBSTONE),
        set_json("t:after", 60),
        set_json("t:old", 45),
    ]
    result = RedisApplier(any_redis).apply(batch)
    assert result.outcomes == (A, A, A)
    assert result.invalidated == (1,)
    assert any_redis.exists("t:before") == 0
    assert any_redis.get("t:after") == value(60)
    # t:old had no version when the truncate ran, so it is written after it.
    assert any_redis.get("t:old") == value(45)


def test_invalidate_prefix_refuses_empty_prefix(any_redis: Any) -> None:
    with pytest.raises(ApplyError, match="non-empty"):
        RedisApplier(any_redis).apply([InvalidatePrefix("", "db.t", pos(1), TOMBSTONE)])


def test_wrong_type_is_not_transient_and_changes_nothing(redis_client: Any) -> None:
    redis_client.rpush(ns().version_key("{w}:k"), b"not a position")
    with pytest.raises(ApplyError, match="WRONGTYPE") as caught:
        outcomes(redis_client, set_json("{w}:a", 1), set_json("{w}:k", 1))
    assert not isinstance(caught.value, TransientError)
    assert redis_client.exists("{w}:a", "{w}:k") == 0


def test_invalid_ttl_is_rejected(any_redis: Any) -> None:
    with pytest.raises(ApplyError, match="ttl_ms=0"):
        outcomes(any_redis, set_json("k", 1, ttl=0))


def test_connect_chooses_client_from_url(redis_server: RedisServer, redis_cluster: Any) -> None:
    single = connect(redis_server.address())
    cluster = connect(redis_cluster.address())
    try:
        assert type(single) is Redis
        assert isinstance(cluster, RedisCluster)
        assert single.ping() and cluster.ping()
    finally:
        single.close()
        cluster.close()
    with pytest.raises(ConfigError, match="cluster= must be true or false"):
        connect(redis_server.address() + "?cluster=maybe")


def test_stopped_redis_raises_transient_error(redis_server: RedisServer, redis_client: Any) -> None:
    applier = RedisApplier(redis_client)
    applier.apply([set_json("k", 1)])
    redis_server.stop()
    try:
        with pytest.raises(TransientError) as caught:
            applier.apply([set_json("k", 2)])
        assert caught.value.__cause__ is not None
    finally:
        redis_server.start()
    assert list(applier.apply([set_json("k", 3)]).outcomes) == [A]


def test_unreachable_cluster_raises_transient_error() -> None:
    with pytest.raises(TransientError):
        connect("redis://127.0.0.1:1/0?cluster=true")


KEYS = ["p:1", "p:{a}:2", "{a}:3", "p:4"]


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[KeyOp], list[list[KeyOp]]]:
    """Changes with distinct positions, then a delivery: permuted, duplicated, batched."""
    count = draw(st.integers(1, 12))
    numbers = draw(st.lists(st.integers(1, 1_000), min_size=count, max_size=count, unique=True))
    changes: list[KeyOp] = []
    for n in numbers:
        key = draw(st.sampled_from(KEYS))
        changes.append(draw(st.sampled_from([set_json(key, n), delete(key, n)])))
    delivery = draw(st.permutations(changes))
    delivery += draw(st.lists(st.sampled_from(changes), max_size=8))
    delivery = draw(st.permutations(delivery))
    cuts = sorted(draw(st.lists(st.integers(0, len(delivery)), max_size=4)))
    bounds = [0, *cuts, len(delivery)]
    batches = [delivery[a:b] for a, b in itertools.pairwise(bounds)]
    return changes, batches


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(history=histories())
def test_any_delivery_order_converges_to_newest_change(
    redis_client: Any, history: tuple[list[KeyOp], list[list[KeyOp]]]
) -> None:
    changes, batches = history
    redis_client.flushall()
    applier = RedisApplier(redis_client, max_ops_per_call=4)
    for batch in batches:
        applier.apply(batch)

    for key in KEYS:
        mine = [c for c in changes if c.key == key]
        if not mine:
            assert redis_client.exists(key) == 0
            assert version(redis_client, key) is None
            continue
        newest = max(mine, key=version_of)
        assert version(redis_client, key) == version_of(newest)
        if isinstance(newest, SetRow):
            assert redis_client.get(key) == newest.value
        else:
            assert redis_client.exists(key) == 0


def test_primary_key_change_pair_at_one_position_ends_with_the_new_row(any_redis: Any) -> None:
    # Debezium turns a primary-key update into delete(old row) + create(new row) at one
    # position; when both map to one cache key, the created row must be what stays.
    assert outcomes(any_redis, delete("stock:7", 5), set_json("stock:7", 5)) == [A, A]
    assert any_redis.get("stock:7") == value(5)
    # replayed, in either order, the pair changes nothing
    assert outcomes(any_redis, delete("stock:7", 5), set_json("stock:7", 5)) == [S, D]
    assert outcomes(any_redis, set_json("stock:7", 5), delete("stock:7", 5)) == [D, S]
    assert any_redis.get("stock:7") == value(5)


def test_a_set_on_a_value_without_a_version_invalidates_it(any_redis: Any) -> None:
    # filled by an application before any change: nothing says the change is newer
    any_redis.set("filled:1", b"by the application")
    assert outcomes(any_redis, set_json("filled:1", 3)) == [INV]
    assert any_redis.exists("filled:1") == 0
    assert version(any_redis, "filled:1") == sv(3)
    assert outcomes(any_redis, set_json("filled:1", 2)) == [S]
    assert outcomes(any_redis, set_json("filled:1", 4)) == [A]
    assert any_redis.get("filled:1") == value(4)


def test_a_lost_version_never_lets_an_older_image_overwrite_a_newer_one(any_redis: Any) -> None:
    outcomes(any_redis, set_json("k", 5))
    any_redis.hdel(ns().version_key("k"), version_field("k"))  # forgotten, or lost with its bucket
    assert outcomes(any_redis, set_json("k", 3)) == [INV]
    assert any_redis.exists("k") == 0  # a miss, not the older image
    assert version(any_redis, "k") == sv(3)


def test_invalidate_only_writes_no_value_and_keeps_versions(any_redis: Any) -> None:
    outcomes(any_redis, set_json("io:1", 1))
    any_redis.set(ns().lease_key("io:1"), b"a fill in progress")
    applier = RedisApplier(any_redis, invalidate_only=lambda: True)
    batch = [set_json("io:1", 2), set_json("io:{x}:2", 2), set_json("io:1", 1), delete("io:3", 2)]
    assert applier.apply(batch).outcomes == (INV, INV, S, A)
    assert any_redis.exists("io:1", "io:{x}:2", ns().lease_key("io:1")) == 0
    assert version(any_redis, "io:1") == dv(2)
    # the set itself, replayed once values may be written again, ranks above its delete
    assert outcomes(any_redis, set_json("io:1", 2)) == [A]


class Heard:
    """A MemoryObserver that keeps what it heard."""

    def __init__(self) -> None:
        self.refusals: list[str] = []
        self.acceptances: list[str] = []

    def refused(self, node: str, error: str) -> None:
        self.refusals.append(node)

    def accepted(self, node: str) -> None:
        self.acceptances.append(node)


def test_out_of_memory_still_lands_invalidations_and_their_tombstones(any_redis: Any) -> None:
    outcomes(any_redis, set_json("oom:{a}:old", 1), set_json("oom:{b}:gone", 1))
    heard = Heard()
    applier = RedisApplier(any_redis, memory=heard)
    batch = [set_json("oom:{a}:old", 5), delete("oom:{b}:gone", 5), set_json("oom:{c}:new", 5)]
    with out_of_memory(any_redis):
        nodes = primaries(any_redis)
        assert not any(accepts_writes(node) for node in nodes)  # the plain script is refused
        assert applier.apply(batch).outcomes == (INV, A, INV)
        assert any_redis.exists("oom:{a}:old", "oom:{b}:gone", "oom:{c}:new") == 0
        assert (version(any_redis, "oom:{a}:old"), version(any_redis, "oom:{b}:gone")) == (
            dv(5),
            dv(5),
        )
        assert heard.refusals and not heard.acceptances
    assert all(accepts_writes(node) for node in nodes)
    # the tombstones written while out of memory stop late older changes afterwards
    assert outcomes(any_redis, set_json("oom:{a}:old", 3), set_json("oom:{b}:gone", 4)) == [S, S]
    assert applier.apply([set_json("oom:{a}:old", 6)]).outcomes == (A,)
    assert heard.acceptances


def test_only_the_primary_out_of_memory_gets_invalidations(redis_cluster_client: Any) -> None:
    full, fine = primaries(redis_cluster_client)[:2]
    on_full = [
        k for k in (f"p:{i}" for i in range(500)) if _node_of(redis_cluster_client, k) is full
    ]
    on_fine = [
        k for k in (f"p:{i}" for i in range(500)) if _node_of(redis_cluster_client, k) is fine
    ]
    heard = Heard()
    batch = [set_json(on_full[0], 1), set_json(on_fine[0], 1)]
    with out_of_memory(redis_cluster_client, [full]):
        result = RedisApplier(redis_cluster_client, memory=heard).apply(batch)
    assert result.outcomes == (INV, A)
    assert redis_cluster_client.exists(on_full[0]) == 0
    assert redis_cluster_client.get(on_fine[0]) == value(1)
    assert len(heard.refusals) == 1 and len(heard.acceptances) == 1


def _node_of(cluster: Any, key: str) -> Redis:
    return cluster.get_redis_connection(cluster.get_node_from_key(key))


versions = st.tuples(
    st.builds(
        SourcePosition,
        st.integers(0, 10**5 - 1),
        st.integers(0, 10**20 - 1),
        st.integers(0, 10**20 - 1),
        st.integers(0, 10**10 - 1),
    ),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(first=versions, second=versions)
def test_lua_orders_versions_as_their_positions(
    redis_server: RedisServer,
    first: tuple[SourcePosition, bool],
    second: tuple[SourcePosition, bool],
) -> None:
    # Lua compares strings with strcoll() under the server's collation: the encoding must
    # sort there exactly as (position, rank) does
    a, b = (encode_version(p, delete=d) for p, d in (first, second))
    client = connect(redis_server.address())
    try:
        below = client.eval("#!lua flags=no-writes\nreturn ARGV[1] < ARGV[2] and 1 or 0", 0, a, b)
    finally:
        client.close()
    assert bool(below) == ((first[0], not first[1]) < (second[0], not second[1]))
