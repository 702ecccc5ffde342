"""Route one Kafka message through decode and plan, as plain data.

The result is a planned change, a control record, or a rejection carrying its poison
error: bad messages become a second stream instead of crashing the flow or vanishing.
No I/O here, so the stream engine could change without touching this logic.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdc_cache import invalidations
from cdc_cache.envelope import Parse, decode, table_of_topic
from cdc_cache.errors import PoisonMessage, ValueTooLarge
from cdc_cache.events import ChangeEvent, Heartbeat, SchemaChange, SourceRecord, Tombstone
from cdc_cache.invalidations import Invalidation
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
    go into the dead letter); ``invalidation`` the deletes it still allows (see
    :mod:`cdc_cache.invalidations`), applied before the change is dead-lettered.
    """

    error: PoisonMessage
    event: ChangeEvent | None = None
    invalidation: Invalidation = invalidations.NOTHING

    @property
    def record(self) -> SourceRecord:
        """The offending message (always attached by :func:`route`)."""
        assert self.error.record is not None
        return self.error.record

    @property
    def table(self) -> str:
        """The change's table, else the one its topic names, else the topic."""
        if self.event is not None:
            return self.event.table
        topic = self.record.topic
        return table_of_topic(topic) or topic


Routed = Planned | Control | Rejected


def route(
    record: SourceRecord,
    rules: Rules,
    epoch: int = 0,
    max_value_bytes: int | None = None,
    parse: Parse | None = None,
) -> Routed:
    """Decode and plan one message; poison errors are returned, not raised.

    ``parse`` reads keys and values (JSON by default; an AvroParser for Avro topics). A
    projected value longer than ``max_value_bytes`` rejects the whole change (writing the
    change's other keys alone would leave its keys inconsistent with each other): its keys
    are deleted instead, like those of a change the rules cannot render.
    """
    event: ChangeEvent | None = None
    ops: tuple[CacheOp, ...] | None = None
    try:
        decoded = decode(record, epoch=epoch, parse=parse)
        if not isinstance(decoded, ChangeEvent):
            return Control(record, decoded)
        event = decoded
        ops = tuple(plan(decoded, rules))
        if max_value_bytes is not None:
            _check_sizes(ops, max_value_bytes, decoded)
        return Planned(record, decoded, ops)
    except PoisonMessage as error:
        if event is None:
            salvage = invalidations.NOTHING
        elif ops is not None:
            salvage = invalidations.of_ops(ops)
        else:
            salvage = invalidations.of_images(event, rules.for_table(event.table))
        return Rejected(error.at(record) if error.record is None else error, event, salvage)


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
