"""Debezium's logical types: what a column's wire value means, read from the record's schema.

Debezium ships many column types in an encoded form: a DATE as days since the epoch, a
DATETIME as epoch milliseconds, a DECIMAL as the base64 of its unscaled bytes, a JSON
column as text. The schema that travels with the record (JsonConverter with schemas, or
the Avro schema) names each column's *semantic type* (``io.debezium.time.Date``,
``org.apache.kafka.connect.data.Decimal`` with its ``scale``, ...). This module reads those
names into :class:`RowTypes`, one per distinct schema, so the values can be decoded
(:mod:`cdc_cache.source.natural`). Schemaless records carry no names; the rules can declare a
column's type in the same vocabulary (:func:`declared`).

Pure: schema documents in, frozen descriptions out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final


class Kind(StrEnum):
    """A column's logical type; the values are the names the rules' ``types:`` accept."""

    DATE = "date"  # days since 1970-01-01
    TIME_MS = "time_ms"  # since midnight
    TIME_US = "time_us"
    TIME_NS = "time_ns"
    TIMESTAMP_MS = "timestamp_ms"  # since the epoch, no zone (DATETIME, PostgreSQL TIMESTAMP)
    TIMESTAMP_US = "timestamp_us"
    TIMESTAMP_NS = "timestamp_ns"
    ZONED_TIMESTAMP = "zoned_timestamp"  # ISO-8601 text in UTC (TIMESTAMP, TIMESTAMPTZ)
    ZONED_TIME = "zoned_time"  # ISO-8601 text in UTC (TIMETZ)
    DURATION_US = "duration_us"  # INTERVAL as microseconds
    DECIMAL = "decimal"  # text (decimal.handling.mode=string), or bytes with a scale
    VARIABLE_DECIMAL = "variable_decimal"  # {"scale", "value"}: NUMERIC without a scale
    JSON = "json"  # JSON text
    BOOLEAN = "boolean"  # from 0/1 (TINYINT(1)) or a BIT(1)
    BITS = "bits"  # BIT(n > 1): little-endian bytes, n in ``size``
    GEOMETRY = "geometry"  # {"wkb", "srid"}
    POINT = "point"  # {"x", "y", ...} (PostgreSQL POINT)
    FLOAT32 = "float32"  # REAL / FLOAT: the shortest decimal of the 32-bit float
    TEXT = "text"  # as it came: no decoding (declared to keep a column's wire value)


@dataclass(frozen=True, slots=True)
class ColumnType:
    """A column's kind and its parameter: a decimal's scale, a bit string's length."""

    kind: Kind
    size: int | None = None

    def __str__(self) -> str:
        return self.kind.value if self.size is None else f"{self.kind.value}({self.size})"


class RowTypes:
    """The logical type of every column that has one, for one distinct schema.

    Hashable and compared by content (the hash is computed once), so converters built
    for one schema are found again by the next record of the same schema at the cost of
    a dictionary lookup.
    """

    __slots__ = ("_hash", "columns")

    def __init__(self, columns: Iterable[tuple[str, ColumnType]]) -> None:
        self.columns: tuple[tuple[str, ColumnType], ...] = tuple(columns)
        self._hash = hash(self.columns)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RowTypes) and other.columns == self.columns

    def __repr__(self) -> str:
        return f"RowTypes({', '.join(f'{c}: {t}' for c, t in self.columns)})"

    def as_dict(self) -> dict[str, ColumnType]:
        return dict(self.columns)


_NAMED: Final[Mapping[str, Kind]] = {
    "io.debezium.time.Date": Kind.DATE,
    "org.apache.kafka.connect.data.Date": Kind.DATE,
    "io.debezium.time.Time": Kind.TIME_MS,
    "org.apache.kafka.connect.data.Time": Kind.TIME_MS,
    "io.debezium.time.MicroTime": Kind.TIME_US,
    "io.debezium.time.NanoTime": Kind.TIME_NS,
    "io.debezium.time.Timestamp": Kind.TIMESTAMP_MS,
    "org.apache.kafka.connect.data.Timestamp": Kind.TIMESTAMP_MS,
    "io.debezium.time.MicroTimestamp": Kind.TIMESTAMP_US,
    "io.debezium.time.NanoTimestamp": Kind.TIMESTAMP_NS,
    "io.debezium.time.ZonedTimestamp": Kind.ZONED_TIMESTAMP,
    "io.debezium.time.ZonedTime": Kind.ZONED_TIME,
    "io.debezium.time.MicroDuration": Kind.DURATION_US,
    "org.apache.kafka.connect.data.Decimal": Kind.DECIMAL,
    "io.debezium.data.VariableScaleDecimal": Kind.VARIABLE_DECIMAL,
    "io.debezium.data.Json": Kind.JSON,
    "io.debezium.data.Bits": Kind.BITS,
    "io.debezium.data.geometry.Geometry": Kind.GEOMETRY,
    "io.debezium.data.geometry.Geography": Kind.GEOMETRY,
    "io.debezium.data.geometry.Point": Kind.POINT,
}
# Connect's FLOAT32 (JSON schema type "float", Avro "float").
_FLOAT32_TYPES: Final = frozenset({"float"})
_DECLARED: Final = re.compile(r"^\s*([a-z_0-9]+)\s*(?:\(\s*(\d+)\s*\))?\s*$")
_SIZED: Final = frozenset({Kind.DECIMAL, Kind.BITS})


def column_type(name: object, schema_type: object, parameters: object) -> ColumnType | None:
    """The logical type a Connect field's schema ``name``, ``type`` and ``parameters`` say.

    None for a column whose wire value is already its natural one (integers, text,
    booleans, UUIDs, enums, sets).
    """
    kind = _NAMED.get(name) if isinstance(name, str) else None
    if kind is None:
        return ColumnType(Kind.FLOAT32) if schema_type in _FLOAT32_TYPES else None
    params = parameters if isinstance(parameters, Mapping) else {}
    if kind is Kind.DECIMAL:
        return ColumnType(kind, _int(params.get("scale")))
    if kind is Kind.BITS:
        return ColumnType(kind, _int(params.get("length")))
    return ColumnType(kind)


def _int(value: object) -> int | None:
    try:
        return int(value) if isinstance(value, str | int) and not isinstance(value, bool) else None
    except ValueError:
        return None


def json_schema_types(schema: object) -> RowTypes | None:
    """The row's column types from a JsonConverter ``schema`` block; None if it says none.

    An envelope's row schema is its ``after`` (or ``before``) struct; a flattened record's
    is the record itself, minus the ``__``-prefixed fields ``add.fields`` appends.
    """
    fields = _struct_fields(schema)
    if fields is None:
        return None
    by_name = {f.get("field"): f for f in fields if isinstance(f, Mapping)}
    row = by_name.get("after") or by_name.get("before")
    if "op" in by_name and row is not None:
        fields = _struct_fields(row)
        if fields is None:
            return None
    columns = []
    for field in fields:
        if not isinstance(field, Mapping):
            continue
        name = field.get("field")
        if not isinstance(name, str) or name.startswith("__"):
            continue
        found = column_type(field.get("name"), field.get("type"), field.get("parameters"))
        if found is not None:
            columns.append((name, found))
    return RowTypes(columns) if columns else None


def _struct_fields(schema: object) -> list[Any] | None:
    if not isinstance(schema, Mapping) or schema.get("type") != "struct":
        return None
    fields = schema.get("fields")
    return fields if isinstance(fields, list) else None


def avro_schema_types(schema: object) -> RowTypes | None:
    """The row's column types from an Avro writer schema (Confluent's AvroConverter).

    The converter keeps Connect's names as ``connect.name`` and its parameters as
    ``connect.parameters`` on each field's type (inside a ``["null", T]`` union for
    optional columns); a named type used again (``"after": ["null", "Value"]``) is looked
    up where it was defined.
    """
    if not isinstance(schema, Mapping) or schema.get("type") != "record":
        return None
    named: dict[str, Mapping[str, Any]] = {}
    _collect_named(schema, named)
    fields = [f for f in schema.get("fields", ()) if isinstance(f, Mapping)]
    by_name = {f.get("name"): f for f in fields}
    row = by_name.get("after") or by_name.get("before")
    if "op" in by_name and row is not None:
        record = _resolve(_non_null(row.get("type")), named)
        if not isinstance(record, Mapping) or record.get("type") != "record":
            return None
        fields = [f for f in record.get("fields", ()) if isinstance(f, Mapping)]
    columns = []
    for field in fields:
        name = field.get("name")
        if not isinstance(name, str) or name.startswith("__"):
            continue
        kind = _resolve(_non_null(field.get("type")), named)
        if isinstance(kind, Mapping):
            found = column_type(
                kind.get("connect.name"), kind.get("type"), kind.get("connect.parameters")
            )
        else:
            found = column_type(None, kind, None)
        if found is not None:
            columns.append((name, found))
    return RowTypes(columns) if columns else None


def _non_null(kind: object) -> object:
    """The one non-null branch of Debezium's ``["null", T]`` unions (T itself otherwise)."""
    if isinstance(kind, list):
        others = [k for k in kind if k != "null"]
        return others[0] if len(others) == 1 else None
    return kind


def _resolve(kind: object, named: Mapping[str, Mapping[str, Any]]) -> object:
    return named.get(kind, kind) if isinstance(kind, str) else kind


def _collect_named(schema: object, named: dict[str, Mapping[str, Any]]) -> None:
    """Every record, enum and fixed type declared anywhere in ``schema``, by (full) name."""
    if isinstance(schema, list):
        for item in schema:
            _collect_named(item, named)
    elif isinstance(schema, Mapping):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed") and isinstance(schema.get("name"), str):
            name, namespace = schema["name"], schema.get("namespace")
            named[name] = schema
            if namespace and "." not in name:
                named[f"{namespace}.{name}"] = schema
        for field in schema.get("fields", ()) if kind == "record" else ():
            if isinstance(field, Mapping):
                _collect_named(field.get("type"), named)
        for key in ("items", "values"):
            if key in schema:
                _collect_named(schema[key], named)
        if isinstance(kind, list | Mapping):
            _collect_named(kind, named)


def declared(text: str) -> ColumnType:
    """A column type as the rules write it: ``date``, ``decimal(2)``, ``bits(5)``, ...

    ``decimal`` alone is a decimal sent as text (``decimal.handling.mode=string``);
    ``decimal(S)`` one sent as bytes with scale S (``precise``). Raises ValueError naming
    the accepted names.
    """
    match = _DECLARED.match(text)
    kind = None
    if match is not None:
        try:
            kind = Kind(match.group(1))
        except ValueError:
            kind = None
    if kind is None or match is None:
        names = ", ".join(k.value + ("(n)" if k in _SIZED else "") for k in Kind)
        msg = f"'{text}' is not a column type; use one of: {names}"
        raise ValueError(msg)
    size = int(match.group(2)) if match.group(2) is not None else None
    if size is not None and kind not in _SIZED:
        msg = f"'{text}': only decimal(scale) and bits(length) take a number"
        raise ValueError(msg)
    if kind is Kind.BITS and size is None:
        msg = f"'{text}': give the column's length in bits, e.g. bits(5)"
        raise ValueError(msg)
    return ColumnType(kind, size)
