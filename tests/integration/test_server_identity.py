"""One worker, two sources whose tables share ``db.table`` names, kept apart by server.

Two connectors (server names ``s1…`` and ``s2…``, two shards) carry ``inventory.stock``
with the same primary keys and different rows, read by ONE worker under one namespace.
With ``table_identity: server_db_table`` each change's table is ``<server>.inventory.stock``:
each shard's rows land under its own rule's keys, and shard 1's TRUNCATE (at a binlog
position beyond shard 2's) sweeps only shard 1's keys and gates only shard 1's table.
With the default identity (the control) both shards are one table ``inventory.stock``:
shard 1's TRUNCATE sweeps shard 2's row and judges shard 2's next change, from a log
whose positions are not comparable, stale.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from cdc_cache.cli import main
from cdc_cache.core.events import SourceRecord
from cdc_cache.core.identity import TableIdentity
from cdc_cache.plan.route import Planned, route
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisServer
from tests.integration.fixtures_redis import AnyRedis, RedisTarget
from tests.integration.fixtures_stack import scratch_database
from tests.integration.probes import metric, wait_ready
from tests.integration.services import Service, worker
from tests.integration.test_namespaces import change
from tests.integration.topics import produce
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

NAMESPACE = "shards"

BY_SERVER = """
tables:
  {s1}.inventory.stock:
    keys: [{{key: "s1:stock:{{id}}", fields: [id, qty]}}]
  {s2}.inventory.stock:
    keys: [{{key: "s2:stock:{{id}}", fields: [id, qty]}}]
"""
BY_TABLE = """
tables:
  inventory.stock:
    keys: [{key: "stock:{id}", fields: [id, qty]}]
"""


class Shards:
    """Two shards' topics, read by one worker with ``identity``."""

    def __init__(self, tmp_path: Path, broker: Broker, url: str, identity: str) -> None:
        run = uuid.uuid4().hex[:8]
        self.servers = (f"s1{run}", f"s2{run}")
        self.topics = [f"{server}.inventory.stock" for server in self.servers]
        broker.create_topics(dict.fromkeys(self.topics, 1))
        self.bootstrap = broker.bootstrap
        self.identity = identity
        rules = (
            BY_SERVER.format(s1=self.servers[0], s2=self.servers[1])
            if identity == "server_db_table"
            else BY_TABLE
        )
        self.port = free_port()
        env = {
            "CDC_CACHE_TABLE_IDENTITY": identity,
            "CDC_CACHE_DLQ_TOPIC": f"dlq-{run}",
            "CDC_CACHE_NAMESPACE": NAMESPACE,
        }
        self.worker: Service = worker(
            tmp_path, broker.bootstrap, url, self.topics, rules=rules, env=env
        )
        self.worker.argv += ["--metrics-port", str(self.port)]

    def key(self, shard: int, row_id: int) -> str:
        return (
            f"s{shard}:stock:{row_id}" if self.identity == "server_db_table" else f"stock:{row_id}"
        )

    def events(self, **labels: str) -> float:
        return metric(self.port, "cdc_cache_events_total", labels)

    def scenario(self, client: AnyRedis) -> None:
        """Both shards' row 1; shard 1 truncates at binlog file 5; shard 2's row 3 at file 3."""
        one, two = self.topics
        produce(self.bootstrap, [change(one, "c", {"id": 1, "qty": 10}, 1)])
        produce(self.bootstrap, [change(two, "c", {"id": 1, "qty": 20}, 2)])
        wait_until("both rows 1 applied", lambda: self.events() >= 2, 60, alive=[self.worker])
        produce(self.bootstrap, [change(one, "t", None, 5)])
        wait_until(
            "shard 1's TRUNCATE applied", lambda: self.events(op="t") >= 1, 60, alive=[self.worker]
        )
        produce(self.bootstrap, [change(two, "c", {"id": 3, "qty": 30}, 3)])
        wait_until("shard 2's row 3 judged", lambda: self.events() >= 4, 60, alive=[self.worker])


@contextmanager
def shards_run(
    tmp_path: Path, broker: Broker, url: str, identity: str, client: AnyRedis
) -> Iterator[Shards]:
    """The scenario played through one worker; the worker still up for its metrics."""
    shards = Shards(tmp_path, broker, url, identity)
    shards.worker.start()
    try:
        wait_ready(shards.worker, shards.port, timeout=120)
        shards.scenario(client)
        yield shards
    finally:
        shards.worker.stop()


def test_one_worker_keeps_two_shards_tables_apart_by_server(
    tmp_path: Path, broker: Broker, redis_target: RedisTarget
) -> None:
    client = redis_target.client
    with shards_run(tmp_path, broker, redis_target.url, "server_db_table", client) as shards:
        assert client.get(shards.key(1, 1)) is None  # swept by shard 1's TRUNCATE
        assert client.get(shards.key(2, 1)) == b'{"id":1,"qty":20}'  # shard 2's row kept
        assert client.get(shards.key(2, 3)) == b'{"id":3,"qty":30}'  # not gated by shard 1
        s1, s2 = (f"{server}.inventory.stock" for server in shards.servers)
        assert shards.events(table=s1, outcome="applied") == 2
        assert shards.events(table=s2, outcome="applied") == 2
        # What the dashboard's namespace variable reads to pick this worker.
        assert metric(shards.port, "cdc_cache_build_info", {"namespace": NAMESPACE}) == 1


def test_with_the_default_identity_two_shards_collide(
    tmp_path: Path, broker: Broker, redis_client: AnyRedis, redis_server: RedisServer
) -> None:
    """The control: one table for both shards, so shard 1's TRUNCATE reaches shard 2."""
    url = redis_server.address()
    with shards_run(tmp_path, broker, url, "db_table", redis_client) as shards:
        assert redis_client.get(shards.key(2, 1)) is None  # shard 2's row swept with shard 1's
        assert redis_client.get(shards.key(2, 3)) is None  # judged older than the TRUNCATE
        assert shards.events(table="inventory.stock", outcome="stale") == 1


@pytest.fixture
def shard_table(mariadb: MariaDB) -> Iterator[str]:
    """``<schema>.stock`` holding row 1, in a schema of its own."""
    stock = "CREATE TABLE {schema}.stock (id INT PRIMARY KEY, qty INT)"
    with scratch_database(mariadb, "si", stock, rows={"stock": [(1, 5)]}) as schema:
        yield f"{schema}.stock"


def test_verify_and_repair_check_one_server_s_tables_in_its_database(
    tmp_path: Path, mariadb: MariaDB, shard_table: str, redis_client: AnyRedis
) -> None:
    """``--server`` maps ``<server>.<db>.<table>`` to the database's table and its keys.

    Shard s1's row is cached through the worker's route; shard s2's is not: verify of s1
    finds its key, of s2 finds s2's key missing, and its repair writes it from the row.
    """
    schema = shard_table.split(".", maxsplit=1)[0]
    dsn = f"mysql://root@127.0.0.1:{mariadb.port}/{schema}"
    text = "version: 2\ntables:\n" + "".join(
        f'  {server}.{shard_table}:\n    keys: [{{key: "{server}:row:{{id}}"}}]\n'
        for server in ("s1", "s2")
    )
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(text)
    message = change(f"s1.{shard_table}", "r", {"id": 1, "qty": 5}, 1)
    value = orjson.loads(message.value)
    value["source"]["db"] = schema
    record = SourceRecord(message.topic, 0, 0, message.key, orjson.dumps(value))
    routed = route(record, parse_rules(text, identity=TableIdentity.SERVER_DB_TABLE))
    assert isinstance(routed, Planned) and routed.event.table == f"s1.{shard_table}"
    redis_client.flushall()
    RedisApplier(redis_client).apply(routed.ops)
    url = f"redis://127.0.0.1:{redis_client.connection_pool.connection_kwargs['port']}/0"

    def verify(server: str, *more: str) -> tuple[int, str]:
        args = ["verify", "--db", dsn, "--rules", str(rules_file), "--redis-url", url]
        result = CliRunner().invoke(main, [*args, "--server", server, "--settle", "0", *more])
        return result.exit_code, result.output

    code, said = verify("s1")
    assert code == 0 and "missing 0" in said, said  # s1's key holds s1's row
    code, said = verify("s2")
    assert code == 0 and "missing: s2:row:1" in said and shard_table in said, said
    verify("s2", "--repair")
    code, said = verify("s2")
    assert code == 0 and "missing 0" in said, said
    assert orjson.loads(redis_client.get("s2:row:1")) == {"id": 1, "qty": 5}
