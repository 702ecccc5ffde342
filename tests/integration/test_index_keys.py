"""Index keys on real Redis (one server and a 3-node Cluster), driven through the apply script.

The model-based test commits random histories of products moving between categories
(and groups), deleted and inserted again, then delivers their changes reordered, with
duplicates, in random batches, and replays a part of them as after a crash: every member
ends in exactly the index its last committed row names, with that row's score. The same
delivery with one version per index instead of per member goes wrong (the knob below).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from cdc_cache.core.events import ChangeEvent, Op, SourceRecord
from cdc_cache.core.keys import index_field, key_slot, member_field, ns, version_field
from cdc_cache.core.retry import Backoff
from cdc_cache.plan.cache_ops import IndexMember
from cdc_cache.plan.planner import plan
from cdc_cache.plan.route import Planned
from cdc_cache.sink import encoding
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.encoding import Outcome
from cdc_cache.sink.versions import parse_stored
from cdc_cache.sink.writer import CacheWriter
from tests.unit.test_index_keys import QUIET, RULES, TABLE, at, change, committed, row

pytestmark = pytest.mark.integration

CATEGORIES = (1, 2, 3)


def by_price(category: int) -> str:
    return f"category:{category}:by_price"


def indexes(redis: Any) -> dict[str, list[tuple[str, float]]]:
    """Every category index as Redis holds it (absent: not listed)."""
    out = {}
    for category in CATEGORIES:
        found = redis.zrange(by_price(category), 0, -1, withscores=True)
        if found:
            out[by_price(category)] = sorted((m.decode(), s) for m, s in found)
    return out


def expected(rows: dict[int, dict[str, object]]) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for pid, r in rows.items():
        out.setdefault(by_price(int(r["category_id"])), []).append((str(pid), float(r["price"])))  # type: ignore[arg-type]
    return {key: sorted(members) for key, members in out.items()}


def deliver(redis: Any, events: list[ChangeEvent], order: list[int], cuts: list[int]) -> None:
    """Apply ``events`` in ``order`` (indices may repeat), cut into batches at ``cuts``."""
    applier = RedisApplier(redis)
    batch: list[Any] = []
    for step, index in enumerate(order):
        batch += plan(events[index], QUIET)
        if step in cuts:
            applier.apply(batch)
            batch = []
    applier.apply(batch)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[tuple[int, str, int, int]], list[int], list[int]]:
    history = draw(
        st.lists(
            st.tuples(
                st.integers(1, 4),
                st.sampled_from(["upsert", "upsert", "delete"]),
                st.sampled_from(CATEGORIES),
                st.integers(0, 50),
            ),
            min_size=1,
            max_size=20,
        )
    )
    events, _ = committed(history)
    indices = list(range(len(events)))
    order = draw(st.permutations(indices))
    duplicates = draw(st.lists(st.sampled_from(indices), max_size=5)) if indices else []
    for index in duplicates:  # redelivered somewhere later
        order.insert(draw(st.integers(order.index(index), len(order))), index)
    replay = draw(st.integers(0, len(order)))  # a crash: the last batches again
    order = order + order[replay:]
    cuts = draw(st.lists(st.integers(0, max(len(order) - 1, 0)), max_size=6))
    return history, order, cuts


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(deliveries())
def test_members_end_in_the_index_of_their_last_committed_row(
    any_redis: Any, case: tuple[list[tuple[int, str, int, int]], list[int], list[int]]
) -> None:
    history, order, cuts = case
    any_redis.flushall()
    events, rows = committed(history)
    deliver(any_redis, events, order, cuts)
    assert indexes(any_redis) == expected(rows)
    groups = {m.decode() for m in any_redis.smembers("group:9:members")}
    assert groups == {str(pid) for pid in rows}


def test_the_old_and_new_index_of_a_move_are_in_different_slots() -> None:
    # What the Cluster run exercises: a move's removal and addition are two script calls.
    assert len({key_slot(by_price(c)) for c in CATEGORIES}) == len(CATEGORIES)


def one_version_per_index(key: str, member: str) -> bytes:
    """The knob: gate an index key as one value (one version), not member by member."""
    return version_field(key)


def test_one_version_per_index_instead_of_per_member_goes_wrong(
    any_redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Product 1 moves from category 1 to 2 at 2; product 2 joins category 1 at 3. The
    # move's removal from category 1 arrives last (a skewed partition, a slow batch).
    events = [
        change(1, Op.CREATE, None, row(1, 1, 5.0)),
        change(2, Op.UPDATE, row(1, 1, 5.0), row(1, 2, 5.0)),
        change(3, Op.CREATE, None, row(2, 1, 7.0)),
    ]
    move = plan(events[1], RULES)
    removal = [op for op in move if isinstance(op, IndexMember) and not op.present]
    rest = [op for op in move if op not in removal]
    right = {by_price(1): [("2", 7.0)], by_price(2): [("1", 5.0)]}

    def run() -> dict[str, list[tuple[str, float]]]:
        any_redis.flushall()
        applier = RedisApplier(any_redis)
        for ops in (plan(events[0], RULES), rest, plan(events[2], RULES), removal):
            applier.apply(ops)
        return indexes(any_redis)

    assert run() == right
    monkeypatch.setattr(encoding, "member_field", one_version_per_index)
    assert run() == {by_price(1): [("1", 5.0), ("2", 7.0)], by_price(2): [("1", 5.0)]}


def test_the_model_finds_a_wrong_index_with_one_version_per_index(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encoding, "member_field", one_version_per_index)

    def wrong(case: tuple[list[tuple[int, str, int, int]], list[int], list[int]]) -> bool:
        history, order, cuts = case
        redis_client.flushall()
        events, rows = committed(history)
        deliver(redis_client, events, order, cuts)
        return bool(indexes(redis_client) != expected(rows))

    once = settings(max_examples=300, deadline=None, database=None, phases=[Phase.generate])
    find(deliveries(), wrong, settings=once)  # raises NoSuchExample if it never goes wrong


def test_a_late_older_insert_after_a_delete_does_not_come_back(any_redis: Any) -> None:
    applier = RedisApplier(any_redis)
    applier.apply(plan(change(2, Op.DELETE, row(1, 1, 5.0), None), RULES))
    outcomes = applier.apply(plan(change(1, Op.CREATE, None, row(1, 1, 5.0)), RULES)).outcomes
    assert set(outcomes) == {Outcome.STALE}
    assert indexes(any_redis) == {}
    tombstone = any_redis.hget(ns().version_key(by_price(1)), member_field(by_price(1), "1"))
    horizon, version = parse_stored(tombstone)
    assert version.endswith("0") and horizon < 99_999_999  # a tombstone the sweeper ends


def absent_index_ops(table: str) -> float:
    """The writer's count of index member ops of ``table`` left unwritten until a snapshot."""
    return REGISTRY.get_sample_value("cdc_cache_absent_index_ops_total", {"table": table}) or 0.0


def test_an_index_that_vanished_is_not_rebuilt_from_single_changes(any_redis: Any) -> None:
    applier = RedisApplier(any_redis)
    applier.apply(plan(change(1, Op.CREATE, None, row(1, 1, 5.0)), RULES))
    applier.apply(plan(change(2, Op.CREATE, None, row(2, 1, 6.0)), RULES))
    any_redis.delete(by_price(1))  # expired, evicted, or deleted by hand
    counted = absent_index_ops(TABLE)
    event = change(3, Op.CREATE, None, row(3, 1, 7.0))
    record = SourceRecord("t", 0, 0, None, None)
    CacheWriter(applier, Backoff()).write([Planned(record, event, tuple(plan(event, RULES)))])
    assert any_redis.exists(by_price(1)) == 0  # a miss, not an index of product 3 alone
    # counted under the table to snapshot: the by-price index only (the group's is written)
    assert absent_index_ops(TABLE) == counted + 1
    assert any_redis.sismember("group:9:members", "3")
    # A snapshot of the table rebuilds it (its reads may recreate it).
    for pid, price in ((1, 5.0), (2, 6.0), (3, 7.0)):
        applier.apply(plan(change(10 + pid, Op.READ, None, row(pid, 1, price)), RULES))
    assert indexes(any_redis) == {by_price(1): [("1", 5.0), ("2", 6.0), ("3", 7.0)]}


def test_an_index_emptied_by_its_rows_starts_again(any_redis: Any) -> None:
    applier = RedisApplier(any_redis)
    applier.apply(plan(change(1, Op.CREATE, None, row(1, 1, 5.0)), RULES))
    applier.apply(plan(change(2, Op.DELETE, row(1, 1, 5.0), None), RULES))
    assert any_redis.exists(by_price(1)) == 0
    record = any_redis.hget(ns().version_key(by_price(1)), index_field(by_price(1)))
    assert parse_stored(record)[1].startswith("0")  # emptied by the worker, swept in time
    applier.apply(plan(change(3, Op.CREATE, None, row(2, 1, 6.0)), RULES))
    assert indexes(any_redis) == {by_price(1): [("2", 6.0)]}


def test_an_index_emptied_by_a_truncate_starts_again(any_redis: Any) -> None:
    applier = RedisApplier(any_redis)
    applier.apply(plan(change(1, Op.CREATE, None, row(1, 1, 5.0)), RULES))
    truncate = ChangeEvent(TABLE, Op.TRUNCATE, None, None, {}, at(2), 0)
    applier.apply(plan(truncate, QUIET))
    assert any_redis.exists(by_price(1)) == 0
    applier.apply(plan(change(1, Op.CREATE, None, row(1, 1, 5.0)), RULES))  # older: stale
    applier.apply(plan(change(3, Op.CREATE, None, row(2, 1, 6.0)), RULES))
    assert indexes(any_redis) == {by_price(1): [("2", 6.0)]}


def test_an_invalidation_drops_the_index_and_it_stays_absent(any_redis: Any) -> None:
    applier = RedisApplier(any_redis, invalidate_only=lambda: True)
    RedisApplier(any_redis).apply(plan(change(1, Op.CREATE, None, row(1, 1, 5.0)), RULES))
    outcomes = applier.apply(plan(change(2, Op.CREATE, None, row(2, 1, 6.0)), RULES)).outcomes
    assert outcomes[0] is Outcome.INVALIDATED
    assert any_redis.exists(by_price(1)) == 0
    RedisApplier(any_redis).apply(plan(change(3, Op.CREATE, None, row(3, 1, 7.0)), RULES))
    assert any_redis.exists(by_price(1)) == 0


def test_every_write_re_arms_the_index_ttl(any_redis: Any) -> None:
    applier = RedisApplier(any_redis)
    applier.apply(plan(change(1, Op.CREATE, None, row(1, 1, 5.0)), RULES))
    assert 3_500_000 < any_redis.pttl(by_price(1)) <= 3_600_000  # the rule's ttl: 1h
    record = any_redis.hget(ns().version_key(by_price(1)), index_field(by_price(1)))
    assert parse_stored(record)[0] == 99_999_999  # holding members: kept while it does


def test_a_move_is_announced_once_by_its_index_write(any_redis: Any) -> None:
    applier = RedisApplier(any_redis)
    move = plan(change(2, Op.UPDATE, row(1, 1, 5.0), row(1, 2, 5.0)), RULES)
    applier.apply(plan(change(1, Op.CREATE, None, row(1, 1, 5.0)), RULES))
    applier.apply(move)
    applier.apply(move)  # redelivered: a duplicate notifies nobody
    sent = [
        (channel, len(any_redis.xrange(ns().stream_key(channel))))
        for channel in ("products:1", "products:2")
    ]
    assert sent == [("products:1", 2), ("products:2", 1)]


def test_in_ttl_mode_an_index_write_gets_at_most_the_fallback_ttl(any_redis: Any) -> None:
    writer = CacheWriter(RedisApplier(any_redis), Backoff(), ttl_cap_ms=lambda: 5_000)
    event = change(1, Op.CREATE, None, row(1, 1, 5.0))
    record = SourceRecord("t", 0, 0, None, None)
    writer.write([Planned(record, event, tuple(plan(event, QUIET)))])
    assert 0 < any_redis.pttl(by_price(1)) <= 5_000
    assert 0 < any_redis.pttl("group:9:members") <= 5_000
