"""The connection to Redis, and what its errors mean.

A URL names one server, a Redis Cluster (``?cluster=true``) or a Sentinel-monitored primary
(``redis+sentinel://``, see :mod:`cdc_cache.sink.sentinel`); credentials stay apart from it
(:class:`RedisAuth`), so they never appear in logged URLs. Errors come out in two kinds:
:class:`~cdc_cache.core.errors.TransientError` when the same call will succeed later
(unreachable server, timeout, failover, cluster resharding, out of memory), and
:class:`~cdc_cache.core.errors.ApplyError` when it will not (a script error, a key of the
wrong type). A third kind is neither: refused credentials, a missing ACL permission or a
server certificate that does not verify raise :class:`~cdc_cache.core.errors.ConfigError`,
since waiting cannot fix a setting. A process that starts before Redis does waits for it
here (:func:`connect_when_available`), every wait logged and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aredis
from pydantic import SecretStr
from redis import Redis, RedisCluster
from redis import exceptions as rex
from redis.cluster import ClusterNode

from cdc_cache.core.errors import ApplyError, CdcCacheError, ConfigError, RedisUnavailable, chain
from cdc_cache.core.redact import redact_url
from cdc_cache.core.retry import Backoff, OnRetry, retry_forever, retry_reporter
from cdc_cache.sink.sentinel import (
    connect_async as connect_sentinel_async,
)
from cdc_cache.sink.sentinel import connect_sentinel, is_sentinel_url, parse_sentinel_url

# Waits for Redis keep the name they were always logged under.
log = logging.getLogger("cdc_cache.writer")

Client: TypeAlias = "Redis[bytes] | RedisCluster[bytes]"

CLUSTER_FLAG: Final = "cluster"
REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
# What one round of upkeep beside the flow may meet from Redis: it ends that round only.
REDIS_ERRORS: Final = (rex.RedisError, rex.RedisClusterException, CdcCacheError)
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})

# Exception types and error-reply prefixes that mean "the same call will work later".
_TRANSIENT_TYPES: Final = (
    rex.ConnectionError,  # also refused/reset, LOADING (not auth: see _misconfiguration)
    rex.TimeoutError,
    rex.ClusterError,  # CLUSTERDOWN, MASTERDOWN, redirection budget exhausted
    rex.AskError,  # MOVED and ASK left over after the client's own redirect handling
    rex.TryAgainError,
    rex.ReadOnlyError,  # wrote to a former primary during a failover
    rex.SlotNotCoveredError,
)
# The text of an OOM reply once redis-py has taken its "OOM" code off (OutOfMemoryError).
_OOM_TEXT: Final = "command not allowed when used memory"
# OOM (maxmemory reached, see is_oom) counts as transient: retry until memory is freed,
# never skip (the apply script has its own way through).
_TRANSIENT_REPLIES: Final = (
    "BUSY", "LOADING", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "MOVED", "ASK", "READONLY",
    "OOM", "NOREPLICAS",
)  # fmt: skip
# A cluster still forming or resharding, or no seed node reachable yet: redis-py raises a
# bare RedisClusterException with these texts. Other cluster errors (e.g. cluster mode
# off on the node) are configuration mistakes and stay permanent.
_TRANSIENT_CLUSTER_TEXTS: Final = ("All slots are not covered", "Redis Cluster cannot be connected")


# A server certificate that fails verification is a setting to fix, like a wrong password.
_TLS_VERIFY_TEXTS: Final = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed")


@dataclass(frozen=True, slots=True)
class RedisAuth:
    """ACL user and password kept apart from the URL, so they never appear in logged URLs."""

    username: str | None = None
    password: SecretStr | None = None

    def kwargs(self) -> dict[str, str]:
        """redis-py connection arguments for the credentials that are set."""
        given = {
            "username": self.username,
            "password": self.password.get_secret_value() if self.password else None,
        }
        return {name: value for name, value in given.items() if value is not None}


def connect(url: str, auth: RedisAuth | None = None, **kwargs: Any) -> Client:
    """Build a client from a URL; ``?cluster=true`` makes it a Redis Cluster client.

    ``redis://HOST:PORT/0`` is one server; ``redis://HOST:PORT/0?cluster=true`` names any
    seed node of a cluster (``rediss://`` for TLS works for both, with redis-py's TLS query
    options such as ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``). Replies stay bytes.
    ``auth`` overrides credentials in the URL. Other query parameters and ``kwargs`` go to
    redis-py unchanged. ``redis+sentinel://`` URLs name a Sentinel-monitored primary
    (see :mod:`cdc_cache.sink.sentinel`).
    """
    problem = redis_url_problem(url)
    if problem is not None:
        msg = f"redis_url: {problem}"
        raise ConfigError(msg)
    if is_sentinel_url(url):
        kwargs["decode_responses"] = False
        kwargs |= (auth or RedisAuth()).kwargs()
        return connect_sentinel(url, **kwargs)
    cluster, plain = split_cluster_flag(url)
    parts = urlsplit(url)
    kwargs["decode_responses"] = False
    kwargs |= (auth or RedisAuth()).kwargs()
    with translated_errors(f"connecting to {parts.hostname}:{parts.port}"):
        if cluster:
            return RedisCluster.from_url(plain, **kwargs)
        return Redis.from_url(plain, **kwargs)


def split_cluster_flag(url: str) -> tuple[bool, str]:
    """Whether ``url`` names a Redis Cluster (``?cluster=true``), and the URL without it."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    flags = [value.lower() for name, value in query if name == CLUSTER_FLAG]
    rest = urlencode([(name, value) for name, value in query if name != CLUSTER_FLAG])
    return bool(flags and flags[-1] in _TRUE), urlunsplit(parts._replace(query=rest))


def connect_async(url: str) -> aredis.Redis[bytes]:
    """An asyncio client (replies as bytes): one server, a Cluster or a Sentinel's primary.

    The Cluster client takes the same commands; its type declares them on Redis only.
    """
    cluster, plain = split_cluster_flag(url)
    if cluster and not is_sentinel_url(url):
        return cast(
            "aredis.Redis[bytes]", aredis.RedisCluster.from_url(plain, decode_responses=False)
        )
    return connect_sentinel_async(url)


def redis_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a Redis URL (scheme, cluster flag), or None.

    Checked with the settings, so a URL redis-py would refuse stops startup at once.
    """
    if is_sentinel_url(url):
        try:
            parse_sentinel_url(url)
        except ConfigError as exc:
            return str(exc)
        return None
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError as exc:
        return f"{redact_url(url)} is not a URL ({exc})"
    if parts.scheme not in REDIS_SCHEMES:
        return (
            f"{redact_url(url)} has the scheme {parts.scheme or '(none)'!r}; use "
            "redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS), unix:///path/redis.sock or "
            "redis+sentinel://HOST:PORT/SERVICE/DB (Sentinel)"
        )
    flags = [value.lower() for name, value in query if name == CLUSTER_FLAG]
    if any(flag not in _TRUE | _FALSE for flag in flags):
        return f"{redact_url(url)}: cluster= must be true or false"
    return None


def ping(client: Client, where: str) -> Client:
    """``client`` once it answered PING: the connection, TLS and credentials all work.

    ``where`` names the server in errors (a redacted URL).
    """
    with translated_errors(f"PING at {where}"):
        client.ping()
    return client


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or an error it was raised from) says a retry will succeed."""
    if misconfiguration(exc) is not None:
        return False
    return any(
        isinstance(seen, _TRANSIENT_TYPES)
        or (isinstance(seen, rex.ResponseError) and str(seen).startswith(_TRANSIENT_REPLIES))
        or is_oom(seen)
        or (
            isinstance(seen, rex.RedisClusterException)
            and any(text in str(seen) for text in _TRANSIENT_CLUSTER_TEXTS)
        )
        for seen in chain(exc)
    )


def misconfiguration(exc: BaseException) -> str | None:
    """What to fix when ``exc`` (or its cause) is a setting problem a retry cannot cure.

    The text names the settings and carries the server's reply, which never contains the
    password; None for every other error.
    """
    for seen in chain(exc):
        if isinstance(seen, rex.AuthenticationError | rex.AuthenticationWrongNumberOfArgsError):
            return (
                f"{seen}; set redis_username and redis_password (or redis_password_file, "
                "or user:password in redis_url) to an ACL user of this server"
            )
        if isinstance(seen, rex.NoPermissionError):
            return (
                f"{seen}; the ACL user (redis_username) needs the commands and keys cdc-cache "
                "uses (see docs/security.md)"
            )
        if any(text in str(seen) for text in _TLS_VERIFY_TEXTS):
            return (
                f"{seen}; the server's TLS certificate does not verify: set ssl_ca_certs in "
                "redis_url (rediss://HOST:PORT/0?ssl_ca_certs=/path/ca.pem)"
            )
    return None


@contextmanager
def translated_errors(what: str) -> Iterator[None]:
    """Turn redis-py errors into TransientError, ApplyError or ConfigError (see above)."""
    try:
        yield
    except (rex.RedisError, rex.RedisClusterException) as exc:
        problem = misconfiguration(exc)
        if problem is not None:
            msg = f"Redis refused {what}: {problem}"
            raise ConfigError(msg) from None
        if is_transient(exc):
            msg = f"Redis unavailable while {what}: {exc}"
            raise RedisUnavailable(msg) from exc
        msg = f"Redis refused {what}: {exc}"
        raise ApplyError(msg) from exc


def is_oom(reply: object) -> bool:
    """True when Redis refused a command because ``maxmemory`` is reached.

    redis-py takes the ``OOM`` code off the reply, and puts the command in front of it when
    a pipeline raises it.
    """
    text = str(reply)
    return isinstance(reply, rex.ResponseError) and (text.startswith("OOM") or _OOM_TEXT in text)


def node_name(node: Redis[bytes]) -> str:
    """``host:port`` (or the socket path) of a single Redis server's client."""
    kwargs = node.connection_pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def primaries(client: Client) -> list[Redis[bytes]]:
    """One client per primary: the server itself, or each cluster primary (for SCAN)."""
    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(n) for n in cluster_primaries(client)]
    return [client]


def cluster_primaries(client: RedisCluster[bytes]) -> list[ClusterNode]:
    """The cluster's primaries, from a fresh slot map.

    The client's own map learns of a moved slot or a promoted replica only when one of its
    keyed commands meets it, so a primary it never met would be left unscanned (its keys
    never deleted or shortened), and one that lost its slots waited for.
    """
    client.nodes_manager.initialize()
    return list(client.get_primaries())


def redis_retry_reporter(action: str) -> OnRetry:
    """An ``on_retry`` callback: every wait for Redis is logged and counted."""
    return retry_reporter("redis", "redis unavailable, retrying", log, action=action)


def connect_when_available(
    url: str,
    backoff: Backoff,
    sleep: Callable[[float], None] = time.sleep,
    auth: RedisAuth | None = None,
) -> Client:
    """A Redis client that answered PING; waits (logged, counted) while Redis is unreachable.

    A worker that starts before Redis does, or while a cluster is still forming, waits here
    instead of exiting. Refused credentials or an unverifiable certificate raise
    ConfigError at once: no wait can fix them.
    """
    return retry_forever(
        lambda: ping(connect(url, auth), redact_url(url)),
        backoff=backoff,
        on_retry=redis_retry_reporter("connecting"),
        sleep=sleep,
    )
