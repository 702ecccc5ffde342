"""Route one Kafka message through decode and plan, as plain data.

The result is a planned change, a control record, or a rejection carrying its poison
error: bad messages become a second stream instead of crashing the flow or vanishing.
No I/O here, so the stream engine could change without touching this logic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from cdc_cache.envelope import Parse, decode
from cdc_cache.errors import PoisonMessage, ValueTooLarge
from cdc_cache.events import ChangeEvent, Heartbeat, SchemaChange, SourceRecord, Tombstone
from cdc_cache.ops import CacheOp, SetRow
from cdc_cache.plan import plan
from cdc_cache.rules import Rules


@dataclass(frozen=True, slots=True)
class Planned:
    """A decoded change and the cache operations it implies (possibly none)."""

    record: SourceRecord
    event: ChangeEvent
    ops: tuple[CacheOp, ...]


@dataclass(frozen=True, slots=True)
class Control:
    """A heartbeat, schema change or tombstone: counted and observed, never applied."""

    record: SourceRecord
    item: Heartbeat | SchemaChange | Tombstone


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that cannot be processed; the error names why and where it came from.

    ``event`` is the decoded change when only planning failed (its table, key, position
    go into the dead letter).
    """

    error: PoisonMessage
    event: ChangeEvent | None = None

    @property
    def record(self) -> SourceRecord:
        """The offending message (always attached by :func:`route`)."""
        assert self.error.record is not None
        return self.error.record


Routed = Planned | Control | Rejected

EpochOf = Callable[[SourceRecord, ChangeEvent], int]
"""The epoch of a decoded change's lineage (see cdc_cache.lineage_tracker)."""


def route(
    record: SourceRecord,
    rules: Rules,
    epoch: int = 0,
    max_value_bytes: int | None = None,
    parse: Parse | None = None,
    *,
    epoch_of: EpochOf | None = None,
) -> Routed:
    """Decode and plan one message; poison errors are returned, not raised.

    ``parse`` reads keys and values (JSON by default; an AvroParser for Avro topics).
    ``epoch_of`` gives a change its lineage's epoch before it is planned (otherwise every
    change has ``epoch``, the operator's ``source_epoch``). A
    projected value longer than ``max_value_bytes`` rejects the whole change (writing the
    change's other keys alone would leave its keys inconsistent with each other).
    """
    event: ChangeEvent | None = None
    try:
        decoded = decode(record, epoch=epoch, parse=parse)
        if not isinstance(decoded, ChangeEvent):
            return Control(record, decoded)
        if epoch_of is not None:
            decoded = _with_epoch(decoded, epoch_of(record, decoded))
        event = decoded
        ops = tuple(plan(decoded, rules))
        if max_value_bytes is not None:
            _check_sizes(ops, max_value_bytes, decoded)
        return Planned(record, decoded, ops)
    except PoisonMessage as error:
        return Rejected(error.at(record) if error.record is None else error, event)


def _with_epoch(event: ChangeEvent, epoch: int) -> ChangeEvent:
    """``event`` with its position in lineage ``epoch`` (itself when it already is)."""
    if event.position.epoch == epoch:
        return event
    return replace(event, position=replace(event.position, epoch=epoch))


def value_size(op: SetRow) -> int:
    """Bytes of the value ``op`` writes (JSON document, or hash field names and values)."""
    if isinstance(op.value, bytes):
        return len(op.value)
    return sum(len(name.encode()) + len(value.encode()) for name, value in op.value)


def _check_sizes(ops: tuple[CacheOp, ...], limit: int, event: ChangeEvent) -> None:
    for op in ops:
        if isinstance(op, SetRow) and (size := value_size(op)) > limit:
            msg = (
                f"{event.table} {event.op.value} at {event.position}: the value for key "
                f"{op.key!r} is {size} bytes, above max_value_bytes ({limit}); project fewer "
                "fields in the rules or raise max_value_bytes"
            )
            raise ValueTooLarge(msg)
