"""The local PostgreSQL source: Debian's PostgreSQL 15 with logical decoding on.

PostgreSQL refuses to run as root. When this runs as root, ``initdb`` and ``postgres``
run through ``runuser -u postgres --``, the home directory is handed to that user, and
every parent of it must be searchable by that user. Directories such as ``/root`` or
pytest's ``/tmp/pytest-of-root`` (mode 700) are not, so callers put the home elsewhere.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
from collections.abc import Sequence
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
    import psycopg

POSTGRES_HINT = "apt-get install postgresql"
PSYCOPG_HINT = "pip install 'psycopg[binary]' (part of cdc-cache[local])"
DATABASE = "inventory"
CDC_USER = "cdc"
CDC_PASSWORD = "cdc"
SERVICE_USER = "postgres"
# sockaddr_un.sun_path is 108 bytes; the server adds "/.s.PGSQL.<port>" to the directory.
MAX_SOCKET_PATH = 107


def postgres_bin_dir() -> Path:
    """Where ``postgres`` and ``initdb`` live: on PATH, else Debian's versioned directory."""
    on_path = shutil.which("postgres")
    if on_path is not None:
        return Path(on_path).resolve().parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        msg = f"PostgreSQL server binaries not found (postgres, initdb): {POSTGRES_HINT}"
        raise StackError(msg)
    return candidates[-1].parent


def _psycopg() -> Any:
    try:
        import psycopg
    except ModuleNotFoundError as exc:
        msg = f"psycopg is not installed: {PSYCOPG_HINT}"
        raise StackError(msg) from exc
    return psycopg


def _service_account() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError as exc:
        msg = f"running as root, PostgreSQL needs a '{SERVICE_USER}' user: {POSTGRES_HINT}"
        raise StackError(msg) from exc


def _blocking_parent(path: Path, account: pwd.struct_passwd) -> Path | None:
    """The first directory above ``path`` that ``account`` cannot search, if any."""
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))
    for directory in reversed(path.resolve().parents):
        info = directory.stat()
        if info.st_uid == account.pw_uid:
            allowed = bool(info.st_mode & stat.S_IXUSR)
        elif info.st_gid in groups:
            allowed = bool(info.st_mode & stat.S_IXGRP)
        else:
            allowed = bool(info.st_mode & stat.S_IXOTH)
        if not allowed:
            return directory
    return None


class Postgres(ProcessService):
    """A PostgreSQL server on ``127.0.0.1:port`` with ``wal_level=logical``.

    The ``cdc`` role (password ``cdc``, REPLICATION) owns the ``inventory`` database, so
    tables it creates there can be captured with a filtered publication. TCP logins use
    SCRAM passwords; the socket in ``home`` trusts the local superuser for provisioning.
    """

    stop_timeout = 30.0  # fast shutdown (SIGINT): disconnect clients, checkpoint, exit

    name = "postgres"
    database = DATABASE
    cdc_user = CDC_USER
    cdc_password = CDC_PASSWORD

    def __init__(self, home: Path, port: int) -> None:
        self.home = home
        self.port = port
        self.data_dir = home / "data"
        self.process = ManagedProcess(
            name="postgres",
            argv=(),
            home=home,
            cwd=home,
            # SIGTERM ("smart") waits for clients such as a replication stream to leave.
            stop_signal=signal.SIGINT,
        )

    def start(self, timeout: float = 60) -> None:
        """Initialise the cluster on first use, start it, then ensure role and database."""
        bin_dir = postgres_bin_dir()
        account = _service_account()
        socket_file = self.home / f".s.PGSQL.{self.port}"
        if len(str(socket_file)) > MAX_SOCKET_PATH:
            msg = (
                f"PostgreSQL socket path {socket_file} is longer than {MAX_SOCKET_PATH} "
                "bytes: use a shorter CDC_CACHE_HOME"
            )
            raise StackError(msg)
        self._prepare_home(account)
        as_service = (
            [require_binary("runuser", "apt-get install util-linux"), "-u", SERVICE_USER, "--"]
            if account is not None
            else []
        )
        if not self.process.running():
            self._initdb(bin_dir, as_service)
        self.process.argv = [
            *as_service,
            str(bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.home}",
            "-c",
            "wal_level=logical",
            "-c",
            "max_replication_slots=20",
            "-c",
            "max_wal_senders=20",
            "-c",
            "max_connections=200",
        ]
        self.process.start(self._ready, timeout)
        self._provision()

    def address(self) -> str:
        return f"postgresql://{CDC_USER}@127.0.0.1:{self.port}/{DATABASE}"

    def dsn(self) -> str:
        """The ``cdc`` user's DSN over TCP, password included (a dev-only credential)."""
        return f"postgresql://{CDC_USER}:{CDC_PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def connect(self, dbname: str = DATABASE) -> psycopg.Connection[Any]:
        """A connection as ``cdc`` over TCP in autocommit mode."""
        conn: psycopg.Connection[Any] = _psycopg().connect(
            host="127.0.0.1",
            port=self.port,
            user=CDC_USER,
            password=CDC_PASSWORD,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )
        return conn

    def _prepare_home(self, account: pwd.struct_passwd | None) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if account is None:
            return
        blocked = _blocking_parent(self.home, account)
        if blocked is not None:
            msg = (
                f"PostgreSQL runs as user '{SERVICE_USER}' (it refuses root), which cannot "
                f"enter {blocked} on the way to {self.home}: set CDC_CACHE_HOME under a "
                f"directory that user can reach (e.g. /var/tmp) or chmod o+x {blocked}"
            )
            raise StackError(msg)
        os.chown(self.home, account.pw_uid, account.pw_gid)
        self.home.chmod(0o700)

    def _initdb(self, bin_dir: Path, as_service: Sequence[str]) -> None:
        """Create the cluster once; a half-written attempt is redone from scratch."""
        if (self.data_dir / "PG_VERSION").is_file():
            return
        staging = self.home / "data.initdb"
        shutil.rmtree(staging, ignore_errors=True)
        initialise_data_dir(
            "initdb",
            [
                *as_service,
                str(bin_dir / "initdb"),
                "-D",
                str(staging),
                "-U",
                SERVICE_USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
            ],
            staging,
            self.data_dir,
            self.home,
        )

    def _superuser_connect(self, dbname: str = "postgres") -> Any:
        return _psycopg().connect(
            host=str(self.home),
            port=self.port,
            user=SERVICE_USER,
            dbname=dbname,
            autocommit=True,
            connect_timeout=2,
        )

    def _ready(self) -> bool:
        try:
            conn = self._superuser_connect()
        except _psycopg().OperationalError:
            return False
        conn.close()
        return True

    def _provision(self) -> None:
        """Idempotently create the ``cdc`` role and the ``inventory`` database it owns."""
        sql = _psycopg().sql
        with self._superuser_connect() as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (CDC_USER,)
            ).fetchone():
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD {}").format(
                        sql.Identifier(CDC_USER), sql.Literal(CDC_PASSWORD)
                    )
                )
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(DATABASE), sql.Identifier(CDC_USER)
                    )
                )
