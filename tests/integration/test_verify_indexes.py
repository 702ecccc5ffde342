"""``verify`` judges index keys (zadd, sadd): the members the rows imply against Redis.

Products in a real MariaDB are applied to Redis (one server and a 3-node Cluster) as the
worker applies a snapshot of them: each row's planned ops through the apply script.
``verify`` finds every index clean; then an index damaged by hand (a member taken out with
ZREM, a score changed, a stray member and a stray index added, an index deleted) is
reported stale, unexpected and missing, and fails the check; ``--repair`` leaves it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cdc_cache.core.events import ChangeEvent, Op
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.planner import plan
from cdc_cache.plan.rules import Rules
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.verify import verify
from cdc_cache.tools.verify_judge import Finding
from tests.integration.fixtures_redis import RedisTarget
from tests.integration.fixtures_stack import scratch_database
from tests.unit.test_index_keys import INDEXES

pytestmark = pytest.mark.integration

ROWS = [  # prices as Debezium ships DECIMAL columns (text), as verify reads them
    {"id": 1, "category_id": 5, "group_id": 9, "price": "12.50"},
    {"id": 2, "category_id": 5, "group_id": 9, "price": "3.00"},
    {"id": 3, "category_id": 6, "group_id": 8, "price": "7.25"},
]
PRODUCTS = (
    "CREATE TABLE {schema}.products (id INT PRIMARY KEY, category_id INT, group_id INT, "
    "price DECIMAL(10,2))"
)


@pytest.fixture
def shop(mariadb: MariaDB) -> Iterator[tuple[str, Rules]]:
    rules = INDEXES.replace("version: 2\n", "").split("    notify:", maxsplit=1)[0]
    with scratch_database(mariadb, "vi", PRODUCTS, rows={"products": ROWS}) as schema:
        yield schema, parse_rules(rules.replace("shop.", f"{schema}."))


def snapshot(redis: Any, schema: str, rules: Rules) -> None:
    """What the worker writes for a snapshot of the products: each row's member ops."""
    applier = RedisApplier(redis)
    for n, row in enumerate(ROWS, 1):
        position = SourcePosition(0, 1, n, 0)
        event = ChangeEvent(
            f"{schema}.products", Op.READ, None, row, {"id": row["id"]}, position, 0
        )
        applier.apply(plan(event, rules))


def test_verify_judges_index_keys_member_by_member(
    shop: tuple[str, Rules], mariadb: MariaDB, redis_target: RedisTarget
) -> None:
    schema, rules = shop
    redis = redis_target.client
    dsn = f"{mariadb.dsn()}/{schema}"
    snapshot(redis, schema, rules)

    report = verify(dsn, rules, redis, settle_retries=0)
    (products,) = report.tables
    assert (products.indexes, products.members) == (4, 6), report.format()
    assert report.exit_code == 0 and report.clean, report.format()

    redis.zrem("category:5:by_price", "1")  # a member taken out
    redis.zadd("category:5:by_price", {"2": 4.0})  # another score
    redis.zadd("category:6:by_price", {"99": 1.0})  # a member no row implies
    redis.sadd("group:77:members", "1")  # an index no row renders
    redis.delete("group:8:members")  # gone: absent until a snapshot rebuilds it

    report = verify(dsn, rules, redis, settle_retries=1, settle_delay_s=0.01)
    text = report.format()
    assert report.count_index(Finding.STALE) == 2, text
    assert report.count_index(Finding.UNEXPECTED) == 2, text
    assert report.count_index(Finding.MISSING) == 1, text
    assert report.exit_code == 1
    assert "category:5:by_price: member 1 absent" in text
    assert "category:5:by_price: member 2 scored 4.0, row gives 3.0" in text
    assert "category:6:by_price: member 99: no row implies it" in text
    assert "group:77:members: member 1: no row implies it" in text
    assert "group:8:members: absent, 1 members expected (the worker left it holding" in text

    # A sample cannot tell a stray member from an unread row's: none is reported.
    sampled = verify(dsn, rules, redis, sample=2, settle_retries=0)
    assert sampled.count_index(Finding.UNEXPECTED) == 0, sampled.format()

    repaired = verify(dsn, rules, redis, settle_retries=0, repair=True)
    assert "--repair leaves index keys as they are" in repaired.format()
    assert redis.zscore("category:5:by_price", "1") is None
    assert redis.zscore("category:6:by_price", "99") == 1.0


def test_a_row_the_rules_cannot_render_is_reported_not_a_crash(
    shop: tuple[str, Rules], mariadb: MariaDB, redis_target: RedisTarget
) -> None:
    """A NULL score: the worker dead-letters such a row's changes; verify names the row."""
    schema, rules = shop
    snapshot(redis_target.client, schema, rules)
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO {schema}.products VALUES (4, 5, 9, NULL)")
    report = verify(f"{mariadb.dsn()}/{schema}", rules, redis_target.client, settle_retries=0)
    (products,) = report.tables
    assert products.unrenderable == 1, report.format()
    assert "unrenderable: {'id': 4}: " in report.format()
    assert "scores by column 'price'" in products.unrenderable_examples[0]
    assert report.exit_code == 0 and report.count_index(Finding.STALE) == 0, report.format()
