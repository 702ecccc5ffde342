"""The local source database: Debian's MariaDB with a row-based binlog for Debezium.

Real MySQL 8 is not installable from the Debian archive, and Debezium's MySQL connector
rejects MariaDB's version string. Starting ``mariadbd`` with ``--version=8.0.2-compat``
makes the connector accept the server, and it then emits exact MySQL-shaped events.

Two servers make a primary and a replica for failover tests: each has its own
``server_id`` and binlog (the replica logs what it applies, ``log_slave_updates``), the
replica follows the primary by MariaDB GTID (:meth:`MariaDB.replicate_from`), and
:meth:`MariaDB.promote` turns it into a writable primary with its own binlog history.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdc_cache.tools.devstack.process import (
    ManagedProcess,
    ProcessService,
    StackError,
    initialise_data_dir,
    require_binary,
)

if TYPE_CHECKING:
    from pymysql.connections import Connection

MARIADB_HINT = "apt-get install mariadb-server"
PYMYSQL_HINT = "pip install PyMySQL (part of cdc-cache[local])"
VERSION_STRING = "8.0.2-compat"
CDC_USER = "cdc"
CDC_PASSWORD = "cdc"
# What Debezium's MySQL connector needs to snapshot tables and read the binlog.
CDC_GRANTS = "SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE, REPLICATION CLIENT, LOCK TABLES"
# sockaddr_un.sun_path is 108 bytes; longer socket paths make the server fail to bind.
MAX_SOCKET_PATH = 107


def _pymysql() -> Any:
    try:
        import pymysql
    except ModuleNotFoundError as exc:
        msg = f"PyMySQL is not installed: {PYMYSQL_HINT}"
        raise StackError(msg) from exc
    return pymysql


class MariaDB(ProcessService):
    """A ``mariadbd`` on ``127.0.0.1:port`` with its data, socket, pid and log under ``home``.

    ``root`` has no password (over TCP from 127.0.0.1 and over the socket); the ``cdc``
    user (password ``cdc``) holds exactly the grants Debezium needs.
    """

    stop_timeout = 30.0  # SIGTERM flushes InnoDB and the binlog before exiting

    name = "mariadb"
    cdc_user = CDC_USER
    cdc_password = CDC_PASSWORD

    def __init__(self, home: Path, port: int, server_id: int = 1) -> None:
        self.home = home
        self.port = port
        self.server_id = server_id
        self.data_dir = home / "data"
        self.socket = home / "mariadb.sock"
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        self.process = ManagedProcess(
            name="mariadbd",
            argv=[
                "mariadbd",
                "--no-defaults",  # must come first: ignore /etc/mysql and ~/.my.cnf
                *as_root,
                f"--datadir={self.data_dir}",
                f"--socket={self.socket}",
                f"--pid-file={home / 'mariadbd.server.pid'}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                "--skip-networking=0",
                "--skip-name-resolve",
                f"--version={VERSION_STRING}",
                "--log-bin=mysql-bin",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                f"--server-id={server_id}",
                "--log-slave-updates",  # a replica's binlog holds what it applies
                f"--relay-log={home / 'relay-bin'}",
                "--max-connections=1000",
            ],
            home=home,
            cwd=home,
        )

    def start(self, timeout: float = 60) -> None:
        """Initialise the data dir on first use, start the server, then ensure the users."""
        require_binary("mariadbd", MARIADB_HINT)
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            msg = (
                f"MariaDB socket path {self.socket} is longer than {MAX_SOCKET_PATH} bytes: "
                "use a shorter CDC_CACHE_HOME"
            )
            raise StackError(msg)
        if not self.process.running():
            self._install()
        self.process.start(self._ready, timeout)
        self._provision()

    def address(self) -> str:
        return self.dsn()

    def dsn(self) -> str:
        """The root DSN over TCP (root has no password on the dev server)."""
        return f"mysql://root@127.0.0.1:{self.port}"

    def connect(self, database: str | None = None) -> Connection[Any]:
        """A root connection over TCP in autocommit mode (call ``begin()`` for transactions)."""
        conn: Connection[Any] = _pymysql().connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            database=database,
            autocommit=True,
            connect_timeout=5,
        )
        return conn

    def _install(self) -> None:
        """Create the system tables once; a half-written attempt is redone from scratch."""
        if (self.data_dir / "mysql").is_dir():
            return
        install = require_binary("mariadb-install-db", MARIADB_HINT)
        staging = self.home / "data.installing"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        initialise_data_dir(
            "mariadb-install-db",
            [
                install,
                "--no-defaults",
                *as_root,
                f"--datadir={staging}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ],
            staging,
            self.data_dir,
            self.home,
        )

    def _socket_connect(self) -> Any:
        return _pymysql().connect(unix_socket=str(self.socket), user="root", connect_timeout=2)

    def _ready(self) -> bool:
        try:
            conn = self._socket_connect()
        except _pymysql().err.OperationalError:
            return False
        conn.close()
        return True

    def _provision(self) -> None:
        """Idempotently make root usable over TCP and give ``cdc`` Debezium's grants."""
        conn = self._socket_connect()
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'")
                cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
                cur.execute(
                    "CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (CDC_USER, CDC_PASSWORD)
                )
                cur.execute(f"GRANT {CDC_GRANTS} ON *.* TO %s@'%%'", (CDC_USER,))
        finally:
            conn.close()

    def query(self, sql: str) -> tuple[tuple[Any, ...], ...]:
        """Run one statement as root and return its rows."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql)
            return tuple(cur.fetchall())

    def binlog_file(self) -> str:
        """The binlog file the server writes to now (``SHOW MASTER STATUS``)."""
        rows = self.query("SHOW MASTER STATUS")
        return str(rows[0][0])

    def replicate_from(self, primary: MariaDB) -> None:
        """Follow ``primary`` from the start of its GTID history, read-only meanwhile.

        Both servers must be fresh: the replica applies everything the primary logged.
        """
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("STOP SLAVE")
            cur.execute("SET GLOBAL gtid_slave_pos = ''")
            cur.execute(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, MASTER_USER=%s, "
                "MASTER_PASSWORD=%s, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
                (primary.port, CDC_USER, CDC_PASSWORD),
            )
            cur.execute("SET GLOBAL read_only = ON")
            cur.execute("START SLAVE")

    def wait_caught_up(self, primary: MariaDB, timeout: float = 60) -> None:
        """Until this replica has applied every transaction ``primary`` has logged so far."""
        target = str(primary.query("SELECT @@gtid_binlog_pos")[0][0])
        if not target:
            return
        deadline = time.monotonic() + timeout
        while self.query(f"SELECT MASTER_GTID_WAIT('{target}', 1)")[0][0] != 0:
            if time.monotonic() > deadline:
                status = self.query("SHOW SLAVE STATUS")
                msg = f"replica :{self.port} did not reach {target} in {timeout:g}s: {status}"
                raise StackError(msg)

    def promote(self) -> None:
        """Stop replicating and accept writes: from now on this server's binlog is the source."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("STOP SLAVE")
            cur.execute("RESET SLAVE ALL")
            cur.execute("SET GLOBAL read_only = OFF")
