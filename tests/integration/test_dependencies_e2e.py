"""Invalidation across tables on the real stack: MariaDB, Debezium, tansu, the worker, Redis.

Products, brands, tags and the join table change in random transactions while readers
fill product pages (a product, its brand's name, its tags' names) through ``CacheAside``
from the database, and the worker is killed with SIGKILL mid-way and restarted. Once the
stream is drained, every cached page equals the page recomputed from the database, and
every brand's index keys (a set and a sorted set of its products) hold its products.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cdc_cache.aside.cache_aside import NEGATIVE, CacheAside
from cdc_cache.core.keys import ns
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from tests.integration.fixtures_redis import RedisTarget
from tests.integration.services import debezium, worker
from tests.integration.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLES = ("brands", "tags", "products", "product_tags")
DDL = (
    "CREATE TABLE {s}.brands (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL)",
    "CREATE TABLE {s}.tags (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL)",
    "CREATE TABLE {s}.products (id INT PRIMARY KEY, brand_id INT NULL, name VARCHAR(40))",
    "CREATE TABLE {s}.product_tags (product_id INT, tag_id INT, PRIMARY KEY (product_id, tag_id))",
)
RULES = """\
version: 2
tables:
  {s}.brands:
    watch: [name]
  {s}.tags:
    watch: [name]
  {s}.products:
    watch: [id, brand_id, name]
    keys:
      - key: "product:{{id}}:page"
        action: delete
        depends_on:
          - {{table: {s}.brands, via: brand_id}}
          - {{table: {s}.tags, through: {s}.product_tags, via: tag_id, match: {{id: product_id}}}}
      - key: "brand:{{brand_id}}:products"     # index keys: products move between brands
        action: sadd
        member: "{{id}}"
      - key: "brand:{{brand_id}}:by_id"
        action: zadd
        member: "p{{id}}"
        score: id
  {s}.product_tags:
    watch: [product_id, tag_id]
"""
PRODUCTS, BRANDS, TAG_IDS = 40, 6, 5


def page(cur: Any, schema: str, pid: int) -> bytes | None:
    """What the application caches for a product: read in one consistent snapshot."""
    cur.execute(
        f"SELECT p.name, b.name FROM {schema}.products p "
        f"LEFT JOIN {schema}.brands b ON b.id = p.brand_id WHERE p.id = %s",
        (pid,),
    )
    row = cur.fetchone()
    if row is None:
        return None
    cur.execute(
        f"SELECT t.name FROM {schema}.product_tags pt JOIN {schema}.tags t ON t.id = pt.tag_id "
        "WHERE pt.product_id = %s ORDER BY t.name",
        (pid,),
    )
    return repr((row[0], row[1], [r[0] for r in cur.fetchall()])).encode()


def load(mariadb: MariaDB, schema: str, pid: int, pause_s: float) -> bytes | None:
    """The page as the database has it, returned ``pause_s`` later (a slow renderer), so
    changes land between the read and the fill as often as the stream's latency allows."""
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        value = page(cur, schema, pid)
        cur.execute("COMMIT")
    time.sleep(pause_s)
    return value


def transaction(cur: Any, schema: str, rnd: random.Random, n: int) -> None:
    """One random transaction of one to three statements."""
    for _ in range(rnd.randint(1, 3)):
        pick = rnd.random()
        pid, bid, tid = (
            rnd.randint(1, PRODUCTS),
            rnd.randint(1, BRANDS + 1),
            rnd.randint(1, TAG_IDS),
        )
        if pick < 0.25:
            cur.execute(
                f"INSERT INTO {schema}.brands VALUES (%s, %s) ON DUPLICATE KEY UPDATE name = %s",
                (bid, f"b{n}", f"b{n}"),
            )
        elif pick < 0.35:
            cur.execute(f"UPDATE {schema}.tags SET name = %s WHERE id = %s", (f"t{n}", tid))
        elif pick < 0.65:
            brand = None if rnd.random() < 0.1 else bid  # NULL, or maybe a missing brand
            cur.execute(
                f"INSERT INTO {schema}.products VALUES (%s, %s, %s) "
                "ON DUPLICATE KEY UPDATE brand_id = %s, name = %s",
                (pid, brand, f"p{n}", brand, f"p{n}"),
            )
        elif pick < 0.85:
            cur.execute(f"INSERT IGNORE INTO {schema}.product_tags VALUES (%s, %s)", (pid, tid))
        elif pick < 0.95:
            cur.execute(
                f"DELETE FROM {schema}.product_tags WHERE product_id = %s AND tag_id = %s",
                (pid, tid),
            )
        else:
            cur.execute(f"DELETE FROM {schema}.product_tags WHERE product_id = %s", (pid,))
            cur.execute(f"DELETE FROM {schema}.products WHERE id = %s", (pid,))
        n += 1


def stale_pages(client: Any, mariadb: MariaDB, schema: str) -> list[str]:
    out = []
    with mariadb.connect() as conn, conn.cursor() as cur:
        for pid in range(1, PRODUCTS + 1):
            cached = client.get(f"product:{pid}:page")
            if cached is None:
                continue
            expected = page(cur, schema, pid)
            if cached != (NEGATIVE if expected is None else expected):
                out.append(f"product:{pid}:page")
    return out


def wrong_indexes(client: Any, mariadb: MariaDB, schema: str) -> list[str]:
    """The brand index keys that differ from the database's products (a NULL brand: ``~``)."""
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, brand_id FROM {schema}.products")
        rows = cur.fetchall()
    assert rows, "no product left: the index check would judge nothing"
    out = []
    for brand in ["~", *map(str, range(1, BRANDS + 2))]:
        ids = sorted(pid for pid, bid in rows if str(bid if bid is not None else "~") == brand)
        members = sorted(int(m) for m in client.smembers(f"brand:{brand}:products"))
        scored = client.zrange(f"brand:{brand}:by_id", 0, -1, withscores=True)
        if members != ids or scored != [(f"p{pid}".encode(), float(pid)) for pid in ids]:
            out.append(f"brand:{brand}: database {ids}, set {members}, sorted set {scored}")
    return out


def test_cached_pages_end_at_the_database_state_after_a_sigkill(
    broker: Broker, mariadb: MariaDB, redis_target: RedisTarget, tmp_path: Path
) -> None:
    schema = f"xt_{uuid.uuid4().hex[:8]}"
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {schema}")
        for statement in DDL:
            cur.execute(statement.format(s=schema))
        for tid in range(1, TAG_IDS + 1):
            cur.execute(f"INSERT INTO {schema}.tags VALUES (%s, %s)", (tid, f"tag{tid}"))
    prefix = f"x{uuid.uuid4().hex[:6]}"
    topics = [f"{prefix}.{schema}.{table}" for table in TABLES]
    broker.create_topics(dict.fromkeys(topics, 2))
    source = debezium(
        tmp_path, source="mariadb", db_port=mariadb.port, brokers=broker.bootstrap,
        prefix=prefix, databases=schema, options=["--partitions=2", "--no-schemas"],
    )  # fmt: skip
    service = worker(
        tmp_path, broker.bootstrap, redis_target.url, topics, rules=RULES.format(s=schema)
    )
    client = redis_target.client
    cache = CacheAside(client, ttl_ms=600_000, lease_wait_ms=0, lease_ttl_ms=10_000)
    done = threading.Event()
    errors: list[BaseException] = []

    def read(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            while not done.is_set():
                pid = rnd.randint(1, PRODUCTS)
                pause = rnd.uniform(0, 0.1)
                cache.get(
                    f"product:{pid}:page", lambda pid=pid, p=pause: load(mariadb, schema, pid, p)
                )
        except Exception as exc:  # reported by the test's thread
            errors.append(exc)

    readers = [threading.Thread(target=read, args=(seed,)) for seed in range(3)]
    try:
        source.start()
        service.start()
        with mariadb.connect() as conn, conn.cursor() as cur:  # the pipeline flows
            cur.execute(f"INSERT INTO {schema}.brands VALUES (99, 'first')")
        wait_until(
            "the worker applied a first change",
            lambda: client.hget(ns().tag_key(f"{schema}.brands:99"), "") is not None,
            timeout=120,
            alive=[source, service],
        )
        for reader in readers:
            reader.start()
        rnd = random.Random(14)
        with mariadb.connect() as conn, conn.cursor() as cur:
            for n in range(1, 1501):
                conn.begin()
                transaction(cur, schema, rnd, n * 10)
                conn.commit()
                if n == 700:
                    service.kill()
                    service.start()
                if n % 100 == 0:
                    time.sleep(0.05)
        time.sleep(5)  # fills go on while the worker drains the stream's tail
        done.set()
        for reader in readers:
            reader.join()
        assert not errors, errors
        wait_until(
            "every cached page equals the database's",
            lambda: not stale_pages(client, mariadb, schema),
            timeout=120,
            alive=[source, service],
            interval=1.0,
        )
        wait_until(
            "every brand's index keys hold the database's products",
            lambda: not wrong_indexes(client, mariadb, schema),
            timeout=60,
            alive=[source, service],
            interval=1.0,
        )
        cached = sum(client.exists(f"product:{pid}:page") for pid in range(1, PRODUCTS + 1))
        assert cached > 0, "no page stayed cached: the check judged nothing"
    finally:
        done.set()
        service.stop()
        source.stop()
        with mariadb.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE {schema}")
