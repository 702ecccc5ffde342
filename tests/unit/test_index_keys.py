"""Index keys (zadd, sadd): the rules loaded, and the member ops a change plans (pure).

The property test replays random histories of rows moving between categories and checks
that the newest op of every (index, member) pair says what the last committed row says:
the reason per-member gating converges under any delivery order (see plan/indexes.py).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_cache.core.errors import ConfigError, RenderError
from cdc_cache.core.events import ChangeEvent, Op
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import IndexKind, IndexMember, Notify, as_invalidation
from cdc_cache.plan.indexes import score_of
from cdc_cache.plan.planner import plan
from cdc_cache.plan.rules_loader import parse_rules

INDEXES = """\
version: 2
tables:
  shop.products:
    watch: [id, category_id, group_id, price]
    keys:
      - key: "category:{category_id}:by_price"
        action: zadd
        member: "{id}"
        score: price
        ttl: 1h
      - key: "group:{group_id}:members"
        action: sadd
        member: "{id}"
    notify:
      channel: "products:{category_id}"
      fields: [id, price]
"""
RULES = parse_rules(INDEXES)
QUIET = parse_rules(
    INDEXES.split("    notify:", maxsplit=1)[0]
)  # the same indexes, no notifications
TABLE = "shop.products"


def at(n: int) -> SourcePosition:
    return SourcePosition(0, 1, n, 0)


def row(pid: int, category: int, price: float = 1.0, group: int = 9) -> dict[str, object]:
    return {"id": pid, "category_id": category, "group_id": group, "price": price}


def change(n: int, op: Op, before: dict[str, object] | None, after: dict[str, object] | None):
    pid = (after or before or {})["id"]
    return ChangeEvent(TABLE, op, before, after, {"id": pid}, at(n), 0)


def members(ops: list[object]) -> list[tuple[str, str, str | None, bool]]:
    return [(op.key, op.member, op.score, op.present) for op in ops if isinstance(op, IndexMember)]


def test_an_insert_adds_the_row_to_each_index_with_its_score() -> None:
    ops = plan(change(1, Op.CREATE, None, row(7, 3, 12.5, group=4)), RULES)
    assert members(ops) == [
        ("category:3:by_price", "7", "12.5", True),
        ("group:4:members", "7", None, True),
    ]
    zset = next(op for op in ops if isinstance(op, IndexMember))
    assert zset.kind is IndexKind.ZSET and zset.ttl_ms == 3_600_000 and zset.table == TABLE


def test_a_move_leaves_the_old_index_and_joins_the_new_one_at_the_same_position() -> None:
    ops = plan(change(2, Op.UPDATE, row(7, 3, 12.5), row(7, 4, 12.5)), RULES)
    assert members(ops) == [
        ("category:3:by_price", "7", None, False),
        ("category:4:by_price", "7", "12.5", True),
        ("group:9:members", "7", None, True),
    ]
    assert {op.position for op in ops if isinstance(op, IndexMember)} == {at(2)}


def test_a_price_change_rescores_the_member_in_place() -> None:
    ops = plan(change(2, Op.UPDATE, row(7, 3, 12.5), row(7, 3, 9)), RULES)
    assert members(ops)[0] == ("category:3:by_price", "7", "9", True)
    assert not any(not present for *_, present in members(ops))


def test_a_delete_removes_the_member_from_every_index() -> None:
    ops = plan(change(3, Op.DELETE, row(7, 3), None), RULES)
    assert members(ops) == [
        ("category:3:by_price", "7", None, False),
        ("group:9:members", "7", None, False),
    ]


def test_the_notification_rides_on_the_first_index_op_of_the_new_row() -> None:
    ops = plan(change(2, Op.UPDATE, row(7, 3), row(7, 4)), RULES)
    host = ops.index(next(op for op in ops if isinstance(op, Notify))) - 1
    assert isinstance(ops[host], IndexMember) and ops[host].key == "category:4:by_price"


def test_a_snapshot_read_may_rebuild_a_lost_index_and_a_change_may_not() -> None:
    read = plan(change(1, Op.READ, None, row(7, 3)), RULES)
    create = plan(change(1, Op.CREATE, None, row(7, 3)), RULES)
    assert all(op.rebuild for op in read if isinstance(op, IndexMember))
    assert not any(op.rebuild for op in create if isinstance(op, IndexMember))


def test_an_invalidated_addition_drops_the_whole_index() -> None:
    add = next(
        op
        for op in plan(change(1, Op.CREATE, None, row(7, 3)), RULES)
        if isinstance(op, IndexMember)
    )
    removal = IndexMember("category:3:by_price", "7", None, False, at(1), 1, 1)
    assert as_invalidation(add) == IndexMember(**{**_fields(add), "drop": True})
    assert as_invalidation(removal) is removal


def _fields(op: IndexMember) -> dict[str, object]:
    return {name: getattr(op, name) for name in op.__slots__}


@pytest.mark.parametrize(
    ("value", "score"),
    [(3, "3"), (2.5, "2.5"), ("12.50", "12.5"), (" -1e3 ", "-1000.0")],
)
def test_scores_are_numbers_and_decimal_text(value: object, score: str) -> None:
    assert score_of(value) == score


@pytest.mark.parametrize("value", [True, None, "cheap", float("nan"), "inf", [1]])
def test_a_value_that_is_no_finite_number_does_not_score(value: object) -> None:
    with pytest.raises(ValueError, match="number"):
        score_of(value)


def test_a_row_whose_score_is_not_a_number_is_rejected_with_the_column() -> None:
    with pytest.raises(RenderError, match="scores by column 'price'"):
        plan(change(1, Op.CREATE, None, row(7, 3, price="cheap")), RULES)  # type: ignore[arg-type]


def test_an_update_without_before_image_needs_the_old_index_columns() -> None:
    event = ChangeEvent(TABLE, Op.UPDATE, None, row(7, 4), {"id": 7}, at(2), 0)
    with pytest.raises(RenderError, match="REPLICA IDENTITY FULL"):
        plan(event, RULES)


# ------------------------------------------------------------------ the loader


def problems(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_rules(text, "rules.yaml")
    return str(caught.value)


def with_key(key_lines: str, table_lines: str = "") -> str:
    return (
        "version: 2\ntables:\n  shop.products:\n    columns: [id, category_id, price, name]\n"
        "    watch: [id, category_id, price]\n" + table_lines + "    keys:\n" + key_lines
    )


def test_the_loader_needs_a_member_and_names_the_line() -> None:
    text = with_key(
        '      - key: "category:{category_id}"\n        action: zadd\n        score: price\n'
    )
    assert "rules.yaml:7: tables.shop.products.keys[0]: an index key needs 'member:'" in problems(
        text
    )


def test_the_loader_needs_a_score_for_a_sorted_set() -> None:
    text = with_key(
        '      - key: "category:{category_id}"\n        action: zadd\n        member: "{id}"\n'
    )
    assert "a sorted set needs 'score:'" in problems(text)


def test_a_set_has_no_score() -> None:
    text = with_key(
        '      - key: "category:{category_id}"\n        action: sadd\n        member: "{id}"\n'
        "        score: price\n"
    )
    assert "rules.yaml:10: tables.shop.products.keys[0].score: a set has no scores" in problems(
        text
    )


def test_a_member_of_an_unknown_column_is_named() -> None:
    text = with_key(
        '      - key: "category:{category_id}"\n        action: sadd\n        member: "{sku}"\n'
    )
    assert "keys[0].member: column 'sku' is not a column of shop.products" in problems(text)


def test_an_unwatched_score_column_is_refused() -> None:
    text = with_key(
        '      - key: "category:{category_id}"\n        action: zadd\n        member: "{id}"\n'
        "        score: name\n"
    )
    assert "column 'name' is used by this key but not watched" in problems(text)


def test_a_score_declared_of_a_type_that_is_no_number_is_refused() -> None:
    text = with_key(
        '      - key: "category:{category_id}"\n        action: zadd\n        member: "{id}"\n'
        "        score: price\n",
        "    types: {price: date}\n",
    )
    assert (
        "rules.yaml:11: tables.shop.products.keys[0].score: score column 'price' is declared date"
        in problems(text)
    )


def test_member_and_score_belong_to_index_keys_only() -> None:
    text = with_key('      - key: "product:{id}"\n        fields: [id]\n        member: "{id}"\n')
    assert "keys[0].member: only an index key (action: zadd or sadd) has a member" in problems(text)


def test_an_index_key_has_no_fields() -> None:
    text = with_key(
        '      - key: "category:{category_id}"\n        action: sadd\n        member: "{id}"\n'
        "        fields: [id]\n"
    )
    assert "an index key holds one member per row, not its fields" in problems(text)


# ------------------------------------------------------------------ convergence (pure)

histories = st.lists(
    st.tuples(
        st.integers(1, 3),
        st.sampled_from(["upsert", "delete"]),
        st.integers(1, 3),
        st.integers(0, 99),
    ),
    min_size=1,
    max_size=25,
)


def committed(
    history: list[tuple[int, str, int, int]],
) -> tuple[list[ChangeEvent], dict[int, dict[str, object]]]:
    """The change events of a history of row writes, and the rows it leaves."""
    rows: dict[int, dict[str, object]] = {}
    events = []
    for n, (pid, kind, category, price) in enumerate(history, start=1):
        old = rows.get(pid)
        if kind == "delete":
            if old is None:
                continue
            events.append(change(n, Op.DELETE, old, None))
            del rows[pid]
            continue
        new = row(pid, category, float(price))
        events.append(change(n, Op.CREATE if old is None else Op.UPDATE, old, new))
        rows[pid] = new
    return events, rows


@settings(max_examples=300, deadline=None)
@given(histories)
def test_the_newest_op_of_every_index_member_says_what_the_last_row_says(
    history: list[tuple[int, str, int, int]],
) -> None:
    events, rows = committed(history)
    newest: dict[tuple[str, str], IndexMember] = {}
    for event in events:
        for op in plan(event, RULES):
            if isinstance(op, IndexMember) and op.kind is IndexKind.ZSET:
                pair = (op.key, op.member)
                assert pair not in newest or newest[pair].position < op.position
                newest[pair] = op
    state = {pair: op.score for pair, op in newest.items() if op.present}
    expected = {
        (f"category:{r['category_id']}:by_price", str(pid)): repr(r["price"])
        for pid, r in rows.items()
    }
    assert state == expected
