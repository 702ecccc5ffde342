"""PostgreSQL → Debezium → tansu → ``cdc-cache run`` → Redis, checked row by row with verify.

The table has ``REPLICA IDENTITY FULL``, so updates carry the before image a row that
moves between keys needs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdc_cache.devstack.broker import Broker
from cdc_cache.devstack.postgres import Postgres
from cdc_cache.devstack.redis import RedisServer
from tests.integration.flowkit import Pipeline, settled_inspection, wait_until_verified
from tests.integration.sql_workload import DDL, SqlWorkload, execute

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def pipeline(
    tmp_path: Path, postgres: Postgres, broker: Broker, redis_server: RedisServer, redis_client
) -> Iterator[Pipeline]:
    schema = f"e2e_{uuid.uuid4().hex[:8]}"
    with postgres.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(DDL.format(schema=schema))
        conn.execute(f"ALTER TABLE {schema}.stock REPLICA IDENTITY FULL")
    line = Pipeline(
        tmp_path,
        source="postgres",
        db_port=postgres.port,
        dsn=postgres.dsn(),
        schema=schema,
        broker=broker,
        redis_url=redis_server.address(),
    )
    try:
        yield line
    finally:
        line.stop()
        with postgres.connect() as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_a_thousand_random_transactions_leave_no_stale_missing_or_unexpected_key(
    pipeline: Pipeline, postgres: Postgres, redis_client
) -> None:
    pipeline.start()
    workload = SqlWorkload(pipeline.schema, seed=3)
    started = time.monotonic()
    with postgres.connect() as conn:
        conn.autocommit = False
        committed = execute(conn, workload.transactions(100))
        # the rest only after the snapshot, so it reaches the cache through the WAL stream
        first = wait_until_verified(pipeline.dsn, pipeline.rules, redis_client, pipeline.services)
        assert first.clean, first.format() + "\n" + pipeline.worker.tail()
        committed += execute(conn, workload.transactions(900))
    report = wait_until_verified(pipeline.dsn, pipeline.rules, redis_client, pipeline.services)
    print(f"\n{committed} transactions; drained after {time.monotonic() - started:.1f} s")
    print(report.format())
    assert report.clean, report.format() + "\n" + pipeline.worker.tail()
    assert report.tables[0].rows == len(workload.rows)
    # The inspector beside the worker judged sampled changes and saw each converge.
    inspected = settled_inspection(pipeline.inspect_port, pipeline.inspector)
    print(f"inspector: {inspected['checks']}, {inspected['time_to_consistency_s']}")
    assert sum(inspected["checks"].values()) > 100, inspected
    assert inspected["unresolved"] == 0, f"{inspected}\n{pipeline.inspector.tail()}"
