"""Two tables routed into one topic: MariaDB → Debezium (ByLogicalTableRouter) → the worker.

Debezium's embedded engine publishes under the dotted prefix ``<id>.eu`` and routes both
tables into the one topic ``<schema>.cdc``, whose name says neither the tables nor the
connector; each key carries ``__dbz__physicalTableIdentifier``, and the two tables share
primary key values. The real worker reads that topic (and the connector's heartbeats,
named in ``heartbeat_topics``) into Redis. Inserts, updates and deletes (so tombstones on
the shared topic) must end consistent by ``verify`` with no dead letter and nothing
counted as poison, and, once the load is over, the idle partitions of the shared topic
must stay fresh through the connector's heartbeats: the cache stays in ``cdc`` mode.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from cdc_cache.cli import main
from cdc_cache.core.keys import ns
from cdc_cache.dlq.topic import read_entries
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.process import free_port, port_open
from tests.integration.cache import wait_until_verified
from tests.integration.fixtures_stack import scratch_database
from tests.integration.pipelines import HEARTBEATS
from tests.integration.probes import metric
from tests.integration.services import debezium, worker
from tests.integration.sql_workload import DDL, RULES, SqlWorkload, Statement, execute
from tests.integration.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLO_S = 4.0
# The second table: the same columns under its own keys (ids overlap with the first's).
SECOND = """
  {schema}.stock_b:
    columns: [id, sku_id, warehouse, qty, price, note]
    types: {{price: decimal(2)}}
    watch: [id, sku_id, warehouse, qty, price]
    keys:
      - key: "stockb:{{sku_id}}:{{warehouse}}"
        fields: [id, sku_id, warehouse, qty, price]
      - key: "stockbid:{{id}}"
        format: hash
        fields: [id, sku_id, warehouse, qty]
"""


@pytest.fixture
def schema(mariadb: MariaDB) -> Iterator[str]:
    second = DDL.replace(".stock (", ".stock_b (")
    with scratch_database(mariadb, "routed", DDL, second, *HEARTBEATS, charset="utf8mb4") as name:
        yield name


def _mixed(first: SqlWorkload, second: SqlWorkload, count: int) -> Iterator[list[Statement]]:
    """Transactions on one table or the other, and some on both."""
    rnd = random.Random(5)
    ones, twos = iter(first.transactions(count)), iter(second.transactions(count))
    for _ in range(count):
        pick = rnd.random()
        if pick < 0.45:
            yield next(ones)
        elif pick < 0.9:
            yield next(twos)
        else:
            yield next(ones) + next(twos)


def test_two_tables_routed_into_one_topic_end_consistent_without_dead_letters(
    tmp_path: Path, mariadb: MariaDB, broker: Broker, redis_server, redis_client, schema: str
) -> None:
    run = uuid.uuid4().hex[:6]
    prefix = f"p{run}.eu"  # a dotted topic.prefix
    shared = f"{schema}.cdc"
    heartbeats = f"__debezium-heartbeat.{prefix}"
    dlq_topic = f"dlq-{run}"
    broker.create_topics({shared: 3, heartbeats: 3, dlq_topic: 1})
    rules = RULES.format(schema=schema) + SECOND.format(schema=schema)
    port = free_port()
    runner = debezium(
        tmp_path,
        source="mariadb",
        db_port=mariadb.port,
        brokers=broker.bootstrap,
        prefix=prefix,
        databases=schema,
        options=["--partitions=3", "--no-schemas", f"--route-to={shared}"],
    )
    settings = {
        "CDC_CACHE_HEARTBEAT_TOPICS": orjson.dumps([heartbeats]).decode(),
        "CDC_CACHE_DLQ_TOPIC": dlq_topic,
        "CDC_CACHE_METRICS_PORT": str(port),
        "CDC_CACHE_LAG_SLO_S": str(SLO_S),
        "CDC_CACHE_LAG_RECOVER_S": "2",
        "CDC_CACHE_MODE_WINDOW_S": "2",
        "CDC_CACHE_KAFKA": '{"client.id": "cdc-cache-routed"}',
        "CDC_CACHE_KAFKA_CONSUMER": '{"fetch.wait.max.ms": "50"}',
        "CDC_CACHE_KAFKA_PRODUCER": '{"linger.ms": "0"}',
    }
    service = worker(
        tmp_path, broker.bootstrap, redis_server.address(), [shared], rules=rules, env=settings
    )
    services = [runner, service]
    first = SqlWorkload(schema, seed=3)
    second = SqlWorkload(schema, seed=4, table_name="stock_b")
    try:
        for process in services:
            process.start()
        # Load once the connector streams (the snapshot read the heartbeat table's row), so
        # the deletes travel as deletes and tombstones instead of vanishing into a snapshot.
        wait_until("the snapshot", lambda: _changes(port) > 0, 120, alive=[service], interval=0.2)
        conn = mariadb.connect(schema)
        conn.autocommit(False)
        with conn:
            committed = execute(conn, _mixed(first, second, 1500))
        report = wait_until_verified(f"mysql://root@127.0.0.1:{mariadb.port}/{schema}", rules,
                                     redis_client, services)  # fmt: skip
        print(f"\n{committed} transactions\n{report.format()}")
        assert report.clean, report.format() + "\n" + service.tail()
        rows = {t.table: t.rows for t in report.tables}
        assert rows == {f"{schema}.stock": len(first.rows), f"{schema}.stock_b": len(second.rows)}
        assert set(first.rows) & set(second.rows), "the tables must share key values"

        dsn = f"mysql://root@127.0.0.1:{mariadb.port}/{schema}"
        args = ["verify", "--db", dsn, "--rules", str(tmp_path / "rules.yaml"),
                "--redis-url", redis_server.address()]  # fmt: skip
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0 and "consistency 100 %" in result.output, result.output

        # Every delete's tombstone was counted as one: none dead-lettered, none poison.
        tombstones = metric(port, "cdc_cache_records_total", {"kind": "tombstone"})
        deletes = metric(port, "cdc_cache_events_total", {"op": "d"})
        assert tombstones >= deletes > 0
        assert metric(port, "cdc_cache_poison_messages_total") == 0
        assert read_entries(broker.bootstrap, dlq_topic, {}) == []

        # Idle now but for the heartbeat table: every partition of the shared topic stays
        # fresh through the connector's heartbeats, so the cache stays in cdc mode.
        wait_until("cdc mode", lambda: _mode(redis_client) == "cdc", alive=[service], interval=0.2)
        switches = metric(port, "cdc_cache_mode_switches_total")
        time.sleep(3 * SLO_S)
        assert _mode(redis_client) == "cdc", service.tail()
        assert metric(port, "cdc_cache_mode_switches_total") == switches
        for partition in range(3):
            lag = metric(port, "cdc_cache_connector_lag_seconds",
                         {"topic": shared, "partition": str(partition)})  # fmt: skip
            assert lag < SLO_S, f"{shared}[{partition}] lags {lag:.1f}s"
        log = service.log.read_text(errors="replace")
        assert "CONFWARN" not in log, "a Kafka client was given another client's settings"
    finally:
        for process in services:
            process.stop()


def _changes(port: int) -> float:
    return metric(port, "cdc_cache_records_total", {"kind": "change"}) if port_open(port) else 0


def _mode(client) -> str:
    return (client.hget(ns().mode, "mode") or b"").decode()
