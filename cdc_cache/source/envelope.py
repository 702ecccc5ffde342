"""Decode Debezium records (JSON, with or without schemas, or flattened) into change events.

Pure: bytes in, :data:`~cdc_cache.core.events.Decoded` out. Three value shapes are accepted,
as Kafka Connect's ``JsonConverter`` writes them:

* the change envelope ``{"before", "after", "source", "op", "ts_ms", ...}``;
* the same wrapped as ``{"schema": ..., "payload": ...}`` (``schemas.enable=true``);
* the row flattened by the ``ExtractNewRecordState`` SMT, which must be configured with
  ``add.fields=op,source.ts_ms,ts_ms,connector,db,schema,table,snapshot`` plus the position
  fields (``file,pos,row`` for MySQL, ``sequence,lsn`` for PostgreSQL) and
  ``delete.tombstone.handling.mode=rewrite`` or ``rewrite-with-tombstone``
  (older versions: ``delete.handling.mode=rewrite``), which adds ``__deleted`` to every
  record; a record without it says the table's deletes do not reach the worker
  (``ChangeEvent.deletes_hidden``), and the table falls back to ttl mode. Without
  ``db``/``schema`` and ``table`` the table comes from a routing transform's key field or
  from a topic named ``<prefix>.<db|schema>.<table>``; when neither says it, the record is
  rejected with that fix.

Avro (Kafka Connect's ``AvroConverter``) carries the same values; a caller passes
``parse=`` an :class:`~cdc_cache.source.avro.AvroParser` holding the batch's resolved schemas in
place of the JSON parser, and the rest of the decoding is shared.

A change keeps its values as they came (the wire values); the logical types its schema
names (JSON with schemas, Avro) travel with it as ``ChangeEvent.types``, read once per
distinct schema, so :mod:`cdc_cache.source.natural` can decode them.

Heartbeats (on ``__debezium-heartbeat.<prefix>``, or anywhere by their shape: key
``serverName``, value ``ts_ms``), schema-change records (``ddl`` without ``op``) and
tombstones (null value after a delete) are recognised on any topic, whatever routing did to
its name (see :mod:`cdc_cache.source.topics`). A routing transform's key field is no key column.
Anything else raises :class:`~cdc_cache.core.errors.DecodeError` (or
:class:`~cdc_cache.core.errors.MissingPrimaryKey` for a row change without a key) carrying the
record; no other exception escapes.

Kept in one module: the three shapes share the readers of a payload (source block, key,
position, table), all pure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final, Protocol, TypeAlias

import orjson

from cdc_cache.core.errors import DecodeError, MissingPrimaryKey, PoisonMessage
from cdc_cache.core.events import (
    ChangeEvent,
    Decoded,
    Heartbeat,
    Op,
    SchemaChange,
    SourceRecord,
    Tombstone,
)
from cdc_cache.core.identity import (
    TableIdentity,
    qualified,
    server_of_topic,
    table_of_topic_named,
)
from cdc_cache.core.logical import RowTypes, json_schema_types
from cdc_cache.core.positions import (
    PositionError,
    SourcePosition,
    binlog_position,
    postgres_position,
)
from cdc_cache.source.origin import origin_of
from cdc_cache.source.topics import (
    heartbeat_server,
    routed_identity,
    table_of_topic,
    without_router_fields,
)

Parse: TypeAlias = Callable[[bytes, str], Any]
"""Turns a key or value (named by the label, for errors) into plain Python data."""


class TypedParse(Protocol):
    """A parser that also says the logical types its record's schema names."""

    def __call__(self, data: bytes, what: str) -> Any: ...

    def typed(self, data: bytes, what: str) -> tuple[Any, RowTypes | None]:
        """The parsed value and the column types of its schema (None: no schema)."""
        ...


FLAT_PREFIX: Final = "__"

_OPS: Final = {op.value: op for op in Op}
_BINLOG_CONNECTORS: Final = frozenset({"mysql", "mariadb"})
_POSTGRES_CONNECTOR: Final = "postgresql"
_NOT_SNAPSHOT: Final = (None, False, "false")
_NO_KEY: Final = object()
# What rewrite mode (delete.tombstone.handling.mode=rewrite) adds to every flattened record.
_DELETED: Final = "__deleted"
# Flattened records carry the source fields under these names (add.fields, prefix "__").
_FLAT_SOURCE: Final = {
    "file": "__file",
    "pos": "__pos",
    "row": "__row",
    "sequence": "__sequence",
    "lsn": "__lsn",
    # Lineage evidence, when add.fields has them (server_id,gtid).
    "server_id": "__server_id",
    "gtid": "__gtid",
    "snapshot": "__snapshot",
}


def decode(
    record: SourceRecord,
    *,
    epoch: int = 0,
    parse: Parse | None = None,
    identity: TableIdentity = TableIdentity.DB_TABLE,
) -> Decoded:
    """Decode one Kafka record from a Debezium topic.

    ``epoch`` is the operator-set source lineage number put into every position; ``parse``
    reads keys and values (JSON by default); ``identity`` says whether tables are named
    with their connector's server (see :mod:`cdc_cache.core.identity`).
    """
    try:
        parse = parse or _JsonParser(record.topic)
        decoded = _decode(record, epoch, parse)
        if identity is TableIdentity.DB_TABLE:
            return decoded
        return _with_server(decoded, record, parse)
    except PoisonMessage as err:
        raise err.at(record) from None
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        msg = f"unexpected message shape ({type(exc).__name__}: {exc})"
        raise DecodeError(msg, record) from exc


class _JsonParser:
    """The JSON parser for one topic's records, with its schema prefixes per part."""

    __slots__ = ("_topic",)

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def __call__(self, data: bytes, what: str) -> Any:
        return parse_json(data, what, f"{self._topic}\x00{what}")

    def typed(self, data: bytes, what: str) -> tuple[Any, RowTypes | None]:
        return parse_json_typed(data, what, f"{self._topic}\x00{what}")


def _typed(parse: Parse | TypedParse, data: bytes, what: str) -> tuple[Any, RowTypes | None]:
    typed = getattr(parse, "typed", None)
    if typed is None:
        return parse(data, what), None
    result: tuple[Any, RowTypes | None] = typed(data, what)
    return result


def _decode(record: SourceRecord, epoch: int, parse: Parse) -> Decoded:
    topic = record.topic
    named = heartbeat_server(topic)
    if named is not None:
        return _heartbeat(named, record, parse)
    if record.value is None:
        if record.key is None:
            msg = "null key and null value: not a Debezium tombstone"
            raise DecodeError(msg)
        return Tombstone(_tombstone_table(topic, record.key, parse))
    payload, types = _typed(parse, record.value, "value")
    if not isinstance(payload, dict):
        msg = f"value is a {type(payload).__name__}, expected an object"
        raise DecodeError(msg)
    # "__op" first: a flattened row may have a column named "op".
    if "__op" in payload:
        return _flattened(payload, record, epoch, parse, types)
    if "op" in payload:
        return _envelope(payload, record.key, epoch, parse, types)
    if "ddl" in payload:
        return _schema_change(payload, topic, epoch)
    server = _heartbeat_server(record.key, payload, parse)
    if server is not None:  # a heartbeat routed or renamed away from its default topic
        return Heartbeat(server=server, emitted_at_ms=_opt_int(payload, "ts_ms", "heartbeat"))
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
    return parse_json_typed(data, what, stream)[0]


def parse_json_typed(
    data: bytes, what: str, stream: str | None = None
) -> tuple[Any, RowTypes | None]:
    """:func:`parse_json`, and the column types the record's schema names (if wrapped).

    The types are read once per schema prefix and kept with it.
    """
    if stream is not None:
        known = SCHEMA_PREFIXES.typed(stream, data)
        if known is not None:
            return known
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        msg = f"{what} is not valid JSON: {exc}"
        raise DecodeError(msg) from None
    if isinstance(doc, dict) and len(doc) == 2 and "schema" in doc and "payload" in doc:
        types = json_schema_types(doc["schema"])
        if stream is not None:
            SCHEMA_PREFIXES.learn(stream, data, doc["schema"], types)
        return doc["payload"], types
    return doc, None


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

    A stream keeps its last ``per_stream`` prefixes: a topic that several tables are
    routed into carries as many schemas, one record after another. Each prefix keeps the
    column types its schema names, read once when it was learned.
    """

    def __init__(self, max_streams: int = 4096, per_stream: int = 8) -> None:
        self._prefixes: dict[str, list[tuple[bytes, RowTypes | None]]] = {}
        self._max = max_streams
        self._per_stream = per_stream

    def payload(self, stream: str, data: bytes) -> Any:
        """The payload of ``data`` if it starts with one of the stream's verified prefixes."""
        known = self.typed(stream, data)
        return _MISS if known is None else known[0]

    def typed(self, stream: str, data: bytes) -> tuple[Any, RowTypes | None] | None:
        """The payload and its schema's column types, or None where :meth:`payload` misses."""
        prefixes = self._prefixes.get(stream)
        if prefixes is None or not data.endswith(b"}"):
            return None
        for prefix, types in prefixes:
            if data.startswith(prefix):
                try:
                    return orjson.loads(memoryview(data)[len(prefix) : -1]), types
                except orjson.JSONDecodeError:
                    return None
        return None

    def learn(self, stream: str, data: bytes, schema: Any, types: RowTypes | None = None) -> None:
        """Remember the prefix of ``data`` (a parsed wrapped record) if it can be verified.

        ``types`` are the column types ``schema`` names, kept with the prefix.
        """
        if not data.startswith(_SCHEMA_OPEN):
            return  # not compact, or keys in another order: no prefix to reuse
        end = data.find(_PAYLOAD_KEY, len(_SCHEMA_OPEN))
        while end != -1:
            try:
                candidate = orjson.loads(memoryview(data)[len(_SCHEMA_OPEN) : end])
            except orjson.JSONDecodeError:
                candidate = _MISS
            if candidate == schema:
                self._remember(stream, data[: end + len(_PAYLOAD_KEY)], types)
                return
            end = data.find(_PAYLOAD_KEY, end + 1)

    def _remember(self, stream: str, prefix: bytes, types: RowTypes | None) -> None:
        known = self._prefixes.get(stream)
        if known is None:
            if len(self._prefixes) >= self._max:
                self._prefixes.clear()
            known = self._prefixes[stream] = []
        if all(prefix != seen for seen, _ in known):  # known but the rest did not parse alone
            known.insert(0, (prefix, types))
            del known[self._per_stream :]


SCHEMA_PREFIXES: Final = SchemaPrefixes()


def _with_server(decoded: Decoded, record: SourceRecord, parse: Parse) -> Decoded:
    """``decoded`` with its tables named ``<server>.<db>.<table>``.

    The server is the record's ``source.name`` (``__name`` flattened), else the prefix of
    the topic a routing transform's key field names, else that of the record's topic.
    """
    if isinstance(decoded, Heartbeat):
        return decoded
    if isinstance(decoded, SchemaChange):
        server = decoded.server
        return replace(
            decoded,
            table=None if decoded.table is None else f"{server}.{decoded.table}",
            columns={f"{server}.{name}": cols for name, cols in decoded.columns.items()},
        )
    if isinstance(decoded, Tombstone):
        if decoded.table is None:
            return decoded
        return Tombstone(_qualified(None, decoded.table, record, parse))
    return replace(decoded, table=_qualified(decoded.server, decoded.table, record, parse))


def _qualified(server: str | None, table: str, record: SourceRecord, parse: Parse) -> str:
    if server is None:
        server = server_of_topic(_routed_topic(record, parse) or record.topic)
    try:
        return qualified(TableIdentity.SERVER_DB_TABLE, server, table)
    except ValueError as exc:
        msg = f"{exc}; add 'name' to the ExtractNewRecordState add.fields"
        raise DecodeError(msg) from None


def _routed_topic(record: SourceRecord, parse: Parse) -> str | None:
    """The original topic a routing transform put into the record's key, if any."""
    if record.key is None:
        return None
    try:
        key = parse(record.key, "key")
    except DecodeError:
        return None
    return routed_identity(key) if isinstance(key, dict) else None


def _heartbeat(server: str, record: SourceRecord, parse: Parse) -> Heartbeat:
    if record.value is None:
        msg = "heartbeat record without a value"
        raise DecodeError(msg)
    payload = parse(record.value, "heartbeat value")
    if not isinstance(payload, dict):
        msg = "heartbeat value is not an object"
        raise DecodeError(msg)
    named = _heartbeat_server(record.key, payload, parse)
    return Heartbeat(server=named or server, emitted_at_ms=_opt_int(payload, "ts_ms", "heartbeat"))


def _heartbeat_server(key: bytes | None, payload: dict[str, Any], parse: Parse) -> str | None:
    """The ``serverName`` of a record shaped like a heartbeat, else None.

    A heartbeat's key is ``{"serverName": <topic.prefix>}`` (plus a router's key field when
    a routing transform matched its topic) and its value ``{"ts_ms": ...}``.
    """
    if key is None or "ts_ms" not in payload or len(payload) != 1:
        return None
    fields = parse(key, "key")
    server = fields.get("serverName") if isinstance(fields, dict) else None
    return server if isinstance(server, str) and server else None


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
    payload: dict[str, Any],
    key_bytes: bytes | None,
    epoch: int,
    parse: Parse,
    types: RowTypes | None,
) -> ChangeEvent:
    op = _op(payload["op"])
    source = _source(payload)
    connector, container = _container(
        source.get("connector"), source.get("db"), source.get("schema"), "source.connector"
    )
    table = _table(container, source.get("table"), "source")
    key = _key(_NO_KEY if op is Op.TRUNCATE else _parsed_key(key_bytes, parse), op, table)
    before = _image(payload, "before")
    return ChangeEvent(
        table=table,
        op=op,
        before=_deleted_row(connector, before, key) if op is Op.DELETE else before,
        after=_image(payload, "after"),
        key=key,
        position=_position(connector, source, epoch),
        committed_at_ms=_opt_int(source, "ts_ms", "source"),
        emitted_at_ms=_opt_int(payload, "ts_ms", "envelope"),
        snapshot=source.get("snapshot") not in _NOT_SNAPSHOT,
        server=_opt_str(source, "name"),
        types=types,
        origin=origin_of(source),
    )


def _container(connector: object, db: object, schema: object, field: str) -> tuple[str, object]:
    """The known connector name and what qualifies its table: database (MySQL) or schema."""
    if isinstance(connector, str) and connector in _BINLOG_CONNECTORS:
        return connector, db
    if connector == _POSTGRES_CONNECTOR:
        return _POSTGRES_CONNECTOR, schema
    raise _unknown_connector(connector, field)


def _flattened(
    payload: dict[str, Any],
    record: SourceRecord,
    epoch: int,
    parse: Parse,
    types: RowTypes | None,
) -> ChangeEvent:
    op = _op(payload["__op"])
    connector, container = _container(
        payload.get("__connector"),
        payload.get("__db"),
        payload.get("__schema"),
        "__connector (add 'connector' to add.fields)",
    )
    key = _parsed_key(record.key, parse)
    if container is None and payload.get("__table") is None:
        table = _flat_table_by_name(connector, record.topic, key)
    else:
        table = _table(container, payload.get("__table"), f"flattened ({_flat_fix(connector)})")
    row = {k: v for k, v in payload.items() if not k.startswith(FLAT_PREFIX)}
    source = {name: payload[flat] for name, flat in _FLAT_SOURCE.items() if flat in payload}
    deleted = op is Op.DELETE or payload.get(_DELETED) == "true"
    columns = _key(key, op, table)
    return ChangeEvent(
        table=table,
        op=op,
        before=_deleted_row(connector, row, columns) if deleted else None,
        after=None if deleted else row,
        key=columns,
        position=_position(connector, source, epoch),
        committed_at_ms=_opt_int(payload, "__source_ts_ms", "flattened"),
        emitted_at_ms=_opt_int(payload, "__ts_ms", "flattened"),
        snapshot=payload.get("__snapshot") not in _NOT_SNAPSHOT,
        server=_opt_str(payload, "__name"),
        types=types,
        origin=origin_of(source),
        deletes_hidden=_DELETED not in payload,
    )


def _flat_fix(connector: str) -> str:
    """The add.fields a flattened record of ``connector`` needs to name its table."""
    container = "schema" if connector == _POSTGRES_CONNECTOR else "db"
    return f"add '{container},table' to the ExtractNewRecordState add.fields"


def _flat_table_by_name(connector: str, topic: str, key: object) -> str:
    """The table of a flattened record without db/schema and table fields.

    A routing transform's key field holds the table's original topic name; a topic the
    transform left alone is named after its table. Anything else cannot say the table.
    """
    identity = routed_identity(key) if isinstance(key, dict) else None
    table = table_of_topic(identity) if identity is not None else table_of_topic(topic)
    if table is None:
        where = f"key field {identity!r}" if identity is not None else f"topic {topic!r}"
        msg = (
            f"flattened record without its table: the {where} is not "
            f"<prefix>.<db|schema>.<table> (routed or renamed); {_flat_fix(connector)}"
        )
        raise DecodeError(msg)
    return table


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


def table_hint(record: SourceRecord, table_identity: TableIdentity = TableIdentity.DB_TABLE) -> str:
    """The table to label a record that did not decode with (metrics, dead letters).

    A routing transform's key field (JSON keys), else the table its topic is named for,
    else the topic itself: never more precise than what the record shows. Named with
    the topic's prefix as its server under ``server_db_table``.
    """
    identity = None
    if record.key is not None:
        try:
            key = parse_json(record.key, "key")
        except DecodeError:
            key = None
        identity = routed_identity(key) if isinstance(key, dict) else None
    return table_of_topic_named(table_identity, identity or record.topic) or record.topic


def _tombstone_table(topic: str, key_bytes: bytes, parse: Parse) -> str | None:
    """A tombstone's table: from a routing transform's key field, else from its topic name.

    None when neither says it (a topic shared by several tables, or renamed): the tombstone
    is still counted as one, since it changes nothing in the cache; so is one whose key
    does not parse.
    """
    try:
        key = parse(key_bytes, "key")
    except DecodeError:
        key = None
    identity = routed_identity(key) if isinstance(key, dict) else None
    if identity is not None:
        return table_of_topic(identity)
    return table_of_topic(topic)


def _deleted_row(
    connector: str, before: dict[str, Any] | None, key: dict[str, Any]
) -> dict[str, Any] | None:
    """A delete's before image, or None when it holds the primary key and nothing else.

    PostgreSQL without ``REPLICA IDENTITY FULL`` logs only the key of a deleted row, and
    Debezium fills the other columns of its before image with null or, for a NOT NULL
    column, an empty default ("", 0, false). Taken for the row, such an image renders a
    key that is not the row's (``product:3:`` for ``product:{id}:{name}``), whose delete
    leaves the real one cached with no error. Without the image, a key that needs a column
    other than the primary key is refused with the fix, and the change's invalidation
    names it as unreached. A row of a table with ``REPLICA IDENTITY FULL`` whose every
    other column is empty is refused alike: loud, not stale.
    """
    if connector != _POSTGRES_CONNECTOR or before is None:
        return before
    others = [value for column, value in before.items() if column not in key]
    if others and all(_empty_default(value) for value in others):
        return None
    return before


def _empty_default(value: object) -> bool:
    """Null, or the empty default Debezium gives a NOT NULL column it has no value for."""
    return value is None or value in ("", b"", 0, "0", "AA==", [], {})


def _image(payload: dict[str, Any], name: str) -> dict[str, Any] | None:
    image = payload.get(name)
    if image is not None and not isinstance(image, dict):
        msg = f"'{name}' is a {type(image).__name__}, expected an object or null"
        raise DecodeError(msg)
    return image


def _parsed_key(data: bytes | None, parse: Parse) -> object:
    """The parsed Kafka key, or _NO_KEY when the record has none."""
    return _NO_KEY if data is None else parse(data, "key")


def _key(key: object, op: Op, table: str) -> dict[str, Any]:
    """The primary key columns (a routing transform's key field is no column)."""
    if op is Op.TRUNCATE:
        return {}
    if key is _NO_KEY:
        msg = f"{op.name} on {table} has no Kafka key: the table needs a primary key"
        raise MissingPrimaryKey(msg)
    columns = without_router_fields(key) if isinstance(key, dict) else key
    if not isinstance(columns, dict) or not columns:
        msg = f"key of {op.name} on {table} is {key!r}, expected an object of key columns"
        raise MissingPrimaryKey(msg)
    return columns


def _position(connector: str, source: dict[str, Any], epoch: int) -> SourcePosition:
    try:
        if connector == _POSTGRES_CONNECTOR:
            return postgres_position(source, epoch)
        return binlog_position(source, epoch)
    except PositionError as exc:
        raise DecodeError(str(exc)) from None


def _opt_str(mapping: dict[str, Any], name: str) -> str | None:
    value = mapping.get(name)
    return value if isinstance(value, str) and value else None


def _opt_int(mapping: dict[str, Any], name: str, where: str) -> int | None:
    value = mapping.get(name)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    msg = f"{where} {name} is {value!r}, expected an integer"
    raise DecodeError(msg)
