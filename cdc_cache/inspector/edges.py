"""The inspector's edges: Redis and the database for its checks, Kafka for its samples."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final

from confluent_kafka import Consumer, KafkaException, TopicPartition

from cdc_cache.core import metrics
from cdc_cache.core.errors import BrokerUnavailable, CdcCacheError, ConfigError
from cdc_cache.core.events import Row, SourceRecord
from cdc_cache.core.retry import Backoff, retry_forever, retry_reporter
from cdc_cache.core.throttle import Throttle
from cdc_cache.inspector.settings import InspectSettings
from cdc_cache.plan.cache_ops import ValueFormat
from cdc_cache.plan.indexes import index_kind
from cdc_cache.plan.rules import KeyRule, TableRules
from cdc_cache.sink.connection import Client
from cdc_cache.source.broker_health import BrokerHealth
from cdc_cache.source.kafka_config import CONSUMER_DEFAULTS
from cdc_cache.source.kafka_logs import with_logger
from cdc_cache.tools.index_judge import Pair, StoredIndex
from cdc_cache.tools.verify import row_for_key
from cdc_cache.tools.verify_indexes import implied_by_a_row, read_members
from cdc_cache.tools.verify_judge import KeyPattern, Stored
from cdc_cache.tools.verify_reads import Database, read_keys

log = logging.getLogger("cdc_cache.inspect")

_MAX_BATCH: Final = 500


class LiveTruth:
    """Redis through the worker's client, the database through ``verify``'s reader.

    The database connection is opened again after any error (a restarted server, a
    dropped connection); each query is counted against the caller's budget.
    """

    def __init__(self, client: Client, dsn: str, patterns: Mapping[KeyRule, KeyPattern]) -> None:
        self._client = client
        self._dsn = dsn
        self._db: Database | None = None
        self._patterns = patterns

    def _database(self) -> Database:
        if self._db is None:
            self._db = Database.connect(self._dsn)
        return self._db

    def _reset(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except Exception:
                log.debug("database connection did not close cleanly", exc_info=True)
            self._db = None

    def connect(self, backoff: Backoff, stop: threading.Event) -> None:
        """Open the database connection, waiting (logged, counted) while it fails."""
        attempt = 0
        while not stop.is_set():
            try:
                self._database()
                return
            except ConfigError:
                raise
            except CdcCacheError as exc:
                attempt += 1
                metrics.RETRIES.labels("database").inc()
                log.warning(
                    "database unavailable, retrying", extra={"attempt": attempt, "error": str(exc)}
                )
                stop.wait(backoff.delay(attempt, random.Random()))

    def stored(self, keys: Mapping[str, ValueFormat]) -> dict[str, Stored]:
        ordered = sorted(keys.items())
        values = read_keys(self._client, ordered)
        return {key: value for (key, _), value in zip(ordered, values, strict=True)}

    def row(self, table: TableRules, key: Mapping[str, Any]) -> Row | None:
        metrics.INSPECT_DB_QUERIES.inc()
        try:
            found = self._database().matching(table.table, key, as_text=False, shape=table.values)
        except Exception:
            self._reset()
            raise
        return found[0] if found else None

    def owned(self, table: TableRules, primary_key: Sequence[str], key: str) -> bool:
        for rule in table.keys:
            pattern = self._patterns.get(rule)
            if pattern is None or pattern.parse(key) is None:
                continue
            metrics.INSPECT_DB_QUERIES.inc()
            try:
                if row_for_key(self._database(), table, primary_key, key, pattern) is not None:
                    return True
            except Exception:
                self._reset()
                raise
        return False

    def memberships(self, pairs: Mapping[Pair, KeyRule]) -> dict[str, StoredIndex]:
        return read_members(self._client, {p: index_kind(r) for p, r in pairs.items()}).indexes

    def implied(
        self, table: TableRules, primary_key: Sequence[str], rule: KeyRule, pair: Pair
    ) -> bool:
        metrics.INSPECT_DB_QUERIES.inc()
        try:
            return implied_by_a_row(self._database(), table, primary_key, rule, pair)
        except Exception:
            self._reset()
            raise

    def ready(self) -> bool:
        return self._db is not None

    def close(self) -> None:
        self._reset()


class KafkaRecords:
    """Every partition of the topics, assigned from their end; records as SourceRecords."""

    def __init__(self, settings: InspectSettings, topics: Sequence[str]) -> None:
        self.health = BrokerHealth()
        config = {
            **CONSUMER_DEFAULTS,
            **with_logger(settings.consumer_kafka()),
            "bootstrap.servers": settings.brokers,
            "group.id": "cdc-cache-inspect",  # never joined: partitions are assigned
            "enable.auto.commit": "false",
            "auto.offset.reset": "latest",  # a sampler loses nothing it must keep
            "error_cb": self.health.on_error,
        }
        self._consumer = Consumer(config)
        assignment = retry_forever(
            lambda: self._partitions(topics),
            backoff=settings.retry_kafka.backoff(),
            is_transient=lambda exc: isinstance(exc, KafkaException | BrokerUnavailable),
            on_retry=retry_reporter("kafka", "waiting for the topics' partitions", log),
        )
        self._consumer.assign(assignment)
        self.partitions = len(assignment)
        self._errors = Throttle(30.0)

    def _partitions(self, topics: Sequence[str]) -> list[TopicPartition]:
        """Every partition of ``topics``, from its end as it is now.

        The end is read here rather than left to ``OFFSET_END``, which the client resolves
        at its first fetch: on a slow start that came after records the inspector, ready
        by then, should have sampled.
        """
        assignment = []
        for topic in topics:
            meta = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                msg = f"topic {topic} has no partitions to read yet"
                raise BrokerUnavailable(msg)
            for partition in sorted(meta.partitions):
                _, end = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                assignment.append(TopicPartition(topic, partition, end))
        return assignment

    def __call__(self, timeout_s: float) -> list[SourceRecord]:
        out = []
        for message in self._consumer.consume(_MAX_BATCH, timeout_s):
            error = message.error()
            if error is not None:
                metrics.CONSUMER_ERRORS.labels(error.name()).inc()
                if self._errors.admit(error.code()) is not None:
                    log.warning("kafka consumer error", extra={"error": error.str()})
                continue
            stamp = message.timestamp()
            out.append(
                SourceRecord(
                    message.topic() or "",
                    message.partition() or 0,
                    message.offset() or 0,
                    message.key(),
                    message.value(),
                    stamp[1] if stamp and stamp[1] >= 0 else None,
                )
            )
        if out:
            self.health.reachable()
        return out

    def close(self) -> None:
        self._consumer.close()
