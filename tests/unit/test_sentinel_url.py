"""Sentinel URLs: sentinels, service, database and options, and what is refused."""

from __future__ import annotations

import pytest
from redis import Redis
from redis.sentinel import SentinelConnectionPool

from cdc_cache.core.errors import ConfigError
from cdc_cache.sink.connection import RedisAuth, connect, redis_url_problem
from cdc_cache.sink.sentinel import is_sentinel_url, parse_sentinel_url


def test_one_sentinel_a_service_and_a_database():
    target = parse_sentinel_url("redis+sentinel://10.0.0.5:26380/cache/3")
    assert target.sentinels == (("10.0.0.5", 26380),)
    assert target.service == "cache"
    assert target.options["db"] == 3


def test_several_sentinels_default_port_and_database_zero():
    target = parse_sentinel_url("redis+sentinel://s1,s2:26380,[::1]:26381/cache")
    assert target.sentinels == (("s1", 26379), ("s2", 26380), ("::1", 26381))
    assert target.options["db"] == 0


def test_credentials_are_the_servers_and_reach_the_sentinels_only_when_asked():
    url = "redis+sentinel://app:s3cret@s1:26379/cache/0?socket_timeout=2.5"
    target = parse_sentinel_url(url)
    assert (target.options["username"], target.options["password"]) == ("app", "s3cret")
    assert target.options["socket_timeout"] == 2.5
    assert target.sentinel_options() == {"socket_timeout": 2.5}
    shared = parse_sentinel_url(url + "&sentinel_auth=true").sentinel_options()
    assert shared == {"socket_timeout": 2.5, "username": "app", "password": "s3cret"}


def test_credentials_from_the_settings_win_over_the_url():
    target = parse_sentinel_url("redis+sentinel://app:old@s1/cache?sentinel_auth=yes")
    assert target.sentinel_options({"password": "new"})["password"] == "new"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://s1:26379", "name the monitored service"),
        ("redis+sentinel://s1:26379/", "name the monitored service"),
        ("redis+sentinel:///cache/0", "at least one sentinel"),
        ("redis+sentinel://s1:notaport/cache", "is not host:port"),
        ("redis+sentinel://s1:26379/cache/zero", "must be a number"),
        ("redis+sentinel://s1/cache?sentinel_auth=maybe", "must be true or false"),
        ("rediss+sentinel://s1/cache", "TLS through Sentinel is not supported"),
    ],
)
def test_a_bad_sentinel_url_says_what_to_fix(url, problem):
    with pytest.raises(ConfigError, match=problem):
        parse_sentinel_url(url)


def test_errors_never_show_the_password():
    with pytest.raises(ConfigError) as caught:
        parse_sentinel_url("redis+sentinel://app:s3cret@s1:bad/cache")
    assert "s3cret" not in str(caught.value)


def test_connect_builds_a_client_of_the_services_primary_without_contacting_it():
    assert is_sentinel_url("REDIS+SENTINEL://s1/cache") and not is_sentinel_url("redis://h/0")
    client = connect("redis+sentinel://127.0.0.1:1/cache/2", RedisAuth("app"))
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "cache"
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["username"] == "app"


def test_settings_take_a_sentinel_url_and_refuse_a_broken_one():
    assert redis_url_problem("redis+sentinel://s1:26379,s2:26379/cache/0") is None
    assert "name the monitored service" in (redis_url_problem("redis+sentinel://s1") or "")
    with pytest.raises(ConfigError, match=r"redis_url: .*is not host:port"):
        connect("redis+sentinel://s1:x/cache")
