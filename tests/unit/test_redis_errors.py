import pytest
from redis import exceptions as rex

from cdc_cache.core.errors import ConfigError
from cdc_cache.sink.connection import is_transient, misconfiguration, translated_errors


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


@pytest.mark.parametrize(
    ("error", "names"),
    [
        (rex.AuthenticationError("invalid username-password pair"), "redis_password"),
        (rex.NoPermissionError("NOPERM this user has no permissions"), "redis_username"),
        (
            rex.ConnectionError("Error 1 connecting: [SSL: CERTIFICATE_VERIFY_FAILED] self-signed"),
            "ssl_ca_certs",
        ),
    ],
)
def test_setting_problems_are_config_errors_never_retried(error, names):
    assert not is_transient(error)
    assert names in (misconfiguration(error) or "")
    with pytest.raises(ConfigError, match=names), translated_errors("PING at redis://h:1/0"):
        raise error


def test_other_errors_are_no_setting_problem():
    assert misconfiguration(rex.ConnectionError("Connection refused")) is None
    assert misconfiguration(rex.ResponseError("WRONGTYPE")) is None
