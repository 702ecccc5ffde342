"""Cache key building blocks: escaping row values and colocating version keys.

Row values are escaped so that no value can forge another key or a glob pattern. Version
buckets (see ``cdc_cache.sink.versions``) and lease keys (``cdc_cache.aside.cache_aside``)
must live in the cache key's Redis Cluster hash slot so that one Lua call stays single-slot;
they carry a short hash tag chosen to map to that slot, which works for every key, including
keys with braces or hash tags of their own.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import re
import string
from collections.abc import Iterator
from functools import cache
from typing import Final

SLOTS: Final = 16384
VERSION_PREFIX: Final = "cdc:vs:"  # version buckets: small hashes, no TTL
LEGACY_VERSION_PREFIX: Final = "cdc:v:"  # one key per cache key (previous release)
VERSION_LAYOUT_KEY: Final = "cdc:vs:layout"  # hash: the version store's format
BUCKETS_PER_SLOT: Final = 1
VERSION_FIELD_BYTES: Final = 8
LEASE_PREFIX: Final = "cdc:l:"
MODE_KEY: Final = "cdc:mode"  # hash: the effective mode applications read
MODE_FLAG_KEY: Final = "cdc:mode:flag"  # auto | cdc | ttl, set by operators
WATCHDOG_LOCK_KEY: Final = "cdc:watchdog:lock"  # the watchdog instance that may act
DLQ_OUTCOMES_KEY: Final = "cdc:dlq:replays"  # hash: DLQ entry id -> last replay outcome
STREAM_PREFIX: Final = "cdc:n:"  # one Redis stream of notifications per channel
CHANNELS_KEY: Final = "cdc:channels"  # set: every channel that was ever notified
OUTBOX_PREFIX: Final = "cdc:ob:"  # Cluster: one stream of notifications per slot
RELAY_PREFIX: Final = "cdc:rp:"  # Cluster: per channel, the outbox entries relayed to it
TAG_PREFIX: Final = "cdc:t:"  # one hash per cache tag: its version and its members
INTERNAL_PREFIXES: Final = (VERSION_PREFIX, LEGACY_VERSION_PREFIX, LEASE_PREFIX, TAG_PREFIX)
MAX_VALUE_CHARS: Final = 96
NULL_TOKEN: Final = "~"

_SAFE: Final = frozenset(string.ascii_letters + string.digits + "-_.@")
_ALL_SAFE: Final = re.compile(r"[A-Za-z0-9_.@-]*")
ESCAPED_VALUE: Final = r"[A-Za-z0-9_.@%~-]*"  # a regex matching whatever escape_value returns


def escape_value(value: object) -> str:
    """Render a row value for use inside a key, injectively and free of key syntax.

    Characters outside ``[A-Za-z0-9._@-]`` become ``%XX`` (UTF-8 bytes), so ``:``,
    braces, glob characters, whitespace and control characters never appear raw. ``None``
    becomes ``~`` (which no escaped string contains). Escaped values longer than
    ``MAX_VALUE_CHARS`` keep a prefix and a digest of the whole, which keeps keys short.
    """
    if value is None:
        return NULL_TOKEN
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, bytes):
        text = value.hex()
    else:
        text = str(value)
    if _ALL_SAFE.fullmatch(text):  # the common case (ids, plain words): nothing to escape
        out = text
    else:
        out = "".join(
            ch if ch in _SAFE else "".join(f"%{b:02X}" for b in ch.encode()) for ch in text
        )
    if len(out) > MAX_VALUE_CHARS:
        digest = hashlib.blake2b(out.encode(), digest_size=12).hexdigest()
        out = f"{out[: MAX_VALUE_CHARS - 26]}~{digest}"
    return out


def key_slot(key: str | bytes) -> int:
    """Redis Cluster hash slot of ``key`` (CRC16/XMODEM of the hash tag or whole key)."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return binascii.crc_hqx(raw, 0) % SLOTS


@cache
def _slot_tags() -> tuple[str, ...]:
    """For each slot, the shortest alphanumeric tag that hashes to it (built once, ~40 ms)."""
    tags: list[str | None] = [None] * SLOTS
    missing = SLOTS
    alphabet = string.ascii_letters + string.digits
    for length in itertools.count(1):
        for combo in itertools.product(alphabet, repeat=length):
            tag = "".join(combo)
            slot = binascii.crc_hqx(tag.encode(), 0) % SLOTS
            if tags[slot] is None:
                tags[slot] = tag
                missing -= 1
                if missing == 0:
                    return tuple(t for t in tags if t is not None)
    raise AssertionError  # pragma: no cover - itertools.count never ends


def slot_tag(key: str) -> str:
    """A hash tag that places another key in the same slot as ``key``."""
    return _slot_tags()[key_slot(key)]


def tag_for_slot(slot: int) -> str:
    """A hash tag that lands in ``slot`` (it also hashes there as a whole key)."""
    return _slot_tags()[slot]


def version_field(key: str) -> bytes:
    """The field ``key``'s version is stored under in its bucket: a 64-bit digest."""
    return hashlib.blake2b(key.encode(), digest_size=VERSION_FIELD_BYTES).digest()


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


def version_key(key: str, buckets: int = BUCKETS_PER_SLOT) -> str:
    """The version bucket (a hash) holding the version of ``key``, in ``key``'s slot."""
    index = int.from_bytes(version_field(key)[:4], "big") % buckets if buckets > 1 else 0
    return version_bucket(slot_tag(key), index)


def version_bucket(tag: str, index: int) -> str:
    """Bucket ``index`` of the slot ``tag`` hashes to."""
    return f"{VERSION_PREFIX}{{{tag}}}:{index}"


def all_version_buckets(buckets: int = BUCKETS_PER_SLOT) -> Iterator[str]:
    """Every version bucket there can be: ``buckets`` per slot."""
    for tag in _slot_tags():
        for index in range(buckets):
            yield version_bucket(tag, index)


def legacy_version_key(key: str) -> str:
    """Where the previous release kept the version of ``key`` (a string key with a TTL)."""
    return f"{LEGACY_VERSION_PREFIX}{{{slot_tag(key)}}}:{key}"


def legacy_cache_key(name: str) -> str | None:
    """The cache key a previous release's version key was kept for; None if not one."""
    _, sep, key = name.partition("}:")  # slot tags are alphanumeric: the first "}:" ends it
    return key if sep and legacy_version_key(key) == name else None


def truncate_field(table: str) -> bytes:
    """The field of every version bucket holding ``table``'s last TRUNCATE position.

    Longer than a version field (an 8-byte digest), so it names no cache key.
    """
    return b"truncated:" + table.encode()


def stream_key(channel: str) -> str:
    """The Redis stream holding a notification channel's messages."""
    return STREAM_PREFIX + channel


def tag_key(tag: str) -> str:
    """The hash of a cache tag: its version and its members (any slot: it is used alone)."""
    return TAG_PREFIX + tag


def lease_key(key: str) -> str:
    """The key holding the token of the application fill in progress for ``key``, if any."""
    return f"{LEASE_PREFIX}{{{slot_tag(key)}}}:{key}"


def leased_key(lease: str) -> str | None:
    """The cache key a lease key was made for (inverse of ``lease_key``); None if not one."""
    _, sep, key = lease.partition("}:")  # slot tags are alphanumeric: the first "}:" ends it
    return key if sep and lease_key(key) == lease else None


def outbox_key(key: str) -> str:
    """The outbox (a stream) of ``key``'s slot: notifications of its changes on a Cluster.

    One per slot, named by the slot's tag, so a sweep finds every outbox without SCAN.
    """
    return outbox_for_slot(key_slot(key))


def outbox_for_slot(slot: int) -> str:
    """The outbox of ``slot``."""
    return f"{OUTBOX_PREFIX}{{{tag_for_slot(slot)}}}"


def relay_progress_key(channel: str) -> str:
    """The hash, in the slot of ``channel``'s stream, of the last outbox entry relayed there.

    One field per outbox (by name) holding the id of its last entry appended to the stream.
    """
    return f"{RELAY_PREFIX}{{{slot_tag(stream_key(channel))}}}:{channel}"
