"""cdc-cache's application side: cache-aside reads with leases, the cache mode, cache tags.

Applications fill the cache on a miss; :class:`CacheAside` keeps those fills from writing
back a row a cdc-cache worker has just invalidated, caps fills while the worker says the
cache is in ``ttl`` mode, and puts keys under cache tags the worker invalidates. Key names
(:class:`Names`, under the worker's ``namespace``) are the worker's own: it imports them
from here. Python 3.9 and later; depends on redis-py only.
"""

from __future__ import annotations

from importlib import metadata

from cdc_cache_client.cache_aside import NEGATIVE, CacheAside, CacheMode, FillCounts
from cdc_cache_client.keys import DEFAULT_NAMESPACE, Names, NamespaceError

__version__ = metadata.version("cdc-cache-client")
__all__ = [
    "DEFAULT_NAMESPACE",
    "NEGATIVE",
    "CacheAside",
    "CacheMode",
    "FillCounts",
    "Names",
    "NamespaceError",
    "__version__",
]
