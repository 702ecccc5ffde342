"""Where every rejected message goes: one log line, the poison metrics, and the DLQ.

Every rejection passes through :class:`Rejects`, wherever in the flow it was found, so
each one is counted once with the same fields. With a dead-letter writer, ``report``
returns only once the entries are durable on the DLQ topic: the dataflow cannot record
progress past a failure that could still be lost. Building an entry cannot fail the
batch: should it raise, the failure is written with its coordinates only. The log line
carries the entry's reason, scrubbed of the table's sensitive values like the entry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cdc_cache.core import labels, metrics
from cdc_cache.dlq.entries import Failure, envelope, fallback_entry
from cdc_cache.plan.rules import Rules

log = logging.getLogger("cdc_cache.rejects")


class DeadLetters(Protocol):
    """Durable storage of DLQ entries (the Kafka topic, or a test double)."""

    def write(self, entries: Sequence[dict[str, Any]]) -> None: ...


class Rejects:
    """Logs, counts and dead-letters failures; ``dead_letters`` None only logs and counts."""

    def __init__(
        self,
        rules: Rules,
        dead_letters: DeadLetters | None,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000,
    ) -> None:
        self._rules = rules
        self._dead_letters = dead_letters
        self._clock_ms = clock_ms

    def report(self, failures: Sequence[Failure]) -> None:
        """Record ``failures``; with a DLQ, returns once they are all written durably."""
        if not failures:
            return
        now = self._clock_ms()
        entries = [self._entry(failure, now) for failure in failures]
        for failure, entry in zip(failures, entries, strict=True):
            _log_and_count(failure, entry)
        if self._dead_letters is not None:
            self._dead_letters.write(entries)
            for failure in failures:
                metrics.DLQ_ENTRIES.labels(failure.error.kind, labels.TABLES(failure.table)).inc()

    def _entry(self, failure: Failure, now_ms: float) -> dict[str, Any]:
        try:
            return envelope(failure, self._rules.sensitive(failure.table), now_ms)
        except Exception as exc:  # the failure is written all the same
            log.warning(
                "dead letter built from its coordinates only",
                extra={"error_class": type(exc).__name__, "table": failure.table},
            )
            return fallback_entry(failure, exc, now_ms)


def _log_and_count(failure: Failure, entry: dict[str, Any]) -> None:
    error, record = failure.error, failure.record
    metrics.RECORDS.labels("rejected").inc()
    table = labels.TABLES(failure.table)
    metrics.POISON.labels(error.kind, table).inc()
    invalidated = failure.invalidation
    if invalidated is not None:
        for outcome, count in invalidated.counts.items():
            if count:
                metrics.FAILED_CHANGE_KEYS.labels(table, outcome.value).inc(count)
    log.error(
        "message rejected",
        extra={
            "id": entry["id"],
            "kind": error.kind,
            "reason": entry["reason"],
            "table": failure.table,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "keys": invalidated.entry() if invalidated is not None else None,
        },
    )
