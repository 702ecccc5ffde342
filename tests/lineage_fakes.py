"""An in-memory lineage registry for tests of the detection without Redis."""

from __future__ import annotations

from typing import Any

from cdc_cache.lineage.model import PartitionState, dump_state, load_state


class MemoryRegistry:
    """The registry's contract (cdc_cache/lineage/lua/lineage.lua) in memory, states as JSON."""

    def __init__(self) -> None:
        self.sources: dict[str, dict[str, Any]] = {}
        self.partitions: dict[tuple[str, int], bytes] = {}

    def ensure(self, source: str, floor: int) -> tuple[int, int]:
        entry = self.sources.setdefault(source, {"base": floor, "latest": floor, "next": {}})
        entry["latest"] = max(entry["latest"], floor)
        return entry["base"], entry["latest"]

    def successor(self, source: str, epoch: int, floor: int, switch: Any) -> tuple[int, bool, int]:
        entry = self.sources[source]
        if epoch in entry["next"]:
            return entry["next"][epoch], False, entry["latest"]
        new = max(entry["latest"], epoch, floor - 1) + 1
        entry["next"][epoch] = entry["latest"] = new
        return new, True, new

    def load(self, partitions: Any) -> dict[tuple[str, int], PartitionState | None]:
        return {
            p: load_state(self.partitions[p]) if p in self.partitions else None for p in partitions
        }

    def states(self, source: str) -> list[PartitionState]:
        found = [load_state(value) for value in self.partitions.values()]
        return [state for state in found if state.source == source]

    def save(self, states: dict[tuple[str, int], PartitionState]) -> None:
        self.partitions.update({p: dump_state(s) for p, s in states.items()})
