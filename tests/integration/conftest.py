from __future__ import annotations

from dataclasses import dataclass

import pytest
from redis import Redis, RedisCluster


@dataclass(frozen=True)
class RedisTarget:
    """A clean Redis (single or cluster) with the URL a worker would be given."""

    url: str
    client: Redis | RedisCluster


@pytest.fixture(params=["single", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    if request.param == "single":
        server = request.getfixturevalue("redis_server")
        client = request.getfixturevalue("redis_client")
    else:
        server = request.getfixturevalue("redis_cluster")
        client = request.getfixturevalue("redis_cluster_client")
    return RedisTarget(server.address(), client)
