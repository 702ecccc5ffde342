"""MariaDB → Debezium → tansu → ``cdc-cache run`` → Redis, checked row by row with verify.

Everything is a real process: the embedded Debezium runner reads MariaDB's binlog and
publishes to the broker, the worker applies the changes to Redis, and ``verify`` compares
every row of the table with the cache once the stream has drained.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from cdc_cache.cli import main
from cdc_cache.core.keys import escape_value
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.redis import RedisServer
from cdc_cache.tools.verify_judge import Finding
from tests.integration.cache import wait_until_verified
from tests.integration.pipelines import Pipeline, mariadb_pipeline
from tests.integration.probes import settled_inspection
from tests.integration.sql_workload import SqlWorkload, execute

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def pipeline(
    tmp_path: Path, mariadb: MariaDB, broker: Broker, redis_server: RedisServer, redis_client
) -> Iterator[Pipeline]:
    with mariadb_pipeline(tmp_path, mariadb, broker, redis_server.address()) as line:
        yield line


def _transactional(mariadb: MariaDB, schema: str):
    conn = mariadb.connect(schema)
    conn.autocommit(False)
    return conn


def test_ten_thousand_random_transactions_leave_no_stale_missing_or_unexpected_key(
    pipeline: Pipeline, mariadb: MariaDB, redis_client
) -> None:
    pipeline.start()
    workload = SqlWorkload(pipeline.schema, seed=1)
    started = time.monotonic()
    with _transactional(mariadb, pipeline.schema) as conn:
        committed = execute(conn, workload.transactions(10_000))
    load_s = time.monotonic() - started
    report = wait_until_verified(pipeline.dsn, pipeline.rules, redis_client, pipeline.services)
    print(
        f"\n{committed} transactions in {load_s:.1f} s; drained after {time.monotonic() - started:.1f} s"
    )
    print(report.format())
    assert report.clean, report.format() + "\n" + pipeline.worker.tail()
    assert report.tables[0].rows == len(workload.rows)
    assert report.tables[0].set_keys == 2 * len(workload.rows)
    # The inspector beside the worker judged every sampled change and saw each converge.
    inspected = settled_inspection(pipeline.inspect_port, pipeline.inspector)
    print(f"inspector: {inspected['checks']}, {inspected['time_to_consistency_s']}")
    assert sum(inspected["checks"].values()) > 100, inspected
    assert inspected["unresolved"] == 0, f"{inspected}\n{pipeline.inspector.tail()}"

    args = [
        "verify", "--db", pipeline.dsn, "--rules", str(pipeline.rules_file),
        "--redis-url", pipeline.redis_url,
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "consistency 100 %" in result.output

    # The checker is not blind: tamper with the cache and it names each difference.
    pipeline.worker.terminate()
    row = next(iter(workload.rows.values()))
    stock_key = f"stock:{row['sku_id']}:{escape_value(row['warehouse'])}"
    redis_client.set(stock_key, orjson.dumps({"id": row["id"], "qty": -1}))
    redis_client.delete(f"stockid:{row['id']}")
    redis_client.set("stock:999999:nowhere", b"{}")
    tampered = CliRunner().invoke(main, [*args, "--settle", "1", "--settle-delay", "0.1"])
    assert tampered.exit_code == 1, tampered.output
    findings = {f: _summary_count(tampered.output, f) for f in Finding}
    assert findings == {
        Finding.STALE: 1,
        Finding.MISSING: 1,
        Finding.UNEXPECTED: 1,
        Finding.VERSION: 0,
    }


def test_sigkilled_worker_and_debezium_runner_restart_into_a_consistent_cache(
    pipeline: Pipeline, mariadb: MariaDB, redis_client
) -> None:
    # A runner killed before its first offsets were flushed snapshots again: the cache
    # then holds ttl mode for lineage_settle_s (300 s). Keys capped at the default 60 s
    # would expire while a slow machine is still catching up, and no check could find
    # the cache whole; capped at 250 s they outlive the check.
    pipeline.worker.env["CDC_CACHE_FALLBACK_TTL_S"] = "250"
    pipeline.start()
    workload = SqlWorkload(pipeline.schema, seed=2)
    committed = [0]

    def load() -> None:
        with _transactional(mariadb, pipeline.schema) as conn:
            for _ in range(20):
                committed[0] += execute(conn, workload.transactions(300))
                time.sleep(0.5)  # keep the load going while processes die and come back

    loader = threading.Thread(target=load)
    started = time.monotonic()
    loader.start()
    try:
        for victim in (pipeline.worker, pipeline.debezium):
            _wait_for_keys(redis_client, pipeline)
            time.sleep(2)
            assert loader.is_alive(), "the load ended before the kill: it proves nothing"
            victim.kill()
            print(f"\nkilled {victim.argv[2]} after {committed[0]} transactions")
            time.sleep(1)
            victim.start()
    finally:
        loader.join()
    assert committed[0] == 6000
    report = wait_until_verified(pipeline.dsn, pipeline.rules, redis_client, pipeline.services)
    print(f"drained after {time.monotonic() - started:.1f} s")
    print(report.format())
    assert report.clean, report.format() + "\n" + pipeline.worker.tail()
    assert report.tables[0].rows == len(workload.rows)


def _wait_for_keys(redis_client, pipeline: Pipeline, timeout: float = 60) -> None:
    """Until the pipeline has written to the cache: a kill before that proves nothing."""
    deadline = time.monotonic() + timeout
    while not next(redis_client.scan_iter(match="stock*", count=100), None):
        for service in pipeline.services:
            service.check_alive()
        assert time.monotonic() < deadline, pipeline.worker.tail() + pipeline.debezium.tail()
        time.sleep(0.2)


def _summary_count(output: str, finding: Finding) -> int:
    """The count on the table's summary line of ``verify``'s output."""
    summary = next(line for line in output.splitlines() if line.startswith("  stale "))
    words = summary.split()
    return int(words[words.index(finding.value) + 1])
