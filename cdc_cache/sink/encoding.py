"""The apply script's arguments and replies, without I/O.

Each key op becomes a (key, version bucket, lease key) triple of KEYS and a few ARGV
(:func:`script_keys`, :func:`script_args`); a notification rides in the call of the key
op before it (on Redis Cluster into that key's slot outbox, see ``cdc_cache.sink.outbox``).
One slot's ops are cut into calls within limits (:func:`calls`), since a script blocks the
server while it runs, and each op's reply code read back as an :class:`Outcome`
(:func:`outcome_of`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

from cdc_cache.core.errors import ApplyError
from cdc_cache.core.keys import index_field, member_field, ns, version_field
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


def script_keys(op: KeyOp | Notify) -> tuple[str, ...]:
    """The script's KEYS for one op."""
    if isinstance(op, Notify):
        return (ns().stream_key(op.channel), ns().channels)
    version_key, lease_key, _ = ns().gate_keys(op.key)
    return (op.key, version_key, lease_key)


def script_args(op: KeyOp | Notify, field: bytes | None = None) -> tuple[Arg, ...]:
    """The script's ARGV for one op: kind, field, version, its lifetime, kind's own args.

    ``field`` is the version field of the op's key when the caller already has it.
    """
    if isinstance(op, Notify):
        return ("N", op.channel, op.maxlen, op.payload)
    if isinstance(op, IndexMember):
        return _index_args(op)
    if field is None:
        field = version_field(op.key)
    version = version_of(op)
    if op.tombstone_ttl_ms <= 0:
        msg = f"{type(op).__name__} for {op.key!r} has tombstone_ttl_ms={op.tombstone_ttl_ms}"
        raise ApplyError(msg + "; TTLs must be positive milliseconds")
    if isinstance(op, DeleteKey):
        return ("D", field, version, op.tombstone_ttl_ms)
    if op.ttl_ms <= 0:
        msg = f"SetRow for {op.key!r} has ttl_ms={op.ttl_ms}; TTLs must be positive milliseconds"
        raise ApplyError(msg)
    if op.expires_at_ms:
        msg = f"SetRow for {op.key!r} expires at {op.expires_at_ms}, but no writer made it a TTL"
        raise ApplyError(msg)
    lifetime = max(op.ttl_ms, op.tombstone_ttl_ms)
    if op.only_if_cached:  # refresh-only: the script writes it only over a cached value
        return ("R", *script_args(replace(op, only_if_cached=False), field))
    if op.format is ValueFormat.JSON and isinstance(op.value, bytes):
        return ("J", field, version, lifetime, op.value, op.ttl_ms)
    if op.format is ValueFormat.HASH and isinstance(op.value, tuple):
        fields = [item for pair in op.value for item in pair]
        return ("H", field, version, lifetime, op.ttl_ms, len(op.value), *fields)
    msg = (
        f"SetRow for {op.key!r}: format {op.format} needs "
        f"{'bytes' if op.format is ValueFormat.JSON else 'field pairs'}, "
        f"got {type(op.value).__name__}"
    )
    raise ApplyError(msg)


def _index_args(op: IndexMember) -> tuple[Arg, ...]:
    """An M op: the member's version gates it; the index's record tells new from lost."""
    if min(op.ttl_ms, op.tombstone_ttl_ms) <= 0:
        msg = f"IndexMember for {op.key!r} has a TTL <= 0; TTLs must be positive milliseconds"
        raise ApplyError(msg)
    if op.present and not op.drop and op.kind is IndexKind.ZSET and op.score is None:
        msg = f"IndexMember adding {op.member!r} to the sorted set {op.key!r} has no score"
        raise ApplyError(msg)
    lifetime = max(op.ttl_ms, op.tombstone_ttl_ms) if op.present else op.tombstone_ttl_ms
    return (
        "M",
        member_field(op.key, op.member),
        version_of(op),
        lifetime,
        index_field(op.key),
        "z" if op.kind is IndexKind.ZSET else "s",
        "1" if op.present else "0",
        op.member,
        op.score or "",
        op.ttl_ms,
        "x" if op.drop else "r" if op.rebuild else "",
    )


def calls(
    ops: Sequence[KeyOp | Notify],
    indices: Sequence[int],
    *,
    max_ops: int = MAX_OPS_PER_CALL,
    max_args: int = MAX_ARGS_PER_CALL,
    outbox: bool = False,
) -> Iterator[Call]:
    """Split one slot's ops into script calls within the limits, keeping their order.

    The slot's ops are ``ops[i]`` for ``i`` in ``indices``. A notification stays in the
    call of the key op it follows (its host). With ``outbox`` (Redis Cluster) it goes to
    the outbox of its host's slot (an O op) instead of its channel's stream.
    """
    keys: list[str] = []
    args: list[Arg] = []
    members: list[int] = []
    table = ""  # the table whose TRUNCATE gates the call's key ops from here on
    host = ""  # the key of the last key op: an outbox notification goes to its slot's outbox
    names = ns()
    for index in indices:
        op = ops[index]
        if isinstance(op, Notify):
            encoded = script_args(op)
            if outbox:
                encoded = ("O", *encoded[1:])
        else:
            version_key, lease_key, field = names.gate_keys(op.key)
            encoded = script_args(op, field)
        if (
            members
            and not isinstance(op, Notify)
            and (len(members) >= max_ops or len(args) + len(encoded) > max_args)
        ):
            yield Call(tuple(keys), tuple(args), tuple(members))
            keys, args, members, table = [], [], [], ""
        if not isinstance(op, Notify) and op.table != table:
            table = op.table
            args += ("T", table)
        if not isinstance(op, Notify):
            keys += (op.key, version_key, lease_key)
            host = op.key
        elif outbox:
            keys.append(names.outbox_key(host or op.channel))  # no host: the script refuses it
        else:
            keys += script_keys(op)
        args += encoded
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
