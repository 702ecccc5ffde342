"""Two pipelines on one Redis (a server and a Cluster), each worker under its own namespace.

Two connectors (server names ``a…`` and ``b…``) carry the same table, ``inventory.stock``,
with the same primary key and different rows; each pipeline has its own worker, rules
(keys ``a:stock:{id}`` and ``b:stock:{id}``), DLQ topic and namespace. Source A truncates
the table at a binlog position far beyond source B's: under one namespace that position
sits in the version buckets both workers read, and B's change (from another log, its
position not comparable) is judged stale and never cached. Forcing A's mode does not flip
B's; each DLQ's replay outcomes stay in its own namespace. The same scenario with one
namespace shared shows both collisions.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from cdc_cache_client import CacheAside
from click.testing import CliRunner

from cdc_cache.cli import main
from cdc_cache.core.keys import DEFAULT_NAMESPACE, Names, use_namespace
from cdc_cache.dlq.topic import ensure_topic, read_entries
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisServer
from tests.integration.fixtures_redis import AnyRedis, RedisTarget
from tests.integration.probes import metric, wait_ready
from tests.integration.services import Service, worker
from tests.integration.topics import produce
from tests.integration.waiting import held_within, wait_until
from tests.workload import Message

pytestmark = pytest.mark.integration

HOUR_MS, FALLBACK_MS = 3_600_000, 120_000

RULES = """
defaults: {{safety_ttl: 1h, tombstone_ttl: 30m}}
tables:
  inventory.stock:
    keys:
      - key: "{prefix}:stock:{{id}}"
        fields: [id, qty]
"""


def change(topic: str, op: str, row: dict[str, int] | None, binlog_file: int) -> Message:
    """A Debezium MySQL envelope (no schemas) of ``inventory.stock`` from ``topic``'s server."""
    server = topic.split(".", 1)[0]
    value = {
        "before": None, "after": row, "op": op, "ts_ms": 1_795_244_089_756,
        "source": {
            "connector": "mysql", "name": server, "ts_ms": 1_795_244_089_000,
            "snapshot": "false", "db": "inventory", "table": "stock", "server_id": 1,
            "file": f"mysql-bin.{binlog_file:06d}", "pos": 100, "row": 0,
        },
    }  # fmt: skip
    key = orjson.dumps({"id": row["id"]}) if row else None
    return Message(topic, key, orjson.dumps(value))


class Line:
    """One pipeline: its connector's topic, its worker, rules, DLQ topic and namespace."""

    def __init__(self, home: Path, broker: Broker, url: str, name: str, namespace: str):
        home.mkdir()
        self.bootstrap = broker.bootstrap
        self.namespace = namespace
        self.prefix = name
        self.topic = f"{name}{uuid.uuid4().hex[:8]}.inventory.stock"
        self.dlq_topic = f"dlq-{self.topic}"
        broker.create_topics({self.topic: 1})
        ensure_topic(broker.bootstrap, self.dlq_topic, {})
        self.port = free_port()
        env = {
            "CDC_CACHE_NAMESPACE": namespace,
            "CDC_CACHE_DLQ_TOPIC": self.dlq_topic,
            "CDC_CACHE_FALLBACK_TTL_S": str(FALLBACK_MS // 1000),
            "CDC_CACHE_LINEAGE_SETTLE_S": "600",
        }
        rules = RULES.format(prefix=name)
        self.worker: Service = worker(
            home, broker.bootstrap, url, [self.topic], rules=rules, env=env
        )
        self.worker.argv += ["--metrics-port", str(self.port)]
        self.cli_flags = [
            f"--rules={home / 'rules.yaml'}",
            f"--brokers={broker.bootstrap}",
            f"--redis-url={url}",
            f"--dlq-topic={self.dlq_topic}",
        ]

    def key(self, row_id: int) -> str:
        return f"{self.prefix}:stock:{row_id}"

    def counted(self, name: str, **labels: str) -> float:
        return metric(self.port, f"cdc_cache_{name}_total", labels)

    def mode(self, client: AnyRedis) -> bytes | None:
        return client.hget(Names(self.namespace).mode, "mode")

    def cli(self, *args: str, exit_code: int = 0) -> str:
        """``cdc-cache *args`` with this pipeline's namespace (from the environment)."""
        result = CliRunner().invoke(main, list(args), env={"CDC_CACHE_NAMESPACE": self.namespace})
        assert result.exit_code == exit_code, result.output
        return result.stdout


@contextmanager
def two_lines(
    tmp_path: Path, broker: Broker, url: str, namespaces: tuple[str, str]
) -> Iterator[tuple[Line, Line]]:
    """Pipelines ``a`` and ``b`` (under ``namespaces``), their workers ready."""
    a = Line(tmp_path / "a", broker, url, "a", namespaces[0])
    b = Line(tmp_path / "b", broker, url, "b", namespaces[1])
    try:
        for line in (a, b):
            line.worker.start()
        for line in (a, b):
            wait_ready(line.worker, line.port, timeout=120)
        yield a, b
    finally:
        for line in (a, b):
            line.worker.stop()
        use_namespace(DEFAULT_NAMESPACE)  # the CLI commands run here set this process's


def truncate_a_then_change_b(a: Line, b: Line, client: AnyRedis) -> None:
    """A: row 1 (qty 10), TRUNCATE at binlog file 5, row 1 again (qty 11); then B: its own
    row 1 (qty 20) at file 2, and one undecodable message."""
    produce(
        a.bootstrap,
        [
            change(a.topic, "c", {"id": 1, "qty": 10}, 1),
            change(a.topic, "t", None, 5),
            change(a.topic, "c", {"id": 1, "qty": 11}, 6),
        ],
    )
    wait_until(
        "A's row after its TRUNCATE cached",
        lambda: client.get(a.key(1)) == b'{"id":1,"qty":11}',
        60,
        alive=[a.worker],
    )
    produce(
        b.bootstrap,
        [change(b.topic, "c", {"id": 1, "qty": 20}, 2), Message(b.topic, b"1", b"{not json")],
    )
    wait_until(
        "B's change judged and its poison in its DLQ",
        lambda: b.counted("events") >= 1 and b.counted("dlq_entries") >= 1,
        60,
        alive=[b.worker],
    )


def test_two_pipelines_under_their_own_namespaces_share_one_redis_without_colliding(
    tmp_path: Path, broker: Broker, redis_target: RedisTarget
) -> None:
    client = redis_target.client
    with two_lines(tmp_path, broker, redis_target.url, ("pipe-a", "pipe-b")) as (a, b):
        truncate_a_then_change_b(a, b, client)
        # Same table, same primary key, two sources: each key holds its own source's row.
        assert client.get(b.key(1)) == b'{"id":1,"qty":20}'
        assert client.get(a.key(1)) == b'{"id":1,"qty":11}'
        assert b.counted("events", outcome="stale") == 0

        # Forcing A's mode leaves B's alone.
        a.cli("mode", "set", "ttl", f"--redis-url={redis_target.url}")
        wait_until("A in ttl mode", lambda: a.mode(client) == b"ttl", 30, alive=[a.worker])
        assert not held_within(lambda: b.mode(client) != b"cdc", 2, alive=[b.worker])
        # Applications follow their pipeline's mode: A's fills are capped, B's are not.
        for line, longest_ms in ((a, FALLBACK_MS), (b, HOUR_MS)):
            aside = CacheAside(client, ttl_ms=HOUR_MS, namespace=line.namespace)
            assert aside.get(line.key(2), lambda: b"filled") == b"filled"
            assert longest_ms - 60_000 < client.pttl(line.key(2)) <= longest_ms
        # The client distribution's fill, voided by B's worker applying a change mid-load.
        aside = CacheAside(client, ttl_ms=HOUR_MS, namespace=b.namespace)

        def load_while_b_changes_row_3() -> bytes:
            produce(b.bootstrap, [change(b.topic, "c", {"id": 3, "qty": 30}, 3)])
            wait_until("B's row 3 cached", lambda: client.exists(b.key(3)) == 1, 30)
            return b'{"id":3,"qty":0}'

        assert aside.get(b.key(3), load_while_b_changes_row_3) == b'{"id":3,"qty":0}'
        assert client.get(b.key(3)) == b'{"id":3,"qty":30}'

        # Each DLQ apart: B's poison is on B's topic, its replay outcome in B's namespace.
        assert read_entries(a.bootstrap, a.dlq_topic, {}) == []
        (entry,) = read_entries(b.bootstrap, b.dlq_topic, {})
        replayed = orjson.loads(
            b.cli("dlq", "replay", "--all", "--json", *b.cli_flags, exit_code=1)
        )
        assert [o["outcome"] for o in replayed["outcomes"]] == ["failed"]
        assert client.hkeys(Names(b.namespace).dlq_outcomes) == [entry["id"].encode()]
        assert client.exists(Names(a.namespace).dlq_outcomes) == 0
        listed = orjson.loads(a.cli("dlq", "list", "--json", *a.cli_flags))
        assert listed == []


def test_two_pipelines_sharing_a_namespace_collide(
    tmp_path: Path, broker: Broker, redis_client: AnyRedis, redis_server: RedisServer
) -> None:
    """The control: the same pipelines under one namespace lose B's row and B's mode."""
    with two_lines(tmp_path, broker, redis_server.address(), ("shared", "shared")) as (a, b):
        truncate_a_then_change_b(a, b, redis_client)
        assert redis_client.get(b.key(1)) is None  # judged older than A's TRUNCATE
        assert b.counted("events", outcome="stale") == 1

        a.cli("mode", "set", "ttl", f"--redis-url={redis_server.address()}")
        wait_until("B in ttl mode", lambda: b.mode(redis_client) == b"ttl", 30, alive=[b.worker])
