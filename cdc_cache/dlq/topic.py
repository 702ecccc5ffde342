"""The dead-letter topic on Kafka: durable writes, reading it to its end, and originals.

The original message of an entry is fetched from its source topic by offset.

Writes are acknowledged by all in-sync replicas through an idempotent producer and
flushed before :meth:`DeadLetterWriter.write` returns, so the dataflow never records
progress past a failure that is not yet safely in the DLQ. A broker that does not
acknowledge is retried with backoff (logged, counted), never given up on.

Reading to the end is :func:`cdc_cache.source.topic_scan.scan`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import orjson
from confluent_kafka import (
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from cdc_cache.core.errors import BrokerUnavailable
from cdc_cache.core.events import SourceRecord
from cdc_cache.core.retry import Backoff, retry_forever, retry_reporter
from cdc_cache.dlq.entries import malformed, shrunk
from cdc_cache.source.kafka_logs import with_logger
from cdc_cache.source.topic_scan import reader, scan

log = logging.getLogger("cdc_cache.dlq")
_REPORT_RETRY = retry_reporter("kafka_dlq", "DLQ broker unavailable, retrying", log)

KafkaConfig = Mapping[str, str]

PRODUCER_DEFAULTS: Final = {
    "acks": "all",
    "enable.idempotence": "true",
    # A delivery that has not succeeded by then is reported and produced again after a
    # backoff, so an outage shows in logs and metrics instead of a silent queue.
    "message.timeout.ms": "30000",
    "linger.ms": "0",
}


def _config(brokers: str, kafka: KafkaConfig, defaults: Mapping[str, str]) -> dict[str, Any]:
    return with_logger({**defaults, **kafka, "bootstrap.servers": brokers})


def ensure_topic(brokers: str, topic: str, kafka: KafkaConfig, timeout_s: float = 30) -> None:
    """Create the DLQ topic (one partition) unless it exists; raises BrokerUnavailable."""
    admin = AdminClient(_config(brokers, kafka, {}))
    try:
        if topic in admin.list_topics(timeout=timeout_s).topics:
            return
        futures = admin.create_topics(
            [NewTopic(topic, num_partitions=1)], request_timeout=timeout_s
        )
        futures[topic].result(timeout=timeout_s)
    except KafkaException as exc:
        error = exc.args[0]
        if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return
        msg = f"cannot create the DLQ topic {topic!r} on {brokers}: {exc}"
        raise BrokerUnavailable(msg) from exc
    finally:
        admin.poll(0)  # hand librdkafka's queued lines to the log before the client goes
    log.info("created the DLQ topic", extra={"topic": topic})


class DeadLetterWriter:
    """Writes DLQ entries (JSON, key = id) and returns only once the broker has them all.

    ``sleep`` waits between attempts; a stop-aware one ends the wait on shutdown by
    raising (the failures are written again after the restart, under the same ids).
    """

    def __init__(
        self,
        brokers: str,
        topic: str,
        kafka: KafkaConfig,
        backoff: Backoff,
        *,
        sleep: Callable[[float], None] = time.sleep,
        flush_poll_s: float = 0.05,
    ) -> None:
        self.topic = topic
        self._config = _config(brokers, kafka, PRODUCER_DEFAULTS)
        self._producer = Producer(self._config)
        self._backoff = backoff
        self._sleep = sleep
        self._flush_poll_s = flush_poll_s

    def write(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Produce ``entries`` and wait until every one is acknowledged (retrying)."""
        pending = list(entries)

        def attempt() -> None:
            nonlocal pending
            pending = self._produce(pending)
            if pending:
                msg = f"{len(pending)} DLQ entries not acknowledged by the broker"
                raise BrokerUnavailable(msg)

        if pending:
            retry_forever(attempt, backoff=self._backoff, on_retry=_REPORT_RETRY, sleep=self._sleep)

    def _produce(self, entries: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """Produce ``entries``; those not delivered, to write again (smaller, if too large).

        An entry too large for the producer or the topic (``message.max.bytes``,
        ``max.message.bytes``) is written in a smaller form (:func:`shrunk`): retried as
        it was, it would be refused forever and hold the flow.
        """
        failed: list[Mapping[str, Any]] = []
        errors: list[KafkaError] = []
        for written in entries:
            entry = written
            while True:

                def delivered(err: KafkaError | None, _msg: Message, entry: Any = entry) -> None:
                    if err is not None:
                        failed.append(_smaller(entry, err) if _too_large(err) else entry)
                        errors.append(err)

                try:
                    self._producer.produce(
                        self.topic,
                        key=str(entry["id"]),
                        value=orjson.dumps(entry),
                        on_delivery=delivered,
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain first
                    self._producer.poll(self._flush_poll_s)
                except KafkaException as exc:  # above the producer's message.max.bytes
                    if not _too_large(exc.args[0]):
                        raise
                    entry = _smaller(entry, exc.args[0])
        while self._producer.flush(self._flush_poll_s) > 0:
            self._sleep(0)  # a stop-aware sleep raises here on shutdown
        if errors:
            log.warning("DLQ write failed", extra={"topic": self.topic, "error": errors[0].str()})
            # Start the next attempt from a fresh producer: one that hit a fatal error (or
            # is stuck acquiring a producer id) would refuse or stall every later write.
            self._producer = Producer(self._config)
        return failed

    def close(self) -> None:
        """Deliver anything still queued (bounded), then drop the producer."""
        self._producer.flush(5)


def _too_large(error: object) -> bool:
    return isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE


def _smaller(entry: Mapping[str, Any], error: KafkaError) -> Mapping[str, Any]:
    """``entry`` in its next smaller form; raises when none is left (nothing can be written)."""
    smaller = shrunk(entry, error.str())
    if smaller is None:
        msg = f"even the coordinates of DLQ entry {entry.get('id')} are too large: {error.str()}"
        raise BrokerUnavailable(msg)
    log.warning(
        "DLQ entry too large for the topic: written without its message copy",
        extra={"id": entry.get("id"), "error": error.str()},
    )
    return smaller


def read_entries(
    brokers: str, topic: str, kafka: KafkaConfig, timeout_s: float = 30
) -> list[dict[str, Any]]:
    """Every entry on the DLQ topic, in partition/offset order (an absent topic is empty).

    A message that is no entry (see :func:`~cdc_cache.dlq.entries.malformed`) is logged
    with its offset and left out.

    Raises BrokerUnavailable when the end of every partition was not reached in time.
    """
    entries: list[dict[str, Any]] = []
    for record in scan(brokers, kafka, topic, timeout_s=timeout_s):
        try:
            entry = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError:
            problem: str | None = "not JSON"
        else:
            problem = malformed(entry)
        if problem is None:
            entries.append(entry)
        else:
            log.warning(
                "DLQ holds a message that is not an entry: left out of listings and replays",
                extra={"partition": record.partition, "offset": record.offset, "problem": problem},
            )
    return entries


class SourceReader:
    """Fetches single messages by topic/partition/offset (the originals of DLQ entries)."""

    def __init__(self, brokers: str, kafka: KafkaConfig, timeout_s: float = 15) -> None:
        self._consumer = reader(brokers, kafka)
        self._brokers = brokers
        self._timeout_s = timeout_s

    def fetch(self, topic: str, partition: int, offset: int) -> SourceRecord | None:
        """The message at that offset, or None when the topic no longer holds it."""
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + self._timeout_s
        try:
            while time.monotonic() < deadline:
                message = self._consumer.poll(0.5)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() in (
                        KafkaError._PARTITION_EOF,
                        KafkaError._AUTO_OFFSET_RESET,
                        KafkaError.OFFSET_OUT_OF_RANGE,
                        KafkaError.UNKNOWN_TOPIC_OR_PART,
                        KafkaError._UNKNOWN_PARTITION,
                    ):
                        return None
                    continue
                if message.offset() != offset:
                    return None  # compacted away: the next message is a later one
                timestamp = message.timestamp()
                return SourceRecord(
                    topic,
                    partition,
                    offset,
                    message.key(),
                    message.value(),
                    timestamp[1] if timestamp and timestamp[1] >= 0 else None,
                )
        finally:
            self._consumer.unassign()
        msg = f"no answer from {self._brokers} for {topic}[{partition}]@{offset}"
        raise BrokerUnavailable(msg)

    def close(self) -> None:
        """Leave the brokers."""
        self._consumer.close()
