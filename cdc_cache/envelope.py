"""Decode Debezium records (JSON, with or without schemas, or flattened) into change events.

Pure: bytes in, :data:`~cdc_cache.events.Decoded` out. Three value shapes are accepted,
as Kafka Connect's ``JsonConverter`` writes them:

* the change envelope ``{"before", "after", "source", "op", "ts_ms", ...}``;
* the same wrapped as ``{"schema": ..., "payload": ...}`` (``schemas.enable=true``);
* the row flattened by the ``ExtractNewRecordState`` SMT, which must be configured with
  ``add.fields=op,source.ts_ms,ts_ms,connector,db,schema,table,snapshot`` plus the position
  fields (``file,pos,row`` for MySQL, ``sequence,lsn`` for PostgreSQL) and
  ``delete.tombstone.handling.mode=rewrite`` or ``rewrite-with-tombstone``.

Avro (Kafka Connect's ``AvroConverter``) carries the same values; a caller passes
``parse=`` an :class:`~cdc_cache.avro.AvroParser` holding the batch's resolved schemas in
place of the JSON parser, and the rest of the decoding is shared.

Heartbeats (topic ``__debezium-heartbeat.<prefix>``), schema-change records (``ddl``
without ``op``) and tombstones (null value after a delete) are recognised. Anything else
raises :class:`~cdc_cache.errors.DecodeError` (or :class:`~cdc_cache.errors.MissingPrimaryKey`
for a row change without a key) carrying the record; no other exception escapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeAlias

import orjson

from cdc_cache.errors import DecodeError, MissingPrimaryKey, PoisonMessage
from cdc_cache.events import (
    ChangeEvent,
    Decoded,
    Heartbeat,
    Op,
    SchemaChange,
    SourceRecord,
    Tombstone,
)
from cdc_cache.positions import (
    PositionError,
    SourcePosition,
    binlog_position,
    postgres_position,
)

Parse: TypeAlias = Callable[[bytes, str], Any]
"""Turns a key or value (named by the label, for errors) into plain Python data."""

HEARTBEAT_TOPIC_PREFIX: Final = "__debezium-heartbeat."
FLAT_PREFIX: Final = "__"

_OPS: Final = {op.value: op for op in Op}
_BINLOG_CONNECTORS: Final = frozenset({"mysql", "mariadb"})
_POSTGRES_CONNECTOR: Final = "postgresql"
_NOT_SNAPSHOT: Final = (None, False, "false")
# Flattened records carry the source fields under these names (add.fields, prefix "__").
_FLAT_SOURCE: Final = {
    "file": "__file",
    "pos": "__pos",
    "row": "__row",
    "sequence": "__sequence",
    "lsn": "__lsn",
}


def decode(record: SourceRecord, *, epoch: int = 0, parse: Parse | None = None) -> Decoded:
    """Decode one Kafka record from a Debezium topic.

    ``epoch`` is the operator-set source lineage number put into every position; ``parse``
    reads keys and values (JSON by default).
    """
    try:
        return _decode(record, epoch, parse or _json_of(record.topic))
    except PoisonMessage as err:
        raise err.at(record) from None
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        msg = f"unexpected message shape ({type(exc).__name__}: {exc})"
        raise DecodeError(msg, record) from exc


def _json_of(topic: str) -> Parse:
    """The JSON parser for one topic's records, with its schema prefixes per part."""

    def parse(data: bytes, what: str) -> Any:
        return parse_json(data, what, f"{topic}\x00{what}")

    return parse


def _decode(record: SourceRecord, epoch: int, parse: Parse) -> Decoded:
    topic = record.topic
    if topic.startswith(HEARTBEAT_TOPIC_PREFIX):
        return _heartbeat(topic[len(HEARTBEAT_TOPIC_PREFIX) :], record.value, parse)
    if record.value is None:
        if record.key is None:
            msg = "null key and null value: not a Debezium tombstone"
            raise DecodeError(msg)
        return Tombstone(_table_from_topic(topic))
    payload = parse(record.value, "value")
    if not isinstance(payload, dict):
        msg = f"value is a {type(payload).__name__}, expected an object"
        raise DecodeError(msg)
    # "__op" first: a flattened row may have a column named "op".
    if "__op" in payload:
        return _flattened(payload, record.key, epoch, parse)
    if "op" in payload:
        return _envelope(payload, record.key, epoch, parse)
    if "ddl" in payload:
        return _schema_change(payload, topic, epoch)
    msg = (
        "value has neither 'op' (change envelope), '__op' (flattened: add 'op' to the "
        "ExtractNewRecordState add.fields) nor 'ddl' (schema change)"
    )
    raise DecodeError(msg)


def parse_json(data: bytes, what: str, stream: str | None = None) -> Any:
    """Parse JSON and unwrap JsonConverter's ``{"schema", "payload"}`` form.

    ``stream`` (topic and part) enables :data:`SCHEMA_PREFIXES`: a wrapped record whose
    schema is byte-for-byte the one seen last on that stream has only its payload parsed.
    """
    if stream is not None:
        payload = SCHEMA_PREFIXES.payload(stream, data)
        if payload is not _MISS:
            return payload
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        msg = f"{what} is not valid JSON: {exc}"
        raise DecodeError(msg) from None
    if isinstance(doc, dict) and len(doc) == 2 and "schema" in doc and "payload" in doc:
        if stream is not None:
            SCHEMA_PREFIXES.learn(stream, data, doc["schema"])
        return doc["payload"]
    return doc


_MISS: Final = object()
_SCHEMA_OPEN: Final = b'{"schema":'
_PAYLOAD_KEY: Final = b',"payload":'


class SchemaPrefixes:
    """Skips re-parsing the ``schema`` block that JsonConverter repeats in every record.

    With ``schemas.enable=true`` each record is ``{"schema":S,"payload":P}``, and S (often
    2-3 KB, several times the payload) is the same bytes in every record of a topic until
    its table changes. Once a record's prefix ``{"schema":S,"payload":`` is verified (S
    parses to exactly the schema the full parse found, and JSON values are self-delimiting,
    so the schema ends right there), any record starting with the same bytes has that
    schema and a ``payload`` key next; parsing the rest, minus the closing brace, yields
    the payload. Should the rest not parse alone (another key follows, say), the record
    takes the full parse, so the result is always what the full parse gives.
    """

    def __init__(self, max_streams: int = 4096) -> None:
        self._prefixes: dict[str, bytes] = {}
        self._max = max_streams

    def payload(self, stream: str, data: bytes) -> Any:
        """The payload of ``data`` if it starts with the stream's verified prefix, else _MISS."""
        prefix = self._prefixes.get(stream)
        if prefix is None or not data.startswith(prefix) or not data.endswith(b"}"):
            return _MISS
        try:
            return orjson.loads(memoryview(data)[len(prefix) : -1])
        except orjson.JSONDecodeError:
            return _MISS

    def learn(self, stream: str, data: bytes, schema: Any) -> None:
        """Remember the prefix of ``data`` (a parsed wrapped record) if it can be verified."""
        if not data.startswith(_SCHEMA_OPEN):
            return  # not compact, or keys in another order: no prefix to reuse
        end = data.find(_PAYLOAD_KEY, len(_SCHEMA_OPEN))
        while end != -1:
            try:
                candidate = orjson.loads(memoryview(data)[len(_SCHEMA_OPEN) : end])
            except orjson.JSONDecodeError:
                candidate = _MISS
            if candidate == schema:
                if len(self._prefixes) >= self._max:
                    self._prefixes.clear()
                self._prefixes[stream] = data[: end + len(_PAYLOAD_KEY)]
                return
            end = data.find(_PAYLOAD_KEY, end + 1)


SCHEMA_PREFIXES: Final = SchemaPrefixes()


def _heartbeat(server: str, value: bytes | None, parse: Parse) -> Heartbeat:
    if value is None:
        msg = "heartbeat record without a value"
        raise DecodeError(msg)
    payload = parse(value, "heartbeat value")
    if not isinstance(payload, dict):
        msg = "heartbeat value is not an object"
        raise DecodeError(msg)
    return Heartbeat(server=server, emitted_at_ms=_opt_int(payload, "ts_ms", "heartbeat"))


def _schema_change(payload: dict[str, Any], topic: str, epoch: int) -> SchemaChange:
    source = _source(payload)
    ddl = payload.get("ddl")
    if ddl is not None and not isinstance(ddl, str):
        msg = f"schema change ddl is {type(ddl).__name__}, expected a string"
        raise DecodeError(msg)
    db, table = source.get("db"), source.get("table")
    qualified = (
        f"{db}.{table}" if isinstance(db, str) and db and isinstance(table, str) and table else None
    )
    server = source.get("name")
    try:
        position = binlog_position(source, epoch) if "file" in source else None
    except PositionError:
        position = None
    return SchemaChange(
        server=server if isinstance(server, str) else topic,
        table=qualified,
        ddl=ddl,
        columns=_table_columns(payload.get("tableChanges")),
        position=position,
    )


def _table_columns(changes: object) -> dict[str, tuple[str, ...]]:
    """Each created or altered table's columns from Debezium's ``tableChanges``.

    Best effort: the DDL record is for information, so a shape this does not know
    yields nothing rather than a dead letter. Table ids are ``"db"."table"`` (MySQL).
    """
    out: dict[str, tuple[str, ...]] = {}
    for change in changes if isinstance(changes, list) else ():
        if not isinstance(change, dict) or change.get("type") not in ("CREATE", "ALTER"):
            continue
        ident, table = change.get("id"), change.get("table")
        columns = table.get("columns") if isinstance(table, dict) else None
        if not isinstance(ident, str) or not isinstance(columns, list):
            continue
        parts = [part.strip('"') for part in ident.split('"."')]
        if len(parts) < 2 or not all(parts):
            continue
        names = [c.get("name") for c in columns if isinstance(c, dict)]
        out[f"{parts[-2]}.{parts[-1]}"] = tuple(n for n in names if isinstance(n, str))
    return out


def _envelope(
    payload: dict[str, Any], key_bytes: bytes | None, epoch: int, parse: Parse
) -> ChangeEvent:
    op = _op(payload["op"])
    source = _source(payload)
    connector, container = _container(
        source.get("connector"), source.get("db"), source.get("schema"), "source.connector"
    )
    table = _table(container, source.get("table"), "source")
    return ChangeEvent(
        table=table,
        op=op,
        before=_image(payload, "before"),
        after=_image(payload, "after"),
        key=_key(key_bytes, op, table, parse),
        position=_position(connector, source, epoch),
        committed_at_ms=_opt_int(source, "ts_ms", "source"),
        emitted_at_ms=_opt_int(payload, "ts_ms", "envelope"),
        snapshot=source.get("snapshot") not in _NOT_SNAPSHOT,
    )


def _container(connector: object, db: object, schema: object, field: str) -> tuple[str, object]:
    """The known connector name and what qualifies its table: database (MySQL) or schema."""
    if isinstance(connector, str) and connector in _BINLOG_CONNECTORS:
        return connector, db
    if connector == _POSTGRES_CONNECTOR:
        return _POSTGRES_CONNECTOR, schema
    raise _unknown_connector(connector, field)


def _flattened(
    payload: dict[str, Any], key_bytes: bytes | None, epoch: int, parse: Parse
) -> ChangeEvent:
    op = _op(payload["__op"])
    connector, container = _container(
        payload.get("__connector"),
        payload.get("__db"),
        payload.get("__schema"),
        "__connector (add 'connector' to add.fields)",
    )
    table = _table(container, payload.get("__table"), "flattened (add 'db,schema,table')")
    row = {k: v for k, v in payload.items() if not k.startswith(FLAT_PREFIX)}
    source = {name: payload[flat] for name, flat in _FLAT_SOURCE.items() if flat in payload}
    deleted = op is Op.DELETE or payload.get("__deleted") == "true"
    return ChangeEvent(
        table=table,
        op=op,
        before=row if deleted else None,
        after=None if deleted else row,
        key=_key(key_bytes, op, table, parse),
        position=_position(connector, source, epoch),
        committed_at_ms=_opt_int(payload, "__source_ts_ms", "flattened"),
        emitted_at_ms=_opt_int(payload, "__ts_ms", "flattened"),
        snapshot=payload.get("__snapshot") not in _NOT_SNAPSHOT,
    )


def _op(value: object) -> Op:
    op = _OPS.get(value) if isinstance(value, str) else None
    if op is None:
        msg = f"op {value!r} is not one of c, u, d, r, t"
        raise DecodeError(msg)
    return op


def _source(payload: dict[str, Any]) -> dict[str, Any]:
    source = payload.get("source")
    if not isinstance(source, dict):
        msg = "envelope has no 'source' object"
        raise DecodeError(msg)
    return source


def _unknown_connector(connector: object, field: str) -> DecodeError:
    return DecodeError(f"{field} is {connector!r}, expected 'mysql', 'mariadb' or 'postgresql'")


def _table(container: object, table: object, where: str) -> str:
    if not isinstance(container, str) or not container or not isinstance(table, str) or not table:
        msg = f"{where}: database/schema {container!r} or table {table!r} is missing"
        raise DecodeError(msg)
    return f"{container}.{table}"


def table_of_topic(topic: str) -> str | None:
    """``<prefix>.<db|schema>.<table>`` → ``<db|schema>.<table>``; None for other names."""
    parts = topic.rsplit(".", 2)
    if len(parts) != 3 or not all(parts):
        return None
    return f"{parts[1]}.{parts[2]}"


def _table_from_topic(topic: str) -> str:
    table = table_of_topic(topic)
    if table is None:
        msg = f"tombstone topic {topic!r} is not <prefix>.<db|schema>.<table>"
        raise DecodeError(msg)
    return table


def _image(payload: dict[str, Any], name: str) -> dict[str, Any] | None:
    image = payload.get(name)
    if image is not None and not isinstance(image, dict):
        msg = f"'{name}' is a {type(image).__name__}, expected an object or null"
        raise DecodeError(msg)
    return image


def _key(data: bytes | None, op: Op, table: str, parse: Parse) -> dict[str, Any]:
    if op is Op.TRUNCATE:
        return {}
    if data is None:
        msg = f"{op.name} on {table} has no Kafka key: the table needs a primary key"
        raise MissingPrimaryKey(msg)
    key = parse(data, "key")
    if not isinstance(key, dict) or not key:
        msg = f"key of {op.name} on {table} is {key!r}, expected an object of key columns"
        raise MissingPrimaryKey(msg)
    return key


def _position(connector: str, source: dict[str, Any], epoch: int) -> SourcePosition:
    try:
        if connector == _POSTGRES_CONNECTOR:
            return postgres_position(source, epoch)
        return binlog_position(source, epoch)
    except PositionError as exc:
        raise DecodeError(str(exc)) from None


def _opt_int(mapping: dict[str, Any], name: str, where: str) -> int | None:
    value = mapping.get(name)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    msg = f"{where} {name} is {value!r}, expected an integer"
    raise DecodeError(msg)
