"""Redis Sentinel URLs: the primary of a monitored service, found through its sentinels.

``redis+sentinel://[user:password@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB][?options]``
names one or more sentinels and the service they monitor. The client asks the sentinels
for the service's primary at every (re)connection, so after a failover it follows the
promoted replica by itself; a write to a former primary that is now a replica fails
(READONLY) and is retried on the new one. The URL's credentials are the Redis servers';
the sentinels are reached without credentials unless the query says ``sentinel_auth=true``
(then with the same ones). Other query options (``socket_timeout``, ...) are redis-py's
connection options, as in a ``redis://`` URL.

Pure parsing here is kept apart from building the clients, so it is tested without servers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlencode

import redis.asyncio as aredis
from redis import Redis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.connection import parse_url
from redis.sentinel import Sentinel

from cdc_cache.core.errors import ConfigError
from cdc_cache.core.redact import redact_url

SCHEME: Final = "redis+sentinel"
TLS_SCHEME: Final = "rediss+sentinel"
AUTH_FLAG: Final = "sentinel_auth"
DEFAULT_PORT: Final = 26379
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})


def is_sentinel_url(url: str) -> bool:
    """True for a ``redis+sentinel://`` URL (or its TLS spelling, which is refused later)."""
    return url.lower().startswith((f"{SCHEME}://", f"{TLS_SCHEME}://"))


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """What a sentinel URL names: the sentinels, the service, and the connection options."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    options: dict[str, Any] = field(default_factory=dict)
    sentinel_auth: bool = False

    def sentinel_options(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Options for the connections to the sentinels: timeouts, and credentials if asked.

        ``overrides`` are the Redis connection options given apart from the URL (e.g. the
        ACL credentials from the settings), which win over the URL's.
        """
        options = {**self.options, **(overrides or {})}
        names: tuple[str, ...] = ("socket_timeout", "socket_connect_timeout", "socket_keepalive")
        if self.sentinel_auth:
            names += ("username", "password")
        return {name: options[name] for name in names if name in options}


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Split a sentinel URL into its sentinels, service and redis-py connection options.

    Raises ConfigError naming what is wrong: no sentinel, no service, a bad port or db.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in (SCHEME, TLS_SCHEME):
        msg = f"Redis URL {_shown(url)}: a sentinel URL starts with {SCHEME}://"
        raise ConfigError(msg)
    if scheme.lower() == TLS_SCHEME:
        msg = (
            f"Redis URL {_shown(url)}: TLS through Sentinel is not supported yet; "
            f"use {SCHEME}:// on a trusted network, or rediss:// to the primary"
        )
        raise ConfigError(msg)
    location, _, query = rest.partition("?")
    hosts_part, _, path = location.partition("/")
    userinfo, at, hosts = hosts_part.rpartition("@")
    sentinels = tuple(_host_port(item, url) for item in hosts.split(",") if item)
    if not sentinels:
        msg = f"Redis URL {_shown(url)}: name at least one sentinel (host:port)"
        raise ConfigError(msg)
    service, _, db = path.strip("/").partition("/")
    if not service:
        msg = f"Redis URL {_shown(url)}: name the monitored service: {SCHEME}://HOST:PORT/SERVICE/0"
        raise ConfigError(msg)
    if db and not db.isdigit():
        msg = f"Redis URL {_shown(url)}: the database after the service must be a number"
        raise ConfigError(msg)
    pairs = parse_qsl(query, keep_blank_values=True)
    flags = [value.lower() for name, value in pairs if name == AUTH_FLAG]
    if any(flag not in _TRUE | _FALSE for flag in flags):
        msg = f"Redis URL {_shown(url)}: {AUTH_FLAG}= must be true or false"
        raise ConfigError(msg)
    rest_query = urlencode([(name, value) for name, value in pairs if name != AUTH_FLAG])
    credentials = f"{userinfo}@" if at else ""
    try:
        options = parse_url(f"redis://{credentials}placeholder/{db or '0'}?{rest_query}")
    except ValueError as exc:
        msg = f"Redis URL {_shown(url)}: {exc}"
        raise ConfigError(msg) from None
    options.pop("host", None)
    return SentinelTarget(sentinels, unquote(service), options, bool(flags) and flags[-1] in _TRUE)


def connect_sentinel(url: str, **kwargs: Any) -> Redis[bytes]:
    """A client of the service's current primary; ``kwargs`` override the URL's options."""
    target = parse_sentinel_url(url)
    sentinel = Sentinel(
        target.sentinels,
        sentinel_kwargs=target.sentinel_options(kwargs),
        **{**target.options, **kwargs},
    )
    client: Redis[bytes] = sentinel.master_for(target.service)
    return client


def connect_async(url: str) -> aredis.Redis[bytes]:
    """An asyncio client (replies as bytes) for a ``redis://`` or a sentinel URL."""
    if not is_sentinel_url(url):
        return aredis.Redis.from_url(url, decode_responses=False)
    target = parse_sentinel_url(url)
    options = {**target.options, "decode_responses": False}
    sentinel = AsyncSentinel(
        list(target.sentinels), sentinel_kwargs=target.sentinel_options(), **options
    )
    client: aredis.Redis[bytes] = sentinel.master_for(target.service)
    return client


def _host_port(item: str, url: str) -> tuple[str, int]:
    host, colon, port = item.strip().rpartition(":")
    if not colon:
        return item.strip(), DEFAULT_PORT
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        msg = f"Redis URL {_shown(url)}: sentinel {item!r} is not host:port"
        raise ConfigError(msg)
    return host.strip("[]"), int(port)


def _shown(url: str) -> str:
    return repr(redact_url(url))
