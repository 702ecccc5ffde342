"""``cdc-cache run`` against hostile messages: each one costs one DLQ entry, never the flow.

Values nested deeper than JSON is written (a projected column), deeper than Python
recurses (a key column: rendering it recurses), a poison message nested as deep as the
parser reads (its dead letter must still be written), a value above the size limit
whose reason quotes a rendered key holding a sensitive value, and a table's first change
without a column its rules project. The changes around them apply, the worker stays up,
and a restart that reads them all again does not crash.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import orjson
import pytest

from cdc_cache.core.keys import escape_value, ns
from cdc_cache.dlq.entries import MAX_ENTRY_DEPTH
from cdc_cache.dlq.topic import ensure_topic, read_entries
from cdc_cache.tools.devstack.process import free_port
from tests.hostile import nested
from tests.integration.cache import wait_until_equal
from tests.integration.probes import admin_get, metric
from tests.integration.services import worker
from tests.integration.topics import produce, unique_topic
from tests.integration.waiting import wait_until
from tests.workload import RULES_YAML, Message, Workload

pytestmark = pytest.mark.integration

EMAIL = "ann+x@example.com"
RULES = (
    RULES_YAML
    + """
  app.users:
    sensitive: [email]
    keys:
      - key: "user:{email}"
        fields: [id, email, bio]
"""
)
MAX_VALUE_BYTES = 4096


def deepened(message: Message, column: str, depth: int) -> Message:
    """``message`` with its after image's ``column`` nested ``depth`` levels deep."""
    doc = orjson.loads(message.value or b"")
    doc["after"][column] = "@@"
    value = orjson.dumps(doc).replace(b'"@@"', nested(depth))
    return Message(message.topic, message.key, value)


def stock_messages(workload: Workload) -> tuple[list[Message], dict[int, str]]:
    """The workload's changes with hostile ones spliced in; their offsets and kinds."""
    messages = [m for tx in workload.transactions(50) for m in tx]
    changes = [m for m in messages if m.value is not None and b'"after":{' in m.value]
    hostile = {
        10: deepened(changes[3], "qty", 300),  # a projected column: the encoder refuses it
        25: deepened(changes[8], "sku_id", 1000),  # a key column: rendering it recurses
        40: Message(  # poison as deep as the parser reads, under a key as deep
            workload.topic,
            b'{"id": ' + nested(1000) + b"}",
            b'{"op": "u", "source": ' + nested(1020) + b"}",
        ),
    }
    kinds = {10: "unprocessable", 25: "unprocessable", 40: "undecodable"}
    for index in sorted(hostile):
        messages.insert(index, hostile[index])
    return messages, kinds


def users_change(user_id: int, pos: int, bio: str) -> bytes:
    return orjson.dumps(
        {
            "op": "c",
            "before": None,
            "after": {"id": user_id, "email": f"{user_id}{EMAIL}", "bio": bio},
            "source": {"connector": "mysql", "db": "app", "table": "users",
                       "file": "mysql-bin.000001", "pos": pos, "row": 0, "ts_ms": 1},
        }
    )  # fmt: skip


def leaked(text: str) -> list[str]:
    """Spellings of the users' e-mail addresses found in ``text``."""
    forms = [f"{n}{EMAIL}" for n in (1, 2, 3)]
    return [form for form in forms + [escape_value(f) for f in forms] if form in text]


def dead_letters(brokers: str, topic: str, count: int, service) -> list[dict]:
    found: list[dict] = []

    def enough() -> bool:
        found[:] = read_entries(brokers, topic, {}, timeout_s=20)
        return len(found) >= count

    wait_until(f"{count} dead letters", enough, 120, alive=[service], interval=0.2)
    return found


def test_hostile_messages_cost_one_dead_letter_each_and_never_the_worker(
    broker, redis_target, tmp_path: Path
):
    stock_topic, users_topic = unique_topic(), unique_topic("app.users")
    dlq_topic = f"dlq-{uuid.uuid4().hex[:8]}"
    broker.create_topics({stock_topic: 1, users_topic: 1})
    ensure_topic(broker.bootstrap, dlq_topic, {})
    workload = Workload(seed=52, topic=stock_topic)
    messages, kinds = stock_messages(workload)
    users = [
        Message(users_topic, b'{"id": 1}', users_change(1, 10, "short")),
        Message(users_topic, b'{"id": 2}', users_change(2, 20, "x" * MAX_VALUE_BYTES)),
        Message(users_topic, b'{"id": 3}', users_change(3, 30, "short")),
    ]
    produce(broker.bootstrap, [*messages, *users])
    port = free_port()
    env = {
        "CDC_CACHE_DLQ_TOPIC": dlq_topic,
        "CDC_CACHE_MAX_VALUE_BYTES": str(MAX_VALUE_BYTES),
        "CDC_CACHE_METRICS_PORT": str(port),
    }
    service = worker(
        tmp_path, broker.bootstrap, redis_target.url, [stock_topic, users_topic],
        rules=RULES, env=env,
    )  # fmt: skip
    client = redis_target.client
    expected = workload.expected_cache()
    wanted = {(stock_topic, offset, kind) for offset, kind in kinds.items()}
    wanted.add((users_topic, 1, "value_too_large"))
    service.start()
    try:
        entries = dead_letters(broker.bootstrap, dlq_topic, len(wanted), service)
        assert {(e["source"]["topic"], e["source"]["offset"], e["kind"]) for e in entries} == wanted
        assert wait_until_equal(client, expected) == expected, service.tail()
        assert client.exists(
            f"user:{escape_value('1' + EMAIL)}", f"user:{escape_value('3' + EMAIL)}"
        )
        service.check_alive()
        assert admin_get(port, "/healthz")[0] == 200

        by_offset = {(e["source"]["topic"], e["source"]["offset"]): e for e in entries}
        deep_projection = by_offset[stock_topic, 10]
        assert "levels deep" in deep_projection["reason"], deep_projection["reason"]
        assert "RecursionError" in by_offset[stock_topic, 25]["reason"]
        poison = by_offset[stock_topic, 40]
        assert poison["message"]["value"]["encoding"] == "text"
        assert poison["message"]["value"]["note"].endswith(f"{MAX_ENTRY_DEPTH} levels deep")
        assert poison["primary_key"] is None and poison["withheld"]
        too_large = by_offset[users_topic, 1]
        assert "user:***redacted***" in too_large["reason"]
        assert leaked(orjson.dumps(entries).decode()) == []
        assert leaked(service.log.read_text()) == []

        # Restarted from scratch, the worker reads every hostile message again: same dead
        # letters (same ids), same cache, still up.
        service.kill()
        shutil.rmtree(tmp_path / "recovery")
        service.start()
        again = dead_letters(broker.bootstrap, dlq_topic, 2 * len(wanted), service)
        assert {e["id"] for e in again} == {e["id"] for e in entries}
        assert wait_until_equal(client, expected) == expected, service.tail()
        assert service.terminate() == 0, service.tail()
    finally:
        service.stop()


ITEMS_RULES = (
    RULES
    + """
  app.items:
    keys:
      - key: "item:{id}"
        fields: [id, name, price]
      - key: "itemname:{name}"
        action: delete
"""
)
PRICE_LINE = ITEMS_RULES.splitlines().index("        fields: [id, name, price]") + 1
WINDOW_S = 3.0


def items_change(topic: str, item_id: int, pos: int, after: dict) -> Message:
    """An update of ``app.items`` whose images have the columns of ``after``."""
    before = {**after, "name": f"old{item_id}"}
    source = {"connector": "mysql", "db": "app", "table": "items",
              "file": "mysql-bin.000001", "pos": pos, "row": 0, "ts_ms": 1}  # fmt: skip
    value = {"op": "u", "before": before, "after": after, "source": source}
    return Message(topic, orjson.dumps({"id": item_id}), orjson.dumps(value))


def test_a_first_change_without_a_column_the_rules_need_costs_one_dead_letter_not_the_worker(
    broker, redis_server, redis_client, tmp_path: Path
):
    """The first change of a table lacks a column its rules project (a backlog older than
    the migration adding it, or an odd message): it is dead-lettered with its keys deleted,
    the table falls back to ttl mode and is reported, the other tables go on, a restart
    that reads it first again goes on too, and the table returns once its changes carry
    the column."""
    stock_topic, items_topic = unique_topic(), unique_topic("app.items")
    dlq_topic = f"dlq-{uuid.uuid4().hex[:8]}"
    broker.create_topics({stock_topic: 1, items_topic: 1})
    ensure_topic(broker.bootstrap, dlq_topic, {})
    workload = Workload(seed=53, topic=stock_topic)
    first = items_change(items_topic, 1, 10, {"id": 1, "name": "lamp1"})  # no price
    produce(broker.bootstrap, [first, *(m for tx in workload.transactions(30) for m in tx)])
    redis_client.set("item:1", b'{"id":1,"name":"old1","price":"1.00"}')  # cached before
    redis_client.set("itemname:old1", b"1")
    port = free_port()
    env = {
        "CDC_CACHE_DLQ_TOPIC": dlq_topic,
        "CDC_CACHE_METRICS_PORT": str(port),
        "CDC_CACHE_TABLE_FALLBACK_WINDOW_S": str(WINDOW_S),
        "CDC_CACHE_LAG_SLO_S": "3600",  # no heartbeats here: keep the lag out of the way
    }
    service = worker(
        tmp_path, broker.bootstrap, redis_server.address(), [stock_topic, items_topic],
        rules=ITEMS_RULES, env=env,
    )  # fmt: skip
    problems = {"table": "app.items", "breaks": "true"}
    fallback = {"table": "app.items"}

    def tables_in_ttl() -> dict:
        published = redis_client.hget(ns().mode, "tables")
        return orjson.loads(published or b"{}")

    def reported() -> bool:
        try:
            return metric(port, "cdc_cache_rules_column_problems", problems) == 1
        except ConnectionError:  # still starting (or stopped: wait_until says so)
            return False

    service.start()
    try:
        (entry,) = dead_letters(broker.bootstrap, dlq_topic, 1, service)
        assert (entry["source"]["topic"], entry["kind"]) == (items_topic, "render_failed")
        assert "'price'" in entry["reason"], entry["reason"]
        wait_until("the table is reported", reported, 60, alive=[service], interval=0.2)
        assert metric(port, "cdc_cache_table_fallback", fallback) == 1
        wait_until(
            "ttl mode published", lambda: "app.items" in tables_in_ttl(), 60, alive=[service]
        )
        assert not redis_client.exists("item:1", "itemname:old1"), "its keys are deleted"
        expected = workload.expected_cache()
        assert wait_until_equal(redis_client, expected) == expected, service.tail()
        log = service.log.read_text()
        assert f"{tmp_path / 'rules.yaml'}:{PRICE_LINE}" in log and "remove it from fields" in log
        service.check_alive()
        assert admin_get(port, "/healthz")[0] == 200

        # Restarted from scratch, the worker reads that change first again and goes on.
        service.kill()
        shutil.rmtree(tmp_path / "recovery")
        service.start()
        again = dead_letters(broker.bootstrap, dlq_topic, 2, service)
        assert {e["id"] for e in again} == {entry["id"]}
        wait_until("reported again", reported, 60, alive=[service], interval=0.2)
        assert metric(port, "cdc_cache_table_fallback", fallback) == 1

        # Later changes: those of the other table apply; this table's carry the column
        # now, so they apply too, and once none failed for the window it returns.
        time.sleep(WINDOW_S)
        later = [m for tx in workload.transactions(10) for m in tx]
        fitting = [
            items_change(items_topic, n, 10 * n, {"id": n, "name": f"lamp{n}", "price": f"{n}.00"})
            for n in (2, 3)
        ]
        produce(broker.bootstrap, [*fitting, *later])
        wait_until(
            "the table back in cdc mode",
            lambda: (
                metric(port, "cdc_cache_table_fallback", fallback) == 0
                and "app.items" not in tables_in_ttl()
            ),
            60,
            alive=[service],
            interval=0.2,
        )
        assert metric(port, "cdc_cache_rules_column_problems", problems) == 0
        for n in (2, 3):
            cached = orjson.loads(redis_client.get(f"item:{n}"))
            assert cached == {"id": n, "name": f"lamp{n}", "price": f"{n}.00"}
        expected = workload.expected_cache()
        assert wait_until_equal(redis_client, expected) == expected, service.tail()
        assert service.terminate() == 0, service.tail()
    finally:
        service.stop()
