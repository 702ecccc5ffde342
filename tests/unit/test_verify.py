"""The checker's pure core: database values, expected keys, judgement, key parsing."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import orjson
import pytest

from cdc_cache.core.keys import escape_value
from cdc_cache.plan.cache_ops import SetRow
from cdc_cache.plan.rules import Action
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.tools.verify_judge import (
    Finding,
    KeyPattern,
    Settling,
    Stored,
    debezium_value,
    derive,
    judge,
)
from cdc_cache.tools.verify_report import Report, TableReport, nines

RULES = parse_rules(
    """
tables:
  shop.stock:
    keys:
      - key: "stock:{sku_id}:{warehouse}"
        fields: [id, sku_id, warehouse, qty]
      - key: "sku:{sku_id}:availability"
        action: delete
      - key: "stockh:{id}"
        format: hash
        fields: [id, warehouse, qty]
"""
)
TABLE = RULES.tables["shop.stock"]
ROW = {"id": 7, "sku_id": 3, "warehouse": "a:b {c}*", "qty": None, "note": "x"}


def _sets() -> dict[str, SetRow]:
    return {op.key: op for _, op in derive(TABLE, ROW, ["id"]).sets}


@pytest.mark.parametrize(
    ("value", "dialect", "expected"),
    [
        (Decimal("12.50"), "mysql", "12.50"),
        (Decimal("1E+2"), "postgresql", "100"),
        (dt.date(1970, 1, 11), "mysql", 10),
        (dt.datetime(1970, 1, 1, 0, 0, 1, 500_000), "mysql", 1500),  # noqa: DTZ001
        (dt.datetime(1970, 1, 1, 0, 0, 1, 500_000), "postgresql", 1_500_000),  # noqa: DTZ001
        (dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC), "postgresql", "2024-05-01T12:00:00Z"),
        (dt.timedelta(hours=1, microseconds=5), "mysql", 3_600_000_005),
        (dt.time(0, 1, 2), "postgresql", 62_000_000),
        (b"\x00\xff", "mysql", "AP8="),
        (None, "mysql", None),
        ("text", "postgresql", "text"),
    ],
)
def test_database_values_take_the_shape_debezium_ships(value, dialect, expected):
    assert debezium_value(value, dialect) == expected


def test_mysql_timestamp_columns_compare_as_utc_iso_strings():
    moment = dt.datetime(2024, 5, 1, 12, 0, 0)  # noqa: DTZ001 - what PyMySQL returns
    assert debezium_value(moment, "mysql", timestamp=True) == "2024-05-01T12:00:00Z"


def test_a_row_yields_the_planners_keys_and_projections():
    derived = derive(TABLE, ROW, ["id"])
    sets = _sets()
    json_key = f"stock:3:{escape_value('a:b {c}*')}"
    assert orjson.loads(sets[json_key].value) == {  # type: ignore[arg-type]
        "id": 7,
        "sku_id": 3,
        "warehouse": "a:b {c}*",
        "qty": None,
    }
    assert sets["stockh:7"].value == (("id", "7"), ("warehouse", "a:b {c}*"))
    assert [rule.action for rule, _ in derived.sets] == [Action.SET, Action.SET]
    assert derived.deletes == ("sku:3:availability",)


def test_matching_value_with_a_set_version_is_consistent():
    op = _sets()["stockh:7"]
    stored = Stored({"warehouse": "a:b {c}*", "id": "7"}, "0271")
    assert judge(op, stored) is None


def test_json_values_compare_as_documents_not_bytes():
    op = next(op for key, op in _sets().items() if key.startswith("stock:"))
    reordered = orjson.dumps({"qty": None, "warehouse": "a:b {c}*", "sku_id": 3, "id": 7})
    assert judge(op, Stored(reordered, "0271")) is None


@pytest.mark.parametrize(
    ("stored", "finding"),
    [
        (Stored(None), Finding.MISSING),
        (Stored(None, "0270"), Finding.MISSING),
        (Stored({"id": "7", "warehouse": "old", "qty": "1"}, "0271"), Finding.STALE),
        (Stored(None, "0271", wrong_type=True), Finding.STALE),
        (Stored({"id": "7", "warehouse": "a:b {c}*"}, None), Finding.VERSION),
        (Stored({"id": "7", "warehouse": "a:b {c}*"}, "0270"), Finding.VERSION),
    ],
)
def test_each_kind_of_difference_is_named(stored, finding):
    assert judge(_sets()["stockh:7"], stored) is finding


def test_a_json_key_holding_garbage_is_stale():
    op = next(op for key, op in _sets().items() if key.startswith("stock:"))
    assert judge(op, Stored(b"{not json", "0271")) is Finding.STALE


def test_a_key_no_row_renders_is_unexpected_only_when_present():
    assert judge(None, Stored(b"{}", "0271")) is Finding.UNEXPECTED
    assert judge(None, Stored(None, "0270")) is None


@pytest.mark.parametrize("warehouse", ["north", "a:b {c}*", "", "ünï cødé\n", None, "x" * 300])
def test_keys_parse_back_to_the_column_values_they_were_rendered_from(warehouse):
    rule = TABLE.keys[0]
    key = rule.template.render({"sku_id": 42, "warehouse": warehouse})
    values = KeyPattern.of(rule).parse(key)
    if warehouse is not None and len(escape_value(warehouse)) > 90:
        assert values == {"sku_id": "42"}  # a digested value cannot be read back
    else:
        assert values == {"sku_id": "42", "warehouse": warehouse}


def test_keys_of_another_template_do_not_parse():
    pattern = KeyPattern.of(TABLE.keys[0])
    assert pattern.parse("sku:3:availability") is None
    assert pattern.parse("stock:3") is None
    assert pattern.parse("stock:3:north:extra") is None


@pytest.mark.parametrize(
    ("total", "bad", "shown"),
    [
        (10_000, 0, "100 %"),
        (10_000, 1, "99.99 %"),
        (100_000, 13, "99.98 %"),
        (1000, 1, "99.9 %"),
        (2, 1, "50 %"),
        (0, 0, "100 %"),
    ],
)
def test_consistency_is_shown_as_nines_never_rounded_up(total, bad, shown):
    assert nines(total, bad) == shown


def test_only_stale_and_unexpected_keys_fail_the_check():
    table = TableReport("shop.stock", set_keys=10)
    table.add(Finding.MISSING, "stock:1:north: absent")
    table.add(Finding.VERSION, "stock:2:north: version missing")
    report = Report([table])
    assert report.exit_code == 0
    assert not report.clean
    table.add(Finding.STALE, "stock:3:north: holds ...")
    assert report.exit_code == 1
    assert "consistency 90 %" in report.format()


def test_the_json_report_holds_the_counts_examples_and_exit_code():
    table = TableReport("shop.stock", rows=10, rows_in_table=10, set_keys=10)
    table.add(Finding.STALE, "stock:3:north: holds ...")
    data = Report([table]).as_json()
    assert data["exit_code"] == 1 and data["checked"] == 10
    assert data["consistency"] == "90 %"
    assert data["findings"]["stale"] == 1
    assert data["tables"][0]["examples"] == {"stale": ["stock:3:north: holds ..."]}


def test_settling_rechecks_until_nothing_is_left_or_the_retries_run_out() -> None:
    slept: list[float] = []
    settling = Settling(retries=3, delay_s=0.5, sleep=slept.append)
    assert settling.settled([1, 2, 3, 4], lambda found: found[1:]) == [4]  # retries ran out
    assert slept == [0.5, 0.5, 0.5]
    slept.clear()
    assert settling.settled([1, 2], lambda found: found[1:]) == []  # gone after two re-reads
    assert slept == [0.5, 0.5]
    slept.clear()
    quiet_above = settling.settled([5], lambda found: [found[0] + 1], lambda f: f[0] > 6)
    assert quiet_above == [7] and slept == [0.5, 0.5]
    assert Settling(0, 0.5, slept.append).settled([1], lambda f: []) == [1]
