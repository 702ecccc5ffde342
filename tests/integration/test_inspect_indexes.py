"""``cdc-cache inspect`` and ``cdc-cache trace`` judge index keys on real servers.

Products in a real MariaDB (``test_verify_indexes``'s table) are applied to Redis, one
server and a 3-node Cluster, as the worker applies their changes (each change's planned
ops through the apply script). The inspector, with its real edges (Redis through
``read_members``, the database through ``verify``'s reader) and its records handed over
directly (no broker: its Kafka edge is tested elsewhere), finds the indexes right, then a
member taken out by hand (ZREM) stale and unresolved, one re-scored stale until put back,
an index deleted missing, and a deleted row's member left in its index unexpected. The
trace, through tansu, shows the memberships and fails on the damaged ones.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from cdc_cache.cli import main
from cdc_cache.core.events import SourceRecord
from cdc_cache.inspector.edges import LiveTruth
from cdc_cache.inspector.loop import Inspector
from cdc_cache.inspector.settings import InspectSettings
from cdc_cache.plan.route import Planned, route
from cdc_cache.plan.rules import Rules
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.tools.devstack.mariadb import MariaDB
from tests.integration.fixtures_redis import RedisTarget
from tests.integration.test_verify_indexes import ROWS, shop  # noqa: F401 (the fixture)
from tests.integration.topics import produce, unique_topic
from tests.integration.waiting import wait_until
from tests.unit.test_index_keys import INDEXES
from tests.workload import Message

pytestmark = pytest.mark.integration

CAT5, CAT6, GROUP8 = "category:5:by_price", "category:6:by_price", "group:8:members"
SETTLE_S = 0.3
LIMIT_S = 2.0


class Changes:
    """Debezium-shaped changes of ``<schema>.products``, positions in commit order."""

    def __init__(self, schema: str, topic: str = "t.products") -> None:
        self.schema = schema
        self.topic = topic
        self.pos = 100

    def message(self, before: dict | None, after: dict | None) -> Message:
        self.pos += 10
        op = "c" if before is None else "d" if after is None else "u"
        value = {
            "before": before,
            "after": after,
            "op": op,
            "ts_ms": int(time.time() * 1000),
            "source": {
                "connector": "mysql",
                "name": "db",
                "ts_ms": int(time.time() * 1000),
                "snapshot": "false",
                "db": self.schema,
                "table": "products",
                "server_id": 1,
                "file": "mysql-bin.000001",
                "pos": self.pos,
                "row": 0,
            },
        }
        key = orjson.dumps({"id": (after or before or {})["id"]})
        return Message(self.topic, key, orjson.dumps(value))


def apply(redis: Any, rules: Rules, message: Message) -> None:
    """What the worker writes for ``message``."""
    routed = route(SourceRecord(message.topic, 0, 0, message.key, message.value), rules)
    assert isinstance(routed, Planned), routed
    RedisApplier(redis).apply(list(routed.ops))


@pytest.fixture
def inspector(
    shop: tuple[str, Rules],  # noqa: F811
    mariadb: MariaDB,
    redis_target: RedisTarget,
) -> Iterator[Inspector]:
    schema, rules = shop
    dsn = f"{mariadb.dsn()}/{schema}"
    settings = InspectSettings(
        rules=Path("rules.yaml"),
        topics=["t.products"],
        inspect_db=dsn,
        inspect_sample_every=1,
        inspect_max_samples_per_s=1000,
        inspect_max_db_queries_per_s=1000,
        inspect_settle_s=SETTLE_S,
        inspect_recheck_limit_s=LIMIT_S,
        inspect_min_checks=1,
    )
    truth = LiveTruth(redis_target.client, dsn, {})
    try:
        yield Inspector(settings, rules, truth, rng=random.Random(1), started_ms=0)
    finally:
        truth.close()


def test_the_inspector_judges_index_memberships(
    shop: tuple[str, Rules],  # noqa: F811
    inspector: Inspector,
    mariadb: MariaDB,
    redis_target: RedisTarget,
) -> None:
    schema, rules = shop
    redis = redis_target.client
    changes = Changes(schema)
    offset = iter(range(1000))

    def offer(message: Message) -> None:
        inspector.offer(SourceRecord(message.topic, 0, next(offset), message.key, message.value))

    def checks() -> dict[str, int]:
        inspector.run_due()
        return {k: v for k, v in inspector.view()["checks"].items() if v}

    for row in ROWS:  # the rows are in the database; their inserts come through
        message = changes.message(None, row)
        apply(redis, rules, message)
        offer(message)
    wait_until("the indexes judged right", lambda: checks() == {"consistent": 3}, 30)

    redis.zrem(CAT5, "1")  # a member taken out by hand
    redis.zadd(CAT5, {"2": 4.0})  # another score
    redis.delete(GROUP8)  # gone: absent until a snapshot rebuilds it
    for row in ROWS:  # a change of each row that changes nothing in its indexes
        offer(changes.message(row, row))
    wanted = {"consistent": 3, "stale": 2, "missing": 1}
    wait_until("the damage found", lambda: checks() == wanted, 30)
    view = inspector.view()
    found = {
        (e["key"], e["member"], e["kind"], *e["fields"]) for e in view["latest_inconsistencies"]
    }
    assert found == {(CAT5, "1", "stale", "member"), (CAT5, "2", "stale", "score")}, view
    assert view["windows"]["5m"]["inconsistent"] == 2
    assert [(e["key"], e["until_snapshot"]) for e in view["absent_indexes"]] == [(GROUP8, True)]

    redis.zadd(CAT5, {"2": 3.0})  # put back: consistent again; member 1 stays out
    wait_until(
        "one recovered, one unresolved",
        lambda: checks() and inspector.view()["unresolved"] == 1,
        30,
    )
    assert inspector.view()["recovered"] == 1
    assert inspector.tracker.pending == 0

    with mariadb.connect() as conn, conn.cursor() as cur:  # row 3 deleted; the cache missed it
        cur.execute(f"DELETE FROM {schema}.products WHERE id = 3")
    redis.sadd(GROUP8, "3")  # as it was, so both of its indexes still hold it
    offer(changes.message(ROWS[2], None))
    wait_until("the deleted row's members unexpected", lambda: checks().get("unexpected") == 1, 30)
    latest = inspector.view()["latest_inconsistencies"]
    assert {(e["key"], e["member"]) for e in latest if e["kind"] == "unexpected"} == {
        (CAT6, "3"),
        (GROUP8, "3"),
    }


def test_trace_shows_index_memberships_and_fails_on_damaged_ones(
    broker: Any, redis_target: RedisTarget, tmp_path: Path
) -> None:
    rules_yaml = INDEXES.replace("version: 2\n", "").split("    notify:", maxsplit=1)[0]
    rules = parse_rules(rules_yaml)
    topic = unique_topic("shop.products")
    broker.create_topics({topic: 1})
    changes = Changes("shop", topic)
    messages = [changes.message(None, row) for row in ROWS]
    messages.append(changes.message(ROWS[0], {**ROWS[0], "category_id": 6}))  # row 1 moves
    produce(broker.bootstrap, messages)
    redis = redis_target.client
    for message in messages:
        apply(redis, rules, message)
    path = tmp_path / "rules.yaml"
    path.write_text(rules_yaml)
    common = ["--rules", str(path), "--brokers", broker.bootstrap, "--redis-url", redis_target.url]

    def trace(row_id: int) -> tuple[int, dict[str, Any]]:
        args = [*common, "--topic", topic, "--table", "shop.products", "--key", f"id={row_id}"]
        result = CliRunner().invoke(main, ["trace", *args, "--json"])
        assert result.exit_code in (0, 1), result.output
        return result.exit_code, orjson.loads(result.stdout)

    code, data = trace(1)
    assert code == 0 and data["pending"] == 0 and data["damaged"] == 0, data
    members = {(m["key"], m["member"]): m for m in data["members"]}
    assert set(members) == {(CAT5, "1"), ("group:9:members", "1"), (CAT6, "1")}
    assert (members[CAT5, "1"]["present"], members[CAT6, "1"]["score"]) == (False, 12.5)
    assert all(m["version"] and m["holds"] == f"{topic}[0]@3" for m in members.values())
    assert [op["gate"] for op in data["changes"][0]["ops"]] == ["stale", "stale"]

    redis.zrem(CAT6, "1")  # taken out by hand
    redis.zadd(CAT5, {"2": 4.0})  # re-scored by hand
    code, data = trace(1)
    assert code == 1 and data["damaged"] == 1 and data["pending"] == 0
    (damaged,) = [m for m in data["members"] if m["differs"]]
    assert (damaged["key"], damaged["present"], damaged["index"]) == (CAT6, False, "exists")
    code, data = trace(2)
    assert code == 1 and data["damaged"] == 1
    (damaged,) = [m for m in data["members"] if m["differs"]]
    assert (damaged["key"], damaged["score"]) == (CAT5, 4.0)
