"""A MariaDB failover end to end: primary and replica, Debezium re-snapshotting the
promoted replica from a lower binlog file, and the worker following the new lineage.

Everything is real: two ``mariadbd`` (replication by GTID, binlogs on both), Debezium's
embedded engine on the primary, a random workload, then the primary stopped, the replica
promoted and a Debezium with fresh offsets started against it (it snapshots from the
replica's binlog 1, below the primary's 4), and more changes. Two workers read the same
topics: one with lineage detection (on Redis Cluster), one without (single Redis). The
first ends consistent by ``verify`` with the switch in its metrics, log and ``/readyz``;
the second shows the behaviour detection replaces: the new lineage judged stale.

What a failover cannot carry over is measured too: transactions the old primary committed
but never replicated (replication is stopped before them), and rows the new primary
deleted before its connector snapshotted it. The snapshot rewrites every row the new
primary has, so what remains are keys of rows it does not have: ``verify`` finds them as
unexpected right after the switch, and they expire in the ``ttl`` mode the switch holds.
"""

from __future__ import annotations

import copy
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.process import StackError, free_port
from cdc_cache.tools.verify import verify
from cdc_cache.tools.verify_judge import Finding
from cdc_cache.tools.verify_report import Report
from tests.integration.probes import admin_get, metric
from tests.integration.services import Service, debezium, worker
from tests.integration.sql_workload import DDL, SqlWorkload, execute, rules_for
from tests.integration.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TAIL = 10  # transactions the old primary commits and never replicates
FALLBACK_TTL_S = 15
SETTLE_S = 20


@pytest.fixture
def servers() -> Iterator[tuple[MariaDB, MariaDB]]:
    """A fresh primary (server id 1) and replica (server id 2) following it by GTID."""
    home = Path(tempfile.mkdtemp(prefix="cdc-fo-"))  # short: socket paths are limited
    primary = MariaDB(home / "p", free_port(), server_id=1)
    replica = MariaDB(home / "r", free_port(), server_id=2)
    try:
        for server in (primary, replica):
            try:
                server.start()
            except StackError as exc:
                pytest.fail(f"mariadb: {exc}", pytrace=False)
        replica.replicate_from(primary)
        yield primary, replica
    finally:
        primary.stop()
        replica.stop()
        shutil.rmtree(home, ignore_errors=True)


def transactions(server: MariaDB, workload: SqlWorkload, count: int) -> None:
    with server.connect(workload.schema) as conn:
        conn.autocommit(False)
        execute(conn, workload.transactions(count))


def test_failover_to_a_replica_is_followed_without_an_operator(
    tmp_path: Path,
    servers: tuple[MariaDB, MariaDB],
    broker: Broker,
    redis_server,
    redis_client,
    redis_cluster,
    redis_cluster_client,
) -> None:
    primary, replica = servers
    schema = f"fo_{uuid.uuid4().hex[:6]}"
    primary.query(f"CREATE DATABASE {schema}")
    primary.query(DDL.format(schema=schema))
    for _ in range(3):  # the primary's binlog numbering runs ahead of the replica's
        primary.query("FLUSH BINARY LOGS")
    prefix = f"fo{uuid.uuid4().hex[:6]}"
    topic = f"{prefix}.{schema}.stock"
    broker.create_topics({topic: 3})
    rules = rules_for(schema)

    def start_worker(name: str, redis_url: str, detect: bool) -> tuple[Service, int]:
        home = tmp_path / name
        home.mkdir()
        port = free_port()
        env = {
            "CDC_CACHE_METRICS_PORT": str(port),
            "CDC_CACHE_LINEAGE_DETECTION": str(detect),
            "CDC_CACHE_FALLBACK_TTL_S": str(FALLBACK_TTL_S),
            "CDC_CACHE_LINEAGE_SETTLE_S": str(SETTLE_S),
        }
        service = worker(home, broker.bootstrap, redis_url, [topic], rules=rules, env=env)
        service.start()
        return service, port

    def connector(name: str, server: MariaDB) -> Service:
        home = tmp_path / name
        home.mkdir()
        service = debezium(
            home, source="mariadb", db_port=server.port, brokers=broker.bootstrap,
            prefix=prefix, databases=schema, options=["--no-schemas", "--partitions=3"],
        )  # fmt: skip
        service.start()
        return service

    old_connector = connector("debezium-primary", primary)
    detecting, port = start_worker("detecting", redis_cluster.address(), detect=True)
    blind, blind_port = start_worker("blind", redis_server.address(), detect=False)
    services = [old_connector, detecting, blind]

    def check(server: MariaDB, client: Any) -> Report:
        dsn = f"mysql://root@127.0.0.1:{server.port}/{schema}"
        return verify(dsn, parse_rules(rules), client, settle_retries=1, settle_delay_s=0.5)

    def until(what: str, done: Any, server: MariaDB, client: Any, timeout: float = 180) -> Report:
        deadline = time.monotonic() + timeout
        while True:
            for service in services:
                service.check_alive()
            report = check(server, client)
            if done(report):
                return report
            assert time.monotonic() < deadline, f"{what}:\n{report.format()}\n{detecting.tail()}"
            time.sleep(1)

    try:
        # The old lineage: every change replicated, and cached by both workers.
        workload = SqlWorkload(schema, seed=11)
        transactions(primary, workload, 150)
        replica.wait_caught_up(primary)
        for client in (redis_cluster_client, redis_client):
            until("the old lineage cached", _cached, primary, client)

        # Committed on the old primary, never replicated: cached, then lost with it.
        replica.query("STOP SLAVE")
        replicated = copy.deepcopy(workload)
        replicated.rnd = random.Random(13)  # the new primary's own later history
        transactions(primary, workload, TAIL)
        until("the unreplicated tail cached", _cached, primary, redis_cluster_client)

        # Failover: the primary goes, the replica is promoted, a connector with fresh
        # offsets snapshots it from its own (lower) binlog, then new changes follow.
        old_file = primary.binlog_file()
        old_connector.kill()  # it dies with its primary
        primary.stop()
        replica.promote()
        assert replica.binlog_file() < old_file, (replica.binlog_file(), old_file)
        transactions(replica, replicated, 50)  # before the new connector snapshots
        services.remove(old_connector)
        services.append(connector("debezium-replica", replica))
        transactions(replica, replicated, 100)

        # Every row the new primary has is right at once; what it lacks stays cached,
        # in ttl mode, until it expires.
        switched = time.monotonic()
        right = until(
            "the new lineage applied",
            lambda r: r.count(Finding.STALE) == r.count(Finding.MISSING) == 0,
            replica,
            redis_cluster_client,
        )
        right_s = time.monotonic() - switched

        def held() -> bool:
            record = redis_cluster_client.hgetall("cdc:mode")
            return record.get(b"mode") == b"ttl" and b"lineage" in record.get(b"holds", b"")

        # The hold reaches cdc:mode at the leader's next tick, which may come after the rows.
        wait_until("ttl mode held for the switch", held, 30, alive=[detecting], interval=0.2)
        mode = {k.decode(): v.decode() for k, v in redis_cluster_client.hgetall("cdc:mode").items()}
        leftovers = right.count(Finding.UNEXPECTED)
        clean = until("the leftovers expired", _clean, replica, redis_cluster_client)
        print(
            f"\nafter the failover ({TAIL} transactions never replicated, 50 committed before "
            f"the new snapshot): every row right {right_s:.1f} s after the promotion (the new "
            f"connector's start included), with {leftovers} keys of rows the new primary lacks "
            f"(unexpected); mode {mode['mode']} ({mode['cause']}) until they expired: "
            f"consistent {time.monotonic() - switched:.1f} s after the promotion"
        )
        print(clean.format())
        assert leftovers > 0 and mode["mode"] == "ttl" and "lineage" in mode["holds"], mode
        assert clean.tables[0].rows == len(replicated.rows)
        assert metric(port, "cdc_cache_lineage_switches_total") == 1
        assert metric(port, "cdc_cache_lineage_epoch") == 1
        assert "source lineage switch" in detecting.log.read_text()
        status, body = admin_get(port, "/readyz")
        lineage = orjson.loads(body)["lineage"]["sources"][prefix]
        assert set(lineage["epochs"].values()) == {1} and not lineage["held"], lineage
        assert lineage["last_switch"]["to_epoch"] == 1
        assert status == 200, body

        # Settled: back in cdc mode, changes are cached as before.
        wait_until(
            "back in cdc mode",
            lambda: redis_cluster_client.hget("cdc:mode", "mode") == b"cdc",
            alive=[detecting],
            interval=0.2,
        )
        transactions(replica, replicated, 30)
        again = until(
            "changes cached again",
            lambda r: _clean(r) and r.count(Finding.MISSING) < r.tables[0].set_keys,
            replica,
            redis_cluster_client,
        )
        assert again.count(Finding.STALE) == 0

        # Without detection the new lineage sorts below the old one: stale keys remain.
        wait_until(
            "the blind worker read everything",
            lambda: (
                metric(blind_port, "cdc_cache_records_total")
                >= metric(port, "cdc_cache_records_total")
            ),
            alive=[blind],
            interval=0.2,
        )
        blind_report = check(replica, redis_client)
        print(f"without detection: {blind_report.count(Finding.STALE)} stale keys")
        assert blind_report.count(Finding.STALE) > 0
        assert metric(blind_port, "cdc_cache_lineage_switches_total") == 0
    finally:
        for service in services:
            service.stop()


def _cached(report: Report) -> bool:
    """Every row's keys cached with its values, and nothing else."""
    return report.clean


def _clean(report: Report) -> bool:
    """Consistent as ``cdc-cache verify`` judges it (keys not cached are no error)."""
    return report.exit_code == 0
