"""Write a batch of routed messages to Redis: retry transient failures, count outcomes.

Engine-agnostic: the dataflow's sink calls :meth:`CacheWriter.write` once per batch and
returns only when every change in it is applied (or proven stale/duplicate), so the
engine never records progress past an unapplied change.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from prometheus_client import Histogram

from cdc_cache import metrics
from cdc_cache.dlq import Failure
from cdc_cache.errors import CdcCacheError, PoisonMessage, RefusedByRedis
from cdc_cache.events import ChangeEvent, Heartbeat, SchemaChange, Tombstone
from cdc_cache.ops import CacheOp, DeleteKey, InvalidatePrefix, Notify, SetRow
from cdc_cache.pipeline import Control, Planned, Routed, unexpected
from cdc_cache.redact import redact_url
from cdc_cache.redis_apply import (
    ApplyError,
    ApplyResult,
    Client,
    Outcome,
    RedisApplier,
    RedisAuth,
    connect,
    ping,
)
from cdc_cache.rejects import Rejects
from cdc_cache.replica_wait import ReplicaWait
from cdc_cache.retry import Backoff, OnRetry, retry_forever, retry_reporter
from cdc_cache.rules import Rules

log = logging.getLogger("cdc_cache.writer")

_OP_KIND = {
    SetRow: "set",
    DeleteKey: "delete",
    InvalidatePrefix: "invalidate_prefix",
    Notify: "notify",
}


@dataclass(frozen=True, slots=True)
class EventOutcome:
    """What happened to one change: applied, stale, duplicate or no_op (nothing to do)."""

    event: ChangeEvent
    outcome: str


class CacheWriter:
    """Applies planned changes in one round trip per batch and records what happened.

    ``ttl_cap_ms`` is asked once per batch: in the TTL fallback mode it returns the short
    fallback TTL, and no new entry may live longer than that. With ``replicas``, a batch
    counts as written only once the required replicas acknowledged it.
    """

    def __init__(
        self,
        applier: RedisApplier,
        backoff: Backoff,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000,
        sleep: Callable[[float], None] = time.sleep,
        ttl_cap_ms: Callable[[], int | None] = lambda: None,
        *,
        reject: Callable[[Sequence[Failure]], None] | None = None,
        replicas: ReplicaWait | None = None,
    ) -> None:
        self._applier = applier
        self._replicas = replicas
        self._reject = reject or Rejects(Rules({}), None).report
        self._backoff = backoff
        self._clock_ms = clock_ms
        self._sleep = sleep
        self._ttl_cap_ms = ttl_cap_ms

    def write(self, items: Sequence[Routed]) -> list[EventOutcome]:
        """Apply every Planned item in order, count control records; per-change outcomes.

        When Redis refuses the batch for a reason a retry cannot fix (ApplyError), or
        applying it raises anything else that is not a wait, a stop or a settings problem,
        the changes are applied one by one so only the faulty ones are set aside (handed
        to ``reject`` before this returns); version gating makes re-applying the others
        harmless.
        """
        planned = [item for item in items if isinstance(item, Planned)]
        controls = Counter(_control_kind(item) for item in items if isinstance(item, Control))
        for kind, count in controls.items():
            metrics.RECORDS.labels(kind).inc(count)
        started = time.perf_counter()
        try:
            report = self._account(planned, self._apply(planned))
        except ApplyError:
            report = self._write_each(planned)
        except CdcCacheError:
            raise  # a stop ended the wait, or a setting must be fixed: no one change's fault
        except Exception:  # find the change that raised, set it aside
            report = self._write_each(planned)
        metrics.APPLY_SECONDS.observe(time.perf_counter() - started)
        return report

    def _write_each(self, planned: list[Planned]) -> list[EventOutcome]:
        failures: list[Failure] = []
        report = [o for item in planned for o in self._write_alone(item, failures)]
        self._reject(failures)
        return report

    def _write_alone(self, item: Planned, failures: list[Failure]) -> list[EventOutcome]:
        error: PoisonMessage
        try:
            return self._account([item], self._apply([item]))
        except ApplyError as exc:
            error = RefusedByRedis(f"{exc} (position {item.event.position})", item.record)
            error.__cause__ = exc
        except CdcCacheError:
            raise
        except Exception as exc:  # this change's own failure: its dead letter
            error = unexpected(exc, "applying", item.record, item.event)
        failures.append(Failure(error, item.event.table, item.event))
        return []

    def _apply(self, planned: list[Planned]) -> ApplyResult:
        cap = self._ttl_cap_ms()
        ops = [_capped(op, cap) for item in planned for op in item.ops]
        if not ops:
            return ApplyResult((), ())

        def apply() -> ApplyResult:
            return self._applier.apply(ops)

        return retry_forever(
            apply if self._replicas is None else self._replicas.guarded(apply, ops),
            backoff=self._backoff,
            on_retry=redis_retry_reporter(f"applying {len(ops)} ops"),
            sleep=self._sleep,
        )

    def _account(self, planned: list[Planned], result: ApplyResult) -> list[EventOutcome]:
        """Per-change outcomes, with the batch's counters summed first.

        Each counter is incremented once per label set: a labelled increment costs a
        lookup and a lock, too much to pay per change.
        """
        outcomes = iter(result.outcomes)
        now_ms = self._clock_ms()
        report: list[EventOutcome] = []
        op_counts: Counter[tuple[str, str]] = Counter()
        event_counts: Counter[tuple[str, str, str]] = Counter()
        for item in planned:
            event = item.event
            op_outcomes = []
            for op in item.ops:
                outcome = Outcome.APPLIED if isinstance(op, InvalidatePrefix) else next(outcomes)
                op_counts[_OP_KIND[type(op)], outcome.value] += 1
                op_outcomes.append(outcome)
            summary = _summarise(op_outcomes)
            event_counts[event.table, event.op.value, summary] += 1
            if summary == Outcome.APPLIED:
                _observe_latency(metrics.COMMIT_TO_APPLIED, now_ms, event.committed_at_ms)
                _observe_latency(metrics.EMITTED_TO_APPLIED, now_ms, event.emitted_at_ms)
            report.append(EventOutcome(event, summary))
        for (kind, outcome_name), count in op_counts.items():
            metrics.REDIS_OPS.labels(kind, outcome_name).inc(count)
        for labels, count in event_counts.items():
            metrics.EVENTS.labels(*labels).inc(count)
        if planned:
            metrics.RECORDS.labels("change").inc(len(planned))
        return report


def _capped(op: CacheOp, cap_ms: int | None) -> CacheOp:
    if cap_ms is None or not isinstance(op, SetRow) or op.ttl_ms <= cap_ms:
        return op
    return replace(op, ttl_ms=cap_ms)


def redis_retry_reporter(action: str) -> OnRetry:
    """An ``on_retry`` callback: every wait for Redis is logged and counted."""
    return retry_reporter("redis", "redis unavailable, retrying", log, action=action)


def connect_when_available(
    url: str,
    backoff: Backoff,
    sleep: Callable[[float], None] = time.sleep,
    auth: RedisAuth | None = None,
) -> Client:
    """A Redis client that answered PING; waits (logged, counted) while Redis is unreachable.

    A worker that starts before Redis does, or while a cluster is still forming, waits here
    instead of exiting. Refused credentials or an unverifiable certificate raise
    ConfigError at once: no wait can fix them.
    """
    return retry_forever(
        lambda: ping(connect(url, auth), redact_url(url)),
        backoff=backoff,
        on_retry=redis_retry_reporter("connecting"),
        sleep=sleep,
    )


def _observe_latency(histogram: Histogram, now_ms: float, since_ms: int | None) -> None:
    if since_ms is not None:
        histogram.observe(max(0.0, now_ms - since_ms) / 1000)


def _summarise(outcomes: list[Outcome]) -> str:
    if not outcomes:
        return "no_op"
    if Outcome.APPLIED in outcomes or Outcome.INVALIDATED in outcomes:
        return Outcome.APPLIED.value
    if all(o is Outcome.DUPLICATE for o in outcomes):
        return Outcome.DUPLICATE.value
    return Outcome.STALE.value


_CONTROL_KIND = {Heartbeat: "heartbeat", SchemaChange: "schema_change", Tombstone: "tombstone"}


def _control_kind(item: Control) -> str:
    return _CONTROL_KIND[type(item.item)]
