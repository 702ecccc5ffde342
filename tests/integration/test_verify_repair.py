"""verify --repair on the whole pipeline (MariaDB, Debezium, the worker, Redis): keys made
stale or missing are rewritten from the database, and a change committed while the repair
runs (between its snapshot and its writes) wins over it; ranked above that change, the
same repair leaves those keys stale for good."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from cdc_cache.core.positions import SourcePosition, binlog_position
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.redis import RedisServer
from cdc_cache.tools.repair import Repairer, repair_position
from cdc_cache.tools.verify import Checker, row_of_target
from cdc_cache.tools.verify_judge import Finding
from cdc_cache.tools.verify_reads import Database
from cdc_cache.tools.verify_report import Report
from tests.integration.cache import wait_until_verified
from tests.integration.pipelines import Pipeline, mariadb_pipeline
from tests.integration.sql_workload import SqlWorkload, execute

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Position = Callable[[str, int, int], SourcePosition]


def past_every_change(file: str, position: int, epoch: int) -> SourcePosition:
    """The mechanism disabled: a repair ranked above every change still to come."""
    return binlog_position({"file": file, "pos": position + 10**12, "row": 0}, epoch)


def corrupt(redis_client, count: int) -> list[int]:
    """Stale values (their versions kept) on ``count`` stock keys and one key deleted;
    returns the ids of those rows."""
    keys = sorted(k.decode() for k in redis_client.scan_iter("stock:*"))[: count + 1]
    ids = [orjson.loads(redis_client.get(k))["id"] for k in keys]
    for key in keys[:count]:
        redis_client.set(key, b'{"qty": -1}', keepttl=True)
    redis_client.delete(keys[count])
    return ids


def repair(line: Pipeline, mariadb: MariaDB, redis_client, ids: list[int], position: Position):
    """verify --repair, with an update of every repaired row committed between the
    repair's snapshot and its writes."""

    def commit_during_repair() -> None:
        with mariadb.connect(line.schema) as conn, conn.cursor() as cur:
            marks = ", ".join(["%s"] * len(ids))
            cur.execute(f"UPDATE stock SET qty = qty + 1000 WHERE id IN ({marks})", ids)

    db = Database.connect(line.dsn)
    try:
        repairer = Repairer(
            db, redis_client, row_of_target, position=position, after_read=commit_during_repair
        )
        checker = Checker(db, redis_client, parse_rules(line.rules), settle_retries=0)
        checker.repairer = repairer
        return checker.run()
    finally:
        db.close()


def stale_after_settling(line: Pipeline, redis_client, timeout: float) -> Report:
    """The report once no key is stale, or after ``timeout`` (then re-checked)."""
    return wait_until_verified(
        line.dsn, line.rules, redis_client, line.services, timeout=timeout,
        done=lambda report: report.count(Finding.STALE) == 0,
    )  # fmt: skip


def test_a_change_committed_during_a_repair_wins_over_it(
    tmp_path: Path, mariadb: MariaDB, broker: Broker, redis_server: RedisServer, redis_client
) -> None:
    with mariadb_pipeline(tmp_path, mariadb, broker, redis_server.address(), prefix="rp") as line:
        line.start()
        workload = SqlWorkload(line.schema, seed=4)
        with mariadb.connect(line.schema) as conn:
            conn.autocommit(False)
            execute(conn, workload.transactions(150))
        assert wait_until_verified(line.dsn, line.rules, redis_client, line.services).clean

        ids = corrupt(redis_client, 6)
        found = repair(line, mariadb, redis_client, ids, repair_position)
        assert found.count(Finding.STALE) == 6 and found.count(Finding.MISSING) == 1
        repaired = found.tables[0].repaired
        assert repaired is not None and sum(repaired.values()) == 7, repaired
        settled = stale_after_settling(line, redis_client, 60)
        assert settled.clean, settled.format()  # the updates committed meanwhile won

        ids = corrupt(redis_client, 6)
        repair(line, mariadb, redis_client, ids, past_every_change)
        broken = stale_after_settling(line, redis_client, 5)
        # every repaired row lost its concurrent update: the keys stay stale
        assert broken.count(Finding.STALE) == 7, broken.format()
