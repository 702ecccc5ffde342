"""Session-scoped real servers for integration tests (a pytest plugin module).

Each server listens on a free loopback port with its state in a fresh directory, and is
stopped at the end of the session. A missing binary fails the fixture with the message
that says how to install it; nothing is skipped silently.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

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
