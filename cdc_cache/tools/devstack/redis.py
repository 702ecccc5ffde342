"""Local Redis servers from Debian's ``redis-server`` package: one node, or a small cluster.

Both expose the devstack service shape (``name``, ``start``, ``stop``, ``running``,
``address``). A cluster's address is ``redis://127.0.0.1:FIRSTPORT/0?cluster=true``: the
``cluster=true`` query flag is how :func:`cdc_cache.sink.connection.connect` tells a cluster
seed node from a single server, so one URL setting covers both deployments.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import redis

from cdc_cache.tools.devstack.process import (
    ManagedProcess,
    ProcessService,
    StackError,
    require_binary,
    wait_for,
)

_HOW_TO_GET: Final = "install Debian's redis-server and redis-tools (apt-get install redis-server)"
_MAX_PORT: Final = 65535
_CLUSTER_BUS_OFFSET: Final = 10000


def _redis_argv(home: Path, port: int, *extra: str) -> list[str]:
    """Command line shared by single nodes and cluster nodes: loopback only, own dir."""
    binary = require_binary("redis-server", _HOW_TO_GET)
    return [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(home),
        "--daemonize", "no",
        "--logfile", "",
        *extra,
    ]  # fmt: skip


def _cluster_info(port: int) -> dict[str, str]:
    """CLUSTER INFO of a node as a dict, empty when the node does not answer."""
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        raw = client.execute_command("CLUSTER INFO")
    except redis.RedisError:
        return {}
    finally:
        client.close()
    return {str(k): str(v) for k, v in dict(raw).items()}


def _ping(port: int) -> bool:
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class RedisServer(ProcessService):
    """One redis-server on ``127.0.0.1:port`` with its data, pid and log under ``home``.

    No persistence unless ``persist`` (then AOF, so a restart keeps the data for
    crash-and-restart tests). ``replica_of`` starts it as a replica of the server on that
    loopback port; ``extra`` adds configuration directives (``"--name", "value", ...``).
    """

    def __init__(
        self,
        home: Path,
        port: int,
        *,
        persist: bool = False,
        replica_of: int | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.name = f"redis-{port}"
        self.home = Path(home)
        self.port = port
        self.persist = persist
        durability = ("--appendonly", "yes") if persist else ("--appendonly", "no")
        replication = ("--replicaof", "127.0.0.1", str(replica_of)) if replica_of else ()
        argv = _redis_argv(self.home, port, "--save", "", *durability, *replication, *extra)
        self.process = ManagedProcess(self.name, argv, self.home)

    def start(self, timeout: float = 60) -> None:
        """Start unless running, then wait until it answers PING."""
        self.process.start(lambda: _ping(self.port), timeout)

    def address(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class RedisClusterServers:
    """A Redis Cluster of ``len(ports)`` nodes under ``home/<port>/``.

    Without ``replicas`` every node is a primary; with ``replicas`` N, redis-cli makes
    ``len(ports) / (N + 1)`` primaries and gives each N replicas. ``bus_ports`` sets each
    node's cluster bus port; by default it is port + 10000, which only works for ports up
    to 55535 (pass explicit bus ports for ephemeral test ports). ``node_timeout_ms`` is how
    long a node may not answer before the others count it failed (and, without replicas,
    refuse commands: the cluster is down). The cluster is created once; its node files
    make later starts rejoin the same cluster.
    """

    def __init__(
        self,
        home: Path,
        ports: Sequence[int],
        bus_ports: Sequence[int] | None = None,
        *,
        replicas: int = 0,
        node_timeout_ms: int = 3000,
    ) -> None:
        if replicas < 0 or len(ports) < 3 * (replicas + 1) or len(ports) % (replicas + 1):
            msg = (
                f"a Redis Cluster needs at least 3 primaries, each with {replicas} replica(s): "
                f"got ports {list(ports)}"
            )
            raise StackError(msg)
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        buses = (
            list(bus_ports) if bus_ports is not None else [p + _CLUSTER_BUS_OFFSET for p in ports]
        )
        if len(buses) != len(ports) or any(b > _MAX_PORT for b in buses):
            msg = (
                f"cluster bus ports {buses} for ports {list(ports)} are invalid: "
                f"pass one bus port (<= {_MAX_PORT}) per node"
            )
            raise StackError(msg)
        self.name = "redis-cluster"
        self.home = Path(home)
        self.ports = list(ports)
        self.bus_ports = buses

    def _processes(self) -> list[ManagedProcess]:
        processes = []
        for port, bus in zip(self.ports, self.bus_ports, strict=True):
            node_home = self.home / str(port)
            argv = _redis_argv(
                node_home, port,
                "--save", "", "--appendonly", "no",
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node_home / "nodes.conf"),
                "--cluster-port", str(bus),
                "--cluster-node-timeout", str(self.node_timeout_ms),
            )  # fmt: skip
            processes.append(ManagedProcess(f"redis-cluster-{port}", argv, node_home))
        return processes

    def process(self, port: int) -> ManagedProcess:
        """The process of the node on ``port`` (to stop, pause or kill one node in tests)."""
        return self._processes()[self.ports.index(port)]

    def _healthy(self) -> bool:
        return all(_cluster_info(p).get("cluster_state") == "ok" for p in self.ports)

    def start(self, timeout: float = 60) -> None:
        """Start every node, create the cluster if no slot is assigned yet, wait for ok."""
        for process, port in zip(self._processes(), self.ports, strict=True):
            process.start(functools.partial(_ping, port), timeout)
        if all(_cluster_info(p).get("cluster_slots_assigned") == "0" for p in self.ports):
            self._create(timeout)
        wait_for(self._healthy, timeout, f"{self.name} cluster_state:ok on {self.ports}")

    def _create(self, timeout: float) -> None:
        cli = require_binary("redis-cli", _HOW_TO_GET)
        argv = [cli, "--cluster", "create"]
        argv += [f"127.0.0.1:{p}" for p in self.ports]
        argv += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            msg = (
                f"redis-cli --cluster create failed ({result.returncode}) for {self.ports}: "
                f"{result.stdout[-800:]}{result.stderr[-800:]}; remove {self.home} to start "
                "from empty nodes"
            )
            raise StackError(msg)

    def stop(self) -> None:
        for process in self._processes():
            process.stop()

    def running(self) -> bool:
        return all(p.running() for p in self._processes())

    def address(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0?cluster=true"


class RedisSentinel(ProcessService):
    """A Redis Sentinel (``redis-server --sentinel``) monitoring the primary on a port.

    It names the primary ``service``; with ``quorum`` 1 it alone decides a failover,
    ``down_after_ms`` after the primary stops answering. Its configuration file, which
    Sentinel rewrites with what it learns (replicas, the current primary), is created once
    under ``home``; later starts resume from it.
    """

    def __init__(
        self,
        home: Path,
        port: int,
        primary_port: int,
        *,
        service: str = "cdc",
        quorum: int = 1,
        down_after_ms: int = 2000,
        failover_timeout_ms: int = 10000,
    ) -> None:
        self.name = f"redis-sentinel-{port}"
        self.home = Path(home)
        self.port = port
        self.service = service
        self.config = self.home / "sentinel.conf"
        self._lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {self.home}",
            f"sentinel monitor {service} 127.0.0.1 {primary_port} {quorum}",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
            f"sentinel parallel-syncs {service} 1",
        ]
        binary = require_binary("redis-server", _HOW_TO_GET)
        argv = [binary, str(self.config), "--sentinel", "--daemonize", "no", "--logfile", ""]
        self.process = ManagedProcess(self.name, argv, self.home)

    def start(self, timeout: float = 60) -> None:
        """Write the configuration if it is new, start, wait until it knows the primary."""
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.config.exists():
            self.config.write_text("\n".join(self._lines) + "\n")
        self.process.start(lambda: self.primary() is not None, timeout)

    def primary(self) -> tuple[str, int] | None:
        """The primary's address as this sentinel reports it; None if it does not answer."""
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            reply = client.execute_command("SENTINEL", "get-master-addr-by-name", self.service)
        except redis.RedisError:
            return None
        finally:
            client.close()
        if not reply:
            return None
        host, port = reply
        return (host.decode() if isinstance(host, bytes) else str(host)), int(port)

    def address(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/0"
