"""``cdc-cache rules check FILE --db DSN`` against a live MariaDB and PostgreSQL.

A typo in both ``watch`` and ``fields`` passes the loader (the names agree with each
other) but not the database check, which names the file and line; an unknown table too.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cdc_cache.cli import main
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.postgres import Postgres
from tests.integration.fixtures_stack import scratch_database

pytestmark = pytest.mark.integration

DDL = "CREATE TABLE {t} (id INT PRIMARY KEY, name VARCHAR(20), qty INT)"
RULES = """\
tables:
  {schema}.items:
    watch: [id, name, qtty]
    keys:
      - key: "item:{{id}}"
        when: "qtty > 0"
        fields: [id, {{name: title, from: name}}]
  {schema}.nothere:
    keys:
      - key: "n:{{id}}"
"""


@pytest.fixture
def mariadb_schema(mariadb: MariaDB) -> Iterator[str]:
    with scratch_database(mariadb, "rc", DDL.format(t="{schema}.items")) as schema:
        yield schema


@pytest.fixture
def postgres_schema(postgres: Postgres) -> Iterator[str]:
    schema = f"rc_{uuid.uuid4().hex[:8]}"
    with postgres.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(DDL.format(t=f"{schema}.items"))
    yield schema
    with postgres.connect() as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def run_check(tmp_path: Path, schema: str, dsn: str) -> tuple[int, dict[str, Any]]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.format(schema=schema))
    result = CliRunner().invoke(main, ["rules", "check", str(rules), "--db", dsn, "--json"])
    return result.exit_code, json.loads(result.output)


def assert_typos_named(tmp_path: Path, code: int, report: dict[str, Any]) -> None:
    assert code == 1
    problems = report["problems"]
    assert any(p["line"] == 3 and "column 'qtty'" in p["message"] for p in problems)  # watch
    assert any(p["line"] == 6 and "column 'qtty'" in p["message"] for p in problems)  # when
    assert any(p["line"] == 8 and "no such table" in p["message"] for p in problems)
    assert all(p["file"] == str(tmp_path / "rules.yaml") for p in problems)


def test_mariadb_typos_in_watch_and_a_filter_and_an_unknown_table(
    tmp_path: Path, mariadb: MariaDB, mariadb_schema: str
) -> None:
    code, report = run_check(
        tmp_path, mariadb_schema, f"mysql://root@127.0.0.1:{mariadb.port}/{mariadb_schema}"
    )
    assert_typos_named(tmp_path, code, report)


def test_postgres_typos_in_watch_and_a_filter_and_an_unknown_table(
    tmp_path: Path, postgres: Postgres, postgres_schema: str
) -> None:
    code, report = run_check(tmp_path, postgres_schema, postgres.dsn())
    assert_typos_named(tmp_path, code, report)


def test_rules_that_fit_the_database_pass(
    tmp_path: Path, mariadb: MariaDB, mariadb_schema: str
) -> None:
    rules = tmp_path / "ok.yaml"
    fitting = RULES.format(schema=mariadb_schema).replace("qtty", "qty")
    rules.write_text(fitting.split(f"  {mariadb_schema}.nothere")[0])
    dsn = f"mysql://root@127.0.0.1:{mariadb.port}/{mariadb_schema}"
    result = CliRunner().invoke(main, ["rules", "check", str(rules), "--db", dsn])
    assert result.exit_code == 0, result.output
