"""A reference model of tags, dependency links and leased fills next to version-gated keys.

It states the semantics of :mod:`cdc_cache.plan.dependencies` as the apply path must
implement them, with a switch per rule so a test can show what each one protects:
``gate_links`` (membership ops gated by their position), ``catch_up`` (a link to a tag
invalidated at a newer position deletes its key there) and ``fill_checks_tags`` (a fill
does not land when one of its tags was invalidated after it read the tags' versions).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import (
    CacheOp,
    DeleteKey,
    DependencyOp,
    InvalidatePrefix,
    InvalidateTag,
    LinkKey,
    SetRow,
)
from tests.model import ModelCache

APP = ""  # the link of a member an application fill put under a tag


@dataclass
class Member:
    position: SourcePosition | None  # None: put there by a fill
    present: bool


@dataclass
class Fill:
    """An application fill in progress: lease taken, tag versions read, maybe loaded."""

    key: str
    token: int
    tags: tuple[str, ...]
    seen: dict[str, SourcePosition | None]
    value: bytes | None = None
    loaded: bool = False


@dataclass
class TagCache(ModelCache):
    gate_links: bool = True
    catch_up: bool = True
    fill_checks_tags: bool = True
    leases: dict[str, int] = field(default_factory=dict)
    tag_versions: dict[str, SourcePosition] = field(default_factory=dict)
    members: dict[str, dict[tuple[str, str], Member]] = field(default_factory=dict)
    _tokens: itertools.count[int] = field(default_factory=itertools.count)

    def apply(self, ops: Iterable[CacheOp | DependencyOp]) -> None:
        plain: list[CacheOp] = []
        for op in ops:
            if isinstance(op, LinkKey):
                self._link(op)
            elif isinstance(op, InvalidateTag):
                self._invalidate(op)
            elif isinstance(op, InvalidatePrefix):
                super().apply([op])
            else:
                plain.append(op)
        super().apply(plain)

    def _gated(self, op: SetRow | DeleteKey) -> bool:
        applied = super()._gated(op)
        if applied:
            self.leases.pop(op.key, None)  # an applied change voids the fill in progress
        return applied

    def _link(self, op: LinkKey) -> None:
        members = self.members.setdefault(op.tag, {})
        current = members.get((op.key, op.link))
        newer = current.position if current is not None else None
        if not (self.gate_links and newer is not None and newer >= op.position):
            members[(op.key, op.link)] = Member(op.position, op.present)
        version = self.tag_versions.get(op.tag)
        if op.present and self.catch_up and version is not None and version > op.position:
            self._gated(DeleteKey(op.key, version, op.tombstone_ttl_ms))

    def _invalidate(self, op: InvalidateTag) -> None:
        version = self.tag_versions.get(op.tag)
        if version is None or version < op.position:
            self.tag_versions[op.tag] = op.position
        members = self.members.get(op.tag, {})
        for (key, link), member in list(members.items()):
            deleted = member.present and self._gated(
                DeleteKey(key, op.position, op.tombstone_ttl_ms)
            )
            if link == APP and deleted:  # a fill's member goes with its key, never before
                del members[(key, link)]

    # --- the application's side (CacheAside) ---

    def start_fill(self, key: str, tags: tuple[str, ...]) -> Fill | None:
        """A miss takes the lease and reads the tags' versions; None on a hit or a held lease."""
        if key in self.values or key in self.leases:
            return None
        token = next(self._tokens)
        self.leases[key] = token
        return Fill(key, token, tags, {tag: self.tag_versions.get(tag) for tag in tags})

    def land(self, fill: Fill) -> bool:
        """Add the key to its tags, then write it if no tag moved and the lease holds."""
        for tag in fill.tags:
            self.members.setdefault(tag, {})[(fill.key, APP)] = Member(None, True)
        moved = any(self.tag_versions.get(tag) != seen for tag, seen in fill.seen.items())
        if (self.fill_checks_tags and moved) or self.leases.get(fill.key) != fill.token:
            if self.leases.get(fill.key) == fill.token:
                del self.leases[fill.key]
            return False
        del self.leases[fill.key]
        assert fill.value is not None
        self.values[fill.key] = fill.value
        return True
