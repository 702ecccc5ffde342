"""Helpers shared by the dataflow tests: produce a workload, read back the cache."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterable
from typing import Any

import orjson
from confluent_kafka import Producer
from redis import Redis
from redis.cluster import RedisCluster

from tests.workload import Message

POISON = [b"{not json", b'{"op": "u", "source": {}}', b"\x00\xff"]


def unique_topic(table: str = "inventory.stock") -> str:
    return f"t{uuid.uuid4().hex[:10]}.{table}"


def produce(bootstrap: str, messages: Iterable[Message], *, pace_s: float = 0.0) -> int:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", "enable.idempotence": True}
    )
    count = 0
    for message in messages:
        producer.produce(message.topic, key=message.key, value=message.value)
        count += 1
        if pace_s and count % 50 == 0:
            producer.poll(0)
            time.sleep(pace_s)
    assert producer.flush(30) == 0, "broker did not acknowledge every message"
    return count


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


def cache_state(client: Redis | RedisCluster, prefix: str = "stock:") -> dict[str, Any]:
    """The JSON values under ``prefix`` (a key deleted between SCAN and GET is skipped)."""
    state = {}
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        value = client.get(key)
        if value is not None:
            state[key.decode()] = orjson.loads(value)  # type: ignore[arg-type]
    return state


def wait_until_equal(
    client: Redis | RedisCluster, expected: dict[str, Any], timeout: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = cache_state(client)
        if state == expected:
            return state
        time.sleep(0.5)
    return state
