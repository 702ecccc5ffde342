"""What tests write to Kafka: topics of their own, messages produced, duplicated, poisoned."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable

from confluent_kafka import KafkaError, Producer
from confluent_kafka import Message as KafkaMessage

from tests.workload import Message

POISON = [b"{not json", b'{"op": "u", "source": {}}', b"\x00\xff"]


def unique_topic(table: str = "inventory.stock") -> str:
    return f"t{uuid.uuid4().hex[:10]}.{table}"


def produce(
    bootstrap: str,
    messages: Iterable[Message],
    *,
    pace_s: float = 0.0,
    delivered: Callable[[int, KafkaMessage], None] | None = None,
) -> int:
    """Produce in order and wait for every acknowledgement; ``delivered(index, message)``
    hears where each one landed (partition, offset)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", "enable.idempotence": True}
    )
    count = 0
    for message in messages:
        callback = None if delivered is None else _on_delivery(delivered, count)
        producer.produce(message.topic, key=message.key, value=message.value, on_delivery=callback)
        count += 1
        if pace_s and count % 50 == 0:
            producer.poll(0)
            time.sleep(pace_s)
    assert producer.flush(30) == 0, "broker did not acknowledge every message"
    return count


def _on_delivery(
    delivered: Callable[[int, KafkaMessage], None], index: int
) -> Callable[[KafkaError | None, KafkaMessage], None]:
    def report(error: KafkaError | None, message: KafkaMessage) -> None:
        assert error is None, f"message {index} was not delivered: {error}"
        delivered(index, message)

    return report


def with_redelivery(transactions: list[list[Message]], seed: int = 1) -> list[Message]:
    """Every transaction in order, plus ~30 % of them delivered again later (duplicates)."""
    rnd = random.Random(seed)
    out: list[Message] = []
    for index, tx in enumerate(transactions):
        out.extend(tx)
        if index > 5 and rnd.random() < 0.3:
            out.extend(transactions[rnd.randrange(index)])
    return out


def with_poison(messages: list[Message], topic: str, seed: int = 2) -> list[Message]:
    rnd = random.Random(seed)
    out = list(messages)
    for bad in POISON:
        out.insert(rnd.randrange(len(out)), Message(topic, b'{"id": 1}', bad))
    return out
