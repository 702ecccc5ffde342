"""Pytest plugin: real Redis servers for the session, a clean client for each test.

``redis_server`` and ``redis_cluster`` (3 primaries) start once per session on free
ports; ``redis_client`` and ``redis_cluster_client`` flush all data before each test;
``redis_target`` (its client alone: ``any_redis``) runs a test once on each. ``replicated_redis`` is a fresh primary, replica
and Sentinel for each test (tests fail them over).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis import Redis, RedisCluster, RedisError

from cdc_cache.sink.connection import connect
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisClusterServers, RedisSentinel, RedisServer
from tests.integration.waiting import wait_until

AnyRedis = Redis | RedisCluster


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    ports = [free_port() for _ in range(3)]
    bus_ports = [free_port() for _ in range(3)]
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"), ports, bus_ports)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _clean(url: str) -> Iterator[AnyRedis]:
    client = connect(url)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[AnyRedis]:
    if not redis_server.running():
        redis_server.start()
    yield from _clean(redis_server.address())


@pytest.fixture
def redis_cluster_client(redis_cluster: RedisClusterServers) -> Iterator[AnyRedis]:
    yield from _clean(redis_cluster.address())


@dataclass(frozen=True)
class RedisTarget:
    """A clean Redis (single or cluster) with the URL a worker would be given."""

    url: str
    client: AnyRedis


@pytest.fixture(params=["single", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    """The one Redis every both-kinds test runs on: once on a server, once on a cluster."""
    if request.param == "single":
        server = request.getfixturevalue("redis_server")
        client = request.getfixturevalue("redis_client")
    else:
        server = request.getfixturevalue("redis_cluster")
        client = request.getfixturevalue("redis_cluster_client")
    return RedisTarget(server.address(), client)


@pytest.fixture
def any_redis(redis_target: RedisTarget) -> AnyRedis:
    """The client of :func:`redis_target`, for tests that need no URL."""
    return redis_target.client


# Every server of a replicated group knows the replication user, and replicas log in with
# it: turning the user off on the primary cuts its replicas off (they cannot reconnect)
# while the primary keeps serving clients, which is how a test detaches a replica.
REPLICATION_USER = (
    "--user", "repl", "on", ">repl-secret", "~*", "&*", "+@all",
    "--masteruser", "repl", "--masterauth", "repl-secret",
)  # fmt: skip


def _info(port: int) -> dict[str, Any]:
    client = Redis(port=port, socket_timeout=2, socket_connect_timeout=2)
    try:
        return dict(client.info("replication"))
    except RedisError:
        return {}
    finally:
        client.close()


@dataclass
class ReplicatedRedis:
    """A primary, one replica and a Sentinel (quorum 1) watching them, on free ports.

    ``primary`` and ``replica`` follow the roles: after :meth:`fail_over` the promoted
    server is the primary. The replica can be cut off (:meth:`detach_replica`) while the
    primary keeps serving, as a replica that falls behind is.
    """

    home: Path
    primary: RedisServer
    replica: RedisServer
    sentinel: RedisSentinel

    @classmethod
    def start(cls, home: Path) -> ReplicatedRedis:
        primary = RedisServer(home / "a", free_port(), extra=REPLICATION_USER)
        primary.start()
        replica = RedisServer(
            home / "b", free_port(), replica_of=primary.port, extra=REPLICATION_USER
        )
        replica.start()
        sentinel = RedisSentinel(home / "sentinel", free_port(), primary.port)
        group = cls(home, primary, replica, sentinel)
        sentinel.start()
        group.wait_replicating()
        return group

    def url(self) -> str:
        return self.sentinel.address()

    def client(self, server: RedisServer | RedisSentinel) -> Redis:
        return Redis(port=server.port, socket_timeout=5)

    def wait_replicating(self) -> None:
        """Until the replica streams from the primary and the Sentinel knows it."""

        def streaming() -> bool:
            replicas = self.client(self.sentinel).execute_command(
                "SENTINEL", "replicas", self.sentinel.service
            )
            return _info(self.replica.port).get("master_link_status") == "up" and bool(replicas)

        wait_until("replication to the replica", streaming)

    def detach_replica(self) -> None:
        """Cut the replica off: it cannot log in to the primary any more."""
        primary = self.client(self.primary)
        primary.execute_command("ACL", "SETUSER", "repl", "off")
        primary.execute_command("CLIENT", "KILL", "TYPE", "replica")
        wait_until("detaching", lambda: _info(self.primary.port).get("connected_slaves") == 0)

    def reattach_replica(self) -> None:
        self.client(self.primary).execute_command("ACL", "SETUSER", "repl", "on")
        wait_until(
            "reattaching", lambda: _info(self.replica.port).get("master_link_status") == "up"
        )

    def fail_over(self) -> None:
        """SIGKILL the primary; return once the Sentinel promoted the replica."""
        self.primary.process.kill()
        promoted = self.replica
        wait_until(
            "the Sentinel promoting the replica",
            lambda: (
                self.sentinel.primary() == ("127.0.0.1", promoted.port)
                and _info(promoted.port).get("role") == "master"
                and self._sentinel_serves()
            ),
        )
        self.primary, self.replica = promoted, self.primary

    def _sentinel_serves(self) -> bool:
        """The Sentinel hands the primary out (redis-py asks no more than this)."""
        state = self.client(self.sentinel).sentinel_masters().get(self.sentinel.service, {})
        return bool(state.get("is_master")) and not (state["is_sdown"] or state["is_odown"])

    def rejoin_old_primary(self) -> None:
        """Start the killed primary again, empty, as a replica of the promoted one."""
        again = RedisServer(
            self.home / f"again-{self.replica.port}",
            self.replica.port,
            replica_of=self.primary.port,
            extra=REPLICATION_USER,
        )
        again.start()
        self.replica = again
        wait_until(
            "the rejoined replica", lambda: _info(again.port).get("master_link_status") == "up"
        )

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.primary):
            server.stop()


@pytest.fixture
def replicated_redis(tmp_path: Path) -> Iterator[ReplicatedRedis]:
    group = ReplicatedRedis.start(tmp_path / "replicated")
    try:
        yield group
    finally:
        group.stop()
