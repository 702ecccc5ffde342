"""``cdc-cache snapshot`` on the real stack (MariaDB, the embedded Debezium with a signal
table, the broker, the worker, Redis): keys missing from Redis come back from the
connector's incremental snapshot, a change committed while the snapshot runs wins, and
snapshot rows delivered again after a newer change are stale at the version gate (with
the gate disabled, they overwrite it: the bad outcome the gate prevents)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from cdc_cache.cli import main
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.process import free_port
from tests.integration.faults import UNGATED_WORKER
from tests.integration.fixtures_redis import RedisTarget
from tests.integration.pipelines import Pipeline, mariadb_pipeline
from tests.integration.probes import metric
from tests.integration.test_truncate_e2e import insert, messages
from tests.integration.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RULES = """
version: 2
defaults: {{safety_ttl: 1h, tombstone_ttl: 30m}}
tables:
  {schema}.stock:
    keys:
      - key: "stock:{{id}}"
        fields: [id, qty]
"""  # no notifications: the same rules on one server and on a Cluster
ROWS = 40
CHUNK = 2  # rows per snapshot chunk: twenty chunks, read while the rows change
UPDATING_S = 3.0  # rows updated one after another this long, the snapshot meanwhile


@pytest.fixture
def target(request: pytest.FixtureRequest) -> RedisTarget:
    """A clean Redis of the kind the test names: one server or a Cluster."""
    server = request.getfixturevalue(
        "redis_server" if request.param == "single" else "redis_cluster"
    )
    client = request.getfixturevalue(
        "redis_client" if request.param == "single" else "redis_cluster_client"
    )
    return RedisTarget(server.address(), client)


@pytest.fixture
def pipeline(
    tmp_path: Path, mariadb: MariaDB, broker: Broker, target: RedisTarget
) -> Iterator[Pipeline]:
    with mariadb_pipeline(tmp_path, mariadb, broker, target.url, rules=RULES) as line:
        with mariadb.connect(line.schema) as conn, conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE debezium_signal (id VARCHAR(64) PRIMARY KEY, "
                "type VARCHAR(32) NOT NULL, data VARCHAR(2048))"
            )
            cur.execute(f"GRANT INSERT ON {line.schema}.debezium_signal TO 'cdc'@'%'")
            conn.commit()
        line.debezium.argv += [
            f"--signal-table={line.schema}.debezium_signal",
            f"--set=incremental.snapshot.chunk.size={CHUNK}",
        ]
        yield line


def cached(redis_client) -> dict[int, int]:
    """id → qty of every cached row."""
    out = {}
    for key in redis_client.scan_iter(match="stock:*"):
        row = orjson.loads(redis_client.get(key))
        out[row["id"]] = row["qty"]
    return out


def database(mariadb: MariaDB, schema: str) -> dict[int, int]:
    with mariadb.connect(schema) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, qty FROM stock")
        return {int(i): int(q) for i, q in cur.fetchall()}


def resnapshot(mariadb: MariaDB, schema: str) -> None:
    result = CliRunner().invoke(
        main,
        ["snapshot", "--db", f"mysql://root@127.0.0.1:{mariadb.port}/{schema}",
         "--signal-table", f"{schema}.debezium_signal", "--table", f"{schema}.stock"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def read_qty(message: tuple[int, bytes, bytes]) -> int:
    return int(orjson.loads(message[2])["after"]["qty"])


def read_id(message: tuple[int, bytes, bytes]) -> int:
    return int(orjson.loads(message[2])["after"]["id"])


def read_pos(message: tuple[int, bytes, bytes]) -> tuple[int, int, int]:
    """A read's row and the binlog position of its chunk."""
    source = orjson.loads(message[2])["source"]
    return read_id(message), int(source["pos"]), int(source["row"])


def snapshot_reads(broker: Broker, topic: str) -> list[tuple[int, bytes, bytes]]:
    return [
        m
        for m in messages(broker.bootstrap, topic, Pipeline.PARTITIONS)
        if orjson.loads(m[2])["source"].get("snapshot") == "incremental"
    ]


@pytest.mark.parametrize(
    ("gate", "target"),
    [("on", "single"), ("on", "cluster"), ("off", "single")],
    indirect=["target"],
)
def test_a_resnapshot_restores_missing_keys_and_never_overwrites_a_newer_change(
    pipeline: Pipeline, mariadb: MariaDB, broker: Broker, target: RedisTarget, gate: str
) -> None:
    redis_client = target.client
    port = free_port()
    pipeline.worker.argv += ["--metrics-port", str(port)]
    if gate == "off":  # the injected bug: no version gate
        pipeline.worker.argv[2] = UNGATED_WORKER
    services = [pipeline.debezium, pipeline.worker]
    for service in services:
        service.start()
    schema = pipeline.schema
    insert(mariadb, schema, 1)  # once cached, the connector streams
    wait_until("the connector streams", lambda: len(cached(redis_client)) == 1, 120, alive=services)
    insert(mariadb, schema, *range(2, ROWS + 1))
    wait_until("rows cached", lambda: cached(redis_client) == database(mariadb, schema), 60)

    # Keys lost from Redis (evicted, deleted by hand): their versions stay.
    for i in range(1, ROWS // 2 + 1):
        redis_client.delete(f"stock:{i}")
    started = time.monotonic()
    resnapshot(mariadb, schema)
    wait_until(
        "missing keys back from the snapshot",
        lambda: cached(redis_client) == database(mariadb, schema),
        60,
        alive=services,
    )
    restored_s = time.monotonic() - started
    assert len(snapshot_reads(broker, pipeline.topic)) == ROWS, "every row read once"

    # A second snapshot while the rows keep changing, one after another: the changes win
    # wherever they land, before, inside or after a chunk's window.
    first_reads = {read_pos(r) for r in snapshot_reads(broker, pipeline.topic)}
    stop, first_update = threading.Event(), threading.Event()

    def update_rows() -> None:
        qty, until = 1000, time.monotonic() + UPDATING_S
        with mariadb.connect(schema) as conn, conn.cursor() as cur:
            while not stop.is_set() and time.monotonic() < until:
                qty += 1
                cur.execute("UPDATE stock SET qty = %s WHERE id = %s", (qty, qty % ROWS + 1))
                conn.commit()
                first_update.set()
                time.sleep(0.005)

    writer = threading.Thread(target=update_rows)
    writer.start()
    assert first_update.wait(30)
    resnapshot(mariadb, schema)
    writer.join(60)
    stop.set()
    final = database(mariadb, schema)
    wait_until(
        "the newest changes cached", lambda: cached(redis_client) == final, 60, alive=services
    )
    time.sleep(1)  # any snapshot row still in flight applied too
    assert cached(redis_client) == final, "a change committed during the snapshot wins"
    second = [r for r in snapshot_reads(broker, pipeline.topic) if read_pos(r) not in first_reads]
    overtaken = [r for r in second if read_qty(r) != final[read_id(r)]]
    assert overtaken, "the snapshot read rows that changed again after their chunk"

    # Snapshot rows delivered again, late, after the newer changes.
    events = "cdc_cache_events_total"
    seen, applied = metric(port, events), metric(port, events, {"outcome": "applied"})
    gated = lambda: sum(  # noqa: E731
        metric(port, events, {"outcome": o}) for o in ("stale", "duplicate")
    )
    before = gated()
    late = snapshot_reads(broker, pipeline.topic)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for partition, key, value in late:
        producer.produce(pipeline.topic, value, key, partition=partition)
    assert producer.flush(30) == 0
    wait_until(
        "the late snapshot rows read",
        lambda: metric(port, events) - seen >= len(late),
        60,
        alive=services,
    )
    if gate == "on":
        assert gated() - before == len(late), "each one stale or a duplicate"
        assert metric(port, events, {"outcome": "applied"}) == applied
        assert cached(redis_client) == final, "no snapshot row over a newer change"
    else:
        assert cached(redis_client) != final, "without the gate, older snapshot rows win"
    print(
        f"missing keys restored {restored_s:.2f} s after cdc-cache snapshot; second snapshot: "
        f"{len(second)} of {ROWS} rows read ({len(overtaken)} overtaken by later changes)"
    )
