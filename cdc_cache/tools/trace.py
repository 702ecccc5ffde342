"""One row's changes on its topic, judged against what Redis holds now (pure).

``cdc-cache trace`` answers "why is this key stale": every change of one row the topic
still holds, the operations the rules plan for each, and what the version gate does with
each operation against the key's stored version now:

- ``applied``: newer than the key's version, so applying it now would write it. A change
  in this state that the worker has already read means its write was lost (or undone);
  one it has not read yet means the worker is behind.
- ``invalidated``: a set on a key that holds a value but no version (filled by an
  application, or its version swept or lost): the gate cannot tell which is newer, so it
  deletes the key instead of writing it.
- ``duplicate``: the key's version is this change's: the key holds it.
- ``stale``: older than the key's version: a newer change won, applying it changes nothing.

The worker also turns every set into a delete while Redis' eviction policy may evict
versions (``cdc_cache_invalidate_only``); the trace judges the gate alone.

Index keys (zadd, sadd) are gated per member: a member op is judged against the version
of its (index, member) pair the same way, ``invalidated`` being an addition to an index
the worker left holding members that is gone (not written: the index stays absent until a
snapshot rebuilds it). The row's memberships are shown as Redis holds them (present with
its score, or absent; the index absent, and whether until a snapshot) with the member's
version, and whether they differ from what the change that version names wrote there (a
member taken out or re-scored behind the worker's back).

Reading the topic and Redis is :mod:`cdc_cache.tools.tracer`'s, the output
:mod:`cdc_cache.tools.trace_report`'s; this module only judges, so every verdict is tested
without servers. Kept in one module: key and member ops of one change are judged in one
pass (a notification takes the verdict of the op before it, a key's or a member's), and
the keys' and memberships' holders come from the same verdicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cdc_cache.core.events import ChangeEvent
from cdc_cache.plan.cache_ops import (
    CacheOp,
    DeleteKey,
    IndexKind,
    IndexMember,
    InvalidatePrefix,
    Notify,
    SetRow,
)
from cdc_cache.plan.route import Planned, Rejected
from cdc_cache.sink.encoding import version_of
from cdc_cache.sink.key_state import KeyState
from cdc_cache.tools.index_judge import Pair, StoredIndex


class Gate(StrEnum):
    """What the version gate does with one key operation against the key's version now."""

    APPLIED = "applied"
    INVALIDATED = "invalidated"
    DUPLICATE = "duplicate"
    STALE = "stale"


CHANGES_CACHE: Final = frozenset({Gate.APPLIED, Gate.INVALIDATED})


def gate(version: str, stored: str | None, *, unversioned_value: bool = False) -> Gate:
    """The gate's verdict for an op of ``version`` on a key whose version is ``stored``.

    Versions sort as the positions they encode; a key without a version is older than
    every change (as the apply script reads it). ``unversioned_value``: the op is a set
    and the key holds a value without a version, so the script deletes it instead.
    """
    if stored is None or version > stored:
        return Gate.INVALIDATED if stored is None and unversioned_value else Gate.APPLIED
    return Gate.DUPLICATE if version == stored else Gate.STALE


def parse_row_key(pairs: Sequence[str]) -> dict[str, str]:
    """``["id=42", "warehouse=w1"]`` as a primary key; raises ValueError naming a bad pair."""
    key: dict[str, str] = {}
    for pair in pairs:
        column, sep, value = pair.partition("=")
        if not sep or not column:
            msg = f"key {pair!r}: give column=value"
            raise ValueError(msg)
        key[column] = value
    if not key:
        msg = "give the row's primary key as column=value (one per key column)"
        raise ValueError(msg)
    return key


def is_row(event: ChangeEvent, table: str, key: Mapping[str, str]) -> bool:
    """True when ``event`` changed the row of ``table`` with primary key ``key``.

    Values compare as text (the key is typed on a command line), every key column of the
    change must be given.
    """
    return event.table == table and row_key(event) == dict(key)


def row_key(event: ChangeEvent) -> dict[str, str]:
    """The primary key of ``event``'s row, its values as text."""
    return {c: v if isinstance(v, str) else str(v) for c, v in event.key.items()}


KEY_ACTIONS = frozenset({"set", "delete", "zadd", "sadd", "zrem", "srem", "drop_index"})


@dataclass(frozen=True, slots=True)
class OpTrace:
    """One planned operation and the gate's verdict on it.

    ``action`` is set | delete | zadd | sadd | zrem | srem | drop_index |
    invalidate_prefix | notify; ``target`` the key, index key, prefix or channel
    (``member`` and ``score`` an index op's); ``gate`` the verdict (a notification takes
    its host's: it is published only when its key op applies; a TRUNCATE's prefix is
    gated key by key, so it has none).
    """

    action: str
    target: str
    gate: Gate | None
    ttl_ms: int | None = None
    member: str | None = None
    score: str | None = None


@dataclass(frozen=True, slots=True)
class ChangeTrace:
    """One record of the row on the topic, and what its operations do now."""

    topic: str
    partition: int
    offset: int
    op: str | None
    position: str | None
    committed_at_ms: int | None
    ops: tuple[OpTrace, ...]
    error: str | None = None


@dataclass(frozen=True, slots=True)
class KeyTrace:
    """One key the row's changes touch, as Redis holds it, and which change it holds."""

    state: KeyState
    holds: ChangeTrace | None


@dataclass(frozen=True, slots=True)
class MemberTrace:
    """One index membership the row's changes touch, as Redis holds it.

    ``index``: what Redis holds of the index key (its ``members`` holds this member, with
    its score, when present); ``version``: the pair's; ``holds``: the change that version
    names, and ``wrote`` that change's op on the pair.
    """

    key: str
    member: str
    kind: IndexKind
    index: StoredIndex
    version: str | None
    holds: ChangeTrace | None = None
    wrote: IndexMember | None = None

    @property
    def present(self) -> bool:
        return self.member in self.index.members

    @property
    def score(self) -> float | None:
        return self.index.members.get(self.member)

    @property
    def differs(self) -> bool:
        """Redis holds the pair otherwise than the change its version names left it.

        A member absent from an index that exists although that change added it, scored
        otherwise, present although it took it out, or an index of another type. An absent
        index is none of these: expired, evicted, or left absent until a snapshot.
        """
        op = self.wrote
        if op is None or op.drop or self.index.absent:
            return False
        if self.index.wrong_type or self.present != op.present:
            return True
        return op.score is not None and self.score != float(op.score)


@dataclass(frozen=True, slots=True)
class Trace:
    """The trace of one row: its changes in topic order and its keys now."""

    table: str
    key: Mapping[str, str]
    topics: tuple[str, ...]
    scanned: int
    changes: tuple[ChangeTrace, ...]
    keys: tuple[KeyTrace, ...]
    members: tuple[MemberTrace, ...] = ()

    @property
    def pending(self) -> int:
        """Key and member operations newer than their version (not in the cache)."""
        return sum(
            op.gate in CHANGES_CACHE and op.action in KEY_ACTIONS
            for c in self.changes
            for op in c.ops
        )

    @property
    def damaged(self) -> int:
        """Memberships Redis holds otherwise than the change their version names left them."""
        return sum(m.differs for m in self.members)


def keys_of(routed: Iterable[Planned | Rejected]) -> list[str]:
    """Every cache key the changes' operations touch, in first-seen order."""
    seen: dict[str, None] = {}
    for item in routed:
        for op in _key_ops(item):
            if isinstance(op, SetRow | DeleteKey):
                seen.setdefault(op.key, None)
    return list(seen)


def members_of(routed: Iterable[Planned | Rejected]) -> dict[Pair, IndexKind]:
    """Every index membership the changes' operations touch, in first-seen order."""
    seen: dict[Pair, IndexKind] = {}
    for item in routed:
        for op in _key_ops(item):
            if isinstance(op, IndexMember):
                seen.setdefault((op.key, op.member), op.kind)
    return seen


def _key_ops(item: Planned | Rejected) -> tuple[CacheOp, ...]:
    return item.ops if isinstance(item, Planned) else item.invalidation.deletes


Explain = Callable[[Rejected], str]
"""Why a change was dead-lettered, as an operator may read it (sensitive values scrubbed)."""


@dataclass(frozen=True, slots=True)
class HeldIndexes:
    """The index keys read (members asked about only) and the pairs' versions."""

    indexes: Mapping[str, StoredIndex]
    versions: Mapping[Pair, str | None]

    def judge(self, op: IndexMember) -> Gate:
        """The gate's verdict for a member op against its pair's version now.

        An addition to an index the worker left holding members that is gone is not
        written (``invalidated``): it stays absent until a snapshot read rebuilds it.
        """
        verdict = gate(version_of(op), self.versions.get((op.key, op.member)))
        index = self.indexes.get(op.key, ABSENT_INDEX)
        vanished = index.absent and index.left_holding
        if verdict is Gate.APPLIED and op.present and vanished and not (op.rebuild or op.drop):
            return Gate.INVALIDATED
        return verdict


NO_INDEXES: Final = HeldIndexes({}, {})
ABSENT_INDEX: Final = StoredIndex({}, exists=False)
"""An index key that was not read: absent."""


def _member_action(op: IndexMember) -> str:
    if op.drop:
        return "drop_index"
    kind = "z" if op.kind is IndexKind.ZSET else "s"
    return kind + ("add" if op.present else "rem")


def judge(
    item: Planned | Rejected,
    states: Mapping[str, KeyState],
    explain: Explain,
    held: HeldIndexes = NO_INDEXES,
) -> ChangeTrace:
    """``item``'s operations judged against the versions in ``states`` and ``held``."""
    ops: list[OpTrace] = []
    host: Gate | None = None
    for op in _key_ops(item):
        if isinstance(op, IndexMember):
            host = held.judge(op)
            ttl = op.ttl_ms if op.present else op.tombstone_ttl_ms
            ops.append(OpTrace(_member_action(op), op.key, host, ttl, op.member, op.score))
        elif isinstance(op, SetRow | DeleteKey):
            state = states[op.key]
            unversioned = isinstance(op, SetRow) and state.exists and state.version is None
            host = gate(version_of(op), state.version, unversioned_value=unversioned)
            ttl = op.ttl_ms if isinstance(op, SetRow) else op.tombstone_ttl_ms
            ops.append(OpTrace("set" if isinstance(op, SetRow) else "delete", op.key, host, ttl))
        elif isinstance(op, Notify):  # sent whenever its host changes the cache
            sent = Gate.APPLIED if host is Gate.INVALIDATED else host
            ops.append(OpTrace("notify", op.channel, sent))
        elif isinstance(op, InvalidatePrefix):
            ops.append(OpTrace("invalidate_prefix", op.prefix, None))
    event = item.event
    record = item.record
    return ChangeTrace(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        op=event.op.value if event else None,
        position=str(event.position) if event else None,
        committed_at_ms=event.committed_at_ms if event else None,
        ops=tuple(ops),
        error=explain(item) if isinstance(item, Rejected) else None,
    )


def trace_of(
    table: str,
    key: Mapping[str, str],
    *,
    topics: Sequence[str],
    scanned: int,
    routed: Sequence[Planned | Rejected],
    states: Mapping[str, KeyState],
    explain: Explain,
    held: HeldIndexes = NO_INDEXES,
) -> Trace:
    """The trace of a row from its routed changes (topic order) and Redis now.

    ``states``: its keys'; ``held``: its index memberships.
    """
    changes = [judge(item, states, explain, held) for item in routed]
    holders: dict[str, ChangeTrace] = {}
    writers: dict[Pair, tuple[ChangeTrace, IndexMember]] = {}
    for item, change in zip(routed, changes, strict=True):
        for op in _key_ops(item):
            if isinstance(op, SetRow | DeleteKey) and version_of(op) == states[op.key].version:
                holders[op.key] = change
            elif isinstance(op, IndexMember):
                pair = (op.key, op.member)
                if version_of(op) == held.versions.get(pair):
                    writers[pair] = (change, op)
    members = []
    for pair, kind in members_of(routed).items():
        holder, wrote = writers.get(pair, (None, None))
        index, member = pair
        stored = held.indexes.get(index, ABSENT_INDEX)
        version = held.versions.get(pair)
        members.append(MemberTrace(index, member, kind, stored, version, holder, wrote))
    return Trace(
        table=table,
        key=dict(key),
        topics=tuple(topics),
        scanned=scanned,
        changes=tuple(changes),
        keys=tuple(KeyTrace(states[k], holders.get(k)) for k in keys_of(routed)),
        members=tuple(members),
    )
