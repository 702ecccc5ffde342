"""Reading a whole topic, or one partition from an offset, to its end.

For tools that look at what a topic holds (the dead letters, one row's changes): not the
worker's path. The end is known from end-of-partition events, which librdkafka derives
from the high watermark in fetch responses, never from a ListOffsets "latest" request
(wrong on some brokers).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Generator, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from cdc_cache.core.errors import BrokerUnavailable, CdcCacheError
from cdc_cache.core.events import SourceRecord
from cdc_cache.source.kafka_logs import with_logger

log = logging.getLogger("cdc_cache.topic_scan")


_GONE = (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE)


class OffsetGone(CdcCacheError):
    """The partition no longer holds the offset a scan starts from (retention, compaction)."""


def reader(brokers: str, kafka: Mapping[str, str]) -> Consumer:
    """A consumer that only assigns (never joins a group) and reports partition ends."""
    config: dict[str, Any] = {
        "group.id": f"cdc-cache-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": "false",
        "enable.partition.eof": "true",
        "auto.offset.reset": "error",
        **kafka,
        "bootstrap.servers": brokers,
    }
    return Consumer(with_logger(config))


def scan(
    brokers: str,
    kafka: Mapping[str, str],
    topic: str,
    *,
    partition: int | None = None,
    start: int = OFFSET_BEGINNING,
    timeout_s: float = 30,
) -> Generator[SourceRecord, None, None]:
    """Every record of ``topic`` (or of one ``partition`` from ``start``) up to its end.

    Records come in offset order per partition. An absent topic yields nothing. Raises
    BrokerUnavailable when the brokers do not answer, or the end of every partition was
    not reached within ``timeout_s``; OffsetGone when ``start`` is no longer held.
    """
    consumer = reader(brokers, kafka)
    try:
        try:
            meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        except KafkaException as exc:
            msg = f"cannot read the topic {topic!r} on {brokers}: {exc}"
            raise BrokerUnavailable(msg) from exc
        if meta is None or meta.error is not None or not meta.partitions:
            return
        partitions = sorted(meta.partitions) if partition is None else [partition]
        consumer.assign([TopicPartition(topic, p, start) for p in partitions])
        open_parts = set(partitions)
        deadline = time.monotonic() + timeout_s
        while open_parts:
            if time.monotonic() > deadline:
                msg = f"did not reach the end of the topic {topic!r} within {timeout_s:g} s"
                raise BrokerUnavailable(msg)
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    open_parts.discard(message.partition() or 0)
                elif error.code() in _GONE:
                    msg = f"{topic}[{message.partition()}] no longer holds offset {start}"
                    raise OffsetGone(msg)
                else:
                    log.warning("topic read error", extra={"topic": topic, "error": error.str()})
                continue
            timestamp = message.timestamp()
            yield SourceRecord(
                topic,
                message.partition() or 0,
                message.offset() or 0,
                message.key(),
                message.value(),
                timestamp[1] if timestamp and timestamp[1] >= 0 else None,
            )
    finally:
        consumer.close()
