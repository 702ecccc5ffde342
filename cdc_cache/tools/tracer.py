"""``cdc-cache trace``'s reads: one row's records from its topics, its keys from Redis.

Its index memberships are read as the inspector reads them
(:func:`cdc_cache.tools.verify_indexes.read_members`: the row's members only, with their
versions and each index's record).

Each record goes through the worker's own route (decode with the same rules, epoch and
size limit, the lineage's epoch for its offset, Avro through the registry), so the ops
shown are the ops the worker plans. The judging is :mod:`cdc_cache.tools.trace`'s.

The topic is read first and the keys afterwards: a change applied in between shows as
``duplicate`` while the worker's read of it is newer than the trace's. Every record of
the topics is decoded (a row's records may sit on any partition of a routed topic), so a
trace costs one read of those topics: narrow it with ``--topic``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from cdc_cache.app.replay import epoch_of
from cdc_cache.app.settings import TopicSettings
from cdc_cache.core.errors import CdcCacheError
from cdc_cache.core.events import SourceRecord
from cdc_cache.core.identity import table_of_topic_named
from cdc_cache.dlq.entries import Failure, public_reason
from cdc_cache.lineage.registry import LineageRegistry
from cdc_cache.plan.route import Planned, Rejected, Routed, route
from cdc_cache.plan.rules import Rules
from cdc_cache.sink.connection import Client, connect
from cdc_cache.sink.key_state import read_key_state
from cdc_cache.source.schema_registry import schema_resolver
from cdc_cache.source.topic_scan import reader, scan
from cdc_cache.tools.trace import (
    NO_INDEXES,
    HeldIndexes,
    Trace,
    is_row,
    keys_of,
    members_of,
    row_key,
    trace_of,
)
from cdc_cache.tools.verify_indexes import read_members


class Tracer:
    """Traces rows with the worker's settings and rules; clients are built per trace."""

    def __init__(self, settings: TopicSettings, rules: Rules, timeout_s: float = 30) -> None:
        self._settings = settings
        self._rules = rules
        self._timeout_s = timeout_s

    def row(self, table: str, key: Mapping[str, str], topics: Sequence[str] = ()) -> Trace:
        """Every record of ``table``'s row ``key`` on ``topics``, judged against Redis now.

        ``topics`` defaults to the worker's topics named for the table, else all of them.
        """
        if self._rules.for_table(table) is None:
            msg = f"the rules have no table {table!r} (tables: {', '.join(self._rules.tables)})"
            raise CdcCacheError(msg)
        chosen = list(topics) or self._topics_of(table)
        client = connect(self._settings.redis_url, self._settings.redis_auth())
        try:
            router = self._router(client)
            routed: list[Planned | Rejected] = []
            scanned = 0
            for topic in chosen:
                for record in scan(
                    self._settings.brokers,
                    self._settings.consumer_kafka(),
                    topic,
                    timeout_s=self._timeout_s,
                ):
                    scanned += 1
                    item = router(record)
                    if not isinstance(item, Planned | Rejected) or item.event is None:
                        continue
                    if is_row(item.event, table, key):
                        routed.append(item)
            states = {k: read_key_state(client, k) for k in keys_of(routed)}
            pairs = members_of(routed)
            read = read_members(client, pairs) if pairs else None
            held = HeldIndexes(read.indexes, read.versions) if read else NO_INDEXES
        finally:
            client.close()
        return trace_of(
            table,
            key,
            topics=chosen,
            scanned=scanned,
            routed=routed,
            states=states,
            explain=self._explain,
            held=held,
        )

    def record(self, topic: str, partition: int, offset: int) -> Trace:
        """The row of the record at ``topic[partition]@offset``, traced on ``topic``."""
        records = scan(
            self._settings.brokers,
            self._settings.consumer_kafka(),
            topic,
            partition=partition,
            start=offset,
            timeout_s=self._timeout_s,
        )
        found = next(records, None)
        records.close()
        where = f"{topic}[{partition}]@{offset}"
        if found is None or found.offset != offset:
            msg = f"{where} is not on the topic (past its end, or compacted away)"
            raise CdcCacheError(msg)
        client = connect(self._settings.redis_url, self._settings.redis_auth())
        try:
            item = self._router(client)(found)
        finally:
            client.close()
        if not isinstance(item, Planned | Rejected) or item.event is None:
            kind = type(item.item).__name__ if not isinstance(item, Planned | Rejected) else ""
            msg = f"{where} is no row change ({kind or 'undecodable'}): nothing to trace"
            raise CdcCacheError(msg)
        return self.row(item.event.table, row_key(item.event), [topic])

    def _router(self, client: Client) -> Callable[[SourceRecord], Routed]:
        """The worker's route of one record, with its settings, registry and lineages."""
        settings = self._settings
        schemas = schema_resolver(settings)
        lineage = LineageRegistry(client) if settings.lineage_detection else None
        epochs = epoch_of(lineage, settings.source_epoch)

        def routed(record: SourceRecord) -> Routed:
            parse = schemas.parser_for([record]) if schemas is not None else None
            return route(
                record,
                self._rules,
                settings.source_epoch,
                settings.max_value_bytes,
                parse,
                epoch_of=epochs,
            )

        return routed

    def _explain(self, rejected: Rejected) -> str:
        failure = Failure(rejected.error, rejected.table, rejected.event)
        reason = public_reason(failure, self._rules.sensitive(rejected.table))
        return f"{rejected.error.kind}: {reason}"

    def _topics_of(self, table: str) -> list[str]:
        """The worker's topics named ``<prefix>.<db>.<table>`` for ``table``, else all.

        The worker's topics are ``topics`` and those ``topic_pattern`` matches now.
        """
        settings = self._settings
        topics = list(settings.topics)
        if settings.topic_pattern:
            consumer = reader(settings.brokers, settings.consumer_kafka())
            try:
                existing = consumer.list_topics(timeout=self._timeout_s).topics
            finally:
                consumer.close()
            pattern = re.compile(settings.topic_pattern)
            topics += sorted(t for t in existing if pattern.fullmatch(t) and not t.startswith("__"))
        named = [t for t in topics if table_of_topic_named(self._rules.identity, t) == table]
        if not topics:
            msg = "no topic to read: give --topic, or topics/topic_pattern in the settings"
            raise CdcCacheError(msg)
        return named or topics
