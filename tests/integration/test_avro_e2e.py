"""MariaDB → Debezium with AvroConverter → tansu → ``cdc-cache run`` (Avro) → Redis.

Debezium's own AvroConverter registers its schemas with the test's registry server and
frames every key and value with a schema id; the worker resolves those ids over HTTP and
must leave the same cache a JSON pipeline would, checked row by row with verify.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisServer
from cdc_cache.tools.devstack.schema_registry import SchemaRegistryServer
from tests.integration.cache import wait_until_verified
from tests.integration.pipelines import mariadb_pipeline
from tests.integration.probes import settled_inspection
from tests.integration.sql_workload import SqlWorkload, execute

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def registry() -> Iterator[SchemaRegistryServer]:
    server = SchemaRegistryServer(free_port()).start()
    yield server
    server.stop()


def test_avro_changes_from_debezium_leave_a_consistent_cache(
    tmp_path: Path,
    mariadb: MariaDB,
    broker: Broker,
    redis_server: RedisServer,
    redis_client,
    registry: SchemaRegistryServer,
) -> None:
    with mariadb_pipeline(
        tmp_path,
        mariadb,
        broker,
        redis_server.address(),
        prefix="avro",
        registry_url=registry.address(),
    ) as pipeline:
        pipeline.start()
        workload = SqlWorkload(pipeline.schema, seed=8)
        conn = mariadb.connect(pipeline.schema)
        conn.autocommit(False)
        with conn:
            execute(conn, workload.transactions(500))
        report = wait_until_verified(pipeline.dsn, pipeline.rules, redis_client, pipeline.services)
        assert report.clean, report.format() + "\n" + pipeline.worker.tail()
        assert report.tables[0].rows == len(workload.rows) > 0
        inspected = settled_inspection(pipeline.inspect_port, pipeline.inspector)
        assert sum(inspected["checks"].values()) > 0, "the inspector decodes Avro too"
        assert inspected["unresolved"] == 0, inspected
        stock_topic = f".{pipeline.schema}.stock-value/versions"
    registered = {r for r in registry.requests if r.startswith("POST subjects/")}
    assert any(r.endswith(stock_topic) for r in registered), registered
    assert any(r.startswith("GET schemas/ids/") for r in registry.requests)
