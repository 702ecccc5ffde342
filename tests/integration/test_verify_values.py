"""``verify`` compares through the worker's decoding: no false "stale" on decoded types.

A row is written to a real MariaDB and PostgreSQL; the change Debezium sends for it (JSON
with schemas, the wire values as its documentation gives them) goes through the worker's
path (decode, decode values, plan, the apply script) into Redis; ``verify`` reads the row
back with PyMySQL / psycopg. With rules version 2 it finds the cache consistent; with
version 1 the same columns (DATETIME(6), JSON, JSONB, ``real``...) are the false "stale"
the wire comparison reported.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from cdc_cache.core.events import SourceRecord
from cdc_cache.plan.route import Planned, route
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.postgres import Postgres
from cdc_cache.tools.verify import verify
from cdc_cache.tools.verify_judge import Finding, derive
from cdc_cache.tools.verify_reads import Database
from tests.integration.fixtures_stack import scratch_database

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Case:
    """A table, its row, and the change Debezium sends for that row."""

    ddl: str
    insert: str
    columns: list[tuple[str, str, str | None, dict[str, str] | None]]  # field, type, name, params
    after: dict[str, Any]
    source: dict[str, Any]
    stale_when_wire: set[str]


# The columns both tables have, and their values as Debezium sends them.
SHARED_COLUMNS = [
    ("id", "int32", None, None),
    ("dt6", "int64", "io.debezium.time.MicroTimestamp", None),
    ("d", "int32", "io.debezium.time.Date", None),
    ("amount", "bytes", "org.apache.kafka.connect.data.Decimal", {"scale": "4"}),
    ("ts", "string", "io.debezium.time.ZonedTimestamp", None),
]
SHARED_VALUES = {
    "id": 1,
    "dt6": 1709212455123456,
    "d": 19782,
    "amount": "AehI",  # 125000, scale 4
    "ts": "2024-02-29T13:14:15.5Z",
}
MARIADB = Case(
    ddl="CREATE TABLE {t} (id INT PRIMARY KEY, dt6 DATETIME(6), d DATE, amount DECIMAL(12,4), "
    "ts TIMESTAMP(6) NULL, doc JSON, f FLOAT)",
    insert="INSERT INTO {t} VALUES (1, '2024-02-29 13:14:15.123456', '2024-02-29', 12.5, "
    "'2024-02-29 13:14:15.5', '{{\"b\": 1, \"a\": [1, 2.5]}}', 1.25)",
    columns=[
        *SHARED_COLUMNS,
        ("doc", "string", None, None),  # MariaDB's JSON is a LONGTEXT to the connector
        ("f", "float", None, None),
    ],
    after={**SHARED_VALUES, "doc": '{"b": 1, "a": [1, 2.5]}', "f": 1.25},
    source={"connector": "mysql", "file": "mysql-bin.000001", "pos": 4, "row": 0},
    # ms where Debezium sent µs; base64 for the decimal; ".500000Z" for Debezium's ".5Z"
    stale_when_wire={"dt6", "amount", "ts"},
)
POSTGRES = Case(
    ddl="CREATE TABLE {t} (id INT PRIMARY KEY, dt6 TIMESTAMP(6), d DATE, amount NUMERIC(12,4), "
    "ts TIMESTAMPTZ, docb JSONB, r REAL)",
    insert="INSERT INTO {t} VALUES (1, '2024-02-29 13:14:15.123456', '2024-02-29', 12.5, "
    "'2024-02-29 14:14:15.5+01', '{{\"b\": 1, \"a\": [1, 2.5]}}', 3.1415927)",
    columns=[
        *SHARED_COLUMNS,
        ("docb", "string", "io.debezium.data.Json", None),
        ("r", "float", None, None),
    ],
    after={**SHARED_VALUES, "docb": '{"a": [1, 2.5], "b": 1}', "r": 3.1415927},
    source={"connector": "postgresql", "sequence": '["24023128", "24023128"]', "lsn": 24023128},
    stale_when_wire={"docb", "amount", "ts"},  # a document where Debezium sent text, ...
)


def rules(table: str, version: int) -> str:
    return f'version: {version}\ntables:\n  {table}:\n    keys:\n      - key: "row:{{id}}"\n'


def debezium_record(case: Case, table: str) -> SourceRecord:
    """The change Debezium sends for the row: JsonConverter with schemas."""
    fields = [
        {"type": kind, "optional": True, "field": name}
        | ({"name": semantic} if semantic else {})
        | ({"parameters": params} if params else {})
        for name, kind, semantic, params in case.columns
    ]
    db, name = table.split(".")
    container = "schema" if case.source["connector"] == "postgresql" else "db"
    schema = {
        "type": "struct",
        "fields": [
            {"type": "struct", "fields": fields, "optional": True, "field": "before"},
            {"type": "struct", "fields": fields, "optional": True, "field": "after"},
            {"type": "struct", "fields": [], "optional": False, "field": "source"},
            {"type": "string", "optional": False, "field": "op"},
        ],
    }
    source = {**case.source, container: db, "table": name, "ts_ms": 1}
    payload = {"before": None, "after": case.after, "source": source, "op": "r", "ts_ms": 2}
    value = orjson.dumps({"schema": schema, "payload": payload})
    return SourceRecord(f"dbz.{table}", 0, 0, b'{"id": 1}', value)


def check(case: Case, table: str, dsn: str, client: Any) -> None:
    for version in (2, 1):
        compiled = parse_rules(rules(table, version))
        routed = route(debezium_record(case, table), compiled)
        assert isinstance(routed, Planned), routed
        client.flushall()
        RedisApplier(client).apply(routed.ops)
        report = verify(dsn, compiled, client, settle_retries=0)
        if version == 2:
            assert report.clean, report.format()
            continue
        # The wire comparison: the decoded columns are a false "stale".
        assert report.count(Finding.STALE) == 1, report.format()
        db = Database.connect(dsn)
        try:
            (row,) = db.rows(table)
        finally:
            db.close()
        ((_, op),) = derive(compiled.tables[table], row, ["id"]).sets
        assert isinstance(op.value, bytes)
        stored, expected = orjson.loads(client.get("row:1")), orjson.loads(op.value)
        assert {c for c in stored if stored[c] != expected[c]} == case.stale_when_wire


@pytest.fixture
def mariadb_table(mariadb: MariaDB) -> Iterator[str]:
    statements = (MARIADB.ddl.format(t="{schema}.t"), MARIADB.insert.format(t="{schema}.t"))
    with scratch_database(mariadb, "vv", *statements) as schema:
        yield f"{schema}.t"


@pytest.fixture
def postgres_table(postgres: Postgres) -> Iterator[str]:
    schema = f"vv_{uuid.uuid4().hex[:8]}"
    with postgres.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(POSTGRES.ddl.format(t=f"{schema}.t"))
        conn.execute(POSTGRES.insert.format(t=f"{schema}.t"))
    yield f"{schema}.t"
    with postgres.connect() as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_mariadb_datetime6_and_decimals_compare_as_the_worker_writes_them(
    mariadb: MariaDB, mariadb_table: str, redis_client: Any
) -> None:
    schema = mariadb_table.split(".", maxsplit=1)[0]
    check(MARIADB, mariadb_table, f"mysql://root@127.0.0.1:{mariadb.port}/{schema}", redis_client)


def test_postgres_jsonb_real_and_timestamptz_compare_as_the_worker_writes_them(
    postgres: Postgres, postgres_table: str, redis_client: Any
) -> None:
    check(POSTGRES, postgres_table, postgres.dsn(), redis_client)
