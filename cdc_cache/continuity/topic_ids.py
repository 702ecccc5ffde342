"""Topic ids from the brokers, asked without blocking the dataflow.

A topic id (Kafka 2.8+, KIP-516) changes when a topic is deleted and created again under
the same name, which its offsets alone cannot show once the new topic has grown past them.
The admin client's DescribeTopics reports it (tansu too: a new UUID v7 per creation).
One client per process serves every source partition; answers are cached per topic for
``refresh_s``, so the partitions of a topic share one request, and a request still in
flight never holds up a batch.

An answer that the topic is unknown is not taken at its word (``continuity.model.Absence``):
until such answers lasted, the last identity stands, the topic is asked again every
``retry_s``, and ``cdc_cache_source_topic_unknown{topic}`` shows it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient

from cdc_cache.continuity.model import Absence, unknown_again
from cdc_cache.core import metrics
from cdc_cache.source.kafka_logs import with_logger

log = logging.getLogger("cdc_cache.continuity")

NULL_TOPIC_ID: Final = "AAAAAAAAAAAAAAAAAAAAAA"  # the all-zero UUID: no id
# Brokers that cannot describe topics (or report no id) leave detection to the watermarks.
_NO_IDS: Final = frozenset({KafkaError.UNSUPPORTED_VERSION, KafkaError._UNSUPPORTED_FEATURE})
_GONE: Final = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC})
_WARN_EVERY_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class TopicIdentity:
    """What the brokers say about a topic: whether it exists, and its id if they have one."""

    exists: bool
    topic_id: str | None
    at: float  # when the answer arrived (the ids' clock)


class TopicIds:
    """Per-topic ids, refreshed in the background every ``refresh_s``."""

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        refresh_s: float = 30.0,
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = dict(config)
        self._refresh_s = refresh_s
        self._retry_s = retry_s
        self._clock = clock
        self._lock = threading.Lock()
        self._admin: AdminClient | None = None
        self._known: dict[str, TopicIdentity] = {}
        self._asked: dict[str, float] = {}
        self._pending: dict[str, Future[Any]] = {}
        self._absent: dict[str, Absence] = {}
        self._no_ids_logged = False
        self._warned: dict[str, float] = {}

    def now(self) -> float:
        """The clock answers are stamped with."""
        return self._clock()

    def current(self, topic: str) -> TopicIdentity | None:
        """The latest answer for ``topic`` (None before the first); asks again when due."""
        with self._lock:
            if self._admin is not None:
                self._admin.poll(0)  # librdkafka's lines reach the log only when polled
            self._collect(topic)
            known = self._known.get(topic)
            now = self._clock()
            due = known is None or now - known.at >= self._refresh_s or topic in self._absent
            retry = now - self._asked.get(topic, float("-inf")) >= self._retry_s
            if due and retry and topic not in self._pending:
                self._ask(topic)
            return known

    def _ask(self, topic: str) -> None:
        if self._admin is None:
            self._admin = AdminClient(with_logger(self._config))
        self._asked[topic] = self._clock()
        futures = self._admin.describe_topics(TopicCollection([topic]), request_timeout=10)
        self._pending[topic] = futures[topic]

    def _collect(self, topic: str) -> None:
        future = self._pending.get(topic)
        if future is None or not future.done():
            return
        del self._pending[topic]
        try:
            description = future.result()
        except KafkaException as exc:
            error = exc.args[0]
            code = error.code() if isinstance(error, KafkaError) else None
            if code in _GONE:
                self._unknown(topic, str(error))
            elif code in _NO_IDS:
                self._known[topic] = TopicIdentity(True, None, self._clock())
                self._say_no_ids(str(error))
            else:  # transient (brokers down, timeouts): asked again after retry_s
                self._say_waiting(topic, str(exc))
            return
        topic_id = str(description.topic_id) if description.topic_id is not None else None
        if topic_id in (None, NULL_TOPIC_ID):
            topic_id = None
            self._say_no_ids("the broker reports no topic id")
        if self._absent.pop(topic, None) is not None:
            metrics.SOURCE_TOPIC_UNKNOWN.labels(topic).set(0)
            log.warning("the brokers know the topic again", extra={"topic": topic})
        self._known[topic] = TopicIdentity(True, topic_id, self._clock())

    def _unknown(self, topic: str, error: str) -> None:
        """The brokers answer that ``topic`` is unknown: gone only once that lasted."""
        now = self._clock()
        self._absent[topic] = absence = unknown_again(self._absent.get(topic), now)
        metrics.SOURCE_TOPIC_UNKNOWN.labels(topic).set(1)
        if absence.gone(now):
            self._known[topic] = TopicIdentity(False, None, now)
        elif absence.answers == 1:
            log.warning(
                "the brokers answer that the topic is unknown; it counts as gone only if "
                "that lasts (a leader election or a restarting broker answers so too)",
                extra={"topic": topic, "error": error},
            )

    def _say_waiting(self, topic: str, error: str) -> None:
        """A partition waits for its topic's id before it reads: say so every 30 s."""
        now = self._clock()
        if now - self._warned.get(topic, float("-inf")) >= _WARN_EVERY_S:
            self._warned[topic] = now
            log.warning(
                "waiting for the topic's id before reading it",
                extra={"topic": topic, "error": error},
            )

    def _say_no_ids(self, why: str) -> None:
        if not self._no_ids_logged:
            self._no_ids_logged = True
            log.warning(
                "brokers report no topic ids: a recreated topic is detected only by its "
                "watermarks (see README, Source continuity)",
                extra={"why": why},
            )
