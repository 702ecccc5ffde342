"""Cache key building blocks, shared with applications, and this process's namespace.

The conventions (escaping row values, hash slots, :class:`Names` of every key cdc-cache
writes) live in the client distribution, :mod:`cdc_cache_client.keys`, so the worker and
applications name keys one way; they are re-exported here. A process serves one namespace,
chosen at startup (:func:`use_namespace`, from the ``namespace`` setting); :func:`ns` is
the process's.
"""

from __future__ import annotations

from cdc_cache_client.keys import (
    BUCKETS_PER_SLOT,
    DEFAULT_NAMESPACE,
    ESCAPED_VALUE,
    MAX_VALUE_CHARS,
    NAMESPACE_PATTERN,
    NULL_TOKEN,
    SLOTS,
    VERSION_FIELD_BYTES,
    Names,
    NamespaceError,
    escape_value,
    key_slot,
    slot_tag,
    tag_for_slot,
    truncate_field,
    valid_namespace,
    version_field,
)

from cdc_cache.core.metrics import announce_namespace

__all__ = [
    "BUCKETS_PER_SLOT",
    "DEFAULT_NAMESPACE",
    "ESCAPED_VALUE",
    "MAX_VALUE_CHARS",
    "NAMESPACE_PATTERN",
    "NULL_TOKEN",
    "SLOTS",
    "VERSION_FIELD_BYTES",
    "Names",
    "NamespaceError",
    "escape_value",
    "index_field",
    "key_slot",
    "member_field",
    "ns",
    "slot_tag",
    "tag_for_slot",
    "truncate_field",
    "use_namespace",
    "valid_namespace",
    "version_field",
]


_process_names = Names()


def use_namespace(namespace: str) -> Names:
    """Make ``namespace`` this process's, once at startup, before any key is named."""
    global _process_names  # noqa: PLW0603 (one namespace per process, set at its start)
    _process_names = Names(namespace)
    announce_namespace(_process_names.namespace)
    return _process_names


def ns() -> Names:
    """The key names of this process (``cdc``, today's, unless :func:`use_namespace` chose)."""
    return _process_names


def member_field(key: str, member: str) -> bytes:
    """The field of the version of ``member`` of the index ``key``, in ``key``'s bucket.

    A digest like a key's (no cache key renders with a NUL, so none shares it).
    """
    return version_field(f"{key}\0{member}")


def index_field(key: str) -> bytes:
    """The field, in ``key``'s bucket, recording how the worker left the index ``key``.

    Whether it left it holding members or emptied it, and the newest member version
    written to it: how the apply script tells an index that vanished (expired, evicted,
    deleted) from a new one (see ``lua/apply.lua``).
    """
    return version_field(f"\0{key}")
