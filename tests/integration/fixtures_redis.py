"""Pytest plugin: real Redis servers for the session, a clean client for each test.

``redis_server`` and ``redis_cluster`` (3 primaries) start once per session on free
ports; ``redis_client`` and ``redis_cluster_client`` flush all data before each test;
``any_redis`` runs a test once on each.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis, RedisCluster

from cdc_cache.devstack.process import free_port
from cdc_cache.devstack.redis import RedisClusterServers, RedisServer
from cdc_cache.redis_apply import connect

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


@pytest.fixture(params=["single", "cluster"])
def any_redis(request: pytest.FixtureRequest) -> AnyRedis:
    name = "redis_client" if request.param == "single" else "redis_cluster_client"
    client: AnyRedis = request.getfixturevalue(name)
    return client
