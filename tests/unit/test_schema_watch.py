"""DDL awareness: a table's new columns are checked against the rules when they show up."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from cdc_cache.core.events import SchemaChange, SourceRecord
from cdc_cache.core.positions import SourcePosition
from cdc_cache.dlq.entries import Failure
from cdc_cache.mode.holds import Holds
from cdc_cache.mode.schema_watch import SchemaWatch, problems
from cdc_cache.mode.tables import TableConfig, TableFallback
from cdc_cache.plan.route import Rejected, route
from cdc_cache.plan.rules import Use
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.source.envelope import decode

FIXTURES = Path(__file__).parents[1] / "fixtures" / "debezium" / "mariadb"
RULES_TEXT = """\
tables:
  shop.items:
    columns: [id, name, price, note]
    watch: [id, name, price]
    sensitive: [note]
    keys:
      - key: "item:{id}"
        fields: [id, name, price]
      - key: "itemname:{name}"
        action: delete
"""
RULES = parse_rules(RULES_TEXT, "rules.yaml")
TABLE = RULES.tables["shop.items"]


def line_of(text: str) -> int:
    return next(n for n, line in enumerate(RULES_TEXT.splitlines(), 1) if text in line)


def test_a_dropped_projected_column_is_named_with_its_rules_line_and_the_fix():
    found = problems(TABLE, frozenset({"id", "name", "note"}), "rules.yaml")

    assert [(p.use.use, p.use.line) for p in found] == [
        (Use.COLUMNS, line_of("columns:")),
        (Use.WATCH, line_of("watch:")),
        (Use.FIELDS, line_of("fields: [id, name, price]")),
    ]
    fields = found[-1]
    assert fields.breaks_changes and not found[0].breaks_changes
    assert fields.text() == (
        f"rules.yaml:{line_of('fields: [id')}: tables.shop.items.keys[0].fields: column "
        "'price' is not a column of shop.items; remove it from fields: until then "
        "every change of the table is dead-lettered (its keys deleted)"
    )


def test_a_renamed_key_column_suggests_the_new_name():
    before = frozenset({"id", "name", "price", "note"})
    found = problems(TABLE, frozenset({"id", "title", "price", "note"}), "r.yaml", before)
    key = next(p for p in found if p.use.use is Use.KEY)
    assert key.use.column == "name" and key.use.line == line_of('key: "itemname')
    assert "'name' is no longer a column of shop.items" in key.text()
    assert key.fix().startswith("change the key template")
    assert key.fix().endswith("if it was renamed, the table's new columns are title")


def test_rules_that_fit_have_no_problem():
    assert problems(TABLE, frozenset({"id", "name", "price", "note", "added"}), "r") == []


def ddl(columns: list[str], pos: int, table: str = "items", text: str = "ALTER TABLE") -> Any:
    source = {"connector": "mysql", "name": "p", "db": "shop", "table": table}
    source |= {"file": "mysql-bin.000004", "pos": pos, "row": 0, "ts_ms": 1}
    value = {
        "source": source,
        "databaseName": "shop",
        "ddl": text,
        "tableChanges": [
            {
                "type": "ALTER",
                "id": f'"shop"."{table}"',
                "table": {"columns": [{"name": c, "typeName": "INT"} for c in columns]},
            }
        ],
    }
    return route(SourceRecord("p", 0, pos, b'{"databaseName":"shop"}', orjson.dumps(value)), RULES)


def row(after: dict[str, Any], pos: int, op: str = "u") -> Any:
    """An update that changes nothing (planned with no op), or an insert (``op="c"``)."""
    source = {"connector": "mysql", "db": "shop", "table": "items", "file": "mysql-bin.000004"}
    source |= {"pos": pos, "row": 0, "ts_ms": 1}
    before = after if op == "u" else None
    value = orjson.dumps({"before": before, "after": after, "op": op, "source": source})
    return route(SourceRecord("p.shop.items", 0, pos, b'{"id": 1}', value), RULES)


def problems_metric(breaks: str) -> float | None:
    labels = {"table": "shop.items", "breaks": breaks}
    return REGISTRY.get_sample_value("cdc_cache_rules_column_problems", labels)


FULL = {"id": 1, "name": "lamp", "price": "1.00", "note": None}


def test_a_ddl_record_is_checked_before_any_row_of_the_new_shape(caplog):
    holds = Holds()
    watch = SchemaWatch(RULES, TableFallback(RULES.tables, holds, 5_000))
    watch.observe([row(FULL, 100)])
    assert problems_metric("true") == 0

    with caplog.at_level(logging.ERROR, "cdc_cache.schema_watch"):
        watch.observe([ddl(["id", "name", "note"], 200, text="ALTER TABLE items DROP price")])

    assert problems_metric("true") == 1 and problems_metric("false") == 2
    (hold,) = holds.active()
    assert hold.label == "table_failing:shop.items"
    assert f"(rules.yaml:{line_of('fields: [id')})" in hold.reason
    reported = [r for r in caplog.records if r.getMessage().startswith("the rules name")]
    assert {r.rules for r in reported} == {  # type: ignore[attr-defined]
        f"rules.yaml:{line_of(text)}" for text in ("columns:", "watch:", "fields: [id")
    }
    assert all(r.origin == "DDL ALTER TABLE items DROP price" for r in reported)  # type: ignore[attr-defined]

    # A backlog row of the old shape, read after the DDL, does not undo what it says.
    watch.observe([row(FULL, 150)])
    assert problems_metric("true") == 1
    # A later DDL that brings the column back clears the problem and the fallback.
    watch.observe([ddl(["id", "name", "price", "note"], 300)])
    assert problems_metric("true") == 0
    assert holds.active() == ()


def test_rows_alone_tell_a_changed_shape_in_any_message_format():
    """No DDL topic (PostgreSQL, or not subscribed): the first row of the new shape does."""
    holds = Holds()
    watch = SchemaWatch(RULES, TableFallback(RULES.tables, holds, 5_000))
    watch.observe([row(FULL, 100)])
    migrated = {"id": 1, "name": "lamp", "note": None}
    watch.observe([row(migrated, 200)])  # a Rejected change (price cannot be rendered)

    assert problems_metric("true") == 1
    assert watch.known("shop.items").columns == frozenset(migrated)  # type: ignore[union-attr]
    assert [h.label for h in holds.active()] == ["table_failing:shop.items"]


def test_tables_without_rules_are_not_watched():
    watch = SchemaWatch(RULES)
    watch.observe([ddl(["a"], 100, table="other")])
    assert watch.known("shop.other") is None


def test_recorded_alter_table_record_carries_the_new_columns_and_its_position():
    lines = (json.loads(line) for line in (FIXTURES / "schemas.jsonl").read_text().splitlines())
    record = next(r for r in lines if r["topic"] == "dbz" and '"ALTER TABLE' in r["value"])
    decoded = decode(SourceRecord("dbz", 0, 0, record["key"].encode(), record["value"].encode()))
    assert isinstance(decoded, SchemaChange)
    assert decoded.columns == {
        "inventory.products": ("id", "name", "description", "price", "color")
    }
    assert decoded.position is not None and decoded.position > SourcePosition(0, 1, 3276, 0)


@pytest.mark.parametrize("table_changes", [None, "x", [{"type": "ALTER", "id": 5}], [{}]])
def test_a_ddl_record_of_an_unknown_shape_is_still_a_schema_change(table_changes):
    value = {"source": {"connector": "mysql"}, "ddl": "ALTER", "tableChanges": table_changes}
    decoded = decode(SourceRecord("dbz", 0, 0, None, orjson.dumps(value)))
    assert isinstance(decoded, SchemaChange) and decoded.columns == {}


def test_the_worker_reads_the_schema_change_topic_of_each_connector_it_follows():
    from cdc_cache.app.worker import schema_change_topics

    existing = {"db1", "db1.shop.items", "db1.shop.stock", "db2", "db2.x.y", "other", "db3.a.b"}
    assert schema_change_topics(existing, ["db1.shop.items", "db1.shop.stock", "db3.a.b"]) == [
        "db1"
    ]
    assert schema_change_topics(existing, ["db1", "db1.shop.items"]) == []
    # Routed or renamed topics name no connector: their heartbeat topics do.
    routed = {"prod.eu.db4", "inventory.cdc", "__debezium-heartbeat.prod.eu.db4"}
    read = ["inventory.cdc", "__debezium-heartbeat.prod.eu.db4"]
    assert schema_change_topics(routed, read) == ["prod.eu.db4"]


def test_columns_named_by_value_settings_are_reported_without_breaking_changes():
    text = """\
version: 2
tables:
  shop.orders:
    types: {placed_on: date}
    render: {total: number}
    keys:
      - key: "order:{id}"
"""
    table = parse_rules(text, "rules.yaml").tables["shop.orders"]

    found = problems(table, frozenset({"id"}), "rules.yaml")

    assert [(p.use.use, p.use.column, p.use.line) for p in found] == [
        (Use.TYPES, "placed_on", 4),
        (Use.RENDER, "total", 5),
    ]
    assert not any(p.breaks_changes for p in found)
    assert found[0].fix() == "remove it from types"


def test_a_first_change_without_a_column_the_rules_need_falls_back_and_is_reported(caplog):
    """No message stops the worker: the first change of a table is judged like a later one.

    It is dead-lettered with its reason (the writer does that with every rejection), the
    table falls back to ttl mode, and the rules line is reported with its fix."""
    holds = Holds()
    watch = SchemaWatch(RULES, TableFallback(RULES.tables, holds, 5_000))
    first = row({"id": 1, "name": "lamp", "note": None}, 100, "c")
    assert isinstance(first, Rejected) and "'price'" in first.error.reason
    assert [d.key for d in first.invalidation.deletes] == ["item:1", "itemname:lamp"]

    with caplog.at_level(logging.ERROR, "cdc_cache.schema_watch"):
        watch.observe([first])  # nothing raised
        watch.observe([first])  # nor when read again (a restart)

    assert problems_metric("true") == 1
    (hold,) = holds.active()
    assert hold.label == "table_failing:shop.items"
    assert f"column 'price' (rules.yaml:{line_of('fields: [id')})" in hold.reason
    (fields,) = [r for r in caplog.records if getattr(r, "where", "").endswith(".fields")]
    assert fields.rules == f"rules.yaml:{line_of('fields: [id')}"  # type: ignore[attr-defined]
    assert fields.fix.startswith("remove it from fields")  # type: ignore[attr-defined]
    assert fields.origin == "row change"  # type: ignore[attr-defined]


def test_a_table_first_seen_without_a_column_returns_once_its_changes_carry_it():
    """A backlog that predates the migration adding the column: once rows of the new shape
    come, the table returns to cdc mode as a table whose columns fit again does (no change
    failed for the window, and a batch of its changes applied)."""
    now = [1000.0]
    holds = Holds()
    tables = TableFallback(RULES.tables, holds, 5_000, TableConfig(5, 60), clock=lambda: now[0])
    watch = SchemaWatch(RULES, tables)
    old = row({"id": 1, "name": "lamp", "note": None}, 100, "c")
    watch.observe([old])
    tables.observe({}, [Failure(old.error, "shop.items", old.event)])  # as the writer does
    assert [h.label for h in holds.active()] == ["table_failing:shop.items"]

    watch.observe([row(FULL, 300)])
    tables.observe({"shop.items": 1}, [])
    assert problems_metric("true") == 0
    state = tables.state("shop.items")
    assert state is not None and state.failing, "its failure is within the window"
    assert state.reason == "its columns fit the rules again; back once its changes apply"

    now[0] += 61
    assert holds.active(), "a quiet table stays in fallback"
    tables.observe({"shop.items": 1}, [])
    assert holds.active() == ()


def test_a_ddl_record_first_is_a_schema_change_and_the_first_row_changes_nothing():
    """The schema-change topic may be read before the table's: either order falls back."""
    holds = Holds()
    watch = SchemaWatch(RULES, TableFallback(RULES.tables, holds, 5_000))
    watch.observe([ddl(["id", "name", "note"], 200, text="ALTER TABLE items DROP price")])
    assert [h.label for h in holds.active()] == ["table_failing:shop.items"]
    watch.observe([row({"id": 1, "name": "lamp", "note": None}, 300)])  # nothing raised
    assert [h.label for h in holds.active()] == ["table_failing:shop.items"]
    assert problems_metric("true") == 1


def test_a_value_that_does_not_decode_is_no_missing_column():
    """Its change is dead-lettered with its images short of that column: the table still
    has it. Taken for the table's columns, one such message made the table fall back as if
    a migration had dropped the column."""
    natural = parse_rules(
        RULES_TEXT.replace("tables:", "version: 2\ntables:").replace(
            "    watch:", "    types: {price: decimal(2)}\n    watch:"
        ),
        "rules.yaml",
    )
    source = {"connector": "mysql", "db": "shop", "table": "items", "file": "mysql-bin.000004"}
    bad = {**FULL, "price": "not base64!"}
    value = {"before": None, "after": bad, "op": "c", "source": source | {"pos": 100}}
    rejected = route(SourceRecord("p.shop.items", 0, 1, b'{"id": 1}', orjson.dumps(value)), natural)
    assert isinstance(rejected, Rejected) and "column 'price'" in rejected.error.reason
    holds = Holds()
    watch = SchemaWatch(natural, TableFallback(natural.tables, holds, 5_000))
    watch.observe([rejected])  # first: no fall back
    watch.observe([row(FULL, 200)])
    watch.observe([rejected])  # later: no fall back
    assert not holds.active()
    assert watch.known("shop.items").columns == frozenset(FULL)  # type: ignore[union-attr]


def test_a_first_row_that_fits_after_a_ddl_record_is_no_problem():
    watch = SchemaWatch(RULES, TableFallback(RULES.tables, Holds(), 5_000))
    watch.observe([ddl(["id", "name", "price", "note"], 200)])
    watch.observe([row(FULL, 300)])  # nothing raised
    assert watch.known("shop.items").columns == frozenset(FULL)  # type: ignore[union-attr]
