"""A change that cannot be applied as planned still deletes every key it can render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.core.errors import RenderError, ValueTooLarge
from cdc_cache.core.events import ChangeEvent, Op, SourceRecord
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan import invalidations
from cdc_cache.plan.cache_ops import DeleteKey, InvalidatePrefix, Notify, SetRow
from cdc_cache.plan.invalidations import Invalidated, Invalidation, KeyOutcome, Unreached
from cdc_cache.plan.planner import plan
from cdc_cache.plan.route import Planned, Rejected, route
from cdc_cache.plan.rules_loader import parse_rules
from tests.workload import ITEMS_RULES_YAML, NOTIFY_RULES_YAML

RULES_TEXT = (
    ITEMS_RULES_YAML
    + """\
      - key: "shelf:{shelf}:{id}"
        format: hash
        fields: [id, shelf]
"""
)
RULES = parse_rules(RULES_TEXT, "rules.yaml")
TABLE = RULES.tables["inventory.items"]
TOMBSTONE = 600_000
AT = SourcePosition(0, 3, 120, 0)
ROW = {"id": 1, "name": "lamp", "price": "10.00", "shelf": "a"}


def change(
    op: Op, before: dict[str, Any] | None, after: dict[str, Any] | None, key: dict[str, Any]
) -> ChangeEvent:
    return ChangeEvent("inventory.items", op, before, after, key, AT, 1_700_000_000_000)


def without(row: dict[str, Any], *columns: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in columns}


def keys(plan_: Invalidation) -> list[str]:
    return [d.key for d in plan_.deletes]


def test_a_dropped_projected_column_still_deletes_every_key_of_the_row():
    """The issue's case: price is gone; item:1 must not keep serving 'lamp'."""
    old, new = without(ROW, "price"), {**without(ROW, "price"), "name": "lamp v2"}
    event = change(Op.UPDATE, old, new, {"id": 1})
    try:
        plan(event, RULES)
    except RenderError as exc:
        assert "price" in exc.reason
    else:
        raise AssertionError("the plan should have failed on the dropped column")

    result = invalidations.of_images(event, TABLE)

    assert keys(result) == ["item:1", "itemname:lamp%20v2", "itemname:lamp", "shelf:a:1"]
    assert all(d == DeleteKey(d.key, AT, TOMBSTONE) for d in result.deletes)
    assert result.unreached == ()


def test_a_dropped_key_column_leaves_only_that_key_unreached_and_names_its_rule_line():
    old, new = without(ROW, "shelf"), {**without(ROW, "shelf"), "name": "desk"}
    result = invalidations.of_images(change(Op.UPDATE, old, new, {"id": 1}), TABLE)

    assert keys(result) == ["item:1", "itemname:desk", "itemname:lamp"]
    assert result.unreached == (
        Unreached("shelf:{shelf}:{id}", "column 'shelf' is absent from the after image", 9),
        Unreached("shelf:{shelf}:{id}", "column 'shelf' is absent from the before image", 9),
    )
    assert RULES_TEXT.splitlines()[9 - 1].strip().startswith('- key: "shelf:')


def test_an_update_without_before_image_reaches_the_old_key_only_through_the_primary_key():
    """PostgreSQL without REPLICA IDENTITY FULL: the old shelf is unknown, so unreached."""
    result = invalidations.of_images(
        change(Op.UPDATE, None, {**ROW, "shelf": "b"}, {"id": 1}), TABLE
    )

    assert keys(result) == ["item:1", "itemname:lamp", "shelf:b:1"]
    assert [(u.key, u.why) for u in result.unreached] == [
        ("itemname:{name}", "column 'name' is absent from the primary key image"),
        ("shelf:{shelf}:{id}", "column 'shelf' is absent from the primary key image"),
    ]


def test_a_delete_renders_from_its_before_image_merged_over_the_key():
    result = invalidations.of_images(
        change(Op.DELETE, without(ROW, "id", "price"), None, {"id": 1}), TABLE
    )
    assert keys(result) == ["item:1", "itemname:lamp", "shelf:a:1"]


def test_tables_without_rules_and_truncates_have_nothing_to_invalidate():
    assert invalidations.of_images(change(Op.UPDATE, ROW, ROW, {"id": 1}), None) == Invalidation()
    truncate = change(Op.TRUNCATE, None, None, {})
    assert invalidations.of_images(truncate, TABLE) == Invalidation()


def test_ops_of_a_refused_change_become_deletes_and_its_notifications_are_dropped():
    """Redis refused the change (a wrong-typed stream): delete the keys it would write."""
    rules = parse_rules(NOTIFY_RULES_YAML)
    row = {"id": 1, "sku_id": 7, "warehouse": "north", "qty": 3}
    event = ChangeEvent(
        "inventory.stock", Op.UPDATE, row, {**row, "warehouse": "south"}, {"id": 1}, AT, None
    )
    ops = plan(event, rules)
    assert any(isinstance(op, Notify) for op in ops)

    result = invalidations.of_ops(ops)

    assert keys(result) == ["stock:7:north", "stock:7:south", "sku:7:availability"]
    assert all(d.position == AT for d in result.deletes)
    assert result.unreached == ()


def test_a_failed_truncate_names_its_prefix_as_unreached():
    result = invalidations.of_ops([InvalidatePrefix("item:", "inventory.items", AT, 1)])
    assert result.deletes == ()
    assert [u.key for u in result.unreached] == ["item:*"]


def test_the_report_counts_each_outcome_and_the_entry_names_unreached_keys_by_template():
    plan_ = invalidations.of_images(
        change(Op.UPDATE, without(ROW, "shelf"), without(ROW, "shelf"), {"id": 1}), TABLE
    )
    report = Invalidated.of(plan_, [KeyOutcome.DELETED, KeyOutcome.UNVERSIONED])

    assert report.counts == {
        KeyOutcome.DELETED: 1,
        KeyOutcome.SKIPPED: 0,
        KeyOutcome.UNVERSIONED: 1,
        KeyOutcome.UNREACHED: 2,
    }
    entry = report.entry()
    assert entry["unreached_keys"][0] == {
        "key": "shelf:{shelf}:{id}",
        "why": "column 'shelf' is absent from the after image",
        "rules_line": 9,
    }
    orjson.dumps(entry)  # the DLQ entry stays encodable


# --- every failure kind through route(): the rejection carries its invalidation ---


def envelope(before: dict[str, Any] | None, after: dict[str, Any] | None, op: str = "u") -> bytes:
    source = {"connector": "mysql", "db": "inventory", "table": "items", "file": "mysql-bin.000003"}
    source |= {"pos": 120, "row": 0, "ts_ms": 1}
    return orjson.dumps({"before": before, "after": after, "op": op, "source": source})


def routed(value: bytes, max_value_bytes: int | None = None) -> Rejected:
    record = SourceRecord("dbserver1.inventory.items", 0, 7, b'{"id": 1}', value)
    result = route(record, RULES, 0, max_value_bytes)
    assert isinstance(result, Rejected), result
    return result


def test_render_failed_rejection_carries_the_deletes_its_images_allow():
    result = routed(envelope(without(ROW, "price"), {**without(ROW, "price"), "name": "v2"}))
    assert isinstance(result.error, RenderError)
    assert keys(result.invalidation) == ["item:1", "itemname:v2", "itemname:lamp", "shelf:a:1"]


def test_value_too_large_rejection_deletes_every_key_the_plan_touched():
    value = envelope(ROW, {**ROW, "name": "x" * 500})
    record = SourceRecord("dbserver1.inventory.items", 0, 7, b'{"id": 1}', value)
    full = route(record, RULES)
    assert isinstance(full, Planned)

    result = routed(value, max_value_bytes=100)

    assert isinstance(result.error, ValueTooLarge)
    planned_keys = [op.key for op in full.ops if isinstance(op, SetRow | DeleteKey)]
    assert keys(result.invalidation) == list(dict.fromkeys(planned_keys))


def test_an_undecodable_message_has_nothing_to_invalidate_and_names_its_topics_table():
    result = routed(b"{not json")
    assert result.invalidation == Invalidation()
    assert result.table == "inventory.items"


# --- the invariant: an invalidation reaches every key the plan would have touched ---

values = st.one_of(st.integers(-5, 5), st.text(max_size=4), st.none())
rows = st.fixed_dictionaries({c: values for c in ("id", "name", "price", "shelf")})
dropped = st.sets(st.sampled_from(["name", "price", "shelf"]))


@given(rows, rows, dropped, st.sampled_from([Op.CREATE, Op.UPDATE, Op.DELETE, Op.READ]))
def test_every_key_the_plan_touches_is_deleted_or_named_unreached(before, after, gone, op):
    """Whatever columns a migration drops, a key is either deleted or reported unreached.

    The full row's plan says which keys the change touches; after dropping ``gone`` from
    both images, each of those keys is deleted, unless a column it needs is gone, in which
    case its rule is named as unreached.
    """
    key = {"id": after["id"] if op is not Op.DELETE else before["id"]}
    before = {**before, **key} if op in (Op.UPDATE, Op.DELETE) else None
    after = {**after, **key} if op is not Op.DELETE else None
    touched = {
        o.key
        for o in plan(change(op, before, after, key), RULES)
        if isinstance(o, SetRow | DeleteKey)
    }
    stripped = [None if row is None else without(row, *gone) for row in (before, after)]
    result = invalidations.of_images(change(op, *stripped, key), TABLE)

    unreached_rules = {u.key for u in result.unreached}
    for rule in TABLE.keys:
        needs_gone = bool(set(rule.template.columns) & gone)
        rule_keys = {k for k in touched if rule.template.static_prefix == k.split(":")[0] + ":"}
        if needs_gone:
            assert rule.template.source in unreached_rules
        else:
            assert rule_keys <= set(keys(result))
    assert all(d.position == AT and d.tombstone_ttl_ms == TOMBSTONE for d in result.deletes)


def test_a_postgres_delete_logging_only_the_primary_key_is_refused_and_names_its_other_keys() -> (
    None
):
    """Recorded: ``inventory.products`` without REPLICA IDENTITY FULL, its NOT NULL name "".

    Taken as the row, that image would delete ``product:3:`` and leave ``product:3:widget``.
    """
    fixture = Path(__file__).resolve().parent.parent / "fixtures/debezium/postgres/noschemas.jsonl"
    recorded = [orjson.loads(line) for line in fixture.read_text().splitlines()]
    (doc,) = [d for d in recorded if d["key"] == '{"id":3}' and '"op":"d"' in (d["value"] or "")]
    rules = parse_rules(
        "version: 2\ntables:\n  inventory.products:\n    keys:\n"
        '      - key: "product:{id}:{name}"\n      - key: "product:{id}"\n',
        "rules.yaml",
    )
    record = SourceRecord(doc["topic"], 0, 25, doc["key"].encode(), doc["value"].encode())
    routed = route(record, rules)
    assert isinstance(routed, Rejected)
    assert isinstance(routed.error, RenderError)
    assert "needs column 'name'" in str(routed.error)
    assert "REPLICA IDENTITY FULL" in str(routed.error)
    assert [d.key for d in routed.invalidation.deletes] == ["product:3"]
    (unreached,) = routed.invalidation.unreached
    assert unreached.key == "product:{id}:{name}"
    assert "primary key" in unreached.why
