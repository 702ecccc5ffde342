"""The local stack: each real server does what the CDC path relies on, and ``dev`` manages them."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pymysql
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer, TopicPartition

from cdc_cache.cli import main
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.postgres import Postgres
from cdc_cache.tools.devstack.process import StackError, free_port, port_open
from cdc_cache.tools.devstack.stack import DEFAULT_PORTS, SERVICES, Stack, StackConfig, port_env
from tests.integration.fixtures_stack import postgres_home, scratch_database


@pytest.mark.integration
def test_broker_keeps_keyed_messages_in_order_per_partition(broker: Broker) -> None:
    topic = "devstack.keyed"
    broker.create_topics({topic: 3})
    broker.create_topics({topic: 3})  # idempotent
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    sent = [(f"sku-{i % 12}".encode(), f"v{i}".encode()) for i in range(120)]
    for key, value in sent:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "devstack-test",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    received: list[tuple[int | None, bytes | None, bytes | None]] = []
    deadline = time.monotonic() + 20
    try:
        while len(received) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            received.append((msg.partition(), msg.key(), msg.value()))
    finally:
        consumer.close()

    assert len(received) == len(sent)
    partitions_of_key: dict[bytes | None, set[int | None]] = {}
    for partition, got_key, _ in received:
        partitions_of_key.setdefault(got_key, set()).add(partition)
    assert all(len(p) == 1 for p in partitions_of_key.values())
    assert {p for p, _, _ in received} == {0, 1, 2}
    for wanted in partitions_of_key:
        assert [v for _, k, v in received if k == wanted] == [v for k, v in sent if k == wanted]


@pytest.mark.integration
def test_broker_refuses_to_change_partition_count(broker: Broker) -> None:
    broker.create_topics({"devstack.fixed": 2})
    with pytest.raises(StackError, match="cannot add partitions"):
        broker.create_topics({"devstack.fixed": 3})


@pytest.mark.integration
def test_mariadb_poses_as_mysql_8_with_a_full_row_binlog(mariadb: MariaDB) -> None:
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT VERSION(), @@log_bin, @@binlog_format, @@binlog_row_image")
        assert cur.fetchone() == ("8.0.2-compat", 1, "ROW", "FULL")


@pytest.mark.integration
def test_cdc_user_reads_the_binlog(mariadb: MariaDB) -> None:
    stock = "CREATE TABLE {schema}.stock (sku INT PRIMARY KEY, qty INT)"
    with scratch_database(mariadb, "devstack", stock, rows={"stock": [(1, 5)]}):
        cdc = pymysql.connect(
            host="127.0.0.1",
            port=mariadb.port,
            user=mariadb.cdc_user,
            password=mariadb.cdc_password,
        )
        with cdc, cdc.cursor() as cur:
            cur.execute("SHOW MASTER STATUS")
            binlog_file, position, *_ = cur.fetchone()
            assert binlog_file.startswith("mysql-bin.")
            assert position > 4
            cur.execute("SHOW BINLOG EVENTS IN %s", (binlog_file,))
            kinds = {row[2] for row in cur.fetchall()}
            assert "Write_rows_v1" in kinds or "Write_rows" in kinds


@pytest.mark.integration
def test_a_scratch_database_is_filled_never_shared_and_always_dropped(
    mariadb: MariaDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = "CREATE TABLE {schema}.t (id INT PRIMARY KEY, v VARCHAR(8))"
    literal = "INSERT INTO {schema}.t VALUES (1, '{x}')"  # other braces stay as written
    rows = {"t": [(2, None), {"v": "b", "id": 3}]}
    with scratch_database(mariadb, "sd", table, literal, rows=rows) as first:
        assert first.startswith("sd_")
        held = mariadb.query(f"SELECT id, v FROM {first}.t ORDER BY id")
        assert held == ((1, "{x}"), (2, None), (3, "b"))
        draws = iter([uuid.UUID(first.removeprefix("sd_") + "0" * 24), uuid.uuid4()])
        monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))
        with pytest.raises(RuntimeError), scratch_database(mariadb, "sd") as second:
            assert second != first  # the first draw names an existing database: drawn again
            raise RuntimeError
        monkeypatch.undo()
        broken = "CREATE TABLE {schema}.t (oops"  # a failing statement: dropped too
        with pytest.raises(pymysql.err.ProgrammingError), scratch_database(mariadb, "sd", broken):
            pass
        assert {name for (name,) in mariadb.query("SHOW DATABASES LIKE 'sd\\_%'")} == {first}
    assert mariadb.query("SHOW DATABASES LIKE 'sd\\_%'") == ()


@pytest.mark.integration
def test_mariadb_start_is_idempotent(mariadb: MariaDB) -> None:
    pid = mariadb.pid()
    mariadb.start()
    assert mariadb.pid() == pid


@pytest.mark.integration
def test_postgres_decodes_changes_logically_for_the_cdc_user(postgres: Postgres) -> None:
    with postgres.connect() as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        conn.execute("CREATE TABLE IF NOT EXISTS stock (sku int PRIMARY KEY, qty int)")
        conn.execute("SELECT pg_create_logical_replication_slot('devstack', 'test_decoding')")
        try:
            conn.execute("INSERT INTO stock VALUES (7, 3) ON CONFLICT DO NOTHING")
            changes = conn.execute(
                "SELECT data FROM pg_logical_slot_get_changes('devstack', NULL, NULL)"
            ).fetchall()
        finally:
            conn.execute("SELECT pg_drop_replication_slot('devstack')")
    assert any("INSERT" in data and "sku[integer]:7" in data for (data,) in changes)


def test_stack_config_reads_home_and_ports_from_env(tmp_path: Path) -> None:
    config = StackConfig.from_env({"CDC_CACHE_HOME": str(tmp_path), port_env("mariadb"): "21306"})
    assert config.home == tmp_path
    assert config.ports == {**DEFAULT_PORTS, "mariadb": 21306}


def test_stack_config_names_a_bad_port_variable() -> None:
    with pytest.raises(StackError, match="CDC_CACHE_DEV_BROKER_PORT"):
        StackConfig.from_env({port_env("broker"): "kafka"})


@pytest.fixture
def dev_env() -> Iterator[dict[str, str]]:
    """A private stack home and ports; whatever the test started is stopped afterwards."""
    home = postgres_home("cdc-cache-dev-")
    env = {"CDC_CACHE_HOME": str(home)} | {port_env(s): str(free_port()) for s in SERVICES}
    yield env
    Stack(StackConfig.from_env(env)).down(progress=lambda _: None)
    shutil.rmtree(home, ignore_errors=True)


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


@pytest.mark.integration
def test_dev_up_is_idempotent_and_down_stops_everything(dev_env: dict[str, str]) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["dev", "up", "--with-postgres"], env=dev_env)
    assert first.exit_code == 0, first.output
    assert first.output.count(" started in ") == 4

    stack = Stack(StackConfig.from_env(dev_env))
    pids = {row.service: row.pid for row in stack.status()}
    second = runner.invoke(main, ["dev", "up", "--with-postgres", "--json"], env=dev_env)
    assert second.exit_code == 0, second.output
    assert second.stderr.count("already running") == 4  # progress apart from the result
    assert {row.service: row.pid for row in stack.status()} == pids
    shown = orjson.loads(second.stdout)["services"]
    assert {row["service"]: row["pid"] for row in shown} == {s: pids[s] for s in pids if pids[s]}
    assert all(row["state"] == "running" and row["requested"] for row in shown)

    status = runner.invoke(main, ["dev", "status", "--with-postgres"], env=dev_env)
    assert status.exit_code == 0, status.output
    assert status.output.count("running") == 4

    down = runner.invoke(main, ["dev", "down", "--json"], env=dev_env)
    assert down.exit_code == 0, down.output
    assert sorted(orjson.loads(down.stdout)["stopped"]) == sorted(s for s in pids if pids[s])
    assert all(_gone(pid) for pid in pids.values() if pid is not None)
    assert not any(port_open(int(dev_env[port_env(s)])) for s in SERVICES)
    assert not any(row.up for row in stack.status())

    after = runner.invoke(main, ["dev", "status"], env=dev_env)
    assert after.exit_code == 1
    assert "stopped" in after.output


def test_dev_status_rejects_unknown_services() -> None:
    result = CliRunner().invoke(main, ["dev", "status", "kafka"])
    assert result.exit_code == 2
    assert "kafka" in result.output


def test_missing_mariadb_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match="mariadbd not found on PATH: apt-get install"):
        MariaDB(tmp_path / "mariadb", free_port()).start()


@pytest.mark.skipif(os.geteuid() != 0, reason="the postgres account is only used as root")
def test_postgres_home_the_postgres_account_cannot_reach_is_named(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(StackError, match=r"cannot enter /\S+ on the way to .*CDC_CACHE_HOME"):
        Postgres(private / "pg", free_port()).start()
