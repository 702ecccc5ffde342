"""Session-scoped real servers for integration tests (a pytest plugin module).

Each server listens on a free loopback port with its state in a fresh directory, and is
stopped at the end of the session. A missing binary fails the fixture with the message
that says how to install it; nothing is skipped silently.

A test's own tables live in a database of their own on the shared MariaDB:
:func:`scratch_database` creates, fills and always drops it.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymysql
import pytest
from pymysql.constants import ER

from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.postgres import Postgres
from cdc_cache.tools.devstack.process import StackError, free_port


def postgres_home(prefix: str = "cdc-cache-pg-") -> Path:
    """A fresh directory the ``postgres`` account can reach.

    PostgreSQL will not run as root, so as root it runs as ``postgres``, which cannot
    enter pytest's ``/tmp/pytest-of-root`` (mode 700). A directory directly in the
    system temp dir works once it is searchable by others (``mkdtemp`` makes it 700),
    and keeps the socket path short.
    """
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o711)
    return home


def _started(service: Broker | MariaDB | Postgres) -> None:
    try:
        service.start()
    except StackError as exc:
        pytest.fail(f"{service.name}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A tansu broker; use ``.bootstrap`` and ``.create_topics({name: partitions})``."""
    server = Broker(tmp_path_factory.mktemp("broker"), free_port())
    try:
        _started(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """MariaDB with a ROW/FULL binlog, reporting version 8.0.2-compat, user cdc/cdc."""
    server = MariaDB(tmp_path_factory.mktemp("mariadb"), free_port())
    try:
        _started(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """PostgreSQL with wal_level=logical and database ``inventory`` owned by cdc/cdc."""
    home = postgres_home()
    server = Postgres(home, free_port())
    try:
        _started(server)
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


SCHEMA = "{schema}"  # where a statement given to scratch_database names the database
Row = Sequence[Any] | Mapping[str, Any]


@contextmanager
def scratch_database(
    server: MariaDB,
    prefix: str,
    *statements: str,
    rows: Mapping[str, Iterable[Row]] | None = None,
    charset: str | None = None,
) -> Iterator[str]:
    """A fresh database ``<prefix>_<8 hex digits>`` on ``server``, dropped on exit.

    ``statements`` (DDL, literal inserts, an event schedule) run in order with each
    ``{schema}`` replaced by the database's name (nothing else is formatted: other braces
    stay); then ``rows`` fills the tables, table name -> rows, each row the values in column
    order or a mapping column -> value (``None`` is NULL), one autocommitted INSERT a row.

    A name is never shared: ``CREATE DATABASE`` refuses one that exists (another test, a
    pytest-xdist process or an earlier run on the same server) and another is drawn. The
    database is dropped however the block ends, a failed test or a failed statement here
    included. As a fixture::

        @pytest.fixture
        def schema(mariadb: MariaDB) -> Iterator[str]:
            with scratch_database(mariadb, "mig", "CREATE TABLE {schema}.t (id INT)") as name:
                yield name
    """
    name = _create_database(server, prefix, charset)
    try:
        with server.connect() as conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement.replace(SCHEMA, name))
            for table, table_rows in (rows or {}).items():
                for row in table_rows:
                    cur.execute(*_insert(f"{name}.{table}", row))
        yield name
    finally:
        with server.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")


def _create_database(server: MariaDB, prefix: str, charset: str | None, tries: int = 5) -> str:
    character_set = f" CHARACTER SET {charset}" if charset else ""
    with server.connect() as conn, conn.cursor() as cur:
        for _ in range(tries):
            name = f"{prefix}_{uuid.uuid4().hex[:8]}"
            try:
                cur.execute(f"CREATE DATABASE {name}{character_set}")
            except pymysql.err.ProgrammingError as exc:
                if exc.args[0] != ER.DB_CREATE_EXISTS:
                    raise
                continue
            return name
    msg = f"{tries} names {prefix}_<8 hex digits> drawn, each already a database"
    raise AssertionError(msg)


def _insert(table: str, row: Row) -> tuple[str, tuple[Any, ...]]:
    """An INSERT of ``row`` (named columns for a mapping) and its parameters."""
    columns = f" ({', '.join(row)})" if isinstance(row, Mapping) else ""
    values = tuple(row.values()) if isinstance(row, Mapping) else tuple(row)
    return f"INSERT INTO {table}{columns} VALUES ({', '.join(['%s'] * len(values))})", values
