"""``cdc-cache verify --repair``: the keys verify found wrong, rewritten from the database.

The rows are read in one consistent-snapshot transaction whose binlog position MariaDB
reports: every transaction committed before the snapshot is in the rows read, every later
one is written to the binlog at or after that position. Each row is planned as a
snapshot read at the position just before it, and applied through the version-gated
apply script, so the gate ranks the repair above every change the rows already include
and below every change committed later: a change that commits during the repair wins
over it, whether the worker applies that change before or after the repair lands. A key
whose row is gone (an unexpected key, or a row deleted meanwhile) is deleted at that
position, leaving a tombstone like any delete.

The epoch is the key's own (the epoch of the version it holds), never below ``epoch``:
after a source lineage switch, give the current epoch (``/readyz`` shows it) so a repair
of a key without a version does not rank below late changes of the old lineage.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdc_cache.core.positions import SourcePosition, binlog_position
from cdc_cache.plan.cache_ops import DeleteKey, SetRow
from cdc_cache.plan.rules import TableRules
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.connection import Client
from cdc_cache.sink.version_store import stored_version
from cdc_cache.sink.versions import epoch_of
from cdc_cache.tools.verify_judge import KeyPattern, derive
from cdc_cache.tools.verify_reads import Database


@dataclass(frozen=True, slots=True)
class Target:
    """A key verify found wrong: its template, and its row's primary key when known."""

    key: str
    pattern: KeyPattern
    primary_key: Mapping[str, Any] | None


def repair_position(file: str, position: int, epoch: int) -> SourcePosition:
    """The position a repair is written at: just below the snapshot's binlog position.

    Above every change the snapshot holds (its events end at or before that position),
    below every change committed after it (its events start at or after it).
    """
    return binlog_position({"file": file, "pos": max(position - 1, 0), "row": 0}, epoch)


RowFor = Callable[[Database, TableRules, Sequence[str], Target], "dict[str, Any] | None"]


class Repairer:
    """Repairs one table's targets at a time.

    ``after_read`` runs between the snapshot's reads and the writes: where a change that
    commits during a repair falls (tests commit one there).
    """

    def __init__(
        self,
        db: Database,
        client: Client,
        row_for: RowFor,
        *,
        epoch: int = 0,
        position: Callable[[str, int, int], SourcePosition] = repair_position,
        after_read: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._client = client
        self._row_for = row_for
        self._epoch = epoch
        self._position = position
        self._applier = RedisApplier(client)
        self._after_read = after_read

    def repair(
        self, table: TableRules, primary_key: Sequence[str], targets: Sequence[Target]
    ) -> Counter[str]:
        """Rewrite ``targets`` from their rows; counts of the gate's outcomes."""
        if not targets:
            return Counter()
        with self._db.consistent_snapshot() as (file, position):
            rows = [self._row_for(self._db, table, primary_key, t) for t in targets]
        self._after_read()
        ops: list[SetRow | DeleteKey] = []
        for target, row in zip(targets, rows, strict=True):
            version = stored_version(self._client, target.key)
            epoch = max(self._epoch, epoch_of(version) if version else 0)
            at = self._position(file, position, epoch)
            ops.append(_op_for(table, primary_key, target.key, row, at))
        result = self._applier.apply(ops)
        return Counter(outcome.value for outcome in result.outcomes)


def _op_for(
    table: TableRules,
    primary_key: Sequence[str],
    key: str,
    row: Mapping[str, Any] | None,
    at: SourcePosition,
) -> SetRow | DeleteKey:
    """The row's write of ``key`` as a snapshot read at ``at``, or its delete (no row)."""
    if row is not None:
        for _, op in derive(table, row, primary_key, at).sets:
            if op.key == key:
                return op
    return DeleteKey(key, at, table.tombstone_ttl_ms)
