"""A migration on the real stack: MariaDB → Debezium → tansu → ``cdc-cache run`` → Redis.

``ALTER TABLE … DROP COLUMN`` of a column the rules project, then updates: the DDL is
reported with the rules file and line before any row of the new shape, the table falls
back to ttl mode on its own (its cached keys get the fallback TTL), each updated row's
keys are deleted rather than left stale while its change goes to the DLQ; once the rules
are fixed and the worker restarted, the DLQ replay brings the rows back and ``verify``
finds the cache consistent.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from cdc_cache.cli import main
from cdc_cache.core.keys import ns
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisServer
from cdc_cache.tools.verify import verify
from cdc_cache.tools.verify_judge import Finding
from tests.integration.cache import wait_until_verified
from tests.integration.fixtures_stack import scratch_database
from tests.integration.probes import metric
from tests.integration.services import Service, debezium, worker
from tests.integration.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RULES = """\
version: 2
defaults: {{safety_ttl: 1h, tombstone_ttl: 30m}}
tables:
  {schema}.items:
    keys:
      - key: "item:{{id}}"
        fields: [id, name, price]
      - key: "itemname:{{name}}"
        action: delete
"""
FIELDS_LINE = 7  # the rules' line naming price
FALLBACK_TTL_MS = 4000
ROWS = 20
ITEMS = (
    "CREATE TABLE {schema}.items (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, "
    "price DECIMAL(10, 2) NOT NULL)"
)


@pytest.fixture
def schema(mariadb: MariaDB) -> Iterator[str]:
    items = [(n, f"n{n}", n) for n in range(1, ROWS + 1)]
    with scratch_database(mariadb, "mig", ITEMS, rows={"items": items}) as name:
        yield name


def sql(mariadb: MariaDB, schema: str, statement: str) -> None:
    with mariadb.connect(schema) as conn, conn.cursor() as cur:
        cur.execute(statement)


def serving(port: int, name: str, labels: dict[str, str]) -> float | None:
    """A metric of a worker that may still be starting (None until its port answers)."""
    try:
        return metric(port, name, labels)
    except ConnectionRefusedError:
        return None


def mode_record(client) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(ns().mode).items()}


def test_dropping_a_projected_column_deletes_falls_back_reports_and_recovers_by_replay(
    tmp_path: Path,
    mariadb: MariaDB,
    broker: Broker,
    redis_server: RedisServer,
    redis_client,
    schema: str,
) -> None:
    prefix = f"m{uuid.uuid4().hex[:6]}"
    data_topic, dlq_topic = f"{prefix}.{schema}.items", f"{prefix}.dlq"
    broker.create_topics({data_topic: 1, prefix: 1})  # the schema-change topic is <prefix>
    table, port = f"{schema}.items", free_port()
    rules = RULES.format(schema=schema)
    assert "price" in rules.splitlines()[FIELDS_LINE - 1]
    connector = debezium(
        tmp_path,
        source="mariadb",
        db_port=mariadb.port,
        brokers=broker.bootstrap,
        prefix=prefix,
        databases=schema,
    )
    settings = {
        "CDC_CACHE_METRICS_PORT": str(port),
        "CDC_CACHE_DLQ_TOPIC": dlq_topic,
        "CDC_CACHE_FALLBACK_TTL_S": str(FALLBACK_TTL_MS / 1000),
        "CDC_CACHE_TABLE_FALLBACK_FAILURES": "2",
        "CDC_CACHE_LAG_SLO_S": "3600",  # no heartbeats here: keep the lag out of the way
        "CDC_CACHE_LAG_RECOVER_S": "60",
    }
    cache = worker(tmp_path, broker.bootstrap, redis_server.address(), [data_topic], rules=rules,
                   env=settings)  # fmt: skip
    services: list[Service] = [connector, cache]
    try:
        for service in services:
            service.start()
        report = wait_until_verified(f"{mariadb.dsn()}/{schema}", rules, redis_client, services)
        assert report.clean and report.tables[0].set_keys == ROWS, report.format()
        assert redis_client.pttl("item:20") > 3_000_000

        # The DDL alone: reported with file:line, the table falls back, nothing else does.
        sql(mariadb, schema, f"ALTER TABLE {schema}.items DROP COLUMN price")
        problems = {"table": table, "breaks": "true"}
        failed = {"kind": "render_failed", "table": table}
        reported_s = wait_until(
            "the dropped column is reported",
            lambda: metric(port, "cdc_cache_rules_column_problems", problems) == 1,
            alive=[cache],
            interval=0.2,
        )
        assert metric(port, "cdc_cache_dlq_entries_total", failed) == 0, "before any row"
        log = cache.log.read_text()
        assert f"{cache.argv[cache.argv.index('--rules') + 1]}:{FIELDS_LINE}" in log
        assert "remove it from fields" in log
        wait_until(
            "the table falls back to ttl mode alone",
            lambda: table in orjson.loads(mode_record(redis_client).get("tables", "{}")),
            alive=[cache],
            interval=0.2,
        )
        record = mode_record(redis_client)
        assert record["mode"] == "cdc"
        assert orjson.loads(record["holds"]) == [f"table_failing:{table}"]
        assert metric(port, "cdc_cache_table_fallback", {"table": table}) == 1
        shortened_s = wait_until(
            "its cached keys get the fallback TTL",
            lambda: 0 < redis_client.pttl("item:20") <= FALLBACK_TTL_MS,
            alive=[cache],
            interval=0.2,
        )

        # Updates after the DDL: each row's keys are deleted, each change dead-lettered.
        sql(mariadb, schema, f"UPDATE {schema}.items SET name = CONCAT(name, 'v2') WHERE id <= 5")
        deleted_s = wait_until(
            "the five changes reach the DLQ",
            lambda: metric(port, "cdc_cache_dlq_entries_total", failed) == 5,
            alive=[cache],
            interval=0.2,
        )
        assert not any(redis_client.exists(f"item:{n}") for n in range(1, 6)), "left stale"
        deleted = {"table": table, "outcome": "deleted"}
        assert metric(port, "cdc_cache_failed_change_keys_total", deleted) == 15  # 3 keys each
        print(
            f"\nDDL reported after {reported_s:.2f} s, keys given the fallback TTL "
            f"{shortened_s:.2f} s later; 5 updates deleted and dead-lettered in {deleted_s:.2f} s"
        )

        # Fix the rules, restart the worker, replay the dead letters: consistent again.
        assert cache.terminate() == 0
        fixed = rules.replace("fields: [id, name, price]", "fields: [id, name]")
        Path(cache.argv[cache.argv.index("--rules") + 1]).write_text(fixed)
        cache.start()
        wait_until(
            "the restarted worker sees the table fit its rules",
            lambda: (
                serving(port, "cdc_cache_table_fallback", {"table": table}) == 0
                and orjson.loads(mode_record(redis_client).get("tables", "{}")) == {}
            ),
            alive=[cache],
            interval=0.2,
        )
        flags = [
            f"--rules={cache.argv[cache.argv.index('--rules') + 1]}",
            f"--brokers={broker.bootstrap}",
            f"--redis-url={redis_server.address()}",
            f"--dlq-topic={dlq_topic}",
        ]
        replayed = CliRunner().invoke(main, ["dlq", "replay", "--all", *flags])
        assert replayed.exit_code == 0, replayed.output
        assert replayed.stdout.count("  applied") == 5, replayed.stdout
        assert orjson.loads(redis_client.get("item:3")) == {"id": 3, "name": "n3v2"}

        sql(mariadb, schema, f"UPDATE {schema}.items SET name = 'later' WHERE id = 6")
        wait_until(
            "a change after the fix applies",
            lambda: orjson.loads(redis_client.get("item:6") or b"{}") == {"id": 6, "name": "later"},
            alive=[cache],
            interval=0.2,
        )
        dsn = f"{mariadb.dsn()}/{schema}"
        final = verify(dsn, parse_rules(fixed), redis_client, settle_retries=3, settle_delay_s=0.5)
        assert final.exit_code == 0, final.format() + "\n" + cache.tail()
        assert final.count(Finding.STALE) == final.count(Finding.UNEXPECTED) == 0
        # Rows 7..20 were not changed: their keys expired under the table's fallback TTL
        # (applications fill them again on their next read).
        assert final.count(Finding.MISSING) == ROWS - 6
        result = CliRunner().invoke(
            main, ["verify", "--db", dsn, "--rules", flags[0].removeprefix("--rules="),
                   "--redis-url", redis_server.address()],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    finally:
        for service in services:
            service.stop()
