"""MariaDB → Debezium with AvroConverter → tansu → ``cdc-cache run`` (Avro) → Redis.

Debezium's own AvroConverter registers its schemas with the test's registry server and
frames every key and value with a schema id; the worker resolves those ids over HTTP and
must leave the same cache a JSON pipeline would, checked row by row with verify.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdc_cache.devstack.broker import Broker
from cdc_cache.devstack.mariadb import MariaDB
from cdc_cache.devstack.process import free_port
from cdc_cache.devstack.redis import RedisServer
from cdc_cache.devstack.schema_registry import SchemaRegistryServer
from tests.integration.flowkit import Pipeline, wait_until_verified
from tests.integration.sql_workload import DDL, SqlWorkload, execute

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
    schema = f"avro_{uuid.uuid4().hex[:8]}"
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {schema} CHARACTER SET utf8mb4")
        cur.execute(DDL.format(schema=schema))
    pipeline = Pipeline(
        tmp_path,
        source="mariadb",
        db_port=mariadb.port,
        dsn=f"mysql://root@127.0.0.1:{mariadb.port}/{schema}",
        schema=schema,
        broker=broker,
        redis_url=redis_server.address(),
        registry_url=registry.address(),
    )
    try:
        pipeline.start()
        workload = SqlWorkload(schema, seed=8)
        conn = mariadb.connect(schema)
        conn.autocommit(False)
        with conn:
            execute(conn, workload.transactions(500))
        report = wait_until_verified(pipeline.dsn, pipeline.rules, redis_client, pipeline.services)
        assert report.clean, report.format() + "\n" + pipeline.worker.tail()
        assert report.tables[0].rows == len(workload.rows) > 0
    finally:
        pipeline.stop()
        with mariadb.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE {schema}")
    registered = {r for r in registry.requests if r.startswith("POST subjects/")}
    assert any(r.endswith(f".{schema}.stock-value/versions") for r in registered), registered
    assert any(r.startswith("GET schemas/ids/") for r in registry.requests)
