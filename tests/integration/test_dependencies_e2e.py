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
database, every brand's index keys (a set and a sorted set of its products) hold its
products, and ``verify`` finds every link the rows imply in the index and no page cached
past a change of a row it shows.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
import pytest
from pymysql.constants import CLIENT

from cdc_cache.aside.cache_aside import NEGATIVE, CacheAside
from cdc_cache.core.keys import ns
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.tags import member
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisClusterServers, RedisServer
from cdc_cache.tools.link_judge import LinkFinding
from cdc_cache.tools.verify import verify
from tests.integration.fixtures_redis import AnyRedis
from tests.integration.fixtures_stack import scratch_database
from tests.integration.probes import metric
from tests.integration.services import Service, debezium, worker
from tests.integration.test_verify_dependencies import DDL  # the catalog's tables
from tests.integration.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLES = ("brands", "tags", "products", "product_tags")
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
    invalidate_tags: ["listing:brand:{{brand_id}}"]
  {s}.product_tags:
    watch: [product_id, tag_id]
"""
TRANSACTIONS = 10_000
PER_ROUND_TRIP = 25  # transactions sent in one multi-statement round trip
PRODUCTS, BRANDS, TAG_IDS = 120, 8, 6
READERS = 3  # per deployment
# The writer stays at most this many row changes ahead of the slower worker, so readers
# race changes as they are applied. Far ahead, every fill would load rows newer than the
# changes still to be applied, and no fill could race the last change of its key (the
# race the leases and the fills' tag checks are for).
AHEAD = 1_000
PROGRESS_EVERY_S = 0.25
# Each worker is killed once it has read this many changes (of about 17,000): mid-stream.
KILL_AFTER = {"single": 6_000, "cluster": 10_000}
# No heartbeats here, and the connector's own topics appear later: keep the lag and the
# topic watch out of the way (a switch to ttl mode would expire the keys to be judged).
QUIET_MODE = {"CDC_CACHE_LAG_SLO_S": "3600", "CDC_CACHE_TOPIC_REFRESH_S": "0"}
MARKERS = range(1001, 1021)  # ids of the rows the last transaction adds to every table


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


def transaction(schema: str, rnd: random.Random, n: int) -> list[str]:
    """One random transaction of one to three statements, BEGIN and COMMIT included."""
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
    return out


def row_changes(statement: str, affected: int) -> int:
    """The change events a statement makes: an upsert's update counts 2 affected rows."""
    return min(affected, 1) if "ON DUPLICATE KEY" in statement else max(affected, 0)


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
    _progress: tuple[float, float] = (0.0, -PROGRESS_EVERY_S)  # changes read, and when

    def __post_init__(self) -> None:
        self.cache = CacheAside(self.client, ttl_ms=600_000, lease_wait_ms=0, lease_ttl_ms=10_000)

    def start_readers(self) -> None:
        self.threads = [
            threading.Thread(target=self._guarded, args=(self._read, seed))
            for seed in range(READERS)
        ]
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
                time.sleep(rnd.uniform(0, 0.1))
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

    def progress(self) -> float:
        """Changes the worker read, before its kill and since (a replay counts twice).

        Read from its metrics at most every ``PROGRESS_EVERY_S``: a scrape takes the
        worker's interpreter lock.
        """
        read, when = self._progress
        if time.monotonic() - when >= PROGRESS_EVERY_S:
            try:
                read = metric(self.metrics_port, "cdc_cache_records_total", {"kind": "change"})
            except OSError:  # restarting
                read = 0.0
            self._progress = (read, time.monotonic())
        return max(self.killed_at, 0.0) + read

    def kill_when_due(self) -> float:
        """SIGKILL the worker and start it again, once, after ``KILL_AFTER`` changes; the
        worker's progress."""
        read = self.progress()
        if self.killed_at < 0 and read >= KILL_AFTER[self.name]:
            self.service.kill()
            self.killed_at = read
            self._progress = (0.0, time.monotonic())
            self.service.start()
        return read

    def finished(self) -> bool:
        """Killed and restarted, and every partition applied up to its last change: each
        table's marker rows, whose last step (a link op, a tag invalidation) is done."""
        self.kill_when_due()
        if self.killed_at < 0:
            return False
        pipe = self.client.pipeline(transaction=False)
        for n in MARKERS:
            s = self.schema
            pipe.hexists(
                ns().tag_key(f"{s}.brands:{n}"), member(f"product:{n}:page", f"{s}.products:{n}")
            )
            pipe.hexists(ns().tag_key(f"{s}.brands:{n}"), "")
            pipe.hexists(ns().tag_key(f"{s}.tags:{n}"), "")
            pipe.hexists(
                ns().tag_key(f"{s}.tags:1"), member(f"product:{n}:page", f"{s}.product_tags:{n}:1")
            )
        return all(pipe.execute())

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


def wrong_indexes(client: Any, mariadb: MariaDB, schema: str) -> list[str]:
    """The brand index keys that differ from the database's products (a NULL brand: ``~``)."""
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, brand_id FROM {schema}.products")
        rows = cur.fetchall()
    assert rows, "no product left: the index check would judge nothing"
    out = []
    for brand in ["~", *map(str, range(1, BRANDS + 2)), *map(str, MARKERS)]:
        ids = sorted(pid for pid, bid in rows if str(bid if bid is not None else "~") == brand)
        members = sorted(int(m) for m in client.smembers(f"brand:{brand}:products"))
        scored = client.zrange(f"brand:{brand}:by_id", 0, -1, withscores=True)
        if members != ids or scored != [(f"p{pid}".encode(), float(pid)) for pid in ids]:
            out.append(f"brand:{brand}: database {ids}, set {members}, sorted set {scored}")
    return out


def write_workload(
    mariadb: MariaDB, schema: str, deployments: list[Deployment], services: list[Service]
) -> int:
    """``TRANSACTIONS`` transactions, ``PER_ROUND_TRIP`` of them per round trip, at most
    ``AHEAD`` changes ahead of the workers, which are killed on the way; the changes made."""
    conn = pymysql.connect(
        host="127.0.0.1",
        port=mariadb.port,
        user="root",
        autocommit=True,
        client_flag=CLIENT.MULTI_STATEMENTS,
    )
    rnd = random.Random(14)
    written = 0

    def kept_up() -> bool:
        progress = [deployment.kill_when_due() for deployment in deployments]
        return written - min(progress) <= AHEAD

    try:
        with conn.cursor() as cur:
            for start in range(0, TRANSACTIONS, PER_ROUND_TRIP):
                wait_until("the workers keeping up", kept_up, 120, alive=services, interval=0.05)
                statements = [
                    statement
                    for n in range(start, start + PER_ROUND_TRIP)
                    for statement in transaction(schema, rnd, n * 10)
                ]
                cur.execute(";".join(statements))
                affected = [cur.rowcount]
                while cur.nextset():
                    affected.append(cur.rowcount)
                written += sum(map(row_changes, statements, affected))
            cur.execute(";".join(markers(schema)))
            while cur.nextset():
                pass
    finally:
        conn.close()
    return written


def markers(schema: str) -> list[str]:
    """The last transaction: rows in every table, so in every partition (see ``MARKERS``)."""
    rows = {
        "brands": [f"({n}, 'marker')" for n in MARKERS],
        "tags": [f"({n}, 'marker')" for n in MARKERS],
        "products": [f"({n}, {n}, 'marker')" for n in MARKERS],
        "product_tags": [f"({n}, 1)" for n in MARKERS],
    }
    inserts = [f"INSERT INTO {schema}.{table} VALUES {', '.join(v)}" for table, v in rows.items()]
    return ["BEGIN", *inserts, "COMMIT"]


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
    tags = [(tid, f"tag{tid}") for tid in range(1, TAG_IDS + 1)]
    with scratch_database(mariadb, "xt", *DDL, rows={"tags": tags}) as schema:
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
                home,
                broker.bootstrap,
                server.address(),
                topics,
                rules=RULES.format(s=schema),
                env=QUIET_MODE,
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
                        d.client.hget(ns().tag_key(f"{schema}.brands:99"), "") is not None
                    ),
                    timeout=120,
                    alive=services,
                    shown=deployment.service,
                )
                deployment.start_readers()
            flowing = time.monotonic()
            changes = write_workload(mariadb, schema, deployments, services)
            written = time.monotonic()
            for deployment in deployments:  # fills go on while the workers drain the stream
                wait_until(
                    f"the {deployment.name} worker killed, restarted, and drained",
                    deployment.finished,
                    timeout=180,
                    alive=services,
                    shown=deployment.service,
                    interval=0.5,
                )
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
            for deployment in deployments:
                wait_until(
                    f"every brand's index keys of the {deployment.name} deployment hold the "
                    "database's products",
                    lambda d=deployment: not wrong_indexes(d.client, mariadb, schema),
                    timeout=60,
                    alive=services,
                    shown=deployment.service,
                    interval=1.0,
                )
            drained = time.monotonic()
            rules = parse_rules(RULES.format(s=schema))
            for deployment in deployments:
                cached, stale = deployment.judge()
                fills = deployment.cache.fills
                # verify judges every link the rows imply against the index built from
                # the stream, and the cached pages' versions against their parents'
                report = verify(f"{mariadb.dsn()}/{schema}", rules, deployment.client)
                links = sum(t.links for t in report.tables)
                print(
                    f"{deployment.name}: {TRANSACTIONS} transactions, {changes} row changes; "
                    f"killed after "
                    f"{deployment.killed_at:.0f} changes read; {cached} dependent keys judged, "
                    f"{len(stale)} stale; fills: {fills.loads} attempted, {fills.landed} landed, "
                    f"{fills.voided_by_change} voided by a change, {fills.voided_by_tag} voided "
                    f"by a tag; verify: {links} links judged, "
                    + ", ".join(f"{f.value} {report.count_links(f)}" for f in LinkFinding)
                )
                assert stale == []
                assert report.exit_code == 0 and links > 0, report.format()
                assert cached >= PRODUCTS // 10, "few keys stayed cached: the check judged little"
                assert fills.voided_by_change > 0 and fills.voided_by_tag > 0, fills
            print(
                f"setup {flowing - started:.1f}s, writing {written - flowing:.1f}s, "
                f"draining and judging {drained - written:.1f}s"
            )
        finally:
            for deployment in deployments:
                deployment.done.set()
                for thread in deployment.threads:
                    thread.join()
            for service in services:
                service.stop()
