"""Avro (Confluent wire format) decodes to the same ChangeEvents as JSON.

The recordings hold, for every engine record, JsonConverter's and Debezium's own
AvroConverter's bytes plus the schemas the converter registered; both were taken with the
recorder's connector settings (decimal.handling.mode=string, default time precision,
tombstones on delete), so the comparison is like for like.
"""

from __future__ import annotations

import base64
import io
import json
import struct
from decimal import Decimal

import fastavro
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.core.errors import DecodeError, PoisonMessage
from cdc_cache.core.events import ChangeEvent, SourceRecord
from cdc_cache.source.avro import AvroParser, AvroSchema, float32, parse_schema, schema_id
from cdc_cache.source.envelope import decode
from tests.unit.test_envelope import FIXTURES, SOURCES, Recorded, load


def load_avro(source: str) -> tuple[list[Recorded], dict[int, AvroSchema | str]]:
    """The Avro recording of ``source`` and its registry's schemas, parsed."""
    registered = json.loads((FIXTURES / source / "avro-schemas.json").read_text())
    schemas: dict[int, AvroSchema | str] = {
        int(sid): parse_schema(int(sid), text) for sid, text in registered.items()
    }
    out = []
    for offset, line in enumerate((FIXTURES / source / "avro.jsonl").read_text().splitlines()):
        doc = json.loads(line)
        key, value = doc["key"], doc["value"]
        record = SourceRecord(
            doc["topic"],
            0,
            offset,
            None if key is None else base64.b64decode(key),
            None if value is None else base64.b64decode(value),
        )
        out.append(Recorded(record, doc["seq"], doc["scenario"]))
    return out, schemas


def outcome(record: SourceRecord, parse: AvroParser | None = None) -> object:
    try:
        return decode(record, parse=parse)
    except PoisonMessage as exc:
        return (type(exc).__name__, exc.reason)


# <source>/types: dates, times, timestamps, decimals, floats, JSON and bytes recorded with
# time.precision.mode=connect and decimal.handling.mode=precise, so the Avro schemas carry
# the date, time-millis, timestamp-millis and decimal logical types.
RECORDINGS = [*SOURCES, *(f"{source}/types" for source in SOURCES)]


@pytest.mark.parametrize("source", RECORDINGS)
def test_avro_and_json_of_the_same_records_decode_identically(source: str) -> None:
    json_records = load(source, "schemas")
    avro_records, schemas = load_avro(source)
    parser = AvroParser(schemas)
    assert [r.seq for r in avro_records] == [r.seq for r in json_records]
    compared = 0
    for as_json, as_avro in zip(json_records, avro_records, strict=True):
        assert as_avro.record.value is None or as_avro.record.value[0] == 0  # really Avro
        expected = outcome(as_json.record)
        assert outcome(as_avro.record, parser) == expected, as_json.scenario
        compared += isinstance(expected, ChangeEvent)
    assert compared >= (3 if source.endswith("types") else 20)


@pytest.mark.parametrize("source", SOURCES)
def test_the_types_recording_exercises_avro_logical_types(source: str) -> None:
    registered = (FIXTURES / source / "types" / "avro-schemas.json").read_text()
    for logical in ("date", "time-millis", "timestamp-millis", "decimal"):
        assert f'\\"logicalType\\":\\"{logical}\\"' in registered, logical


def test_bad_magic_is_poison_with_a_hint() -> None:
    record = SourceRecord("dbz.inventory.stock", 0, 7, b"\x00\x00\x00\x00\x01\x02", b'{"op":"c"}')
    with pytest.raises(DecodeError, match=r"value is not Confluent Avro.*set message_format=json"):
        decode(record, parse=AvroParser({}))


def test_short_header_is_poison() -> None:
    with pytest.raises(DecodeError, match="got 0x00 in 3 byte"):
        schema_id(b"\x00\x00\x01")


def test_unknown_schema_id_is_poison_with_the_reason() -> None:
    avro_records, _ = load_avro("mariadb")
    record = next(r.record for r in avro_records if r.record.value is not None)
    sid = schema_id(record.value or b"")
    parser = AvroParser({sid: f"schema id {sid} is not in the schema registry at http://r"})
    with pytest.raises(DecodeError, match=f"schema id {sid} is not in the schema registry"):
        decode(record, parse=parser)


def test_truncated_or_padded_body_is_poison() -> None:
    avro_records, schemas = load_avro("postgres")
    record = next(r.record for r in avro_records if r.record.value and r.scenario == "insert")
    value = record.value or b""
    parser = AvroParser(schemas)
    for broken in (value[:-3], value + b"\x00\x00"):
        bad = SourceRecord(record.topic, 0, 1, record.key, broken)
        with pytest.raises(DecodeError, match="schema id"):
            decode(bad, parse=parser)


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "record", "name": "x"}',
        "5",
        '{"type": "record", "name": "x", "fields": 5}',
        '{"type": "record", "name": 5, "fields": []}',
        '{"type": ["int", "string"]}',
        '{"type": {"type": "int"}}',
        "[" * 1000 + '"int"' + "]" * 1000,
    ],
)
def test_invalid_registry_schema_is_refused_with_its_id(text: str) -> None:
    """Any schema that does not parse is its messages' poison; one that raised TypeError
    (a record whose fields are no list, say) stopped the worker resolving its batch."""
    with pytest.raises(ValueError, match="schema id 9 is not a valid Avro schema"):
        parse_schema(9, text)


ROW_SCHEMA = {
    "type": "record",
    "name": "Value",
    "namespace": "dbz.inventory.types",
    "fields": [
        {"name": "id", "type": "int"},
        {"name": "born", "type": ["null", {"type": "int", "logicalType": "date"}]},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "t", "type": {"type": "int", "logicalType": "time-millis"}},
        {
            "name": "price",
            "type": [
                "null",
                {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2},
            ],
        },
        {
            "name": "doc",
            "type": ["null", {"type": "string", "connect.name": "io.debezium.data.Json"}],
        },
        {"name": "ratio", "type": "float"},
        {"name": "blob", "type": ["null", "bytes"]},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "next", "type": ["null", "Value"]},
    ],
}


def frame(schema_id: int, schema: dict, value: dict) -> bytes:
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(_raw(schema)), value)
    return b"\x00" + struct.pack(">I", schema_id) + body.getvalue()


def _raw(schema: object) -> object:
    """The schema without logical types: the test writes the wire values JSON also holds."""
    if isinstance(schema, dict):
        return {k: _raw(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_raw(v) for v in schema]
    return schema


def test_logical_types_keep_the_values_jsonconverter_writes() -> None:
    # What JsonConverter writes for the same Connect record: dates as epoch days, times and
    # timestamps as milliseconds, decimals and bytes as base64, JSON columns as text.
    unscaled = (123456).to_bytes(3, "big", signed=True)
    nested = {
        **dict.fromkeys(["born", "price", "doc", "next"]),
        **{"id": 2, "at": 0, "t": 0, "ratio": 0.5, "blob": b"\x01", "tags": []},
    }
    row = {
        "id": 1,
        "born": 19_000,
        "at": 1_700_000_000_123,
        "t": 3_600_000,
        "price": unscaled,
        "doc": '{"a": [1, 2]}',
        "ratio": 1.1,
        "blob": b"\x00\xff",
        "tags": ["x"],
        "next": nested,  # a recursive reference to the named record type
    }
    parser = AvroParser({3: parse_schema(3, json.dumps(ROW_SCHEMA))})
    decoded = parser(frame(3, ROW_SCHEMA, row), "value")
    assert decoded == {
        **row,
        "price": base64.b64encode(unscaled).decode(),
        "blob": "AP8=",
        "next": {**nested, "blob": "AQ=="},
    }
    assert orjson.loads(orjson.dumps(decoded)) == decoded  # plain JSON data


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_prints_the_shortest_decimal_of_the_same_float(value: float) -> None:
    widened = struct.unpack("<f", struct.pack("<f", value))[0]
    shortest = float32(widened)
    assert struct.pack("<f", shortest) == struct.pack("<f", value)
    assert _digits(shortest) <= _digits(widened)


def _digits(value: float) -> int:
    """Significant digits of the shortest repr (``1e+15`` has one, not sixteen)."""
    return len(Decimal(repr(value)).normalize().as_tuple().digits)


@pytest.mark.parametrize(
    "items",
    [
        '"null"',
        '{"type": "record", "name": "Nothing", "fields": []}',
        '{"type": "record", "name": "Nulls", "fields": [{"name": "n", "type": "null"}]}',
        '{"type": "fixed", "name": "F", "size": 0}',
    ],
)
def test_array_of_items_that_take_no_bytes_is_refused(items: str) -> None:
    """A block count alone sets such an array's length: a few bytes asked the reader for
    10**7 nulls (80 MB, 0.7 s), and 2**62 ran the worker out of memory."""
    text = (
        '{"type": "record", "name": "Value", "namespace": "x", "fields": ['
        f'{{"name": "a", "type": ["null", {{"type": "array", "items": {items}}}]}}]}}'
    )
    with pytest.raises(ValueError, match="schema id 9 is not a valid Avro schema: an array of"):
        parse_schema(9, text)


def test_array_of_a_named_empty_record_is_refused_however_it_is_named() -> None:
    text = orjson.dumps(
        {
            "type": "record",
            "name": "Value",
            "namespace": "x",
            "fields": [
                {"name": "e", "type": {"type": "record", "name": "Empty", "fields": []}},
                {"name": "a", "type": {"type": "array", "items": "x.Empty"}},
            ],
        }
    ).decode()
    with pytest.raises(ValueError, match=r"an array of 'x\.Empty'"):
        parse_schema(9, text)


def test_arrays_and_maps_whose_items_take_bytes_are_kept() -> None:
    text = orjson.dumps(
        {
            "type": "record",
            "name": "Value",
            "fields": [
                {"name": "tree", "type": {"type": "array", "items": "Value"}},
                {"name": "nulls", "type": {"type": "map", "values": "null"}},
                {"name": "maybe", "type": {"type": "array", "items": ["null", "int"]}},
                {
                    "name": "one",
                    "type": {"type": "array", "items": {"type": "fixed", "name": "B", "size": 1}},
                },
            ],
        }
    ).decode()
    assert parse_schema(9, text).schema_id == 9


FLAT_KEY = {"type": "record", "name": "Key", "fields": [{"name": "id", "type": "int"}]}
FLAT_ADDED = [
    ("__op", "string"),
    ("__connector", "string"),
    ("__db", "string"),
    ("__table", "string"),
    ("__file", "string"),
    ("__pos", "long"),
    ("__row", "int"),
    ("__source_ts_ms", "long"),
]


def flat_schema(rewrite: bool) -> dict:
    """A flattened row's value schema as AvroConverter registers it: rewrite mode adds
    ``__deleted`` (an optional string) before the ``add.fields``."""
    added = [("__deleted", "string")] if rewrite else []
    return {
        "type": "record",
        "name": "Value",
        "fields": [
            {"name": "id", "type": "int"},
            {"name": "name", "type": ["null", "string"], "default": None},
            *({"name": n, "type": ["null", t], "default": None} for n, t in added + FLAT_ADDED),
        ],
    }


@pytest.mark.parametrize("rewrite", [True, False])
def test_a_flattened_avro_record_says_whether_it_shows_the_tables_deletes(rewrite: bool) -> None:
    schema = flat_schema(rewrite)
    parser = AvroParser(
        {1: parse_schema(1, json.dumps(FLAT_KEY)), 2: parse_schema(2, json.dumps(schema))}
    )
    row = {
        "id": 7, "name": "bolt", "__op": "u", "__connector": "mysql", "__db": "shop",
        "__table": "items", "__file": "mysql-bin.000003", "__pos": 154, "__row": 0,
        "__source_ts_ms": 1_700_000_000_000,
        **({"__deleted": "false"} if rewrite else {}),
    }  # fmt: skip
    key, value = frame(1, FLAT_KEY, {"id": 7}), frame(2, schema, row)
    event = decode(SourceRecord("db1.shop.items", 0, 0, key, value), parse=parser)
    assert isinstance(event, ChangeEvent)
    assert (event.table, event.after, event.deletes_hidden) == (
        "shop.items",
        {"id": 7, "name": "bolt"},
        not rewrite,
    )
