"""Route one Kafka message through decode and plan, as plain data.

The result is a planned change, a control record, or a rejection carrying its poison
error: bad messages become a second stream instead of crashing the flow or vanishing.
No I/O here, so the stream engine could change without touching this logic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cdc_cache.envelope import Parse, decode
from cdc_cache.errors import PoisonMessage
from cdc_cache.events import ChangeEvent, Heartbeat, SchemaChange, SourceRecord, Tombstone
from cdc_cache.ops import CacheOp
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
    """A message that cannot be processed; the error names why and where it came from."""

    error: PoisonMessage

    @property
    def record(self) -> SourceRecord:
        """The offending message (always attached by :func:`route`)."""
        assert self.error.record is not None
        return self.error.record


Routed = Planned | Control | Rejected


def route(record: SourceRecord, rules: Rules, epoch: int = 0, parse: Parse | None = None) -> Routed:
    """Decode and plan one message; poison errors are returned, not raised.

    ``parse`` reads keys and values (JSON by default; an AvroParser for Avro topics).
    """
    try:
        decoded = decode(record, epoch=epoch, parse=parse)
        if not isinstance(decoded, ChangeEvent):
            return Control(record, decoded)
        return Planned(record, decoded, tuple(plan(decoded, rules)))
    except PoisonMessage as error:
        return Rejected(error.at(record) if error.record is None else error)


def router(rules: Rules, epoch: int = 0) -> Callable[[SourceRecord], Routed]:
    """A one-argument ``route`` bound to the rules, for map operators."""

    def bound(record: SourceRecord) -> Routed:
        return route(record, rules, epoch)

    return bound
