"""``verify`` judges dependent keys: the links the rows imply against the index in Redis.

A catalog in a real MariaDB is applied to Redis (one server and a 3-node Cluster) as the
worker applies a snapshot of it: each row's key ops, then its link ops. ``verify`` finds
every link and nothing wrong; then a link lost from the index (a parent's change would
miss the page) and a page cached past its brand's change are each reported and fail it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cdc_cache.core.events import ChangeEvent, Op
from cdc_cache.core.keys import ns
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import InvalidateTag
from cdc_cache.plan.dependencies import plan_dependencies
from cdc_cache.plan.planner import plan
from cdc_cache.plan.rules import Rules
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.tags import TagStore, member
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.link_judge import LinkFinding
from cdc_cache.tools.verify import verify
from tests.integration.fixtures_redis import RedisTarget
from tests.integration.fixtures_stack import scratch_database
from tests.unit.test_dependencies import CATALOG

pytestmark = pytest.mark.integration

ROWS: dict[str, list[dict[str, Any]]] = {
    "brands": [{"id": 1, "name": "acme"}, {"id": 2, "name": "zeta"}],
    "tags": [{"id": 1, "name": "red"}],
    "products": [
        {"id": 1, "brand_id": 1, "name": "shoe"},
        {"id": 2, "brand_id": 2, "name": "sock"},
        {"id": 3, "brand_id": None, "name": "hat"},
    ],
    "product_tags": [{"product_id": 1, "tag_id": 1}, {"product_id": 2, "tag_id": 1}],
}
DDL = (  # the catalog's tables (test_dependencies_e2e's too)
    "CREATE TABLE {schema}.brands (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL)",
    "CREATE TABLE {schema}.tags (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL)",
    "CREATE TABLE {schema}.products (id INT PRIMARY KEY, brand_id INT NULL, name VARCHAR(40))",
    "CREATE TABLE {schema}.product_tags "
    "(product_id INT, tag_id INT, PRIMARY KEY (product_id, tag_id))",
)


def at(n: int) -> SourcePosition:
    return SourcePosition(0, 1, n, 0)


@pytest.fixture
def catalog(mariadb: MariaDB) -> Iterator[tuple[str, Rules]]:
    with scratch_database(mariadb, "vd", *DDL, rows=ROWS) as schema:
        yield schema, parse_rules(CATALOG.replace("catalog.", f"{schema}."))


def snapshot(redis: Any, schema: str, rules: Rules) -> None:
    """What the worker writes for a snapshot of the catalog: key ops, then link ops."""
    applier = RedisApplier(redis)
    tags = TagStore(redis, applier)
    n = 0
    for table, rows in ROWS.items():
        for row in rows:
            n += 1
            key = {"id": row["id"]} if "id" in row else dict(row)
            event = ChangeEvent(f"{schema}.{table}", Op.READ, None, row, key, at(n), 0)
            applier.apply(plan(event, rules))
            tags.apply(plan_dependencies(event, rules))


def test_verify_judges_the_links_of_dependent_keys(
    catalog: tuple[str, Rules], mariadb: MariaDB, redis_target: RedisTarget
) -> None:
    schema, rules = catalog
    redis = redis_target.client
    dsn = f"{mariadb.dsn()}/{schema}"
    snapshot(redis, schema, rules)
    redis.set("product:1:page", b"shoe by acme")  # filled by the application
    redis.set("product:2:page", b"sock by zeta")

    report = verify(dsn, rules, redis, settle_retries=0)
    products = next(t for t in report.tables if t.table == f"{schema}.products")
    joins = next(t for t in report.tables if t.table == f"{schema}.product_tags")
    assert (products.links, joins.links) == (2, 2)  # product 3 has no brand
    assert report.exit_code == 0 and report.clean, report.format()

    # A link lost from the index: a change of brand 2 would leave product 2's page.
    redis.hdel(ns().tag_key(f"{schema}.brands:2"), member("product:2:page", f"{schema}.products:2"))
    # Brand 1 changed, but its invalidation never reached product 1's page (a member it
    # did not find then): the page is cached past it.
    brand = ns().tag_key(f"{schema}.brands:1")
    kept = member("product:1:page", f"{schema}.products:1")
    link = redis.hget(brand, kept)
    redis.hdel(brand, kept)
    TagStore(redis, RedisApplier(redis)).apply(
        [InvalidateTag(f"{schema}.brands:1", at(50), 3_600_000)]
    )
    redis.hset(brand, kept, link)

    report = verify(dsn, rules, redis, settle_retries=1, settle_delay_s=0.01)
    assert report.count_links(LinkFinding.UNLINKED) == 1, report.format()
    assert report.count_links(LinkFinding.ESCAPED) == 1, report.format()
    assert report.exit_code == 1
    text = report.format()
    assert "product:2:page under" in text and "product:1:page under" in text, text
