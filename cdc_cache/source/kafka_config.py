"""librdkafka settings per client: common ones, the consumers' own, the producer's own.

The worker runs three kinds of Kafka client: consumers (the source partitions, the DLQ
readers), one producer per worker (dead letters) and admin clients (topics). librdkafka
ignores a property meant for the other kind and logs a configuration warning at every
start, so the settings keep them apart (``kafka`` for every client, ``kafka_consumer``,
``kafka_producer``), and a property put where it would be ignored is refused at load with
the place it belongs.

The two sets below are librdkafka's own consumer-only (C) and producer-only (P)
properties, aliases included, for the pinned confluent-kafka; ``tests/unit/
test_kafka_config.py`` compares them with the table the bundled library prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

Role = Literal["consumer", "producer"]

# A broker that does not answer a waiting fetch as soon as data arrives holds each record
# for up to fetch.wait.max.ms (librdkafka's default is 500 ms): cap what that can add to
# commit-to-applied latency. Brokers that answer early are unaffected. Overridable.
#
# The dataflow runs one consumer per partition, and librdkafka prefetches up to
# queued.max.messages.kbytes (64 MiB by default) for each: a worker that falls behind on
# many partitions would hold that much per partition. 16 MiB is still ~9,000 records of
# a schema-wrapped 1.8 KB change, several polls' worth, so it costs no throughput.
CONSUMER_DEFAULTS: dict[str, str] = {
    "fetch.wait.max.ms": "100",
    "queued.max.messages.kbytes": "16384",
}

CONSUMER_ONLY: Final = frozenset(
    {
        "auto.commit.enable",
        "auto.commit.interval.ms",
        "auto.offset.reset",
        "check.crcs",
        "consume.callback.max.messages",
        "coordinator.query.interval.ms",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.partition.eof",
        "fetch.error.backoff.ms",
        "fetch.max.bytes",
        "fetch.message.max.bytes",
        "fetch.min.bytes",
        "fetch.queue.backoff.ms",
        "fetch.wait.max.ms",
        "group.id",
        "group.instance.id",
        "group.protocol",
        "group.protocol.type",
        "group.remote.assignor",
        "heartbeat.interval.ms",
        "isolation.level",
        "max.partition.fetch.bytes",
        "max.poll.interval.ms",
        "max.poll.records",
        "offset.store.method",
        "offset.store.path",
        "offset.store.sync.interval.ms",
        "partition.assignment.strategy",
        "queued.max.messages.kbytes",
        "queued.min.messages",
        "session.timeout.ms",
        "share.acknowledgement.mode",
    }
)
PRODUCER_ONLY: Final = frozenset(
    {
        "acks",
        "batch.num.messages",
        "batch.size",
        "compression.codec",
        "compression.level",
        "compression.type",
        "delivery.report.only.error",
        "delivery.timeout.ms",
        "enable.gapless.guarantee",
        "enable.idempotence",
        "linger.ms",
        "message.send.max.retries",
        "message.timeout.ms",
        "partitioner",
        "produce.offset.report",
        "queue.buffering.backpressure.threshold",
        "queue.buffering.max.kbytes",
        "queue.buffering.max.messages",
        "queue.buffering.max.ms",
        "queuing.strategy",
        "request.required.acks",
        "request.timeout.ms",
        "retries",
        "sticky.partitioning.linger.ms",
        "transaction.timeout.ms",
        "transactional.id",
    }
)
_ONLY: Final[Mapping[Role, frozenset[str]]] = {
    "consumer": CONSUMER_ONLY,
    "producer": PRODUCER_ONLY,
}
_SECTION: Final[Mapping[Role, str]] = {
    "consumer": "kafka_consumer",
    "producer": "kafka_producer",
}


# The dead-letter producer's guarantee (an entry is durable before progress moves past it)
# rests on these; a producer setting may not weaken them. Idempotence is not among them:
# without it a retried write can land twice, under the same id, which readers fold.
_DURABLE: Final = {
    "acks": ("all", "-1"),
    "request.required.acks": ("all", "-1"),
}


def weakened(properties: Mapping[str, str]) -> list[str]:
    """Producer settings that would let a dead letter be lost, each with why."""
    return [
        f"{name} {properties[name]!r} would let a dead letter be lost: leave it out "
        f"(the DLQ producer uses {allowed[0]!r})"
        for name, allowed in _DURABLE.items()
        if name in properties and properties[name].lower() not in allowed
    ]


def misplaced(properties: Mapping[str, str], allowed: tuple[Role, ...]) -> list[str]:
    """Why each property of a section would be ignored by some client it reaches.

    ``allowed`` are the client roles the section may configure on its own: none for
    ``kafka`` (every client gets it), one for ``kafka_consumer``/``kafka_producer``.
    """
    problems = []
    for name in sorted(properties):
        for role, only in _ONLY.items():
            if name in only and role not in allowed:
                problems.append(
                    f"{name} is a {role} property (other clients would ignore it with a "
                    f"warning): put it under {_SECTION[role]}"
                )
    return problems
