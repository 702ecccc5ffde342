"""A reference model of version-gated cache storage, for checking plans and Redis alike.

It states the semantics in a dozen lines: an op applies only if its version (position,
then rank: delete below set) is strictly newer than the one stored for its key; a delete
leaves its version behind; a refresh-only set writes only over a cached value (an
uncached key gets its version all the same). A notification goes out when the key op before it applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import CacheOp, DeleteKey, InvalidatePrefix, Notify, SetRow


@dataclass
class ModelCache:
    values: dict[str, bytes | tuple[tuple[str, str], ...]] = field(default_factory=dict)
    versions: dict[str, tuple[SourcePosition, int]] = field(default_factory=dict)
    notifications: list[tuple[str, bytes]] = field(default_factory=list)

    def apply(self, ops: Iterable[CacheOp]) -> None:
        host_applied = False
        for op in ops:
            if isinstance(op, InvalidatePrefix):
                for key in [k for k in self.values if k.startswith(op.prefix)]:
                    self._gated(DeleteKey(key, op.position, op.tombstone_ttl_ms))
            elif isinstance(op, Notify):
                if host_applied:
                    self.notifications.append((op.channel, op.payload))
            else:
                host_applied = self._gated(op)

    def _gated(self, op: SetRow | DeleteKey) -> bool:
        version = (op.position, 1 if isinstance(op, SetRow) else 0)
        current = self.versions.get(op.key)
        if current is not None and current >= version:
            return False
        self.versions[op.key] = version
        if isinstance(op, SetRow) and op.only_if_cached and op.key not in self.values:
            return True  # refresh-only: an uncached key gets the version, not the value
        if isinstance(op, SetRow):
            self.values[op.key] = op.value
        else:
            self.values.pop(op.key, None)
        return True
