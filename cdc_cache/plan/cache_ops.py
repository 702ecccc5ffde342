"""Cache operations: what the planner asks Redis to do, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from cdc_cache.core.positions import SourcePosition


class ValueFormat(StrEnum):
    """How a projected row image is stored."""

    JSON = "json"
    HASH = "hash"


@dataclass(slots=True)  # not frozen: one per change, and frozen fields cost 3x to set
class SetRow:
    """Write a projected row image to ``key`` if ``position`` is newer than the key's version.

    ``value`` is the JSON document (format json) or the flat field map (format hash).
    """

    key: str
    position: SourcePosition
    value: bytes | tuple[tuple[str, str], ...]
    format: ValueFormat
    ttl_ms: int
    tombstone_ttl_ms: int
    table: str = ""
    """The table whose change this is: stale if older than its last TRUNCATE ("": ungated)."""
    only_if_cached: bool = False
    """Write only over a cached value; an uncached key gets the version and no value."""
    expires_at_ms: int = 0
    """When the row expires (epoch ms; 0: never): the writer turns it into a shorter TTL."""


@dataclass(slots=True)  # not frozen: see SetRow
class DeleteKey:
    """Delete ``key`` if ``position`` is newer, leaving a version tombstone for its TTL."""

    key: str
    position: SourcePosition
    tombstone_ttl_ms: int
    table: str = ""
    """As :attr:`SetRow.table`."""

    def __hash__(self) -> int:  # as a frozen dataclass's: dependency ops are deduplicated
        return hash((self.key, self.position, self.tombstone_ttl_ms, self.table))


class IndexKind(StrEnum):
    """The Redis type of an index key."""

    ZSET = "zset"
    SET = "set"


@dataclass(slots=True)  # not frozen: one per change, and frozen fields cost 3x to set
class IndexMember:
    """Put ``member`` into the index ``key`` (``present``), or take it out, if newer.

    Gated per member: the version is that of (``key``, ``member``), kept in the version
    bucket of ``key``'s slot like a key's, so a late older event never moves a member back
    and a removal leaves a tombstone for ``tombstone_ttl_ms``. ``score`` is the sorted
    set's score as Redis reads it (None for a set and for a removal). An applied write
    re-arms ``key``'s TTL (``ttl_ms``). ``rebuild`` (a snapshot read) may create an index
    that was lost; ``drop`` deletes the whole index instead (what an invalidation does to
    an index: it may then be incomplete, so it is not served; see ``lua/apply.lua``).
    """

    key: str
    member: str
    score: str | None
    present: bool
    position: SourcePosition
    ttl_ms: int
    tombstone_ttl_ms: int
    kind: IndexKind = IndexKind.ZSET
    table: str = ""
    """As :attr:`SetRow.table`."""
    rebuild: bool = False
    drop: bool = False


@dataclass(frozen=True, slots=True)
class Truncated:
    """A table's TRUNCATE, recorded where every key op of the table is gated by it.

    Any change of the table older than the TRUNCATE is stale from then on, whether its key
    is cached or not. With
    ``channels`` (a regular expression over channel names, the table's channel template)
    a ``truncate`` message (``payload``) is announced once on each such channel.
    """

    channels: str | None = None
    payload: bytes = b""
    maxlen: int = 0


@dataclass(frozen=True, slots=True)
class InvalidatePrefix:
    """Delete every key under ``prefix`` (a TRUNCATE), each version-gated at ``position``.

    ``truncated``, on the first prefix of a TRUNCATE, records the table's truncate
    position before its keys are deleted (see :class:`Truncated`).
    """

    prefix: str
    table: str
    position: SourcePosition
    tombstone_ttl_ms: int
    truncated: Truncated | None = None


@dataclass(slots=True)  # not frozen: see SetRow
class Notify:
    """Announce a change on ``channel`` if the key op right before it (its host) applied.

    It rides with its host in the same script call: a change skipped as stale or duplicate
    notifies nobody, and no write lands without its notification. ``payload`` is the JSON
    document clients receive; ``maxlen`` bounds the channel's stream.
    """

    channel: str
    payload: bytes
    maxlen: int


@dataclass(frozen=True, slots=True)
class LinkKey:
    """Put ``key`` under ``tag`` for the row ``link`` (``present``), or take it out.

    Version-gated per membership (tag, key, link): it applies only if ``position`` is newer
    than the last link op of that membership, and taking out leaves a tombstone, so a late
    older event never puts back what a newer one moved or deleted. When ``present`` and the
    tag was invalidated at a newer position than ``position`` (the parent changed before
    this link was seen), ``key`` is deleted at that newer position: the catch-up, done
    whether or not the link op itself applied (see :mod:`cdc_cache.plan.dependencies`).
    """

    tag: str
    key: str
    link: str
    position: SourcePosition
    present: bool
    tombstone_ttl_ms: int


@dataclass(frozen=True, slots=True)
class InvalidateTag:
    """Delete every key under ``tag``, each version-gated at ``position``.

    Raises the tag's version to ``position`` first (what catch-ups and application fills
    compare with). Members put there by application fills leave the tag with their key;
    members kept by rows (:class:`LinkKey`) stay. ``prefixes`` are the static prefixes of
    the key templates that can be under the tag (empty for application tags): where the
    fallback for a fan-out above the limit shortens TTLs.
    """

    tag: str
    position: SourcePosition
    tombstone_ttl_ms: int
    prefixes: tuple[str, ...] = ()


KeyOp = SetRow | DeleteKey | IndexMember
DependencyOp = DeleteKey | LinkKey | InvalidateTag | InvalidatePrefix
CacheOp = SetRow | DeleteKey | IndexMember | InvalidatePrefix | Notify


def as_invalidation(op: KeyOp | Notify) -> DeleteKey | IndexMember | Notify:
    """``op`` with a set turned into the delete of its key at its position.

    What Redis gets when values may not be written (out of memory, or an eviction policy
    that could evict versions): the key is invalidated and its version still recorded.
    An index member that would be added drops its whole index instead (a member left out
    would make the index incomplete without saying so).
    """
    if isinstance(op, SetRow):
        return DeleteKey(op.key, op.position, op.tombstone_ttl_ms, op.table)
    if isinstance(op, IndexMember) and op.present:
        return replace(op, drop=True)
    return op
