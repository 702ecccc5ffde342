"""Where each latency probe was when: acknowledged, delivered to a client, applied in Redis.

The latency phases of ``bench/throughput.py`` send a probe row every few milliseconds.
librdkafka's delivery report says when the broker acknowledged (appended) it; a child
process subscribed to Redis keyspace notifications says when the worker set its key; and
a second child process, a plain confluent-kafka consumer with the worker's fetch settings,
says when the broker handed it to a client. On a broker that holds a waiting fetch until
it times out (tansu, ``docs/latency.md``), ack → delivered is the broker's share of the
latency and delivered → applied the worker's.

The two consumers fetch independently, so per probe the split is one sample of each
share, not the worker's own delivery time: a probe the worker's consumer got earlier
than the side consumer shows a negative worker share. The distributions are what count.
Each child runs in its own process so its CPU is metered apart (``probe_consumer``) and
the harness's pacing does not delay its timestamps.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from bench.latency import summary
from bench.workload import PROBE_PREFIX
from cdc_cache.core.histograms import quantile
from cdc_cache.source.kafka_config import CONSUMER_DEFAULTS


class Recorder:
    """A spawned child that records ``probe id -> epoch seconds`` until told to stop."""

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._queue: Any = context.Queue()
        self._stop = context.Event()
        self._proc = context.Process(target=target, args=(*args, self._queue, self._stop))
        self._proc.start()
        self._queue.get(timeout=120)  # "ready"

    @property
    def pid(self) -> int:
        return self._proc.pid or 0

    def finish(self) -> dict[int, float]:
        self._stop.set()
        seen: dict[int, float] = self._queue.get(timeout=60)
        self._proc.join(10)
        return seen


def applied_recorder(redis: Redis[bytes], address: str) -> Recorder:
    """When the worker set each probe's key, from keyspace notifications."""
    redis.config_set("notify-keyspace-events", "K$")
    return Recorder(_subscribe, address)


def delivered_recorder(brokers: str, topic: str) -> Recorder:
    """When each probe on ``topic`` reached a client with the worker's fetch settings.

    Ready once it has the warm-up probe (id 0), so it is assigned and fetching before the
    measured probes start.
    """
    return Recorder(_consume, brokers, topic)


def _subscribe(address: str, out: Any, stop: Any) -> None:
    """Child process: the time each probe key is set, from keyspace notifications."""
    redis = Redis.from_url(address)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(f"__keyspace@0__:{PROBE_PREFIX}*")
    seen: dict[int, float] = {}
    out.put("ready")
    while not stop.is_set():
        message = pubsub.get_message(timeout=0.2)
        if message is not None and message["data"] == b"set":
            ident = int(message["channel"].rsplit(b":", 1)[1])
            seen.setdefault(ident, time.time())
    out.put(seen)


def _consume(brokers: str, topic: str, out: Any, stop: Any) -> None:
    """Child process: the time each probe record is handed to this consumer."""
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"bench-deliveries-{topic}",
            "enable.auto.commit": False,
            **CONSUMER_DEFAULTS,
        }
    )
    # Assigned, as Bytewax's KafkaSource assigns the worker's partitions (no group join).
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    seen: dict[int, float] = {}
    while not stop.is_set():
        message = consumer.poll(0.2)
        if message is None or message.error() is not None or (raw := message.key()) is None:
            continue
        now = time.time()
        key = orjson.loads(raw)
        ident = int(key.get("payload", key)["id"])
        if not seen and ident == 0:
            out.put("ready")
        seen.setdefault(ident, now)
    consumer.close()
    seen.pop(0, None)
    out.put(seen)


def per_probe(
    sent_us: Mapping[int, int],
    ack_after_s: Mapping[int, float],
    delivered: Mapping[int, float],
    applied: Mapping[int, float],
) -> dict[str, list[float]]:
    """Per probe, in id order, in ms: ack → applied and ack → delivered.

    ``sent_us`` is each probe's send time (µs since the epoch), ``ack_after_s`` librdkafka's
    send → ack, ``delivered`` and ``applied`` epoch seconds; all from the same clock.
    """
    idents = sorted(sent_us)
    acked_ms = {i: sent_us[i] / 1000 + ack_after_s[i] * 1000 for i in idents}
    return {
        "ack_to_applied": [applied[i] * 1000 - acked_ms[i] for i in idents],
        "ack_to_delivered": [delivered[i] * 1000 - acked_ms[i] for i in idents],
    }


def worker_share(samples: Mapping[str, Sequence[float]]) -> list[float]:
    """Delivered → applied per probe: ack → applied less ack → delivered."""
    return [
        total - broker
        for total, broker in zip(
            samples["ack_to_applied"], samples["ack_to_delivered"], strict=True
        )
    ]


def split(samples: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Percentiles of the broker's and the worker's share, and how often the worker's is < 0."""
    worker = worker_share(samples)
    return {
        "ack_to_delivered": summary(samples["ack_to_delivered"]),
        "delivered_to_applied": summary(worker),
        "worker_share_negative": round(sum(w < 0 for w in worker) / len(worker), 3),
    }


def own_time(metrics_text: str) -> dict[str, Any]:
    """The worker's own time (record received → Redis answered), from its ``/metrics``.

    Percentiles of ``cdc_cache_received_to_applied_seconds`` interpolated within buckets
    as Prometheus does, over every change the worker took: the worker's own share, measured
    inside it, where the split's delivered → applied is the difference of two consumers.
    """
    buckets = sorted(
        (float(sample.labels["le"]), sample.value)
        for family in text_string_to_metric_families(metrics_text)
        if family.name == "cdc_cache_received_to_applied_seconds"
        for sample in family.samples
        if sample.name.endswith("_bucket")
    )
    shown: dict[str, Any] = {"changes": int(buckets[-1][1]) if buckets else 0}
    for name, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
        value = quantile(buckets, q)
        shown[name] = None if value is None else round(value * 1000, 1)
    return shown


def writes(metrics_text: str) -> dict[str, Any]:
    """How the worker wrote: its batch writes, changes per write, mean seconds per write.

    From ``cdc_cache_apply_batch_seconds`` (one observation per write of the sink's writer
    thread) and ``cdc_cache_records_total{kind="change"}``: few changes per write means each
    write's fixed cost (a round trip, the accounting's metric updates) is shared by few.
    """
    count = total_s = changes = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "cdc_cache_apply_batch_seconds_count":
                count = sample.value
            elif sample.name == "cdc_cache_apply_batch_seconds_sum":
                total_s = sample.value
            elif sample.name == "cdc_cache_records_total" and sample.labels["kind"] == "change":
                changes = sample.value
    return {
        "writes": int(count),
        "changes_per_write": round(changes / count, 1) if count else None,
        "ms_per_write": round(total_s / count * 1000, 2) if count else None,
    }


def collections(metrics_text: str) -> dict[str, int]:
    """The cyclic collector's runs by generation since the worker started.

    From ``python_gc_collections_total``: each run scans the young objects alive, so
    its cost grows with what the worker holds in flight.
    """
    return {
        sample.labels["generation"]: int(sample.value)
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "python_gc_collections_total"
    }


def compact(samples: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    """The samples rounded to 0.1 ms, for the results file."""
    return {name: [round(v, 1) for v in values] for name, values in samples.items()}
