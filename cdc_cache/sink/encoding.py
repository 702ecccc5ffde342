"""The apply script's arguments and replies, without I/O.

Each key op becomes a (key, version bucket, lease key) triple of KEYS and a few ARGV
(:func:`script_op`); what many ops share (their table, their TTLs) is said once, in a
marker that holds for the ops after it in the same call. A notification rides in the call
of the key op before it (on Redis Cluster into that key's slot outbox, see
``cdc_cache.sink.outbox``). One slot's ops are cut into calls within limits
(:func:`calls`), since a script blocks the server while it runs, and each op's reply code
read back as an :class:`Outcome` (:func:`outcome_of`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cdc_cache.core.errors import ApplyError
from cdc_cache.core.keys import Names, index_field, member_field, ns
from cdc_cache.plan.cache_ops import (
    DeleteKey,
    IndexKind,
    IndexMember,
    KeyOp,
    Notify,
    SetRow,
    ValueFormat,
)
from cdc_cache.sink.versions import encode_version

Arg = str | bytes | int

# The default bounds of one script call (see RedisApplier).
MAX_OPS_PER_CALL: Final = 1000
MAX_ARGS_PER_CALL: Final = 50_000


class Outcome(StrEnum):
    """What happened to one key op: written, or skipped because its position was not newer.

    ``INVALIDATED``: the op's key was deleted instead of written, because a set found a
    value without a known version, or Redis was out of memory, or the eviction policy
    allows only invalidations. It changed the cache like an applied op.
    """

    APPLIED = "applied"
    STALE = "stale"
    DUPLICATE = "duplicate"
    INVALIDATED = "invalidated"


_OUTCOMES: Final = {
    1: Outcome.APPLIED,
    0: Outcome.STALE,
    2: Outcome.DUPLICATE,
    3: Outcome.INVALIDATED,
}


@dataclass(frozen=True, slots=True)
class Call:
    """One EVALSHA: flattened (key, version bucket, lease key) triples, ARGV, and which ops."""

    keys: tuple[str, ...]
    args: tuple[Arg, ...]
    ops: tuple[int, ...]


def version_of(op: KeyOp) -> str:
    """The version stored for ``op``: its position, then a rank (delete < set).

    A change of primary key reaches Debezium's topic as a delete of the old row and a
    create of the new one at the same position. When both map to one cache key, the
    create must win, so at an equal position a set ranks above a delete. The only other
    pair is a change that failed, whose keys were deleted at its position
    (``cdc_cache.plan.invalidations``), replayed once its cause is fixed: its set must win too.
    """
    removed = isinstance(op, DeleteKey) or (isinstance(op, IndexMember) and not op.present)
    return encode_version(op.position, delete=removed)


def script_op(op: KeyOp, names: Names | None = None) -> tuple[tuple[str, ...], tuple[Arg, ...]]:
    """The script's KEYS and ARGV for one key op, its key hashed once for both.

    ARGV is the op's own: kind, version field, version, then its kind's arguments. Its
    TTLs are not among them: they ride in the marker before it (:func:`ttl_marker`).
    """
    version_key, lease_key, field = (names or ns()).gate_keys(op.key)
    return (op.key, version_key, lease_key), _own_args(op, field)


def _own_args(op: KeyOp, field: bytes) -> tuple[Arg, ...]:
    if isinstance(op, IndexMember):
        return _index_args(op, field)
    version = version_of(op)
    if op.tombstone_ttl_ms <= 0:
        msg = f"{type(op).__name__} for {op.key!r} has tombstone_ttl_ms={op.tombstone_ttl_ms}"
        raise ApplyError(msg + "; TTLs must be positive milliseconds")
    if isinstance(op, DeleteKey):
        return ("D", field, version)
    if op.ttl_ms <= 0:
        msg = f"SetRow for {op.key!r} has ttl_ms={op.ttl_ms}; TTLs must be positive milliseconds"
        raise ApplyError(msg)
    if op.expires_at_ms:
        msg = f"SetRow for {op.key!r} expires at {op.expires_at_ms}, but no writer made it a TTL"
        raise ApplyError(msg)
    if op.format is ValueFormat.JSON and isinstance(op.value, bytes):
        own: tuple[Arg, ...] = ("J", field, version, op.value)
    elif op.format is ValueFormat.HASH and isinstance(op.value, tuple):
        own = ("H", field, version, len(op.value), *[item for pair in op.value for item in pair])
    else:
        msg = (
            f"SetRow for {op.key!r}: format {op.format} needs "
            f"{'bytes' if op.format is ValueFormat.JSON else 'field pairs'}, "
            f"got {type(op.value).__name__}"
        )
        raise ApplyError(msg)
    # refresh-only: the script writes it only over a cached value
    return ("R", *own) if op.only_if_cached else own


def _index_args(op: IndexMember, field: bytes) -> tuple[Arg, ...]:
    """An M op: the member's version gates it; the index's record tells new from lost."""
    if min(op.ttl_ms, op.tombstone_ttl_ms) <= 0:
        msg = f"IndexMember for {op.key!r} has a TTL <= 0; TTLs must be positive milliseconds"
        raise ApplyError(msg)
    if op.present and not op.drop and op.kind is IndexKind.ZSET and op.score is None:
        msg = f"IndexMember adding {op.member!r} to the sorted set {op.key!r} has no score"
        raise ApplyError(msg)
    return (
        "M",
        member_field(op.key, op.member),
        version_of(op),
        index_field(op.key),
        "z" if op.kind is IndexKind.ZSET else "s",
        "1" if op.present else "0",
        op.member,
        op.score or "",
        "x" if op.drop else "r" if op.rebuild else "",
    )


def notify_args(op: Notify, *, outbox: bool = False) -> tuple[Arg, ...]:
    """The script's ARGV for a notification: to its channel's stream, or to an outbox."""
    return ("O" if outbox else "N", op.channel, op.maxlen, op.payload)


def ttl_marker(op: KeyOp, current: tuple[int, int] | None) -> tuple[int, int] | None:
    """The (ttl_ms, tombstone_ttl_ms) marker ``op`` needs after ``current``; None: none.

    A key op's lifetimes come from the last L marker of its call. A delete uses only the
    tombstone TTL, so it keeps the current TTL when only that differs.
    """
    if isinstance(op, DeleteKey):
        if current is not None and current[1] == op.tombstone_ttl_ms:
            return None
        return (current[0] if current is not None else op.tombstone_ttl_ms, op.tombstone_ttl_ms)
    wanted = (op.ttl_ms, op.tombstone_ttl_ms)
    return None if wanted == current else wanted


def calls(
    ops: Sequence[KeyOp | Notify],
    indices: Sequence[int],
    *,
    max_ops: int = MAX_OPS_PER_CALL,
    max_args: int = MAX_ARGS_PER_CALL,
    outbox: bool = False,
) -> Iterator[Call]:
    """Split one slot's ops into script calls within the limits, keeping their order.

    The slot's ops are ``ops[i]`` for ``i`` in ``indices``. A key op is preceded by the
    markers it needs: "T table" when its table differs from the op's before it, "L ttl_ms
    tombstone_ttl_ms" when its TTLs do; each call starts with none in force, so its first
    key op restates both. A notification stays in the call of the key op it follows (its
    host). With ``outbox`` (Redis Cluster) it goes to the outbox of its host's slot (an O
    op) instead of its channel's stream.
    """
    keys: list[str] = []
    args: list[Arg] = []
    members: list[int] = []
    table = ""  # the table whose TRUNCATE gates the call's key ops from here on
    ttls: tuple[int, int] | None = None  # the TTLs of the call's key ops from here on
    host = ""  # the key of the last key op: an outbox notification goes to its slot's outbox
    names = ns()
    for index in indices:
        op = ops[index]
        if isinstance(op, Notify):
            args += notify_args(op, outbox=outbox)
            if outbox:
                keys.append(names.outbox_key(host or op.channel))  # no host: the script refuses it
            else:
                keys += (names.stream_key(op.channel), names.channels)
            members.append(index)
            continue
        op_keys, encoded = script_op(op, names)
        marker = ttl_marker(op, ttls)
        extra = (op.table != table) * 2 + (marker is not None) * 3
        if members and (len(members) >= max_ops or len(args) + extra + len(encoded) > max_args):
            yield Call(tuple(keys), tuple(args), tuple(members))
            keys, args, members, table, ttls = [], [], [], "", None
            marker = ttl_marker(op, None)
        if op.table != table:
            table = op.table
            args += ("T", table)
        if marker is not None:
            ttls = marker
            args += ("L", *marker)
        keys += op_keys
        args += encoded
        host = op.key
        members.append(index)
    if members:
        yield Call(tuple(keys), tuple(args), tuple(members))


def outcome_of(op: KeyOp | Notify, sent: KeyOp | Notify, code: int | None) -> Outcome:
    """A set sent as a delete that applied was invalidated, not written."""
    if code is None:  # pragma: no cover - every op of a call gets a code
        msg = f"the apply script returned no outcome for {op!r}"
        raise ApplyError(msg)
    outcome = _OUTCOMES[code]
    if isinstance(op, Notify):  # its host's code: sent when the host changed the cache
        return Outcome.APPLIED if outcome is Outcome.INVALIDATED else outcome
    if outcome is Outcome.APPLIED and isinstance(op, SetRow) and isinstance(sent, DeleteKey):
        return Outcome.INVALIDATED
    return outcome
