"""Route one Kafka message through decode and plan, as plain data.

The result is a planned change, a control record, or a rejection carrying its poison
error: bad messages become a second stream instead of crashing the flow or vanishing.
Whatever one message makes decode, plan or the size check raise is that message's
rejection, anticipated (a poison error) or not (:class:`Unprocessable`, with the error
and its stack): no message can stop the flow. No I/O here, so the stream engine could
change without touching this logic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import orjson

from cdc_cache.core.errors import PoisonMessage, TransientError, Unprocessable, ValueTooLarge
from cdc_cache.core.events import ChangeEvent, Heartbeat, SchemaChange, SourceRecord, Tombstone
from cdc_cache.core.identity import TableIdentity
from cdc_cache.core.nesting import ENCODER_MAX_DEPTH, nesting_depth
from cdc_cache.plan import invalidations
from cdc_cache.plan.cache_ops import CacheOp, DependencyOp, SetRow
from cdc_cache.plan.dependencies import plan_dependencies
from cdc_cache.plan.invalidations import Invalidation
from cdc_cache.plan.planner import plan
from cdc_cache.plan.rules import Rules
from cdc_cache.source.envelope import Parse, decode, table_hint
from cdc_cache.source.natural import UndecodableValue


@dataclass(slots=True)  # not frozen: one per change, and frozen fields cost 3x to set
class Planned:
    """A decoded change and the cache operations it implies (possibly none)."""

    record: SourceRecord
    event: ChangeEvent
    ops: tuple[CacheOp, ...]
    dependencies: tuple[DependencyOp, ...] = ()  # tag and link ops, after every key op


@dataclass(slots=True)  # not frozen: one per change, and frozen fields cost 3x to set
class Control:
    """A heartbeat, schema change or tombstone: counted and observed, never applied."""

    record: SourceRecord
    item: Heartbeat | SchemaChange | Tombstone


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that cannot be processed; the error names why and where it came from.

    ``event`` is the decoded change when only planning failed (its table, key, position
    go into the dead letter), with its values as its table caches them (those that decode);
    ``invalidation`` the deletes it still allows (see :mod:`cdc_cache.plan.invalidations`),
    applied before the change is dead-lettered. ``table_identity`` names the table of a
    message that did not decode (the rules' identity).
    """

    error: PoisonMessage
    event: ChangeEvent | None = None
    invalidation: Invalidation = invalidations.NOTHING
    table_identity: TableIdentity = TableIdentity.DB_TABLE

    @property
    def record(self) -> SourceRecord:
        """The offending message (always attached by :func:`route`)."""
        assert self.error.record is not None
        return self.error.record

    @property
    def table(self) -> str:
        """The decoded change's table, else what the record shows (see ``table_hint``)."""
        if self.event is not None:
            return self.event.table
        return table_hint(self.record, self.table_identity)


Routed = Planned | Control | Rejected

_DECODING_VALUES = "decoding values"  # the stage whose failure leaves the values undecoded

EpochOf = Callable[[SourceRecord, ChangeEvent], int]
"""The epoch of a decoded change's lineage (see cdc_cache.lineage.tracker)."""


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
    change has ``epoch``, the operator's ``source_epoch``). The change's values are decoded
    as its table's rules say (:mod:`cdc_cache.source.natural`) before planning, so keys, values
    and notifications all see the same values. A
    projected value longer than ``max_value_bytes`` rejects the whole change (writing the
    change's other keys alone would leave its keys inconsistent with each other): its keys
    are deleted instead, like those of a change the rules cannot render, and so are those
    of a change whose planning raised anything else. Only a transient error (a server to
    wait for) is raised, and what ``epoch_of`` raises: the lineage registry's trouble is
    no message's poison.
    """
    try:
        decoded = decode(record, epoch=epoch, parse=parse, identity=rules.identity)
    except Exception as exc:
        return replace(_rejected(exc, "decoding", record, None), table_identity=rules.identity)
    if not isinstance(decoded, ChangeEvent):
        return Control(record, decoded)
    if epoch_of is not None:
        decoded = _with_epoch(decoded, epoch_of(record, decoded))
    event = decoded
    stage = _DECODING_VALUES
    ops: tuple[CacheOp, ...] | None = None
    try:
        table = rules.for_table(decoded.table)
        if table is not None:
            event = table.values.event(decoded)
        stage = "planning"
        ops = tuple(plan(event, rules))
        dependencies = tuple(plan_dependencies(event, rules)) if rules.tags else ()
        if max_value_bytes is not None:
            stage = "checking value sizes"
            _check_sizes(ops, max_value_bytes, event)
        return Planned(record, event, ops, dependencies)
    except UndecodableValue as error:  # its keys still render from what decodes
        return Rejected(error.at(record), error.partial, _salvage(error.partial, None, rules))
    except Exception as exc:
        salvage = _salvage(event, ops, rules, decoded=stage != _DECODING_VALUES)
        return _rejected(exc, stage, record, event, salvage)


def _rejected(
    exc: Exception,
    stage: str,
    record: SourceRecord,
    event: ChangeEvent | None,
    invalidation: Invalidation = invalidations.NOTHING,
) -> Rejected:
    """A message's own error as its rejection; a transient one is raised (wait, retry)."""
    if isinstance(exc, PoisonMessage):
        return Rejected(exc.at(record) if exc.record is None else exc, event, invalidation)
    if isinstance(exc, TransientError):
        raise exc
    poison = unexpected(exc, stage, record, event)  # any other: its poison
    return Rejected(poison, event, invalidation)


def _salvage(
    event: ChangeEvent, ops: tuple[CacheOp, ...] | None, rules: Rules, *, decoded: bool = True
) -> Invalidation:
    """The deletes a rejected change still allows: its planned keys, else its images' keys.

    When decoding its values raised (not ``decoded``), its keys render only from the
    columns its table caches as they came: a key of a decoded column is unreached.
    """
    if ops is not None:
        return invalidations.of_ops(ops)
    table = rules.for_table(event.table)
    if table is not None and not decoded:
        event = table.values.undecoded(event)
    return invalidations.of_images(event, table)


def unexpected(
    exc: Exception, stage: str, record: SourceRecord, event: ChangeEvent | None = None
) -> Unprocessable:
    """The poison error for ``exc``, raised while ``stage`` handled ``record``.

    Names the error and, when the message nests values deeper than JSON can be written
    (the usual cause: the parser reads deeper than the encoder writes), says so.
    """
    reason = f"{stage} raised {type(exc).__name__}: {exc}"
    if _depth(record, event) > ENCODER_MAX_DEPTH:
        reason += (
            f"; the message nests values more than {ENCODER_MAX_DEPTH} levels deep, "
            "deeper than JSON is written"
        )
    error = Unprocessable(reason, record)
    error.__cause__ = exc
    return error


def _depth(record: SourceRecord, event: ChangeEvent | None) -> int:
    """How deeply the message nests (its decoded images, else its JSON value), capped."""
    if event is not None:
        docs: list[object] = [event.key, event.before, event.after]
    else:
        try:
            docs = [orjson.loads(record.value or b"null")]
        except orjson.JSONDecodeError:
            return 0
    return max(nesting_depth(doc, ENCODER_MAX_DEPTH) for doc in docs)


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
