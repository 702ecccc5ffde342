"""Cache key building blocks: escaping row values and colocating version keys.

The key-name conventions the worker (``cdc_cache``) and applications share, in one place.

Row values are escaped so that no value can forge another key or a glob pattern. Version
buckets (the worker's ``cdc_cache.sink.versions``) and lease keys (:mod:`.cache_aside`)
must live in the cache key's Redis Cluster hash slot so that one Lua call stays single-slot;
they carry a short hash tag chosen to map to that slot, which works for every key, including
keys with braces or hash tags of their own.

Every key cdc-cache itself writes (versions, leases, the mode, tags, streams, the DLQ's
replay outcomes, lineage, ...) lives under a namespace, ``<namespace>:``, so pipelines
sharing one Redis keep apart: :class:`Names` builds each name.

Runs on Python 3.9 and later (the client distribution's floor). Kept in one module: every
name cdc-cache gives a key, and the slot arithmetic they rest on, read side by side.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Final

SLOTS: Final = 16384
BUCKETS_PER_SLOT: Final = 1
VERSION_FIELD_BYTES: Final = 8
DEFAULT_NAMESPACE: Final = "cdc"  # today's names: a deployment that sets none keeps its keys
NAMESPACE_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}"
MAX_VALUE_CHARS: Final = 96
NULL_TOKEN: Final = "~"
# Keys whose gate keys a Names keeps: a hot key's change costs a lookup, not three
# digests and three strings (~2.7 us); ~400 bytes each, forgotten all at once when full.
GATE_MEMO_KEYS: Final = 8192

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


def truncate_field(table: str) -> bytes:
    """The field of every version bucket holding ``table``'s last TRUNCATE position.

    Longer than a version field (an 8-byte digest), so it names no cache key.
    """
    return b"truncated:" + table.encode()


def _beside(prefix: str, key: str) -> str:
    """A key under ``prefix`` kept next to cache key ``key``: in its slot, naming it."""
    return _beside_tag(prefix, slot_tag(key), key)


def _beside_tag(prefix: str, tag: str, key: str) -> str:
    """:func:`_beside` with ``key``'s slot tag already known."""
    return f"{prefix}{{{tag}}}:{key}"


def _bucket_of(field: bytes, buckets: int) -> int:
    """Which of its slot's ``buckets`` holds the version stored under ``field``."""
    return int.from_bytes(field[:4], "big") % buckets if buckets > 1 else 0


def _beside_whom(prefix: str, name: str) -> str | None:
    """The cache key ``name`` was made next to by :func:`_beside` (None: not such a key)."""
    _, sep, key = name.partition("}:")  # slot tags are alphanumeric: the first "}:" ends it
    return key if sep and _beside(prefix, key) == name else None


class NamespaceError(ValueError):
    """A namespace that cannot prefix key names (empty, too long, or with key syntax)."""


def valid_namespace(namespace: str) -> str:
    """``namespace`` if it can prefix every key name cdc-cache writes, else NamespaceError.

    Letters, digits, ``_ . -``, at most 32 characters: no ``:`` (the separator), no braces
    (hash tags decide Redis Cluster slots), no glob characters (names are scanned for).
    """
    if not re.fullmatch(NAMESPACE_PATTERN, namespace):
        msg = (
            f"namespace {namespace!r} must be 1 to 32 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (e.g. cdc, orders-eu)"
        )
        raise NamespaceError(msg)
    return namespace


@dataclass(frozen=True)
class Names:
    """The name of every key cdc-cache writes under one namespace (``cdc``: today's names).

    Keys that must share a cache key's slot (versions, leases, a slot's outbox) carry a
    slot tag after the namespace, never the namespace as their hash tag.
    """

    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        valid_namespace(self.namespace)

    def _name(self, rest: str) -> str:
        return f"{self.namespace}:{rest}"

    @property
    def mode(self) -> str:
        """Hash: the effective mode applications read."""
        return self._name("mode")

    @property
    def mode_flag(self) -> str:
        """Auto | cdc | ttl, set by operators."""
        return self._name("mode:flag")

    @property
    def heartbeats(self) -> str:
        """Hash: connector -> its last heartbeat, as followers saw it."""
        return self._name("mode:heartbeats")

    def lag_report(self, process: int | str) -> str:
        """A follower process's lag summary (expiring)."""
        return self._name(f"mode:lag:{process}")

    @property
    def watchdog_lock(self) -> str:
        """The watchdog instance that may act."""
        return self._name("watchdog:lock")

    @property
    def dlq_outcomes(self) -> str:
        """Hash: DLQ entry id -> last replay outcome."""
        return self._name("dlq:replays")

    @property
    def channels(self) -> str:
        """Set: every notification channel that was ever notified."""
        return self._name("channels")

    @property
    def topics(self) -> str:
        """The topics the worker reads (a JSON list), published for every process."""
        return self._name("topics")

    @property
    def continuity(self) -> str:
        """Hash: source discontinuities found, by topic/partition."""
        return self._name("continuity")

    @property
    def continuity_decisions(self) -> str:
        """Hash: operators' decisions on them."""
        return self._name("continuity:decisions")

    def lineage_source(self, source: str) -> str:
        """Hash: one connector's lineage (its epochs), in the slot of its own tag."""
        return self._name(f"lineage:{{{escape_value(source)}}}")

    @property
    def lineage_partitions(self) -> str:
        """Hash: ``<topic>/<partition>`` -> the partition's lineage state."""
        return self._name("lineage:partitions")

    @property
    def version_prefix(self) -> str:
        """Version buckets: small hashes, no TTL."""
        return self._name("vs:")

    @property
    def legacy_version_prefix(self) -> str:
        """One version key per cache key (previous release)."""
        return self._name("v:")

    @property
    def version_layout(self) -> str:
        """Hash: the version store's format."""
        return self._name("vs:layout")

    @property
    def lease_prefix(self) -> str:
        """Leases of application fills in progress."""
        return self._name("l:")

    @property
    def tag_prefix(self) -> str:
        """One hash per cache tag: its version and its members."""
        return self._name("t:")

    @property
    def stream_prefix(self) -> str:
        """One Redis stream of notifications per channel."""
        return self._name("n:")

    @property
    def internal_prefixes(self) -> tuple[str, ...]:
        """Prefixes of the keys kept next to cache keys, which no rule may write under."""
        return (self.version_prefix, self.legacy_version_prefix, self.lease_prefix, self.tag_prefix)

    def replica_marker(self, tag: str) -> str:
        """The small key written before WAIT, in the slot of ``tag``."""
        return self._name(f"w:{{{tag}}}")

    def version_key(self, key: str, buckets: int = BUCKETS_PER_SLOT) -> str:
        """The version bucket (a hash) holding the version of ``key``, in ``key``'s slot."""
        return self.version_bucket(slot_tag(key), _bucket_of(version_field(key), buckets))

    def gate_keys(self, key: str) -> tuple[str, str, bytes]:
        """``key``'s :meth:`version_key`, :meth:`lease_key` and :func:`version_field`.

        Hashes ``key`` once for all three: the worker needs them for every key op, and
        keeps them for the last :data:`GATE_MEMO_KEYS` keys, since changes come back to
        the same hot rows.
        """
        memo = self._gate_memo
        known = memo.get(key)
        if known is not None:
            return known
        field = version_field(key)
        tag = slot_tag(key)
        bucket = self.version_bucket(tag, _bucket_of(field, BUCKETS_PER_SLOT))
        gate = (bucket, _beside_tag(self.lease_prefix, tag, key), field)
        if len(memo) >= GATE_MEMO_KEYS:
            memo.clear()
        memo[key] = gate
        return gate

    @cached_property
    def _gate_memo(self) -> dict[str, tuple[str, str, bytes]]:
        # In the instance's __dict__, outside the fields: equality and hashing ignore it.
        return {}

    def version_bucket(self, tag: str, index: int) -> str:
        """Bucket ``index`` of the slot ``tag`` hashes to."""
        return f"{self.version_prefix}{{{tag}}}:{index}"

    def all_version_buckets(self, buckets: int = BUCKETS_PER_SLOT) -> Iterator[str]:
        """Every version bucket there can be: ``buckets`` per slot."""
        for tag in _slot_tags():
            for index in range(buckets):
                yield self.version_bucket(tag, index)

    def legacy_version_key(self, key: str) -> str:
        """Where the previous release kept the version of ``key`` (a string key with a TTL)."""
        return _beside(self.legacy_version_prefix, key)

    def legacy_cache_key(self, name: str) -> str | None:
        """The cache key a previous release's version key was kept for; None if not one."""
        return _beside_whom(self.legacy_version_prefix, name)

    def stream_key(self, channel: str) -> str:
        """The Redis stream holding a notification channel's messages."""
        return self.stream_prefix + channel

    def tag_key(self, tag: str) -> str:
        """The hash of a cache tag: its version and its members (any slot: used alone)."""
        return self.tag_prefix + tag

    def lease_key(self, key: str) -> str:
        """The key holding the token of the application fill in progress for ``key``."""
        return _beside(self.lease_prefix, key)

    def leased_key(self, lease: str) -> str | None:
        """The cache key a lease key was made for (inverse of ``lease_key``); None if not one."""
        return _beside_whom(self.lease_prefix, lease)

    def outbox_key(self, key: str) -> str:
        """The outbox (a stream) of ``key``'s slot: notifications of its changes on a Cluster.

        One per slot, named by the slot's tag, so a sweep finds every outbox without SCAN.
        """
        return self.outbox_for_slot(key_slot(key))

    def outbox_for_slot(self, slot: int) -> str:
        """The outbox of ``slot``."""
        return self._name(f"ob:{{{tag_for_slot(slot)}}}")

    def relay_progress_key(self, channel: str) -> str:
        """The hash, in the slot of ``channel``'s stream, of the last outbox entry relayed there.

        One field per outbox (by name) holding the id of its last entry appended to the stream.
        """
        return self._name(f"rp:{{{slot_tag(self.stream_key(channel))}}}:{channel}")
