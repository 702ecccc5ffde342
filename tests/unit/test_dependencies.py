"""Rules for invalidation across tables: loading them, and the ops a change plans."""

from __future__ import annotations

from typing import Any

import pytest

from cdc_cache.core.errors import ConfigError, RenderError
from cdc_cache.core.events import ChangeEvent, Op
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import DeleteKey, InvalidatePrefix, InvalidateTag, LinkKey
from cdc_cache.plan.dependencies import plan_dependencies
from cdc_cache.plan.planner import plan
from cdc_cache.plan.rules import check_tag
from cdc_cache.plan.rules_loader import parse_rules

CATALOG = """\
version: 2
tables:
  catalog.brands:
    watch: [name]
  catalog.tags:
    watch: [name]
  catalog.products:
    watch: [id, brand_id, name]
    keys:
      - key: "product:{id}:page"
        action: delete
        depends_on:
          - {table: catalog.brands, via: brand_id}
          - table: catalog.tags
            through: catalog.product_tags
            via: tag_id
            match: {id: product_id}
    invalidate_tags: ["listing:brand:{brand_id}"]
  catalog.product_tags:
    watch: [product_id, tag_id]
"""
RULES = parse_rules(CATALOG)
TTL = 3_600_000
PAGE = "product:1:page"


def at(n: int) -> SourcePosition:
    return SourcePosition(0, 1, n, 0)


def change(
    table: str, op: Op, before: dict[str, Any] | None, after: dict[str, Any] | None, n: int = 5
) -> ChangeEvent:
    row = after or before or {}
    names = ("id",) if "id" in row else ("product_id", "tag_id")
    key: dict[str, Any] = {name: row[name] for name in names}
    return ChangeEvent(f"catalog.{table}", op, before, after, key, at(n), 0)


def problems(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_rules(text, "rules.yaml")
    return str(caught.value)


def test_a_product_links_its_page_to_its_brand() -> None:
    ops = plan_dependencies(
        change("products", Op.CREATE, None, {"id": 1, "brand_id": 7, "name": "a"}), RULES
    )
    assert ops == [
        LinkKey("catalog.brands:7", PAGE, "catalog.products:1", at(5), True, TTL),
        InvalidateTag("listing:brand:7", at(5), TTL),
    ]


def test_a_product_that_changes_brand_moves_between_tags_at_one_position() -> None:
    before = {"id": 1, "brand_id": 7, "name": "a"}
    ops = plan_dependencies(change("products", Op.UPDATE, before, {**before, "brand_id": 8}), RULES)
    assert ops == [
        LinkKey("catalog.brands:7", PAGE, "catalog.products:1", at(5), False, TTL),
        LinkKey("catalog.brands:8", PAGE, "catalog.products:1", at(5), True, TTL),
        InvalidateTag("listing:brand:7", at(5), TTL),
        InvalidateTag("listing:brand:8", at(5), TTL),
    ]


def test_a_null_foreign_key_links_to_nothing() -> None:
    ops = plan_dependencies(
        change("products", Op.CREATE, None, {"id": 1, "brand_id": None, "name": "a"}), RULES
    )
    assert ops == [InvalidateTag("listing:brand:~", at(5), TTL)]


def test_a_deleted_product_leaves_its_brand() -> None:
    row = {"id": 1, "brand_id": 7, "name": "a"}
    ops = plan_dependencies(change("products", Op.DELETE, row, None), RULES)
    assert LinkKey("catalog.brands:7", PAGE, "catalog.products:1", at(5), False, TTL) in ops


def test_a_join_row_links_the_page_to_the_tag_and_deletes_the_page() -> None:
    row = {"product_id": 1, "tag_id": 3}
    ops = plan_dependencies(change("product_tags", Op.CREATE, None, row), RULES)
    link = "catalog.product_tags:1:3"
    assert ops == [
        LinkKey("catalog.tags:3", PAGE, link, at(5), True, TTL),
        DeleteKey(PAGE, at(5), TTL),
    ]
    gone = plan_dependencies(change("product_tags", Op.DELETE, row, None), RULES)
    assert gone == [
        LinkKey("catalog.tags:3", PAGE, link, at(5), False, TTL),
        DeleteKey(PAGE, at(5), TTL),
    ]


def test_a_parent_change_invalidates_its_rows_tag_with_the_dependent_prefixes() -> None:
    before = {"id": 7, "name": "old"}
    ops = plan_dependencies(change("brands", Op.UPDATE, before, {"id": 7, "name": "new"}), RULES)
    assert ops == [InvalidateTag("catalog.brands:7", at(5), TTL, ("product:",))]


def test_a_parent_inserted_after_its_children_invalidates_them() -> None:
    ops = plan_dependencies(change("brands", Op.CREATE, None, {"id": 9, "name": "n"}), RULES)
    assert ops == [InvalidateTag("catalog.brands:9", at(5), TTL, ("product:",))]


def test_an_unwatched_parent_column_invalidates_nothing() -> None:
    before = {"id": 7, "name": "same", "logo": "a"}
    after = {**before, "logo": "b"}
    assert plan_dependencies(change("brands", Op.UPDATE, before, after), RULES) == []


def test_a_truncated_join_table_invalidates_every_dependent_key() -> None:
    event = ChangeEvent("catalog.product_tags", Op.TRUNCATE, None, None, {}, at(5), 0)
    assert plan(event, RULES) == []  # no keys of its own
    assert plan_dependencies(event, RULES) == [
        InvalidatePrefix("product:", "catalog.product_tags", at(5), TTL)
    ]


def test_a_link_without_its_column_in_the_before_image_names_replica_identity() -> None:
    event = ChangeEvent(
        "catalog.products", Op.DELETE, {"id": 1}, None, {"id": 1}, at(5), 0
    )  # PostgreSQL without REPLICA IDENTITY FULL
    with pytest.raises(RenderError, match="REPLICA IDENTITY FULL"):
        plan_dependencies(event, RULES)


def test_a_parent_with_a_composite_key_is_poison() -> None:
    event = ChangeEvent(
        "catalog.brands", Op.CREATE, None, {"a": 1, "b": 2}, {"a": 1, "b": 2}, at(5), 0
    )
    with pytest.raises(RenderError, match="one-column primary key"):
        plan_dependencies(event, RULES)


def test_an_unknown_parent_table_is_refused_with_its_line() -> None:
    text = CATALOG.replace("{table: catalog.brands, via", "{table: catalog.brand, via")
    found = problems(text)
    assert "rules.yaml:13: tables.catalog.products.keys[0].depends_on[0].table: unknown " in found
    assert "'catalog.brand'; add it under tables:" in found


def test_an_unwatched_link_column_is_refused() -> None:
    found = problems(CATALOG.replace("watch: [id, brand_id, name]", "watch: [id, name]"))
    assert "rules.yaml:13: tables.catalog.products.keys[0].depends_on[0].via: column " in found
    assert "'brand_id' is used by this dependency but not watched" in found
    found = problems(CATALOG.replace("watch: [product_id, tag_id]", "watch: [product_id]"))
    assert "column 'tag_id' of catalog.product_tags links keys to their parents but is " in found


def test_a_join_table_must_give_every_key_column() -> None:
    found = problems(CATALOG.replace("match: {id: product_id}", "match: {}"))
    assert "must give every column of 'product:{id}:page'; add {id: <join column>}" in found


def test_a_dependent_key_must_be_a_delete_key() -> None:
    found = problems(CATALOG.replace("action: delete", "action: set\n        fields: [id]"))
    assert "use action: delete and fill it through CacheAside" in found


def test_a_cycle_of_dependencies_is_refused() -> None:
    text = CATALOG.replace(
        "  catalog.brands:\n    watch: [name]\n",
        "  catalog.brands:\n    watch: [id, name, top_product]\n    keys:\n"
        '      - key: "brand:{id}"\n        action: delete\n'
        "        depends_on: [{table: catalog.products, via: top_product}]\n",
    )
    found = problems(text)
    assert "the dependencies form a cycle (catalog.brands -> catalog.products -> " in found


def test_a_table_may_depend_on_itself() -> None:
    rules = parse_rules(
        "tables:\n  shop.categories:\n    watch: [id, parent_id]\n    keys:\n"
        '      - key: "category:{id}"\n        action: delete\n'
        "        depends_on: [{table: shop.categories, via: parent_id}]\n"
    )
    assert rules.dependents["shop.categories"][0].source == "category:{id}"


def test_a_table_without_keys_must_be_named_by_a_dependency() -> None:
    found = problems(CATALOG + "  catalog.other:\n    watch: [name]\n")
    assert "tables.catalog.other.keys: each table needs a non-empty list of keys, unless" in found


@pytest.mark.parametrize(
    ("tag", "why"),
    [
        ("", "not a non-empty string"),
        ("brand 7", "whitespace or control characters"),
        ("brand:\x007", "whitespace or control characters"),
        ("cdc:mode", "cdc-cache's own names"),
        ("x" * 513, "at most 512"),
    ],
)
def test_a_malformed_tag_is_refused(tag: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_tag(tag)


def test_a_malformed_tag_template_is_refused_with_its_line() -> None:
    found = problems(CATALOG.replace('["listing:brand:{brand_id}"]', '["cdc:brand:{brand_id}"]'))
    assert "rules.yaml:18: tables.catalog.products.invalidate_tags[0]: tag template" in found
