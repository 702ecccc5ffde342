import random
import re
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_cache.core.errors import MissingPrimaryKey, RenderError
from cdc_cache.core.events import ChangeEvent, Op
from cdc_cache.core.keys import escape_value
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import (
    DeleteKey,
    InvalidatePrefix,
    Notify,
    SetRow,
    Truncated,
    ValueFormat,
)
from cdc_cache.plan.notifications import changed_columns
from cdc_cache.plan.planner import plan
from cdc_cache.plan.rules_loader import parse_rules
from tests.model import ModelCache
from tests.workload import NOTIFY_RULES_YAML

RULES = parse_rules(
    """
defaults: {safety_ttl: 1h, tombstone_ttl: 10m}
tables:
  inventory.stock:
    watch: [sku_id, warehouse, qty]
    keys:
      - key: "stock:{sku_id}:{warehouse}"
        fields: [sku_id, warehouse, qty]
      - key: "sku:{sku_id}:availability"
        action: delete
  inventory.products:
    keys:
      - key: "product:{id}"
        format: hash
        fields: [id, name, weight]
"""
)
TOMBSTONE = 600_000


def pos(n: int) -> SourcePosition:
    return SourcePosition(0, 1, n, 0)


def event(
    op: Op,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    n: int,
    table: str = "inventory.stock",
    key: dict[str, Any] | None = None,
) -> ChangeEvent:
    row = after or before or {}
    return ChangeEvent(
        table,
        op,
        before,
        after,
        key if key is not None else {"id": row.get("id")},
        pos(n),
        1_700_000_000_000,
    )


ROW = {"id": 1, "sku_id": 7, "warehouse": "north", "qty": 3, "note": "x"}


def test_insert_sets_the_projection_and_invalidates_the_derived_key() -> None:
    ops = plan(event(Op.CREATE, None, ROW, 5), RULES)
    assert ops == [
        SetRow(
            "stock:7:north",
            pos(5),
            orjson.dumps({"sku_id": 7, "warehouse": "north", "qty": 3}),
            ValueFormat.JSON,
            3_600_000,
            TOMBSTONE,
            "inventory.stock",
        ),
        DeleteKey("sku:7:availability", pos(5), TOMBSTONE, "inventory.stock"),
    ]


def test_snapshot_read_plans_like_an_insert() -> None:
    assert plan(event(Op.READ, None, ROW, 5), RULES) == plan(event(Op.CREATE, None, ROW, 5), RULES)


def test_update_of_unwatched_column_does_nothing() -> None:
    assert plan(event(Op.UPDATE, ROW, {**ROW, "note": "y"}, 6), RULES) == []


def test_row_moving_between_warehouses_deletes_the_old_key() -> None:
    ops = plan(event(Op.UPDATE, ROW, {**ROW, "warehouse": "south"}, 6), RULES)
    assert [(type(op).__name__, op.key) for op in ops if not isinstance(op, InvalidatePrefix)] == [
        ("DeleteKey", "stock:7:north"),
        ("SetRow", "stock:7:south"),
        ("DeleteKey", "sku:7:availability"),
    ]


def test_sku_change_invalidates_both_derived_keys() -> None:
    ops = plan(event(Op.UPDATE, ROW, {**ROW, "sku_id": 8}, 6), RULES)
    assert [(type(op).__name__, op.key) for op in ops if not isinstance(op, InvalidatePrefix)] == [
        ("DeleteKey", "stock:7:north"),
        ("SetRow", "stock:8:north"),
        ("DeleteKey", "sku:7:availability"),
        ("DeleteKey", "sku:8:availability"),
    ]


def test_delete_removes_every_key_of_the_row() -> None:
    ops = plan(event(Op.DELETE, ROW, None, 7), RULES)
    assert ops == [
        DeleteKey("stock:7:north", pos(7), TOMBSTONE, "inventory.stock"),
        DeleteKey("sku:7:availability", pos(7), TOMBSTONE, "inventory.stock"),
    ]


def test_truncate_records_its_position_once_and_invalidates_every_prefix() -> None:
    ops = plan(event(Op.TRUNCATE, None, None, 8, key={}), RULES)
    assert ops == [
        InvalidatePrefix("stock:", "inventory.stock", pos(8), TOMBSTONE, Truncated()),
        InvalidatePrefix("sku:", "inventory.stock", pos(8), TOMBSTONE),
    ]


def test_truncate_is_announced_on_every_channel_of_the_table() -> None:
    rules = parse_rules(NOTIFY_RULES_YAML)
    (first, *_) = plan(event(Op.TRUNCATE, None, None, 8, key={}), rules)
    assert isinstance(first, InvalidatePrefix) and first.truncated is not None
    notice = first.truncated
    assert orjson.loads(notice.payload)["op"] == "truncate"
    matcher = re.compile(notice.channels or "")
    assert matcher.fullmatch("inventory:" + escape_value("a:b {c}*"))
    assert matcher.fullmatch("inventory:~")
    assert not matcher.fullmatch("inventory:north:extra")
    assert not matcher.fullmatch("orders:north")


def test_uncovered_table_plans_nothing() -> None:
    assert plan(event(Op.CREATE, None, ROW, 5, table="inventory.other"), RULES) == []


def test_change_without_primary_key_is_poison() -> None:
    with pytest.raises(MissingPrimaryKey, match="has no primary key"):
        plan(event(Op.CREATE, None, ROW, 5, key={}), RULES)


def test_hash_format_stores_fields_as_strings_and_omits_nulls() -> None:
    product = {"id": 3, "name": "bolt", "weight": None, "description": "d"}
    (op,) = plan(event(Op.CREATE, None, product, 5, table="inventory.products"), RULES)
    assert isinstance(op, SetRow)
    assert (op.key, op.format, op.value) == (
        "product:3",
        ValueFormat.HASH,
        (("id", "3"), ("name", "bolt")),
    )


def test_update_without_before_image_is_fine_when_the_key_uses_only_key_columns() -> None:
    product = {"id": 3, "name": "nut", "weight": 2}
    ops = plan(event(Op.UPDATE, None, product, 5, table="inventory.products"), RULES)
    assert [op.key for op in ops if not isinstance(op, InvalidatePrefix)] == ["product:3"]


def test_update_without_before_image_says_to_set_replica_identity_full() -> None:
    with pytest.raises(RenderError, match="REPLICA IDENTITY FULL"):
        plan(event(Op.UPDATE, None, ROW, 6), RULES)


def test_delete_with_key_only_before_image_names_the_missing_column() -> None:
    with pytest.raises(RenderError, match="needs column 'sku_id', absent from the before image"):
        plan(event(Op.DELETE, {"id": 1}, None, 6), RULES)


def test_primary_key_change_pair_at_one_position_leaves_the_new_row() -> None:
    # Debezium sends a primary-key update as delete(old pk) + create(new pk), one position.
    moved = {**ROW, "id": 2, "qty": 9}
    cache = ModelCache()
    for e in (event(Op.DELETE, ROW, None, 7), event(Op.CREATE, None, moved, 7)):
        cache.apply(plan(e, RULES))
    assert cache.values == {
        "stock:7:north": orjson.dumps({"sku_id": 7, "warehouse": "north", "qty": 9})
    }


def test_changed_columns() -> None:
    assert changed_columns({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == {"b", "c"}
    assert changed_columns(None, {"a": 1}) == {"a"}


# --- convergence: any delivery order of the same changes gives the cache the DB implies ---

WAREHOUSES = ["north", "south", "east"]


@st.composite
def histories(draw: st.DrawFn) -> list[ChangeEvent]:
    """Debezium-like change events of a random workload on inventory.stock, in commit order."""
    table: dict[int, dict[str, Any]] = {}
    events: list[ChangeEvent] = []
    for n in range(1, draw(st.integers(1, 40)) + 1):
        kind = draw(st.sampled_from(["insert", "qty", "move", "note", "delete"]))
        row_id = draw(st.integers(1, 4))
        row = table.get(row_id)
        if kind == "insert" or row is None:
            if row is not None:
                continue
            new = {
                "id": row_id,
                "sku_id": draw(st.integers(1, 3)),
                "warehouse": draw(st.sampled_from(WAREHOUSES)),
                "qty": 0,
                "note": "",
            }
            op, before = Op.CREATE, None
        elif kind == "delete":
            events.append(event(Op.DELETE, row, None, n))
            del table[row_id]
            continue
        else:
            op, before = Op.UPDATE, row
            field, value = {
                "qty": ("qty", n),
                "note": ("note", str(n)),
                "move": ("warehouse", draw(st.sampled_from(WAREHOUSES))),
            }[kind]
            new = {**row, field: value}
        taken = {(r["sku_id"], r["warehouse"]) for i, r in table.items() if i != row_id}
        if (new["sku_id"], new["warehouse"]) in taken:
            continue  # the (sku, warehouse) pair is unique in the table
        table[row_id] = new
        events.append(event(op, before, new, n))
    return events


def expected_cache(events: list[ChangeEvent]) -> dict[str, bytes]:
    """What the stock keys must hold once all changes are applied: the final table state."""
    rows: dict[Any, dict[str, Any]] = {}
    for e in events:
        if e.op is Op.DELETE:
            rows.pop(e.key["id"])
        else:
            assert e.after is not None
            rows[e.key["id"]] = dict(e.after)
    return {
        f"stock:{r['sku_id']}:{r['warehouse']}": orjson.dumps(
            {"sku_id": r["sku_id"], "warehouse": r["warehouse"], "qty": r["qty"]}
        )
        for r in rows.values()
    }


def stock_values(cache: ModelCache) -> dict[str, Any]:
    return {k: v for k, v in cache.values.items() if k.startswith("stock:")}


@settings(max_examples=300, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_any_delivery_order_with_duplicates_converges_to_the_database(
    events: list[ChangeEvent], rnd: random.Random
) -> None:
    deliveries = events + rnd.sample(events, k=len(events) // 2)  # replays and duplicates
    rnd.shuffle(deliveries)
    cache = ModelCache()
    for e in deliveries:
        cache.apply(plan(e, RULES))
    assert stock_values(cache) == expected_cache(events)
    assert not [k for k in cache.values if k.startswith("sku:")]


@settings(max_examples=200, deadline=None)
@given(histories())
def test_late_older_set_after_a_delete_does_not_resurrect(events: list[ChangeEvent]) -> None:
    cache = ModelCache()
    for e in events:
        cache.apply(plan(e, RULES))
    for e in events:  # every older change arrives again, late
        cache.apply(plan(e, RULES))
    assert stock_values(cache) == expected_cache(events)


# --- notifications ---

NOTIFY_RULES = parse_rules(NOTIFY_RULES_YAML)


def notes(ops: list[Any]) -> list[Notify]:
    return [op for op in ops if isinstance(op, Notify)]


def test_notification_follows_the_rows_own_key_and_carries_the_change() -> None:
    before = {"id": 1, "sku_id": 7, "warehouse": "north", "qty": 1, "note": "a"}
    after = {**before, "qty": 5, "note": "b"}
    ops = plan(event(Op.UPDATE, before, after, 3), NOTIFY_RULES)
    assert [type(op) for op in ops] == [SetRow, Notify, DeleteKey]
    assert isinstance(ops[0], SetRow) and ops[0].key == "stock:7:north"
    (note,) = notes(ops)
    assert (note.channel, note.maxlen) == ("inventory:north", 50)
    assert orjson.loads(note.payload) == {
        "table": "inventory.stock",
        "op": "u",
        "key": {"id": 1},
        "changed": ["note", "qty"],
        "values": {"sku_id": 7, "qty": 5},
        "position": pos(3).encode(),
        "committed_at_ms": 1_700_000_000_000,
    }


def test_a_delete_that_logged_only_its_primary_key_is_announced_with_what_it_logged() -> None:
    key = {"sku_id": 7, "warehouse": "north"}  # PostgreSQL without REPLICA IDENTITY FULL
    ops = plan(event(Op.DELETE, None, None, 4, key=key), NOTIFY_RULES)
    assert [op.key for op in ops if isinstance(op, DeleteKey)] == [
        "stock:7:north",
        "sku:7:availability",
    ]
    (note,) = notes(ops)
    assert note.channel == "inventory:north"
    assert orjson.loads(note.payload)["values"] == {"sku_id": 7, "qty": None}


def test_row_moving_between_channels_is_announced_on_both_after_its_new_key() -> None:
    before = {"id": 1, "sku_id": 7, "warehouse": "north", "qty": 1}
    after = {**before, "warehouse": "south"}
    ops = plan(event(Op.UPDATE, before, after, 3), NOTIFY_RULES)
    assert [type(op) for op in ops] == [DeleteKey, SetRow, Notify, Notify, DeleteKey]
    assert [n.channel for n in notes(ops)] == ["inventory:north", "inventory:south"]


def test_delete_is_announced_from_the_before_image() -> None:
    before = {"id": 1, "sku_id": 7, "warehouse": "east", "qty": 1}
    ops = plan(event(Op.DELETE, before, None, 3), NOTIFY_RULES)
    assert [type(op) for op in ops] == [DeleteKey, Notify, DeleteKey]
    (note,) = notes(ops)
    assert note.channel == "inventory:east"
    assert orjson.loads(note.payload)["values"] == {"sku_id": 7, "qty": 1}


def test_unwatched_update_and_uncovered_tables_notify_nobody() -> None:
    before = {"id": 1, "sku_id": 7, "warehouse": "north", "qty": 1, "note": "a"}
    assert plan(event(Op.UPDATE, before, {**before, "note": "b"}, 3), NOTIFY_RULES) == []
    assert not notes(plan(event(Op.CREATE, None, before, 3), RULES))


def test_channel_column_missing_from_a_key_only_delete_is_poison() -> None:
    key_only = event(Op.DELETE, {"id": 1}, None, 3)
    with pytest.raises(RenderError, match="sku_id"):
        plan(key_only, NOTIFY_RULES)


@settings(max_examples=200, deadline=None)
@given(histories())
def test_each_applied_change_notifies_once_and_replays_notify_nobody(
    events: list[ChangeEvent],
) -> None:
    cache = ModelCache()
    expected = []
    for e in events:
        ops = plan(e, NOTIFY_RULES)
        expected += [(n.channel, n.payload) for n in notes(ops)]
        cache.apply(ops)
    assert cache.notifications == expected
    assert len(expected) >= len([e for e in events if plan(e, NOTIFY_RULES)])
    for e in events:  # the whole history again: duplicates
        cache.apply(plan(e, NOTIFY_RULES))
    assert cache.notifications == expected


@settings(max_examples=200, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_out_of_order_delivery_never_notifies_a_change_twice(
    events: list[ChangeEvent], rnd: random.Random
) -> None:
    deliveries = events + rnd.sample(events, k=len(events) // 2)
    rnd.shuffle(deliveries)
    cache = ModelCache()
    for e in deliveries:
        cache.apply(plan(e, NOTIFY_RULES))
    sent = Counter(cache.notifications)
    assert all(count == 1 for count in sent.values()), sent
    # the newest change of every row that still exists was announced
    last = {e.key["id"]: e for e in events if plan(e, NOTIFY_RULES)}
    for e in last.values():
        if e.op is not Op.DELETE:
            assert any(orjson.loads(p)["position"] == e.position.encode() for _, p in sent)
_ROW = st.dictionaries(
    st.sampled_from(["sku_id", "warehouse", "qty", "note"]),
    st.none() | st.integers(0, 3) | st.sampled_from(["north", "3"]),
)


@given(_ROW, _ROW)
def test_an_update_is_planned_exactly_when_a_watched_column_changed(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    row = {"sku_id": 1, "warehouse": "north", "qty": 0}
    key = {"sku_id": 1, "warehouse": "north"}
    event = ChangeEvent(
        "inventory.stock", Op.UPDATE, {**row, **before}, {**row, **after}, key, pos(5), None
    )
    watched = {"sku_id", "warehouse", "qty"} & changed_columns(event.before, event.after)
    assert bool(plan(event, RULES)) == bool(watched)


_DELETES = st.builds(
    DeleteKey,
    st.sampled_from(["k:1", "k:2"]),
    st.builds(SourcePosition, st.just(0), st.integers(0, 2), st.integers(0, 2), st.just(0)),
    st.sampled_from([1000, 2000]),
    st.sampled_from(["", "db.t"]),
)


@given(_DELETES, _DELETES)
def test_deletes_are_deduplicated_exactly_when_equal(a: DeleteKey, b: DeleteKey) -> None:
    # dependency ops go through dict.fromkeys: equal deletes must hash alike, others stay apart
    assert len(dict.fromkeys([a, b])) == (1 if a == b else 2)
