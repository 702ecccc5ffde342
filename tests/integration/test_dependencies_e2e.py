"""Invalidation across tables on the real stack: MariaDB, Debezium, tansu, the worker, Redis.

One workload of 10,000 random transactions over products, brands, tags and the join table
goes through one Debezium runner into one set of topics, read by two worker deployments
side by side: one applies to a single Redis server, the other to a 3-node Redis Cluster
(each with its own recovery directory). Beside each, readers fill through ``CacheAside``
from the database: product pages (a product, its brand's name, its tags' names: kept by
the worker's index) and brand listings (the brand's name and its products: filled under
the tags ``listing:brand:<id>``, which the products' rules invalidate, and the brand row's
own tag). Each worker is killed with SIGKILL mid-stream and restarted. Once the stream is
drained, every cached key of both deployments equals the value recomputed from the
database.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
import pytest
from pymysql.constants import CLIENT

from cdc_cache.aside.cache_aside import NEGATIVE, CacheAside
from cdc_cache.core.keys import tag_key
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisClusterServers, RedisServer
from tests.integration.fixtures_redis import AnyRedis
from tests.integration.probes import metric
from tests.integration.services import Service, debezium, worker
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
    invalidate_tags: ["listing:brand:{{brand_id}}"]
  {s}.product_tags:
    watch: [product_id, tag_id]
"""
TRANSACTIONS = 10_000
PER_ROUND_TRIP = 25  # transactions sent in one multi-statement round trip
PRODUCTS, BRANDS, TAG_IDS = 120, 8, 6
READERS = 3  # per deployment
# Kill each worker once it has read this many changes (of about 20,000): mid-stream.
KILL_AFTER = {"single": 6_000, "cluster": 9_000}


def page(cur: Any, schema: str, pid: int) -> bytes | None:
    """What the application caches for a product (None: no such product)."""
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


def listing(cur: Any, schema: str, bid: int) -> bytes:
    """What the application caches for a brand's listing: its name and its products."""
    cur.execute(f"SELECT name FROM {schema}.brands WHERE id = %s", (bid,))
    brand = cur.fetchone()
    cur.execute(f"SELECT id, name FROM {schema}.products WHERE brand_id = %s ORDER BY id", (bid,))
    return repr((brand[0] if brand else None, list(cur.fetchall()))).encode()


def expected(cur: Any, schema: str, key: str) -> bytes:
    """The value of a cached key recomputed from the database now (NEGATIVE: no row)."""
    if key.startswith("listing:brand:"):
        return listing(cur, schema, int(key.rsplit(":", 1)[1]))
    value = page(cur, schema, int(key.split(":")[1]))
    return NEGATIVE if value is None else value


def transaction(schema: str, rnd: random.Random, n: int) -> str:
    """One random transaction of one to three statements, as SQL text."""
    out = ["BEGIN"]
    for _ in range(rnd.randint(1, 3)):
        n += 1
        pick = rnd.random()
        pid, bid, tid = (
            rnd.randint(1, PRODUCTS),
            rnd.randint(1, BRANDS + 1),  # BRANDS + 1 is mostly missing
            rnd.randint(1, TAG_IDS),
        )
        if pick < 0.2:
            out.append(
                f"INSERT INTO {schema}.brands VALUES ({bid}, 'b{n}') "
                f"ON DUPLICATE KEY UPDATE name = 'b{n}'"
            )
        elif pick < 0.23:
            out.append(f"DELETE FROM {schema}.brands WHERE id = {bid}")  # products keep it
        elif pick < 0.33:
            out.append(f"UPDATE {schema}.tags SET name = 't{n}' WHERE id = {tid}")
        elif pick < 0.63:
            brand = "NULL" if rnd.random() < 0.1 else bid
            out.append(
                f"INSERT INTO {schema}.products VALUES ({pid}, {brand}, 'p{n}') "
                f"ON DUPLICATE KEY UPDATE brand_id = {brand}, name = 'p{n}'"
            )
        elif pick < 0.83:
            out.append(f"INSERT IGNORE INTO {schema}.product_tags VALUES ({pid}, {tid})")
        elif pick < 0.95:
            out.append(
                f"DELETE FROM {schema}.product_tags WHERE product_id = {pid} AND tag_id = {tid}"
            )
        else:
            out.append(f"DELETE FROM {schema}.product_tags WHERE product_id = {pid}")
            out.append(f"DELETE FROM {schema}.products WHERE id = {pid}")
    out.append("COMMIT")
    return ";".join(out)


@dataclass
class Deployment:
    """A worker applying the stream to one Redis, its readers, and its SIGKILL."""

    name: str
    client: AnyRedis
    service: Service
    metrics_port: int
    schema: str
    mariadb: MariaDB
    cache: CacheAside = field(init=False)
    done: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    killed_at: float = -1.0  # changes the worker had read when it was killed

    def __post_init__(self) -> None:
        self.cache = CacheAside(self.client, ttl_ms=600_000, lease_wait_ms=0, lease_ttl_ms=10_000)

    def start_readers(self) -> None:
        self.threads = [
            threading.Thread(target=self._guarded, args=(self._read, seed))
            for seed in range(READERS)
        ]
        self.threads.append(threading.Thread(target=self._guarded, args=(self._kill_once, 0)))
        for thread in self.threads:
            thread.start()

    def stop_readers(self) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join()
        assert not self.errors, self.errors

    def _guarded(self, body: Callable[[int], None], seed: int) -> None:
        try:
            body(seed)
        except Exception as exc:  # reported by the test's thread
            self.errors.append(exc)
            self.done.set()

    def _read(self, seed: int) -> None:
        rnd = random.Random(f"{self.name}{seed}")
        with self.mariadb.connect() as conn, conn.cursor() as cur:

            def load(read: Callable[[], bytes | None]) -> bytes | None:
                """In one consistent snapshot, returned a little later (a slow renderer),
                so changes land between the read and the fill."""
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                value = read()
                cur.execute("COMMIT")
                time.sleep(rnd.uniform(0, 0.05))
                return value

            while not self.done.is_set():
                if rnd.random() < 0.75:
                    pid = rnd.randint(1, PRODUCTS)
                    self.cache.get(
                        f"product:{pid}:page", lambda p=pid: load(lambda: page(cur, self.schema, p))
                    )
                else:
                    bid = rnd.randint(1, BRANDS + 1)
                    self.cache.get(
                        f"listing:brand:{bid}",
                        lambda b=bid: load(lambda: listing(cur, self.schema, b)),
                        tags=[f"listing:brand:{bid}", f"{self.schema}.brands:{bid}"],
                    )

    def _changes_read(self) -> float:
        try:
            return metric(self.metrics_port, "cdc_cache_records_total", {"kind": "change"})
        except OSError:
            return 0.0

    def _kill_once(self, _: int) -> None:
        while not self.done.is_set():
            read = self._changes_read()
            if read >= KILL_AFTER[self.name]:
                self.service.kill()
                self.killed_at = read
                self.service.start()
                return
            time.sleep(0.1)

    def keys(self) -> list[str]:
        return [f"product:{p}:page" for p in range(1, PRODUCTS + 1)] + [
            f"listing:brand:{b}" for b in range(1, BRANDS + 2)
        ]

    def judge(self) -> tuple[int, list[str]]:
        """How many keys are cached, and those that differ from the database's values."""
        cached, stale = 0, []
        with self.mariadb.connect() as conn, conn.cursor() as cur:
            for key in self.keys():
                value = self.client.get(key)
                if value is None:
                    continue
                cached += 1
                if value != expected(cur, self.schema, key):
                    stale.append(key)
        return cached, stale


@contextmanager
def catalog(mariadb: MariaDB) -> Iterator[str]:
    schema = f"xt_{uuid.uuid4().hex[:8]}"
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {schema}")
        for statement in DDL:
            cur.execute(statement.format(s=schema))
        for tid in range(1, TAG_IDS + 1):
            cur.execute(f"INSERT INTO {schema}.tags VALUES (%s, %s)", (tid, f"tag{tid}"))
    try:
        yield schema
    finally:
        with mariadb.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE {schema}")


def write_workload(mariadb: MariaDB, schema: str) -> None:
    """``TRANSACTIONS`` transactions, ``PER_ROUND_TRIP`` of them per round trip."""
    conn = pymysql.connect(
        host="127.0.0.1",
        port=mariadb.port,
        user="root",
        autocommit=True,
        client_flag=CLIENT.MULTI_STATEMENTS,
    )
    rnd = random.Random(14)
    try:
        with conn.cursor() as cur:
            for start in range(0, TRANSACTIONS, PER_ROUND_TRIP):
                cur.execute(
                    ";".join(
                        transaction(schema, rnd, n * 10)
                        for n in range(start, start + PER_ROUND_TRIP)
                    )
                )
                while cur.nextset():
                    pass
    finally:
        conn.close()


def test_10k_transactions_leave_no_stale_dependent_key_on_one_server_and_on_a_cluster(
    broker: Broker,
    mariadb: MariaDB,
    redis_server: RedisServer,
    redis_client: AnyRedis,
    redis_cluster: RedisClusterServers,
    redis_cluster_client: AnyRedis,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    with catalog(mariadb) as schema:
        prefix = f"x{uuid.uuid4().hex[:6]}"
        topics = [f"{prefix}.{schema}.{table}" for table in TABLES]
        broker.create_topics(dict.fromkeys(topics, 2))
        source = debezium(
            tmp_path, source="mariadb", db_port=mariadb.port, brokers=broker.bootstrap,
            prefix=prefix, databases=schema, options=["--partitions=2", "--no-schemas"],
        )  # fmt: skip
        deployments = []
        for name, server, client in (
            ("single", redis_server, redis_client),
            ("cluster", redis_cluster, redis_cluster_client),
        ):
            home = tmp_path / name
            home.mkdir()
            service = worker(
                home, broker.bootstrap, server.address(), topics, rules=RULES.format(s=schema)
            )
            port = free_port()
            service.argv += ["--metrics-port", str(port)]
            deployments.append(Deployment(name, client, service, port, schema, mariadb))
        services = [source, *(d.service for d in deployments)]
        try:
            for service in services:
                service.start()
            with mariadb.connect() as conn, conn.cursor() as cur:  # the pipeline flows
                cur.execute(f"INSERT INTO {schema}.brands VALUES (99, 'first')")
            for deployment in deployments:
                wait_until(
                    f"the {deployment.name} worker applied a first change",
                    lambda d=deployment: (
                        d.client.hget(tag_key(f"{schema}.brands:99"), "") is not None
                    ),
                    timeout=120,
                    alive=services,
                    shown=deployment.service,
                )
                deployment.start_readers()
            flowing = time.monotonic()
            write_workload(mariadb, schema)
            written = time.monotonic()
            for deployment in deployments:
                wait_until(
                    f"the {deployment.name} worker was killed and restarted",
                    lambda d=deployment: d.killed_at >= 0 or bool(d.errors),
                    timeout=180,
                    alive=services,
                    shown=deployment.service,
                )
            time.sleep(3)  # fills go on while the workers drain the stream's tail
            for deployment in deployments:
                deployment.stop_readers()
            for deployment in deployments:
                wait_until(
                    f"every cached key of the {deployment.name} deployment equals the database's",
                    lambda d=deployment: not d.judge()[1],
                    timeout=180,
                    alive=services,
                    shown=deployment.service,
                    interval=1.0,
                )
            drained = time.monotonic()
            for deployment in deployments:
                cached, stale = deployment.judge()
                fills = deployment.cache.fills
                print(
                    f"{deployment.name}: {TRANSACTIONS} transactions; killed after "
                    f"{deployment.killed_at:.0f} changes read; {cached} dependent keys judged, "
                    f"{len(stale)} stale; fills: {fills.loads} attempted, {fills.landed} landed, "
                    f"{fills.voided_by_change} voided by a change, {fills.voided_by_tag} voided "
                    "by a tag"
                )
                assert stale == []
                assert cached > PRODUCTS // 2, "few keys stayed cached: the check judged little"
                assert fills.voided_by_change > 0 and fills.voided_by_tag > 0, fills
            print(
                f"setup {flowing - started:.1f}s, writing {written - flowing:.1f}s, "
                f"draining and judging {drained - written:.1f}s"
            )
        finally:
            for deployment in deployments:
                deployment.done.set()
            for service in services:
                service.stop()
