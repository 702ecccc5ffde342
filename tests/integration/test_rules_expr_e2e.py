"""Richer rules through the real worker on MariaDB: one pipeline, several features at once.

Snapshot rows only invalidate (``snapshot: invalidate``); a filter (``when``) writes and
deletes keys as rows start and stop matching; renamed and computed fields; a TTL from the
row's ``expires_at`` (an expired row is not written); a refresh-only key refreshes what an
application cached and fills nothing; a filter that fails on a row dead-letters that
change as ``render_failed``; and a worker whose rules' filter names a column the table
lacks does not stop at the table's first change: it dead-letters the changes, the table
falls back to ttl mode, and the column is reported with the rules file's line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc_cache.core.keys import ns, version_field
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisServer
from tests.integration.pipelines import Pipeline, mariadb_pipeline
from tests.integration.probes import metric
from tests.integration.services import worker
from tests.integration.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RULES = """
version: 2
defaults: {{safety_ttl: 1h, tombstone_ttl: 30m}}
tables:
  {schema}.stock:
    types: {{price: decimal(2)}}
    snapshot: invalidate
    watch: [id, warehouse, qty, price, expires_at]
    keys:
      - key: "instock:{{id}}"
        when: "qty > 0"
        fields: [id, {{name: at, from: warehouse}}, {{name: total, expr: "qty * decimal(price)"}}]
        ttl: {{until: expires_at}}
      - key: "warm:{{id}}"
        fields: [id, qty]
        only_if_cached: true
"""
MISMATCHED = RULES.replace('"qty > 0"', '"qtty > 0"').replace("expires_at]", "expires_at, qtty]")


@pytest.fixture
def pipeline(
    tmp_path: Path, mariadb: MariaDB, broker: Broker, redis_server: RedisServer
) -> Iterator[Pipeline]:
    with mariadb_pipeline(tmp_path, mariadb, broker, redis_server.address(), rules=RULES) as line:
        with mariadb.connect(line.schema) as conn, conn.cursor() as cur:
            cur.execute("ALTER TABLE stock ADD COLUMN expires_at BIGINT NULL")
        yield line


def write(mariadb: MariaDB, schema: str, sql: str, *rows: tuple[Any, ...]) -> None:
    with mariadb.connect(schema) as conn, conn.cursor() as cur:
        for row in rows:
            cur.execute(sql, row)
        conn.commit()


INSERT = (
    "INSERT INTO stock (id, sku_id, warehouse, qty, price, expires_at) "
    "VALUES (%s, %s, 'north', %s, 1, %s)"
)


def test_filters_fields_row_ttls_refresh_only_and_snapshot_control(
    tmp_path: Path, pipeline: Pipeline, mariadb: MariaDB, broker: Broker, redis_client: Any
) -> None:
    schema = pipeline.schema
    now_ms = int(time.time() * 1000)
    write(mariadb, schema, INSERT, (9, 9, 3, None))  # read by the snapshot
    redis_client.set("instock:9", b"stale")  # what a previous deployment left
    port = free_port()
    pipeline.worker.argv += ["--metrics-port", str(port)]
    services = [pipeline.debezium, pipeline.worker]
    for service in services:
        service.start()
    wait_until(
        "the snapshot invalidated",
        lambda: not redis_client.exists("instock:9"),
        120,
        alive=services,
    )

    write(
        mariadb, schema, INSERT,
        (1, 1, 2, now_ms + 600_000), (2, 2, 0, None), (3, 3, 1, now_ms - 60_000), (4, 4, None, None),
    )  # fmt: skip
    wait_until(
        "a matching row cached", lambda: redis_client.exists("instock:1"), 60, alive=services
    )
    assert orjson.loads(redis_client.get("instock:1")) == {"id": 1, "at": "north", "total": "2.00"}
    assert 0 < redis_client.pttl("instock:1") <= 600_000, "the row's expiry, not the safety TTL"
    assert not redis_client.exists("instock:2"), "qty 0 does not match"
    assert not redis_client.exists("instock:3"), "an expired row is not written"
    wait_until(
        "the row the filter fails on dead-lettered",
        lambda: metric(port, "cdc_cache_poison_messages_total", {"kind": "render_failed"}) == 1,
        60,
        alive=services,
    )

    wait_until(  # the metric above counts a change when planned; its apply may follow
        "the insert's refresh-only op recorded its version",
        lambda: redis_client.hexists(ns().version_key("warm:2"), version_field("warm:2")),
        60,
        alive=services,
    )
    redis_client.set("warm:2", b"{}")  # an application's fill, after the insert was applied
    write(mariadb, schema, "UPDATE stock SET qty = %s WHERE id = %s", (0, 1), (5, 2))
    wait_until(
        "flips applied",
        lambda: redis_client.exists("instock:2") and not redis_client.exists("instock:1"),
        60,
        alive=services,
    )
    wait_until("refreshed", lambda: redis_client.get("warm:2") == b'{"id":2,"qty":5}', 30)
    assert not redis_client.exists("warm:1"), "refresh-only never fills"

    bad_home = tmp_path / "mismatched"
    bad_home.mkdir()
    rules = MISMATCHED.format(schema=schema)
    bad_port = free_port()
    env = {"CDC_CACHE_METRICS_PORT": str(bad_port)}
    bad = worker(
        bad_home, broker.bootstrap, pipeline.redis_url, [pipeline.topic], rules=rules, env=env
    )
    stock = f"{schema}.stock"
    problems = {"table": stock, "breaks": "true"}
    poison = {"kind": "render_failed", "table": stock}
    bad.start()
    try:
        wait_until(
            "the filter's missing column reported, the table in ttl mode, its changes DLQ'd",
            lambda: (
                _serving(bad_port, "cdc_cache_rules_column_problems", problems) == 1
                and metric(bad_port, "cdc_cache_table_fallback", {"table": stock}) == 1
                and metric(bad_port, "cdc_cache_dlq_entries_total", poison) >= 1
            ),
            120,
            alive=[bad],
        )
        bad.check_alive()
    finally:  # never left running against the session's Redis
        bad.stop()
    log = bad.log.read_text()
    assert f"{bad_home / 'rules.yaml'}:11" in log and "change the key's filter" in log, bad.tail()


def _serving(port: int, name: str, labels: dict[str, str]) -> float | None:
    """A metric of a worker that may still be starting (None until its port answers)."""
    try:
        return metric(port, name, labels)
    except ConnectionError:  # refused, or reset by a process that stopped
        return None
