"""Decoded change records, kept apart from the Kafka message they arrived in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from cdc_cache.core.logical import RowTypes
from cdc_cache.core.positions import SourcePosition

Row = Mapping[str, Any]


@dataclass(slots=True)  # not frozen: one per change, and frozen fields cost 3x to set
class Origin:
    """What a change says about the log it came from.

    ``server`` is the server that wrote the change (``server:<server_id>``, or the GTID's
    source UUID); ``gtid`` the transaction's GTID as (stream, sequence), the stream being a
    MySQL source UUID or a MariaDB GTID domain; ``snapshot`` marks a snapshot read. None
    where the envelope does not tell (snapshot reads carry server id 0; PostgreSQL has
    neither).
    """

    server: str | None = None
    gtid: tuple[str, int] | None = None
    snapshot: bool = False

    def __hash__(self) -> int:  # as a frozen dataclass's (never mutated)
        return hash((self.server, self.gtid, self.snapshot))


NO_ORIGIN: Final = Origin()


class Op(StrEnum):
    """Debezium operation codes."""

    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"
    READ = "r"
    TRUNCATE = "t"


@dataclass(slots=True)  # not frozen: one per change, and frozen fields cost 3x to set
class SourceRecord:
    """Where a message came from: the coordinates every error and DLQ entry names."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    # When the worker's source took it from the consumer (time.monotonic()); 0.0 where no
    # source did (a replay, a test): the start of the worker's own share of the latency.
    received_s: float = 0.0

    def where(self) -> str:
        """Human-readable coordinates, for error messages."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(slots=True)  # not frozen: one per change, and frozen fields cost 3x to set
class ChangeEvent:
    """One committed row change (or a table truncation) decoded from a Debezium envelope.

    ``table`` is ``<db>.<table>`` for MySQL and ``<schema>.<table>`` for PostgreSQL.
    ``key`` holds the primary key columns (empty for TRUNCATE). ``committed_at_ms`` is the
    source commit time (``source.ts_ms``); ``emitted_at_ms`` is when Debezium emitted it.
    ``server`` is the connector's logical name (its ``topic.prefix``, ``source.name``) when
    the record carries it: it ties a topic to its connector's heartbeats whatever the
    topic is called. ``origin`` is what the envelope says of the log the change came from
    (lineage evidence). ``types`` are the columns' logical types its schema named (None
    for a schemaless record): how its wire values decode (:mod:`cdc_cache.source.natural`).
    ``deletes_hidden`` marks a flattened record without ``__deleted``: its flattening SMT
    does not rewrite deletes, so the table's deletes reach the worker as tombstones or not
    at all (see :func:`cdc_cache.mode.tables.with_deletes`).
    """

    table: str
    op: Op
    before: Row | None
    after: Row | None
    key: Row
    position: SourcePosition
    committed_at_ms: int | None
    emitted_at_ms: int | None = None
    snapshot: bool = False
    server: str | None = None
    origin: Origin = NO_ORIGIN
    types: RowTypes | None = None
    deletes_hidden: bool = False

    @property
    def image(self) -> Row | None:
        """The row image that describes the state after this change (None for deletes)."""
        return None if self.op in (Op.DELETE, Op.TRUNCATE) else self.after

    def with_images(self, before: Row | None, after: Row | None, key: Row) -> ChangeEvent:
        """The change with its values decoded: other images and key, no types left.

        Built field by field: ``dataclasses.replace`` cost five times as much, once per
        change on the hot path.
        """
        return ChangeEvent(
            self.table,
            self.op,
            before,
            after,
            key,
            self.position,
            self.committed_at_ms,
            self.emitted_at_ms,
            self.snapshot,
            self.server,
            self.origin,
            None,
            self.deletes_hidden,
        )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A connector heartbeat: proves liveness and carries the connector's clock."""

    server: str
    emitted_at_ms: int | None


@dataclass(frozen=True, slots=True)
class SchemaChange:
    """A DDL record from the schema-change topic; never applied to the cache.

    ``columns`` holds, for each table the DDL created or altered, its columns afterwards
    (Debezium's ``tableChanges``), and ``position`` where in the source log it happened:
    the rules are checked against them (:mod:`cdc_cache.mode.schema_watch`).
    """

    server: str
    table: str | None
    ddl: str | None
    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    position: SourcePosition | None = None


@dataclass(frozen=True, slots=True)
class Tombstone:
    """The null-valued record Debezium sends after a delete, for log compaction.

    ``table`` is None when neither the key nor the topic name says it (a shared topic).
    """

    table: str | None


Decoded = ChangeEvent | Heartbeat | SchemaChange | Tombstone
