"""Write a batch of routed messages to Redis: retry transient failures, count outcomes.

Engine-agnostic: the dataflow's sink calls :meth:`CacheWriter.write` once per batch and
returns only when every change in it is applied (or proven stale/duplicate), so the
engine never records progress past an unapplied change.

Kept in one module: retries, the search for the change at fault in a refused batch
and the outcome metrics act on one batch's state.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from cdc_cache.core import labels, metrics
from cdc_cache.core.errors import (
    ApplyError,
    CdcCacheError,
    ConfigError,
    PoisonMessage,
    RefusedByRedis,
)
from cdc_cache.core.events import ChangeEvent, Heartbeat, SchemaChange, Tombstone
from cdc_cache.core.histograms import observe_all
from cdc_cache.core.retry import Backoff, retry_forever
from cdc_cache.core.scrub import scrub, spellings
from cdc_cache.dlq.entries import Failure
from cdc_cache.dlq.rejects import Rejects
from cdc_cache.mode.tables import TableFallback
from cdc_cache.plan import invalidations
from cdc_cache.plan.cache_ops import (
    CacheOp,
    DeleteKey,
    IndexMember,
    InvalidatePrefix,
    Notify,
    SetRow,
)
from cdc_cache.plan.invalidations import Invalidated, Invalidation, KeyOutcome, Unreached
from cdc_cache.plan.route import Control, Planned, Rejected, Routed, unexpected
from cdc_cache.plan.rules import Rules
from cdc_cache.sink.apply import ApplyResult, RedisApplier
from cdc_cache.sink.connection import redis_retry_reporter
from cdc_cache.sink.encoding import Outcome
from cdc_cache.sink.replica_wait import ReplicaWait
from cdc_cache.sink.tags import TagStore

log = logging.getLogger("cdc_cache.writer")

T = TypeVar("T")

_OP_KIND = {
    SetRow: "set",
    DeleteKey: "delete",
    IndexMember: "index",
    InvalidatePrefix: "invalidate_prefix",
    Notify: "notify",
}


# A member op that left its index absent until a snapshot of its table rebuilds it.
_ABSENT_INDEX: tuple[type[CacheOp], Outcome] = (IndexMember, Outcome.INVALIDATED)


@dataclass(slots=True)  # not frozen: one per change, and frozen fields cost 3x to set
class EventOutcome:
    """What happened to one change: applied, stale, duplicate or no_op (nothing to do)."""

    event: ChangeEvent
    outcome: str


class CacheWriter:
    """Applies planned changes in one round trip per batch and records what happened.

    ``ttl_cap_ms`` is asked once per batch: in the TTL fallback mode it returns the short
    fallback TTL, and no new entry may live longer than that. ``tables`` hears which
    tables' changes applied and which failed, and caps the TTLs of the tables that fall
    back on their own (see :mod:`cdc_cache.mode.tables`). ``sensitive`` names each table's
    sensitive columns, whose values are scrubbed from the keys the writer logs. With
    ``replicas``, a batch counts as written only once the required replicas acknowledged
    it, the deletes of its failed changes included. ``expiring`` (the rules give rows an
    expiry time, ``ttl: {until: ...}``) turns each set's expiry into a TTL with
    ``clock_ms`` when its batch is applied, or into a delete once it has passed.
    ``monotonic`` times each change's stay in the worker, from its record's ``received_s``
    (the source took it from the consumer) to Redis answering for its batch.
    """

    def __init__(
        self,
        applier: RedisApplier,
        backoff: Backoff,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000,
        sleep: Callable[[float], None] = time.sleep,
        ttl_cap_ms: Callable[[], int | None] = lambda: None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        reject: Callable[[Sequence[Failure]], None] | None = None,
        tables: TableFallback | None = None,
        sensitive: Callable[[str], frozenset[str]] | None = None,
        replicas: ReplicaWait | None = None,
        tags: TagStore | None = None,
        expiring: bool = False,
    ) -> None:
        self._applier = applier
        self._expiring = expiring
        self._tags = tags
        self._replicas = replicas
        self._reject = reject or Rejects(Rules({}), None).report
        self._sensitive = sensitive or Rules({}).sensitive
        self._backoff = backoff
        self._clock_ms = clock_ms
        self._monotonic = monotonic
        self._sleep = sleep
        self._ttl_cap_ms = ttl_cap_ms
        self._tables = tables

    def write(self, items: Sequence[Routed]) -> list[EventOutcome]:
        """Apply every Planned item in order, count control records; per-change outcomes.

        A Rejected change (one that cannot be applied as planned) has the keys it still
        renders deleted in the same round trip, and is then handed to ``reject`` (the DLQ)
        with what became of its keys. When Redis refuses the batch for a reason a retry
        cannot fix (ApplyError), or applying it raises anything else that is not a wait, a
        stop or a settings problem, the changes are applied one by one so only the faulty
        ones are set aside, their keys deleted all the same; version gating makes
        re-applying the others harmless.
        """
        planned = [item for item in items if isinstance(item, Planned)]
        rejected = [item for item in items if isinstance(item, Rejected)]
        controls = Counter(_control_kind(item) for item in items if isinstance(item, Control))
        for kind, count in controls.items():
            metrics.RECORDS.labels(kind).inc(count)
        started = time.perf_counter()
        caps = self._caps()
        try:
            report, failures = self._write_together(planned, rejected, caps)
        except ApplyError:
            report, failures = self._write_each(planned, rejected, caps)
        except CdcCacheError:
            raise  # a stop ended the wait, or a setting must be fixed: no one change's fault
        except Exception:  # find the change that raised, set it aside
            report, failures = self._write_each(planned, rejected, caps)
        self._apply_dependencies(planned)
        self._reject(failures)
        if self._tables is not None:
            self._tables.observe(Counter(o.event.table for o in report), failures)
        metrics.APPLY_SECONDS.observe(time.perf_counter() - started)
        return report

    def _write_together(
        self, planned: list[Planned], rejected: list[Rejected], caps: _Caps
    ) -> tuple[list[EventOutcome], list[Failure]]:
        """The whole batch in one round trip: planned ops, then the rejected changes' deletes."""
        ops = [op for item in planned for op in caps.applied_to(item)]
        salvage = [op for item in rejected for op in item.invalidation.deletes]
        outcomes = self._apply([*ops, *salvage]).outcomes
        planned_count = sum(not isinstance(op, InvalidatePrefix) for op in ops)
        report = self._account(planned, ops, outcomes[:planned_count])
        rest = iter(outcomes[planned_count:])
        failures = []
        for item in rejected:
            got = [_key_outcome(next(rest)) for _ in item.invalidation.deletes]
            invalidated = Invalidated.of(item.invalidation, got) if item.event else None
            failures.append(Failure(item.error, item.table, item.event, invalidated))
        return report, failures

    def _write_each(
        self, planned: list[Planned], rejected: list[Rejected], caps: _Caps
    ) -> tuple[list[EventOutcome], list[Failure]]:
        """The batch change by change: only the faulty ones are set aside."""
        failures: list[Failure] = []
        report = [o for item in planned for o in self._write_alone(item, caps, failures)]
        failures += [
            self._salvage(item.error, item.table, item.event, item.invalidation)
            for item in rejected
        ]
        return report, failures

    def _write_alone(
        self, item: Planned, caps: _Caps, failures: list[Failure]
    ) -> list[EventOutcome]:
        error: PoisonMessage
        try:
            sent = caps.applied_to(item)
            return self._account([item], sent, self._apply(sent).outcomes)
        except ApplyError as exc:
            error = RefusedByRedis(f"{exc} (position {item.event.position})", item.record)
            error.__cause__ = exc
        except CdcCacheError:
            raise
        except Exception as exc:  # this change's own failure: its dead letter
            error = unexpected(exc, "applying", item.record, item.event)
        plan = invalidations.of_ops(item.ops)
        failures.append(self._salvage(error, item.event.table, item.event, plan))
        return []

    def _salvage(
        self, error: PoisonMessage, table: str, event: ChangeEvent | None, plan: Invalidation
    ) -> Failure:
        """The failure of a change that could not be applied, once its keys are deleted.

        Its deletes go out together, else one at a time; a key whose delete Redis refuses
        too (its version key holds another type, so the gate cannot run) is deleted
        without it. A key that cannot be deleted at all stays as it was and is named as
        unreached, scrubbed of the table's sensitive values. The failure records what
        became of each key.
        """
        outcomes: list[KeyOutcome] = []
        lost: list[Unreached] = []
        try:
            outcomes = [_key_outcome(o) for o in self._apply(plan.deletes).outcomes]
        except ApplyError:
            self._delete_each(plan, self._hidden(error, table, event), outcomes, lost)
        except CdcCacheError:
            raise
        except Exception:  # one of the deletes raised: find it
            self._delete_each(plan, self._hidden(error, table, event), outcomes, lost)
        invalidated = Invalidated.of(plan, outcomes, lost) if event is not None else None
        return Failure(error, table, event, invalidated)

    def _delete_each(
        self,
        plan: Invalidation,
        hidden: tuple[str, ...],
        outcomes: list[KeyOutcome],
        lost: list[Unreached],
    ) -> None:
        for delete in plan.deletes:
            try:
                outcomes.append(self._delete(delete, hidden))
            except ApplyError as exc:
                lost.append(_unreached(delete, hidden, exc))
            except CdcCacheError:
                raise
            except Exception as exc:  # this key cannot be deleted: say so
                lost.append(_unreached(delete, hidden, exc))

    def _delete(self, delete: DeleteKey, hidden: tuple[str, ...]) -> KeyOutcome:
        """Delete one key at its change's position; without the gate if Redis refuses it."""
        try:
            return _key_outcome(self._apply([delete]).outcomes[0])
        except ApplyError:
            self._discard(delete, hidden)
            return KeyOutcome.UNVERSIONED

    def _hidden(
        self, error: PoisonMessage, table: str, event: ChangeEvent | None
    ) -> tuple[str, ...]:
        """The spellings of the change's sensitive values, kept out of what is logged."""
        assert error.record is not None
        return spellings(self._sensitive(table), event, error.record)

    def _discard(self, delete: DeleteKey, hidden: tuple[str, ...]) -> None:
        log.warning(
            "deleting a key without its version: its version key holds another type; "
            "delete that version key to let changes through again",
            extra={"key": scrub(delete.key, hidden)},
        )
        self._written(
            lambda: self._applier.discard([delete.key]),
            [delete],
            "deleting a key without its version",
        )

    def _apply_dependencies(self, planned: list[Planned]) -> None:
        """The batch's tag and link ops, after its key ops; retried and replicated like them."""
        ops = [op for item in planned for op in item.dependencies]
        if not ops:
            return
        if self._tags is None:
            msg = "changes planned tag ops but the writer has no tag store"
            raise ConfigError(msg)
        tags = self._tags

        def write() -> object:
            return tags.apply(ops)

        retry_forever(
            write if self._replicas is None else self._replicas.guarded(write, ops),
            backoff=self._backoff,
            on_retry=redis_retry_reporter(f"applying {len(ops)} tag and link ops"),
            sleep=self._sleep,
        )

    def _caps(self) -> _Caps:
        table_caps = self._tables.caps() if self._tables is not None else {}
        now_ms = int(self._clock_ms()) if self._expiring else None
        return _Caps(self._ttl_cap_ms(), table_caps, now_ms)

    def _apply(self, ops: Sequence[CacheOp]) -> ApplyResult:
        if not ops:
            return ApplyResult((), ())
        return self._written(lambda: self._applier.apply(ops), ops, f"applying {len(ops)} ops")

    def _written(self, write: Callable[[], T], ops: Sequence[CacheOp], what: str) -> T:
        """``write`` (of ``ops``) retried until Redis took it and the ``replicas`` hold it."""
        return retry_forever(
            write if self._replicas is None else self._replicas.guarded(write, ops),
            backoff=self._backoff,
            on_retry=redis_retry_reporter(what),
            sleep=self._sleep,
        )

    def _account(
        self, planned: list[Planned], sent: Sequence[CacheOp], results: Sequence[Outcome]
    ) -> list[EventOutcome]:
        """Per-change outcomes, with the batch's counters and latencies gathered first.

        ``sent`` is what went to Redis for ``planned``, op for op (:meth:`_Caps.applied_to`):
        an op is counted by the kind it was sent as, so a set whose row had expired counts
        as the delete it became (relabelled in a second pass, paid only by rules with row
        expiry times, ``expiring``). Each counter is incremented once per label set and each
        latency histogram once per bucket (:func:`~cdc_cache.core.histograms.observe_all`):
        a labelled increment or an observation costs a lookup and a lock, too much to pay
        per change. The labels are counted once per batch too, over lists gathered in the
        one pass over the changes: each op's kind with its outcome, each change's table, op
        and outcome. Only a batch whose counts hold an index member op ``invalidated`` (its
        index left absent until a snapshot rebuilds it) walks its ops again, for their tables.
        """
        outcomes = iter(results)
        now_ms = self._clock_ms()
        now_s = self._monotonic()
        report: list[EventOutcome] = []
        op_labels: list[tuple[type[CacheOp], Outcome]] = []  # per op: its kind, its outcome
        event_labels: list[tuple[str, str, str]] = []
        committed: list[float] = []
        emitted: list[float] = []
        stays: list[float] = []  # received by the source → answered by Redis, any outcome
        for item in planned:
            if received := item.record.received_s:
                stays.append(now_s - received)
            event = item.event
            ops = item.ops
            if len(ops) == 1 and (kind := type(ops[0])) is not InvalidatePrefix:  # most changes
                outcome = next(outcomes)
                op_labels.append((kind, outcome))
                summary = _SUMMARY_OF_ONE[outcome]
            else:
                own = [
                    (kind, Outcome.APPLIED if kind is InvalidatePrefix else next(outcomes))
                    for kind in map(type, ops)
                ]
                op_labels += own
                summary = _summarise([outcome for _, outcome in own])
            event_labels.append((event.table, event.op, summary))
            if summary == _APPLIED:
                if (at := event.committed_at_ms) is not None:
                    committed.append((now_ms - at) / 1000 if now_ms > at else 0.0)
                if (at := event.emitted_at_ms) is not None:
                    emitted.append((now_ms - at) / 1000 if now_ms > at else 0.0)
            report.append(EventOutcome(event, summary))
        if self._expiring:  # only a row's expiry sends an op as another kind: a set as a delete
            op_labels = [(type(op), o) for op, (_, o) in zip(sent, op_labels, strict=True)]
        op_counts = Counter(op_labels)
        for (kind, outcome), count in op_counts.items():
            metrics.REDIS_OPS.labels(_OP_KIND[kind], outcome.value).inc(count)
        if _ABSENT_INDEX in op_counts:  # rare: only then a second pass finds their tables
            tables = (
                op.table
                for op, label in zip(sent, op_labels, strict=True)
                if label == _ABSENT_INDEX and isinstance(op, IndexMember)
            )
            for table, count in Counter(tables).items():
                metrics.ABSENT_INDEX_OPS.labels(labels.TABLES(table)).inc(count)
        for (table, op_name, summary), count in Counter(event_labels).items():
            metrics.EVENTS.labels(labels.TABLES(table), str(op_name), summary).inc(count)
        observe_all(metrics.COMMIT_TO_APPLIED, committed)
        observe_all(metrics.EMITTED_TO_APPLIED, emitted)
        observe_all(metrics.RECEIVED_TO_APPLIED, stays)
        if planned:
            metrics.RECORDS.labels("change").inc(len(planned))
        return report


@dataclass(frozen=True, slots=True)
class _Caps:
    """The TTL caps of one batch: the global mode's, and those of tables falling back alone."""

    everything: int | None
    tables: Mapping[str, int]
    now_ms: int | None = None  # rows may expire: the time their expiry is measured from

    def applied_to(self, item: Planned) -> list[CacheOp]:
        """``item``'s ops with no value or index living longer than its table (or row) may."""
        cap = self.tables.get(item.event.table, self.everything)
        if cap is None and self.now_ms is None:
            return list(item.ops)
        if cap is not None and self.everything is not None:
            cap = min(cap, self.everything)
        if self.now_ms is not None:
            return [_capped(_expiring(op, self.now_ms), cap) for op in item.ops]
        return [_capped(op, cap) for op in item.ops]


def _key_outcome(outcome: Outcome) -> KeyOutcome:
    return KeyOutcome.DELETED if outcome is Outcome.APPLIED else KeyOutcome.SKIPPED


def _unreached(delete: DeleteKey, hidden: tuple[str, ...], exc: Exception) -> Unreached:
    """A key whose delete failed: named scrubbed, with the error's class (never its text)."""
    return Unreached(scrub(delete.key, hidden), f"deleting it raised {type(exc).__name__}")


def _capped(op: CacheOp, cap_ms: int | None) -> CacheOp:
    if cap_ms is None or not isinstance(op, SetRow | IndexMember) or op.ttl_ms <= cap_ms:
        return op
    return replace(op, ttl_ms=cap_ms)


def _expiring(op: CacheOp, now_ms: int) -> CacheOp:
    """A set whose row expires: its TTL up to then, or the delete of its key once passed."""
    if not isinstance(op, SetRow) or not op.expires_at_ms:
        return op
    left = op.expires_at_ms - now_ms
    if left <= 0:
        return DeleteKey(op.key, op.position, op.tombstone_ttl_ms, op.table)
    return replace(op, ttl_ms=min(op.ttl_ms, left), expires_at_ms=0)


def _summarise(outcomes: list[Outcome]) -> str:
    """A change's outcome: applied if an op changed the cache, duplicate if all were, else stale."""
    if not outcomes:
        return "no_op"
    if Outcome.APPLIED in outcomes or Outcome.INVALIDATED in outcomes:
        return Outcome.APPLIED.value
    if all(o is Outcome.DUPLICATE for o in outcomes):
        return Outcome.DUPLICATE.value
    return Outcome.STALE.value


_APPLIED = Outcome.APPLIED.value
# _summarise of a change with one op (most changes), looked up instead of worked out
_SUMMARY_OF_ONE = {outcome: _summarise([outcome]) for outcome in Outcome}


_CONTROL_KIND = {Heartbeat: "heartbeat", SchemaChange: "schema_change", Tombstone: "tombstone"}


def _control_kind(item: Control) -> str:
    return _CONTROL_KIND[type(item.item)]
