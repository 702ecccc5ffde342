"""A reference model of version-gated cache storage, for checking plans and Redis alike.

It states the semantics in a dozen lines: an op applies only if its position is strictly
newer than the one stored for its key; a delete leaves its position behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cdc_cache.ops import CacheOp, DeleteKey, InvalidatePrefix, SetRow
from cdc_cache.positions import SourcePosition


@dataclass
class ModelCache:
    values: dict[str, bytes | tuple[tuple[str, str], ...]] = field(default_factory=dict)
    versions: dict[str, SourcePosition] = field(default_factory=dict)

    def apply(self, ops: Iterable[CacheOp]) -> None:
        for op in ops:
            if isinstance(op, InvalidatePrefix):
                for key in [k for k in self.values if k.startswith(op.prefix)]:
                    self._gated(DeleteKey(key, op.position, op.tombstone_ttl_ms))
            else:
                self._gated(op)

    def _gated(self, op: SetRow | DeleteKey) -> None:
        current = self.versions.get(op.key)
        if current is not None and current >= op.position:
            return
        self.versions[op.key] = op.position
        if isinstance(op, SetRow):
            self.values[op.key] = op.value
        else:
            self.values.pop(op.key, None)
