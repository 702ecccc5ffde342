"""Redis under memory pressure for tests: a small ``maxmemory`` on every primary, filled
until Redis refuses writes, or kept full by a filler thread while a stream runs."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

from redis import Redis, RedisCluster
from redis import exceptions as rex

from cdc_cache.core.keys import ns
from cdc_cache.sink.connection import is_oom, primaries

FILLER = "app:filler:"


@contextmanager
def memory_limited(client: Any, policy: str, headroom: int = 1 << 20) -> Iterator[None]:
    """Every primary limited to what it uses now plus ``headroom`` bytes, under ``policy``;
    the limit is lifted afterwards (the servers are shared by the session)."""
    nodes = primaries(client)
    try:
        for node in nodes:
            used = int(node.info("memory")["used_memory"])
            node.config_set("maxmemory-policy", policy)
            node.config_set("maxmemory", str(used + headroom))
        yield
    finally:
        for node in nodes:
            node.config_set("maxmemory", "0")
            node.config_set("maxmemory-policy", "noeviction")


@contextmanager
def out_of_memory(client: Any, nodes: list[Redis] | None = None) -> Iterator[None]:
    """Every primary (or ``nodes``) over its ``maxmemory`` under ``noeviction``, whatever a
    command's size (memory filled to the brim still takes a small command once a large one
    is refused: Redis counts the request itself); the limit is lifted afterwards."""
    nodes = primaries(client) if nodes is None else nodes
    try:
        for node in nodes:
            memory = node.info("memory")  # replication buffers do not count against maxmemory
            used = int(memory["used_memory"]) - int(memory["mem_not_counted_for_evict"])
            node.config_set("maxmemory-policy", "noeviction")
            node.config_set("maxmemory", str(max(1, used - (256 << 10))))
        yield
    finally:
        for node in nodes:
            node.config_set("maxmemory", "0")


def fill_until_refused(client: Any, value_size: int = 4096, ttl_ms: int | None = None) -> int:
    """Write filler keys until every primary refused one for memory; how many were written."""
    refused: set[str] = set()
    wanted = {_name(node) for node in primaries(client)}
    value = b"x" * value_size
    for count in itertools.count():
        key = f"{FILLER}{count}"
        try:
            client.set(key, value, px=ttl_ms)
        except rex.ResponseError as exc:
            if not is_oom(exc):
                raise
            refused.add(_node_of(client, key))
            if refused >= wanted:
                return count
    raise AssertionError  # pragma: no cover - itertools.count never ends


def _name(node: Redis) -> str:
    kwargs = node.connection_pool.connection_kwargs
    return f"{kwargs['host']}:{kwargs['port']}"


def _node_of(client: Any, key: str) -> str:
    if isinstance(client, RedisCluster):
        return str(client.get_node_from_key(key).name)
    return _name(client)


class _Background:
    """A daemon thread doing ``_step`` every ``pause_s`` while the ``with`` block runs."""

    pause_s = 0.05

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.pause_s):
            self._step()

    def _step(self) -> None:
        raise NotImplementedError


class Filler(_Background):
    """Writes filler keys with a TTL (what other applications sharing the cache would),
    as fast as ``per_s``, counting refusals for memory."""

    def __init__(
        self, client: Any, *, value_size: int = 2048, ttl_ms: int = 7_200_000, per_s: float = 2000
    ) -> None:
        super().__init__()
        self.pause_s = 1 / per_s
        self._client = client
        self._value = b"f" * value_size
        self._ttl_ms = ttl_ms
        self._count = itertools.count()
        self.written = 0
        self.refused = 0

    def _step(self) -> None:
        try:
            self._client.set(f"{FILLER}{next(self._count)}", self._value, px=self._ttl_ms)
            self.written += 1
        except rex.ResponseError as exc:
            if not is_oom(exc):
                raise
            self.refused += 1


class VersionsGivenATtl(_Background):
    """Defeats the mechanism under test: gives every version bucket a TTL, as the previous
    release's version keys had, so that ``volatile-*`` policies may evict them."""

    def __init__(self, client: Any, ttl_ms: int = 30_000) -> None:
        super().__init__()
        self._client = client
        self._ttl_ms = ttl_ms

    def _step(self) -> None:
        for node in primaries(self._client):
            for name in node.scan_iter(match=ns().version_prefix + "{*", count=1000):
                node.pexpire(name, self._ttl_ms, nx=True)
