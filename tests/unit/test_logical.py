"""Column types read from a record's schema (JSON, Avro) and from the rules' declarations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdc_cache.core.logical import (
    ColumnType,
    Kind,
    RowTypes,
    avro_schema_types,
    declared,
    json_schema_types,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "debezium"


def recorded_schemas(source: str, fmt: str) -> list[object]:
    path = FIXTURES / source / "values" / "precise" / f"{fmt}.jsonl"
    out = []
    for line in path.read_text().splitlines():
        value = json.loads(line)["value"]
        if value and ('"op"' in value or '"__op"' in value):
            out.append(json.loads(value).get("schema"))
    return out


def test_an_envelope_schema_names_its_rows_logical_types() -> None:
    (schema, *_) = recorded_schemas("postgres", "schemas")
    types = json_schema_types(schema)
    assert types is not None
    assert {c: str(t) for c, t in types.columns} == {
        "d": "date", "tm3": "time_ms", "tm": "time_us", "ttz": "zoned_time",
        "dt3": "timestamp_ms", "dt": "timestamp_us", "ts": "zoned_timestamp",
        "ts3": "zoned_timestamp", "iv": "duration_us", "amount": "decimal(4)",
        "n": "variable_decimal", "f": "float32", "doc": "json", "docb": "json",
        "bits": "bits(5)", "pt": "point",
    }  # fmt: skip


def test_avro_names_the_same_types_as_json() -> None:
    for source in ("mariadb", "postgres"):
        folder = FIXTURES / source / "values" / "precise"
        registered = json.loads((folder / "avro-schemas.json").read_text())
        from_avro = {avro_schema_types(json.loads(text)) for text in registered.values()} - {None}
        from_json = {json_schema_types(s) for s in recorded_schemas(source, "schemas")}
        assert from_avro == from_json and len(from_json) == 1


def test_a_flattened_schema_leaves_out_the_added_fields() -> None:
    schema = {
        "type": "struct",
        "fields": [
            {"type": "int32", "field": "id"},
            {"type": "int32", "name": "io.debezium.time.Date", "field": "d"},
            {"type": "string", "optional": True, "field": "__deleted"},
            {"type": "string", "field": "__op"},
            {"type": "int64", "name": "io.debezium.time.Timestamp", "field": "__source_ts"},
        ],
    }
    assert json_schema_types(schema) == RowTypes([("d", ColumnType(Kind.DATE))])


def test_schemas_of_no_logical_type_say_nothing() -> None:
    assert (
        json_schema_types({"type": "struct", "fields": [{"type": "int32", "field": "id"}]}) is None
    )
    assert json_schema_types(None) is None
    assert json_schema_types({"type": "string"}) is None
    assert avro_schema_types({"type": "string"}) is None


def test_row_types_compare_and_hash_by_content() -> None:
    a = RowTypes([("d", ColumnType(Kind.DATE))])
    b = RowTypes([("d", ColumnType(Kind.DATE))])
    assert a == b and hash(a) == hash(b) and a is not b
    assert a != RowTypes([("d", ColumnType(Kind.TIME_MS))])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("date", ColumnType(Kind.DATE)),
        ("decimal", ColumnType(Kind.DECIMAL)),
        ("decimal(2)", ColumnType(Kind.DECIMAL, 2)),
        (" bits( 5 ) ", ColumnType(Kind.BITS, 5)),
        ("zoned_timestamp", ColumnType(Kind.ZONED_TIMESTAMP)),
    ],
)
def test_declared_types(text: str, expected: ColumnType) -> None:
    assert declared(text) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("datetime", "is not a column type; use one of: date, time_ms"),
        ("date(3)", "only decimal(scale) and bits(length) take a number"),
        ("bits", "give the column's length in bits"),
    ],
)
def test_wrong_declarations_say_what_is_accepted(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        declared(text)
