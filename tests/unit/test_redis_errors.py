import pytest
from redis import exceptions as rex

from cdc_cache.redis_apply import is_transient


@pytest.mark.parametrize(
    "error",
    [
        rex.ConnectionError("Connection refused"),
        rex.TimeoutError("Timeout reading from socket"),
        rex.ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"),
        rex.ResponseError("OOM command not allowed when used memory > 'maxmemory'"),
        rex.RedisClusterException("All slots are not covered after query all startup_nodes."),
        rex.RedisClusterException(
            "Redis Cluster cannot be connected. Please provide at least one reachable node"
        ),
    ],
)
def test_retryable_redis_errors(error):
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        rex.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        rex.ResponseError("ERR Error running script"),
        rex.RedisClusterException("Cluster mode is not enabled on this node"),
    ],
)
def test_permanent_redis_errors(error):
    assert not is_transient(error)
