"""RowCodec: the key and value a fill writes are the worker's, from a driver's row."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import orjson
import pytest

from cdc_cache.aside.fill import RowCodec
from cdc_cache.core.events import ChangeEvent, Op
from cdc_cache.core.logical import ColumnType, Kind, RowTypes
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import SetRow
from cdc_cache.plan.planner import plan
from cdc_cache.plan.rules_loader import parse_rules

RULES = parse_rules("""
version: 2
tables:
  shop.orders:
    types: {paid: boolean}
    keys:
      - key: "order:{id}"
      - key: "day:{placed_on}:{id}"
        format: hash
        fields: [id, total, paid]
""")
ROW = {
    "id": 7,
    "placed_on": dt.date(2026, 11, 29),
    "total": Decimal("12.50"),
    "paid": 1,
    "doc": {"a": [1]},
}
# The same row as Debezium ships it, with the types its schema names.
SHIPPED = {"id": 7, "placed_on": 20786, "total": "BOI=", "paid": 1, "doc": '{"a": [1]}'}
TYPES = RowTypes(
    [
        ("placed_on", ColumnType(Kind.DATE)),
        ("total", ColumnType(Kind.DECIMAL, 2)),
        ("doc", ColumnType(Kind.JSON)),
    ]
)


def worker_ops() -> list[SetRow]:
    event = ChangeEvent(
        table="shop.orders",
        op=Op.CREATE,
        before=None,
        after=SHIPPED,
        key={"id": 7},
        position=SourcePosition(0, 1, 4, 0),
        committed_at_ms=None,
        types=TYPES,
    )
    table = RULES.tables["shop.orders"]
    return [op for op in plan(table.values.event(event), RULES) if isinstance(op, SetRow)]


def test_a_fill_writes_the_workers_bytes_under_the_workers_key() -> None:
    json_op, hash_op = worker_ops()
    codec = RowCodec(RULES, "shop.orders")
    assert codec.key({"id": 7}) == json_op.key == "order:7"
    assert codec.value(ROW) == json_op.value
    assert orjson.loads(codec.value(ROW)) == {
        "id": 7,
        "placed_on": "2026-11-29",
        "total": "12.50",
        "paid": True,
        "doc": {"a": [1]},
    }
    by_day = RowCodec(RULES, "shop.orders", key="day:{placed_on}:{id}")
    assert by_day.key(ROW) == hash_op.key == "day:2026-11-29:7"
    assert isinstance(hash_op.value, tuple)
    assert by_day.fields(ROW) == dict(hash_op.value)


def test_the_codec_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="not covered"):
        RowCodec(RULES, "shop.other")
    with pytest.raises(
        ValueError, match=re.escape("no key 'nope:{id}'; its set rules: 'order:{id}'")
    ):
        RowCodec(RULES, "shop.orders", key="nope:{id}")
    wire = parse_rules('tables:\n  shop.orders:\n    keys: [{key: "order:{id}"}]\n')
    with pytest.raises(ValueError, match="set version: 2"):
        RowCodec(wire, "shop.orders")
    with pytest.raises(ValueError, match="format: hash rule; use fields"):
        RowCodec(RULES, "shop.orders", key="day:{placed_on}:{id}").value(ROW)
    with pytest.raises(ValueError, match="format: json rule; use value"):
        RowCodec(RULES, "shop.orders").fields(ROW)


def test_what_the_cursor_says_is_given_once_to_the_codec() -> None:
    rules = parse_rules('version: 2\ntables:\n  shop.orders:\n    keys: [{key: "order:{id}"}]\n')
    zone = dt.timezone(dt.timedelta(hours=2))
    # A MySQL TIMESTAMP as PyMySQL returns it in a session at +02:00: naive.
    stamped = {"id": 1, "at": dt.datetime(2026, 11, 29, 14, 0, tzinfo=zone).replace(tzinfo=None)}
    described = {"at": ColumnType(Kind.ZONED_TIMESTAMP)}
    codec = RowCodec(rules, "shop.orders", zone=zone, described=described)
    assert orjson.loads(codec.value(stamped))["at"] == "2026-11-29T12:00:00Z"
    bare = RowCodec(rules, "shop.orders", zone=zone)  # a naive value without a type: no zone
    assert orjson.loads(bare.value(stamped))["at"] == "2026-11-29T14:00:00"
