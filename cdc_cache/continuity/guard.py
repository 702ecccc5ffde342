"""Source partitions that never skip changes silently (the edge around ``continuity.model``).

A Kafka source partition snapshots a bare offset and resumes there whatever the topic has
become. :class:`GuardedPartition` wraps one (the dataflow adapts its engine's partitions
to :class:`Partition`): its snapshot is a
:class:`~cdc_cache.continuity.model.SourceState` (the offset plus the topic's identity), and
nothing reaches the dataflow until the stored state was checked against the brokers:

- at start and on every assignment (each build of the partition): the topic id (asked
  fresh), the log start (ListOffsets "earliest") and the high watermark of the first
  fetch (tansu's ListOffsets "latest" is wrong, fetch responses are right);
- while running: the watermarks of every fetch, out-of-range errors (the consumer's
  ``auto.offset.reset`` is ``error``, so the client never resets on its own), and the
  topic id every ``refresh_s``.

A broken rule pauses the partition at its stored offset (its snapshot does not move, so a
restart finds the discontinuity again), raises a ``source_discontinuity`` hold (``ttl``
mode at once), counts it, logs both offsets and identities, and records it in Redis for
``cdc-cache continuity``. The partition goes on only when an operator decides: ``reread``
(from the topic's start, ``ttl`` held until the re-read caught up) or ``accept``.

Kept in one module: the checks, the pause and the operator's way out all act on one
partition's state; the rules themselves are pure, in ``continuity.model``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from cdc_cache.continuity.model import (
    Action,
    Discontinuity,
    Observed,
    SourceState,
    check,
    load_state,
    reread_caught_up,
)
from cdc_cache.continuity.store import ContinuityStore
from cdc_cache.continuity.topic_ids import TopicIdentity, TopicIds
from cdc_cache.core import metrics
from cdc_cache.mode.controller import Cause
from cdc_cache.mode.holds import Holds
from cdc_cache.sink.connection import REDIS_ERRORS

log = logging.getLogger("cdc_cache.continuity")

# librdkafka's answers to an offset the log does not hold (with auto.offset.reset=error)
# and to a truncation it detected itself (leader epochs, KIP-320).
_OUT_OF_RANGE: Final = frozenset({KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE})
_TRUNCATED: Final = frozenset({KafkaError._LOG_TRUNCATION})
_VERIFY_WAIT: Final = timedelta(milliseconds=100)
_DECISION_POLL_S: Final = 1.0


class Partition(Protocol):
    """One Kafka source partition, as the guard reads it."""

    @property
    def consumer(self) -> Consumer | None:
        """Its Kafka consumer, whose cached watermarks are read (None: none yet)."""

    def next_batch(self) -> list[Any]:
        """The next messages (records, and errors as messages)."""

    def next_awake(self) -> datetime | None:
        """When to ask for the next batch (None: at once)."""

    def snapshot(self) -> Any:
        """Where it would resume: the next offset."""

    def close(self) -> None:
        """Close its consumer."""

    def error_codes(self, batch: list[Any]) -> set[int]:
        """The librdkafka error codes among ``batch``'s messages."""


class ContinuityGuard:
    """What the guarded partitions of one process share: ids, records, holds."""

    def __init__(
        self,
        ids: TopicIds,
        holds: Holds,
        store: Callable[[], ContinuityStore],
        clock: Callable[[], float] = time.time,
        restarted: Callable[[str, int], None] | None = None,
    ) -> None:
        self.ids = ids
        self.holds = holds
        # Told when a partition starts again from a topic's first offset (its offsets are
        # a new topic's): the lineage tracker forgets the offsets it recorded.
        self.restarted = restarted
        self._connect = store
        self._store: ContinuityStore | None = None
        self._lock = threading.Lock()
        self.clock = clock

    def partition(
        self, where: TopicPartition, resume_state: object, build: Callable[[int | None], Partition]
    ) -> GuardedPartition:
        """Wrap the partition ``build(offset)`` makes, resuming from ``resume_state``."""
        return GuardedPartition(self, where, load_state(resume_state), build)

    def store(self) -> ContinuityStore | None:
        """The Redis records, or None while Redis cannot be reached (tried again later)."""
        with self._lock:
            if self._store is None:
                try:
                    self._store = self._connect()
                except REDIS_ERRORS as exc:
                    log.warning("continuity records: Redis unreachable", extra={"error": str(exc)})
            return self._store

    def now_ms(self) -> int:
        """Wall-clock milliseconds, for records."""
        return int(self.clock() * 1000)


class GuardedPartition:
    """A Kafka source partition whose offsets are checked before anything is passed on."""

    def __init__(
        self,
        guard: ContinuityGuard,
        where: TopicPartition,
        state: SourceState,
        build: Callable[[int | None], Partition],
    ) -> None:
        self._guard = guard
        self._where = where
        self._scope = f"{where.topic}[{where.partition}]"
        self._build = build
        self._state = state
        self._inner = build(state.offset)
        self._built_at = guard.ids.now()
        self._verified = False
        self._log_start: int | None = None
        self._found: Discontinuity | None = None
        self._reported = False
        self._polled_at = float("-inf")
        if state.rereading:
            self._hold(f"{self._scope}: re-reading the topic from its start; ttl until caught up")

    # -- what the dataflow sees -------------------------------------------------------------

    @property
    def consumer(self) -> Consumer | None:
        """The Kafka consumer of the current inner partition (its cached watermarks)."""
        return self._inner.consumer

    @property
    def next_offset(self) -> int | None:
        """The next offset this partition vouches for (None: nothing read yet)."""
        return self._state.offset

    @property
    def paused(self) -> bool:
        """True while a discontinuity holds it at its stored offset."""
        return self._found is not None

    def next_batch(self) -> list[Any]:
        if self._found is not None:
            self._await_decision()
            return []
        identity = self._guard.ids.current(self._where.topic)
        if not self._verified:
            return self._verify(identity)
        return self._pass(list(self._inner.next_batch()), identity)

    def next_awake(self) -> datetime | None:
        if self._found is not None:
            return datetime.now(UTC) + timedelta(seconds=_DECISION_POLL_S)
        if not self._verified:
            return datetime.now(UTC) + _VERIFY_WAIT
        return self._inner.next_awake()

    def snapshot(self) -> dict[str, Any]:
        return self._state.dump()

    def close(self) -> None:
        self._inner.close()

    # -- checking ---------------------------------------------------------------------------

    def _verify(self, identity: TopicIdentity | None) -> list[Any]:
        """At start: nothing passes until a fresh id, the log start and a fetch agree."""
        if identity is None or identity.at < self._built_at:
            return []  # the id is being asked
        if self._state.offset is not None and self._log_start is None:
            self._log_start = self._earliest()
            if self._log_start is None:
                return []
        batch = list(self._inner.next_batch())
        observed = self._observe(identity, batch)
        if self._stopped(observed):
            return []
        if observed.high is None and not batch and self._state.offset is not None:
            return []  # no fetch answered yet: the high watermark is still unknown
        self._verified = True
        if identity.topic_id is not None and self._state.topic_id != identity.topic_id:
            if self._state.topic_id is None and self._state.offset is not None:
                log.info(
                    "topic id adopted for a stored offset kept without one",
                    extra={"where": self._scope, "topic_id": identity.topic_id,
                           "offset": self._state.offset},
                )  # fmt: skip
            self._state = replace(self._state, topic_id=identity.topic_id)
        return self._advance(batch, observed)

    def _pass(self, batch: list[Any], identity: TopicIdentity | None) -> list[Any]:
        observed = self._observe(identity, batch)
        if self._stopped(observed):
            return []
        return self._advance(batch, observed)

    def _advance(self, batch: list[Any], observed: Observed) -> list[Any]:
        """The batch is continuous: move the vouched offset, follow a re-read."""
        resume = self._inner.snapshot()
        offset = resume if isinstance(resume, int) and resume >= 0 else self._state.offset
        self._state = self._state.read_to(offset, observed.high)
        if self._state.reread_until == -1 and observed.high is not None:
            self._state = replace(self._state, reread_until=observed.high)
        if reread_caught_up(self._state):
            self._state = replace(self._state, reread_until=None)
            self._resolved("re-read caught up: the hold ends")
        return batch

    def _observe(self, identity: TopicIdentity | None, batch: list[Any]) -> Observed:
        errors = self._inner.error_codes(batch)
        low, high = self._watermarks()
        if self._log_start is not None:
            low = self._log_start if low is None else max(low, self._log_start)
        return Observed(
            topic_id=identity.topic_id if identity is not None else None,
            exists=identity.exists if identity is not None else True,
            log_start=low,
            high=high,
            out_of_range=bool(errors & _OUT_OF_RANGE),
            truncated=bool(errors & _TRUNCATED),
        )

    def _watermarks(self) -> tuple[int | None, int | None]:
        """The watermarks librdkafka cached from its last fetch (None: not known yet)."""
        consumer = self.consumer
        if consumer is None:
            return None, None
        low, high = consumer.get_watermark_offsets(self._where, cached=True)
        return (low if low >= 0 else None), (high if high >= 0 else None)

    def _earliest(self) -> int | None:
        """The log start by ListOffsets "earliest" (None when the brokers do not answer)."""
        consumer = self.consumer
        if consumer is None:
            return None
        try:
            low, _ = consumer.get_watermark_offsets(self._where, timeout=5, cached=False)
        except KafkaException:
            return None
        return low if low >= 0 else None

    # -- a discontinuity and the way out of it ----------------------------------------------

    def _stopped(self, observed: Observed) -> bool:
        """Check ``observed``; on a broken rule, pause here and say so everywhere."""
        kind = check(self._state, observed)
        if kind is None:
            return False
        found = Discontinuity(kind, self._where.topic, self._where.partition, self._state, observed)
        self._found = found
        self._reported = False
        metrics.SOURCE_DISCONTINUITIES.labels(kind.value).inc()
        metrics.SOURCE_DISCONTINUITY.labels(found.topic, str(found.partition)).set(1)
        stored = self._state
        log.error(
            "source discontinuity: the partition is paused and the cache held in ttl mode "
            "until an operator decides (cdc-cache continuity)",
            extra={
                "where": self._scope,
                "kind": kind.value,
                "key": found.key,
                "stored_offset": stored.offset,
                "stored_topic_id": stored.topic_id,
                "stored_high": stored.high,
                "topic_id": observed.topic_id,
                "topic_exists": observed.exists,
                "log_start": observed.log_start,
                "high": observed.high,
                "ways_forward": [action.value for action in found.ways_forward],
            },
        )
        self._hold(found.reason)
        self._report("held")
        return True

    def _await_decision(self) -> None:
        """While paused: record the discontinuity, then look for an operator's decision."""
        now = time.monotonic()
        if now - self._polled_at < _DECISION_POLL_S:
            return
        self._polled_at = now
        found = self._found
        assert found is not None
        if not self._reported:
            self._report("held")
        store = self._guard.store()
        if store is None:
            return
        try:
            decided = store.decision(self._scope)
        except REDIS_ERRORS as exc:
            log.warning("continuity: cannot read decisions", extra={"error": str(exc)})
            return
        if decided is None or decided[1] != found.key or decided[0] not in found.ways_forward:
            return
        identity = self._guard.ids.current(self._where.topic)
        if identity is None or not identity.exists:
            return  # the topic is not back yet: its identity is what goes on
        self._go_on(decided[0], identity)

    def _go_on(self, action: Action, identity: TopicIdentity) -> None:
        """Start again from the topic's first offset under its current identity."""
        found = self._found
        assert found is not None
        self._inner.close()
        self._inner = self._build(None)
        self._found = None
        self._verified = True
        self._log_start = None
        rereading = -1 if action is Action.REREAD else None
        if self._guard.restarted is not None:
            self._guard.restarted(self._where.topic, self._where.partition)
        self._state = SourceState(None, identity.topic_id, None, rereading)
        metrics.SOURCE_DISCONTINUITY.labels(found.topic, str(found.partition)).set(0)
        log.warning(
            "source discontinuity resolved by the operator: reading the topic from its start",
            extra={"where": self._scope, "action": action.value, "key": found.key,
                   "skipped_from_offset": found.stored.offset, "topic_id": identity.topic_id},
        )  # fmt: skip
        if action is Action.ACCEPT:
            self._resolved("the gap was accepted by the operator")
            return
        self._hold(f"{self._scope}: re-reading the topic from its start; ttl until caught up")
        self._report("rereading", found)

    def _hold(self, reason: str) -> None:
        self._guard.holds.hold(Cause.SOURCE_DISCONTINUITY, self._scope, reason)

    def _resolved(self, why: str) -> None:
        self._guard.holds.clear(Cause.SOURCE_DISCONTINUITY, self._scope)
        log.warning("source continuity restored", extra={"where": self._scope, "why": why})
        store = self._guard.store()
        try:
            if store is not None:
                store.resolved(self._scope)
        except REDIS_ERRORS as exc:
            log.warning("continuity: cannot clear the record", extra={"error": str(exc)})

    def _report(self, state: str, found: Discontinuity | None = None) -> None:
        found = found or self._found
        store = self._guard.store()
        if found is None or store is None:
            return
        try:
            store.report(found, state, self._guard.now_ms())
        except REDIS_ERRORS as exc:
            log.warning("continuity: cannot record the discontinuity", extra={"error": str(exc)})
            return
        self._reported = True
