"""Cache-aside reads for applications with the rules at hand: rows filled as the worker writes.

The lease protocol, the mode it honours and cache tags are the client distribution's
(:mod:`cdc_cache_client.cache_aside`, Python 3.9+, redis-py alone), so applications and the
worker share one implementation. :class:`CacheAside` adds :meth:`CacheAside.get_row`,
which renders a rule's key and serializes the loaded row exactly as the worker does
(:class:`~cdc_cache.aside.fill.RowCodec`): it needs the rules and the planner, which the
client distribution does not carry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cdc_cache_client.cache_aside import NEGATIVE, CacheMode, FillCounts
from cdc_cache_client.cache_aside import CacheAside as ClientCacheAside

from cdc_cache.aside.fill import RowCodec

__all__ = ["NEGATIVE", "CacheAside", "CacheMode", "FillCounts"]


class CacheAside(ClientCacheAside):
    """:class:`cdc_cache_client.CacheAside` with fills of rule keys (:meth:`get_row`)."""

    def get_row(
        self,
        codec: RowCodec,
        key_values: Mapping[str, Any],
        loader: Callable[[], Mapping[str, Any] | None],
        *,
        ttl_ms: int | None = None,
    ) -> bytes | None:
        """:meth:`get` of the row ``key_values`` names, filled as the worker writes it.

        ``key_values`` holds the key's columns (as the application has them); ``loader``
        returns the row as the driver does (column name to value), or None.
        """
        key = codec.key(key_values)

        def load() -> bytes | None:
            row = loader()
            return None if row is None else codec.value(row)

        return self.get(key, load, ttl_ms=ttl_ms)
