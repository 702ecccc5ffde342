from pathlib import Path

import pytest

from cdc_cache.core.errors import ConfigError
from cdc_cache.plan.cache_ops import ValueFormat
from cdc_cache.plan.rules import Action, KeyTemplate, MissingColumn
from cdc_cache.plan.rules_loader import load_rules, parse_rules

EXAMPLE = Path(__file__).parents[2] / "cdc_cache" / "examples" / "inventory.rules.yaml"

VALID = """
defaults: {safety_ttl: 2h, tombstone_ttl: 10m}
tables:
  inventory.stock:
    columns: [id, sku_id, warehouse, qty]
    watch: [sku_id, warehouse, qty]
    keys:
      - key: "stock:{sku_id}:{warehouse}"
        fields: [sku_id, qty]
      - key: "sku:{sku_id}:availability"
        action: delete
        ttl: 5m
"""


def problems(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_rules(text, "rules.yaml")
    return str(info.value)


def test_example_rules_file_loads() -> None:
    rules = load_rules(EXAMPLE)
    assert set(rules.tables) == {"inventory.stock", "inventory.products", "inventory.warehouses"}
    assert rules.dependents["inventory.warehouses"][0].source == "page:sku:{sku_id}"
    products = rules.tables["inventory.products"]
    assert products.keys[0].format is ValueFormat.HASH
    assert products.keys[0].ttl_ms == 12 * 3600 * 1000


def test_valid_rules_compile_with_defaults_and_overrides() -> None:
    rules = parse_rules(VALID)
    stock = rules.tables["inventory.stock"]
    assert rules.safety_ttl_ms == 2 * 3600 * 1000
    assert stock.tombstone_ttl_ms == 10 * 60 * 1000
    assert stock.watch == frozenset({"sku_id", "warehouse", "qty"})
    first, second = stock.keys
    assert (first.action, first.fields, first.ttl_ms) == (Action.SET, ("sku_id", "qty"), 7200000)
    assert (second.action, second.ttl_ms) == (Action.DELETE, 300000)
    assert stock.truncate_prefixes == ("stock:", "sku:")


def test_unknown_column_is_reported_with_file_and_line() -> None:
    text = VALID.replace("fields: [sku_id, qty]", "fields: [sku_id, qtty]")
    message = problems(text)
    assert "rules.yaml:9:" in message
    assert "column 'qtty' is not a column of inventory.stock" in message


def test_every_problem_is_reported_at_once() -> None:
    text = """
tables:
  inventory.stock:
    keys:
      - key: "{sku_id}"
        action: upsert
        ttl: soon
  bad_table_name:
    keys: []
"""
    message = problems(text)
    assert "4 problem(s)" in message
    assert (
        "rules.yaml:5: tables.inventory.stock.keys[0].key: '{sku_id}' starts with a placeholder"
        in message
    )
    assert (
        "rules.yaml:6: tables.inventory.stock.keys[0].action: 'upsert' is not valid; use set or delete"
        in message
    )
    assert "rules.yaml:7: tables.inventory.stock.keys[0].ttl: 'soon' is not a duration" in message
    assert "rules.yaml:8: tables.bad_table_name: table names are '<database>.<table>'" in message


def test_whole_row_key_on_a_watched_table_is_refused() -> None:
    text = VALID.replace("        fields: [sku_id, qty]\n", "")
    assert "caches the whole row but the table has a watch list" in problems(text)


def test_column_used_by_a_key_must_be_watched() -> None:
    text = VALID.replace("watch: [sku_id, warehouse, qty]", "watch: [qty]")
    message = problems(text)
    assert "column 'warehouse' is used by this key but not watched" in message
    assert "column 'sku_id' is used by this key but not watched" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty"),
        ("tables: [a, b]", "tables: expected a mapping"),
        (
            "tables:\n  a.b:\n    keys:\n      - key: 'x:{id}'\n    colour: red\n",
            "unknown setting 'colour'",
        ),
        ("tables:\n  a.b:\n    keys:\n      - action: set\n", "missing 'key:'"),
        ("tables:\n  a.b:\n    keys:\n      - key: 'x:{id!r}'\n", "may not carry a format spec"),
        ("tables:\n  a.b:\n    keys:\n      - key: 'static'\n", "has no {column} placeholder"),
        (
            "tables:\n  a.b:\n    keys:\n      - key: 'cdc:v:{id}'\n",
            "overlaps cdc-cache's version keys",
        ),
        (
            "tables:\n  a.b:\n    keys:\n      - key: 'x:{id}'\n        action: delete\n        fields: [id]\n",
            "a delete key stores no value",
        ),
        ("tables:\n  a.b:\n    keys: {}\n", "non-empty list of keys"),
        (
            "tables:\n  a.b: {keys: [{key: 'x:{id}'}]}\n  a.b: {keys: [{key: 'y:{id}'}]}\n",
            "given twice",
        ),
        ("tables: {a.b: {keys: [{key: 'x:{id}'}]}\n", "not valid YAML"),
        (
            "defaults: {safety_ttl: 0s}\ntables: {a.b: {keys: [{key: 'x:{id}'}]}}\n",
            "must be positive",
        ),
    ],
)
def test_invalid_rules_stop_with_a_clear_message(text: str, expected: str) -> None:
    assert expected in problems(text)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read rules file .*nope.yaml"):
        load_rules(tmp_path / "nope.yaml")


def test_template_renders_escaped_values_and_literal_braces() -> None:
    template = KeyTemplate.parse("stock:{{{sku_id}}}:{warehouse}")
    assert template.columns == ("sku_id", "warehouse")
    assert template.static_prefix == "stock:{"
    assert template.render({"sku_id": 7, "warehouse": "a:b*{c}"}) == "stock:{7}:a%3Ab%2A%7Bc%7D"


def test_template_names_the_missing_column() -> None:
    with pytest.raises(MissingColumn) as info:
        KeyTemplate.parse("stock:{sku_id}").render({"qty": 1})
    assert info.value.column == "sku_id"


def test_sensitive_columns_are_kept_and_checked() -> None:
    rules = parse_rules(VALID.replace("    watch:", "    sensitive: [qty]\n    watch:", 1))
    assert rules.sensitive("inventory.stock") == frozenset({"qty"})
    assert rules.sensitive("inventory.other") == frozenset()
    message = problems(VALID.replace("    watch:", "    sensitive: [qtyy]\n    watch:", 1))
    assert "column 'qtyy' is not a column of inventory.stock" in message
NOTIFY = """
tables:
  inventory.stock:
    columns: [id, sku_id, warehouse, qty, note]
    watch: [sku_id, warehouse, qty]
    keys:
      - key: "stock:{sku_id}:{warehouse}"
        fields: [sku_id, qty]
    notify:
      channel: "CHANNEL"
      fields: FIELDS
"""


def notify_rules(channel: str, fields: str) -> str:
    return NOTIFY.replace("CHANNEL", channel).replace("FIELDS", fields)


def test_example_rules_notify_stock_changes_per_warehouse() -> None:
    notify = load_rules(EXAMPLE).tables["inventory.stock"].notify
    assert notify is not None
    assert notify.channel.source == "inventory:{warehouse}"
    assert notify.fields == ("sku_id", "warehouse", "qty", "price")
    assert notify.maxlen == 10_000
    assert load_rules(EXAMPLE).notifies


def test_notify_rule_compiles_with_a_default_bound() -> None:
    rules = parse_rules(notify_rules("stock:all", "[sku_id, qty]"))
    notify = rules.tables["inventory.stock"].notify
    assert notify is not None and notify.channel.columns == ()
    assert notify.maxlen == 10_000
    assert not parse_rules(VALID).notifies


@pytest.mark.parametrize(
    ("channel", "fields", "expected"),
    [
        (
            "inventory:{wh}",
            "[qty]",
            "rules.yaml:10: tables.inventory.stock.notify.channel: column 'wh' is not a column",
        ),
        (
            "inventory:{warehouse}",
            "[price]",
            "rules.yaml:11: tables.inventory.stock.notify.fields: column 'price' is not",
        ),
        (
            "inventory:{warehouse}",
            "[id]",
            "rules.yaml:10: tables.inventory.stock.notify: column 'id' is used by this notification but not watched",
        ),
        ("{warehouse}", "[qty]", "must start with a literal name"),
        ("inv:*:{warehouse}", "[qty]", "hold no '*'"),
    ],
)
def test_bad_notify_rules_name_file_line_and_fix(channel: str, fields: str, expected: str) -> None:
    assert expected in problems(notify_rules(channel, fields))


def test_notify_needs_a_channel_and_a_positive_maxlen() -> None:
    no_channel = notify_rules("x", "[qty]").replace('channel: "x"', "maxlen: 10")
    assert "notify: missing 'channel:'" in problems(no_channel)
    zero = notify_rules("x:{sku_id}", "[qty]\n      maxlen: 0")
    assert "rules.yaml:12: tables.inventory.stock.notify.maxlen: '0' is not a positive" in problems(
        zero
    )


VALUES = """
version: {version}
defaults: {{decimals: number}}
tables:
  shop.orders:
    columns: [id, placed_on, total, paid, doc]
    {table}
    keys:
      - key: "order:{{id}}"
"""


def values_rules(table: str = "", version: int = 2) -> str:
    return VALUES.format(version=version, table=table)


def test_version_2_decodes_values_with_the_files_choices() -> None:
    table = "types: {paid: boolean, total: decimal(2)}\n    render: {total: string}"
    values = parse_rules(values_rules(table)).tables["shop.orders"].values
    assert values.natural
    assert {c: str(t) for c, t in values.declared.items()} == {
        "paid": "boolean",
        "total": "decimal(2)",
    }
    assert values.default.decimals == "number"
    assert values.rendering("total").decimals == "string"
    assert parse_rules(values_rules()).implicit_wire == ()


def test_version_1_keeps_wire_values_and_says_it_chose_nothing() -> None:
    rules = parse_rules(VALID)
    assert not rules.tables["inventory.stock"].values.natural
    assert rules.implicit_wire == ("inventory.stock",)
    chosen = parse_rules("defaults: {values: wire}\n" + VALID.split("\n", 2)[2])
    assert chosen.implicit_wire == ()
    one_table = parse_rules(VALID.replace("    columns:", "    values: natural\n    columns:"))
    assert one_table.tables["inventory.stock"].values.natural
    assert one_table.implicit_wire == ()


@pytest.mark.parametrize(
    ("table", "version", "expected"),
    [
        ("", 3, "rules.yaml:2: version: '3' is not a rules version; use 1"),
        ("types: {paid: bool}", 2, "rules.yaml:7: tables.shop.orders.types.paid: 'bool' is not a column type"),
        ("types: {payd: boolean}", 2, "tables.shop.orders.types: column 'payd' is not a column of shop.orders"),
        ("render: {total: hex}", 2, "tables.shop.orders.render.total: 'hex' is not valid; use string, number, iso, epoch_ms, wire"),
        (
            "types: {placed_on: date}\n    render: {placed_on: epoch_ms}",
            2,
            "tables.shop.orders.render.placed_on: 'epoch_ms' does not apply to a column of type date",
        ),
        (
            "types: {paid: boolean}",
            1,
            "tables.shop.orders.types: applies only to decoded values, but this table's values are cached as Debezium ships them",
        ),
        ("values: raw", 2, "tables.shop.orders.values: 'raw' is not valid; use natural or wire"),
    ],
)  # fmt: skip
def test_bad_value_settings_name_file_line_and_fix(table: str, version: int, expected: str) -> None:
    text = values_rules(table, version)
    if version == 1:
        text = text.replace("defaults: {decimals: number}", "defaults: {}")
    assert expected in problems(text)


def test_the_worker_warns_once_when_values_are_wire_only_by_default(caplog) -> None:
    from cdc_cache.app.worker import warn_if_wire_by_default

    with caplog.at_level("WARNING", logger="cdc_cache.worker"):
        warn_if_wire_by_default(parse_rules(VALID))
        warn_if_wire_by_default(parse_rules("defaults: {values: wire}\n" + VALID.split("\n", 2)[2]))
        warn_if_wire_by_default(parse_rules(values_rules()))
    (record,) = caplog.records
    assert "rules version 1" in record.getMessage()
    assert record.tables == ["inventory.stock"]  # type: ignore[attr-defined]
