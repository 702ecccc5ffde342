"""The lineage registry in Redis, shared by every worker process and the DLQ replay.

It numbers each source's log lineages once for all processes, and keeps each Kafka
partition's lineage state. Keys:

- ``cdc:lineage:{<source>}`` (hash, one per connector): ``base`` (the epoch of the first
  lineage seen), ``latest``, ``next:<e>`` (the lineage after lineage ``e``) and
  ``switch:<e>`` (JSON: how lineage ``e`` was first found). ``next:<e>`` is set once, in
  one script call, by whichever partition of whichever process sees the switch first;
  every other partition leaving lineage ``e`` gets the same epoch, so a source's
  partitions agree however far apart in time they reach the switch.
- ``cdc:lineage:partitions`` (hash): ``<topic>/<partition>`` → the partition's state
  (:func:`cdc_cache.lineage.model.dump_state`), written after each batch is judged and before
  it is applied. A worker that restarts from an older recovery snapshot, or takes the
  partition over from another process, finds the epochs recorded for the offsets it
  replays there. A partition first judged after the source switched lineage is placed
  by what the others recorded (read with HSCAN, once per such partition).

Each is one key, so every call stays in one Redis Cluster slot. Neither key has a TTL:
they must outlive every version key they order.

The states are saved before each batch is applied, so saving them must not wait while
Redis is out of memory (the batch's invalidations would wait behind it): they go through
a script flagged ``allow-oom`` as long as no field grows past :data:`STATE_BYTES_WHILE_FULL`
(a few hundred bytes each, one field per partition: the hash stays bounded). A state past
that bound which would grow further is written with a plain HSET, which Redis refuses
while full, and so waits for memory like any value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any, Final

import orjson
from redis.commands.core import Script

from cdc_cache.core.errors import ConfigError
from cdc_cache.core.keys import ns
from cdc_cache.core.positions import MAX_EPOCH
from cdc_cache.lineage.model import PartitionState, dump_state, epoch_at, load_state
from cdc_cache.sink.connection import Client

Partition = tuple[str, int]
"""A Kafka topic partition."""


def source_key(source: str) -> str:
    """The registry hash of ``source`` (its name escaped inside the hash tag)."""
    return ns().lineage_source(source)


def partition_field(partition: Partition) -> str:
    """The field of ``partition`` in the partitions hash."""
    topic, number = partition
    return f"{topic}/{number}"


STATE_BYTES_WHILE_FULL: Final = 4096
"""The largest partition state (JSON bytes) saved while Redis is out of memory; a state
past it is saved then only if it does not grow. Typical states take 200 to 1,000."""

# Flagged allow-oom: the states of a batch land while Redis is full, as its deletes do.
# ARGV[1]: the bound; then field, value pairs. Writes every pair when none is past the
# bound and larger than the value it replaces; else nothing (returns 0).
_SAVE: Final = """#!lua flags=allow-oom
local bound = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local size = #ARGV[i + 1]
  if size > bound and size > redis.call('HSTRLEN', KEYS[1], ARGV[i]) then return 0 end
end
for i = 2, #ARGV, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return 1
"""


@cache
def _script_source() -> str:
    return (
        resources.files("cdc_cache").joinpath("lineage/lua/lineage.lua").read_text(encoding="utf-8")
    )


class LineageRegistry:
    """Redis calls of the registry; raises redis-py errors (callers retry the transient)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._save = Script(client, _SAVE)

    def _run(self, source: str, *args: str | int | bytes) -> list[int]:
        # EVAL, not EVALSHA: the script runs once per source and switch, never per change.
        reply = self._client.execute_command("EVAL", _script_source(), 1, source_key(source), *args)
        return [int(value) for value in reply]

    def ensure(self, source: str, floor: int) -> tuple[int, int]:
        """Register ``source`` (first lineage at ``floor``) if new; its (base, latest)."""
        base, latest = self._run(source, "ensure", floor)
        return base, latest

    def successor(
        self, source: str, epoch: int, floor: int, switch: Mapping[str, Any]
    ) -> tuple[int, bool, int]:
        """The lineage after ``epoch``: (its epoch, whether this call assigned it, latest).

        ``switch`` describes the detection; it is kept only by the call that assigns.
        """
        found, assigned, latest = self._run(
            source, "next", epoch, floor, MAX_EPOCH, orjson.dumps(switch)
        )
        return found, bool(assigned), latest

    def switches(self, source: str) -> dict[int, dict[str, Any]]:
        """Every recorded switch of ``source``, by the epoch it switched to."""
        raw = self._client.hgetall(source_key(source))
        found = {}
        for name, value in raw.items():
            text = name.decode()
            if text.startswith("switch:"):
                found[int(text.removeprefix("switch:"))] = orjson.loads(value)
        return found

    def load(self, partitions: Iterable[Partition]) -> dict[Partition, PartitionState | None]:
        """The recorded state of each partition (None for one never judged)."""
        wanted = list(partitions)
        if not wanted:
            return {}
        values = self._client.hmget(ns().lineage_partitions, [partition_field(p) for p in wanted])
        found: dict[Partition, PartitionState | None] = {}
        for partition, value in zip(wanted, values, strict=True):
            try:
                found[partition] = None if value is None else load_state(value)
            except ValueError as exc:
                msg = (
                    f"{ns().lineage_partitions} field {partition_field(partition)!r} is damaged "
                    f"({exc}); "
                    "restore it, or delete the field (HDEL) to read the partition as never "
                    "judged, then raise source_epoch if the source switched lineage before"
                )
                raise ConfigError(msg) from None
        return found

    def states(self, source: str) -> list[PartitionState]:
        """The recorded states of every partition of ``source`` (read in steps: HSCAN)."""
        found = []
        for _field, value in self._client.hscan_iter(ns().lineage_partitions, count=500):
            try:
                state = load_state(value)
            except ValueError:
                continue  # a damaged field stops the worker when its partition is read
            if state.source == source:
                found.append(state)
        return found

    def save(self, states: Mapping[Partition, PartitionState]) -> None:
        """Record the partitions' states (one call; while Redis is full too, if bounded)."""
        if not states:
            return
        mapping = {partition_field(p): dump_state(s) for p, s in states.items()}
        args = [STATE_BYTES_WHILE_FULL, *(item for pair in mapping.items() for item in pair)]
        if not self._save(keys=[ns().lineage_partitions], args=args):  # one grows past it
            self._client.hset(ns().lineage_partitions, mapping=mapping)  # type: ignore[arg-type]

    def epoch_at(self, partition: Partition, offset: int) -> int | None:
        """The epoch of ``offset`` of ``partition`` (None if the partition was never judged).

        The one recorded for it, or for an offset not judged yet the current lineage's.
        """
        state = self.load([partition])[partition]
        if state is None:
            return None
        return epoch_at(state, offset) if offset <= state.offset else state.epoch
