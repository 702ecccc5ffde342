"""Decode Confluent-framed Avro (Kafka Connect's ``AvroConverter``) into JSON-shaped values.

Pure: the schemas are resolved beforehand (see :mod:`cdc_cache.source.schema_registry`) and
handed in, so decoding does no I/O. The wire format is one magic byte ``0``, the schema id
as a 4-byte big-endian integer, then the Avro binary body.

The decoded value is made identical to what ``JsonConverter`` writes for the same Connect
record, so :mod:`cdc_cache.source.envelope` turns both into the same ``ChangeEvent``:

* Avro logical types are not interpreted here: ``date`` stays days since the epoch,
  ``time-millis`` milliseconds, ``timestamp-millis`` epoch milliseconds, as JSON has them
  (Debezium's own ``io.debezium.time.*`` types are plain ints/strings in both). The types
  the schema names travel with the change (``AvroSchema.types``), and
  :mod:`cdc_cache.source.natural` decodes JSON and Avro values alike.
* ``bytes``/``fixed`` (and so ``decimal`` under ``decimal.handling.mode=precise``) become
  base64 text, as JsonConverter writes BYTES and Connect decimals.
* ``float`` becomes the shortest decimal that reads back as the same 32-bit float, which
  is how Java prints it into JSON (Avro yields the float widened to 64 bits).
"""

from __future__ import annotations

import base64
import io
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import fastavro
import orjson

from cdc_cache.core.errors import DecodeError
from cdc_cache.core.logical import RowTypes, avro_schema_types

MAGIC: Final = 0
HEADER: Final = 5
MAX_SCHEMA_ID: Final = 2**31 - 1
"""Registries number schemas with Java ints: a header naming a larger id names none, and
Confluent's answers the request for it as for a path it does not serve (404), not as for
an unknown schema; so it is not asked."""
_LOGICAL: Final = "logicalType"

Normalise = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class AvroSchema:
    """A writer schema as the registry holds it, parsed once for reading.

    ``types`` are the row's column logical types it names (Connect's ``connect.name``).
    """

    schema_id: int
    text: str
    parsed: Any
    normalise: Normalise
    types: RowTypes | None = None


def parse_schema(schema_id: int, text: str) -> AvroSchema:
    """Parse registry schema text; ``ValueError`` says why it is unusable."""
    try:
        document = orjson.loads(text)
        parsed = fastavro.parse_schema(_without_logical_types(document))
        _refuse_empty_items(parsed)
        normalise = _normaliser(document, {})
        types = avro_schema_types(document)
    except (
        fastavro.schema.SchemaParseException,
        ValueError,  # orjson's JSONDecodeError among them
        # shapes no Avro schema has (a record whose fields are no list, nesting past
        # Python's recursion limit), met by fastavro or the readers here
        TypeError,
        KeyError,
        AttributeError,
        RecursionError,
    ) as exc:
        msg = f"schema id {schema_id} is not a valid Avro schema: {exc}"
        raise ValueError(msg) from None
    return AvroSchema(schema_id, text, parsed, normalise, types)


def schema_id(data: bytes, what: str = "value") -> int:
    """The schema id in a Confluent wire-format header; DecodeError if there is none."""
    if len(data) < HEADER or data[0] != MAGIC:
        hint = " (looks like JSON: set message_format=json)" if data[:1] in (b"{", b"[") else ""
        first = f"0x{data[0]:02x}" if data else "nothing"
        msg = (
            f"{what} is not Confluent Avro: expected magic byte 0x00 and a 4-byte schema id, "
            f"got {first} in {len(data)} byte(s){hint}"
        )
        raise DecodeError(msg)
    sid = int.from_bytes(data[1:HEADER], "big")
    if sid > MAX_SCHEMA_ID:
        msg = f"{what} names schema id {sid}, above {MAX_SCHEMA_ID}: no registry numbers one so"
        raise DecodeError(msg)
    return sid


def header_id(data: bytes | None) -> int | None:
    """The schema id of ``data`` when it has a valid header, else None (for resolving)."""
    if data is None or len(data) < HEADER or data[0] != MAGIC:
        return None
    sid = int.from_bytes(data[1:HEADER], "big")
    return sid if sid <= MAX_SCHEMA_ID else None


class AvroParser:
    """``envelope.decode``'s parse step for Avro: bytes and a label in, a JSON-shaped value out.

    ``schemas`` maps schema ids to a parsed schema, or to the reason the id cannot be
    used (not in the registry, not a valid schema): such messages are poison.
    """

    def __init__(self, schemas: Mapping[int, AvroSchema | str]) -> None:
        self._schemas = schemas

    def __call__(self, data: bytes, what: str) -> Any:
        """Decode one key or value."""
        return self.typed(data, what)[0]

    def typed(self, data: bytes, what: str) -> tuple[Any, RowTypes | None]:
        """Decode one key or value; also the column types its schema names."""
        sid = schema_id(data, what)
        schema = self._schemas.get(sid, f"schema id {sid} was not resolved")
        if isinstance(schema, str):
            msg = f"{what}: {schema}"
            raise DecodeError(msg)
        body = io.BytesIO(memoryview(data)[HEADER:])
        try:
            value = fastavro.schemaless_reader(body, schema.parsed, None)
        except (EOFError, ValueError, IndexError, UnicodeDecodeError, struct.error) as exc:
            msg = f"{what} does not match its schema id {sid}: {type(exc).__name__}: {exc}"
            raise DecodeError(msg) from None
        left = len(data) - HEADER - body.tell()
        if left:
            msg = f"{what} has {left} byte(s) after the record of schema id {sid}"
            raise DecodeError(msg)
        return schema.normalise(value), schema.types


def _refuse_empty_items(parsed: Any) -> None:
    """Refuse an array whose items may take no bytes (``null``, a record of such fields).

    Such an array's length is its block counts alone: a ten-byte message could ask the
    reader for 2**62 items, which it would build until the worker ran out of memory.
    ``parsed`` is fastavro's parsed schema, whose names are full and listed at its top.
    """
    named = parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}
    empty: dict[str, bool] = {}

    def may_be_empty(schema: Any) -> bool:
        if isinstance(schema, str):
            if schema in named and schema not in empty:
                may_be_empty(named[schema])
            return empty.get(schema, schema == "null")
        if isinstance(schema, list):  # a union writes its branch index: at least a byte
            for branch in schema:
                may_be_empty(branch)
            return False
        kind = schema["type"]
        if kind in ("record", "error"):
            empty[schema["name"]] = False  # a record inside itself is behind a union or array
            empty[schema["name"]] = all([may_be_empty(f["type"]) for f in schema["fields"]])
            return empty[schema["name"]]
        if kind == "array":
            if may_be_empty(schema["items"]):
                msg = (
                    f"an array of {schema['items']!r}, items that take no bytes: its block "
                    "counts alone would set its length, unbounded by the message's size"
                )
                raise ValueError(msg)
            return False
        if kind == "map":  # each entry writes its key
            may_be_empty(schema["values"])
            return False
        if kind == "fixed":
            return bool(schema["size"] == 0)
        return bool(kind == "null")

    may_be_empty(parsed)


def _without_logical_types(schema: Any) -> Any:
    """The schema with every ``logicalType`` removed, so values keep their wire types."""
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != _LOGICAL}
    if isinstance(schema, list):
        return [_without_logical_types(item) for item in schema]
    return schema


def _identity(value: Any) -> Any:
    return value


def _base64(value: Any) -> Any:
    return base64.b64encode(value).decode("ascii")


def float32(value: float) -> float:
    """The shortest decimal that is the same 32-bit float as ``value`` (Java's print)."""
    if not math.isfinite(value):
        return value
    packed = struct.pack("<f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        try:
            if struct.pack("<f", candidate) == packed:
                return candidate
        except OverflowError:  # rounded up past the largest 32-bit float
            continue
    return value


def _optional(inner: Normalise) -> Normalise:
    return lambda value: None if value is None else inner(value)


_PRIMITIVES: Final[dict[str, Normalise]] = {
    "bytes": _base64,
    "fixed": _base64,
    "float": float32,
}


def _normaliser(schema: Any, named: dict[str, Any]) -> Normalise:
    """A function that maps a value read with ``schema`` to its JSON-shaped form.

    Types that need no change map to the identity, so plain rows cost one call per field.
    """
    if isinstance(schema, str):
        if schema in named:
            return named[schema]  # type: ignore[no-any-return]
        return _PRIMITIVES.get(schema, _identity)
    if isinstance(schema, list):
        return _union(schema, named)
    kind = schema["type"]
    if kind == "record":
        return _record(schema, named)
    if kind == "array":
        item = _normaliser(schema["items"], named)
        return lambda value: [item(v) for v in value]
    if kind == "map":
        entry = _normaliser(schema["values"], named)
        return lambda value: {k: entry(v) for k, v in value.items()}
    if kind in ("enum", "fixed"):
        fn = _PRIMITIVES.get(kind, _identity)
        for name in _names(schema):
            named[name] = fn
        return fn
    return _normaliser(kind, named)


def _names(schema: Mapping[str, Any]) -> list[str]:
    name = schema["name"]
    namespace = schema.get("namespace")
    return [name, f"{namespace}.{name}"] if namespace and "." not in name else [name]


def _record(schema: Mapping[str, Any], named: dict[str, Any]) -> Normalise:
    fields: list[tuple[str, Normalise]] = []

    def normalise(value: dict[str, Any]) -> dict[str, Any]:
        for name, fn in fields:
            if fn is not _identity and name in value:
                value[name] = fn(value[name])
        return value

    for name in _names(schema):
        named[name] = normalise
    fields += [(f["name"], _normaliser(f["type"], named)) for f in schema["fields"]]
    return normalise


def _union(branches: list[Any], named: dict[str, Any]) -> Normalise:
    """Debezium's unions are ``["null", T]``; other unions pass through unchanged."""
    others = [b for b in branches if b != "null"]
    if len(others) == 1:
        inner = _normaliser(others[0], named)
        return _identity if inner is _identity else _optional(inner)
    for branch in others:
        _normaliser(branch, named)  # register the named types it declares
    return _identity
