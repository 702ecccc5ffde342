"""The dataflow's side of lineage detection: every change gets its lineage's epoch.

Per batch (:meth:`LineageTracker.session`): the states of partitions this process has not
read yet are loaded from the registry, each change is judged by the pure state machine in
:mod:`cdc_cache.lineage.model`, a new lineage gets its epoch from the registry, and the states
are written back before the batch goes on to be applied. That order makes restarts exact:
a change is applied only after its partition's state has passed it, so a replay finds the
epoch recorded for its offset.

Everything an operator must hear of is logged, counted and shown in ``/readyz``: a switch
(logged once, by the process that registered it, with both positions), changes sorting
below their partition's newest by verdict, and positions going back with nothing to tell
why, which holds the cache in ``ttl`` mode (cause ``lineage``) until they pass the newest
again or an operator raises ``source_epoch``; so does a partition first read after a
switch whose first change nothing places in one lineage (:meth:`LineageTracker.start`).

Kept in one module: a batch's session, from judging each change to recording the
partitions' states before the batch is applied, is one piece; the judging itself is
pure, in ``lineage.model``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cdc_cache.core import labels, metrics
from cdc_cache.core.events import ChangeEvent, SourceRecord
from cdc_cache.core.retry import Backoff, retry_forever
from cdc_cache.lineage.model import (
    Change,
    Judgement,
    Limits,
    PartitionState,
    Run,
    Verdict,
    advance,
    begin,
    enter,
    forget_offsets,
    judge,
    known_lineages,
    place,
    placed,
    show,
)
from cdc_cache.lineage.registry import LineageRegistry, Partition
from cdc_cache.mode.controller import Cause
from cdc_cache.mode.holds import Holds
from cdc_cache.sink.connection import is_transient, redis_retry_reporter, translated_errors

log = logging.getLogger("cdc_cache.lineage")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LineageConfig:
    """``floor`` is the operator's ``source_epoch``: no change gets a lower epoch.

    ``settle_s``: after a switch or a re-snapshot the cache holds ``ttl`` mode this long,
    so that entries the new log did not rewrite (rows deleted while no connector streamed,
    changes the old primary never replicated) expire instead of staying cached.
    """

    floor: int = 0
    limits: Limits = field(default_factory=Limits)
    settle_s: float = 300.0


def source_of(topic: str) -> str:
    """A source name from the topic, for envelopes without ``source.name``.

    The prefix of ``<prefix>.<db>.<table>``, or the whole topic name.
    """
    parts = topic.rsplit(".", 2)
    return parts[0] if len(parts) == 3 and all(parts) else topic


class LineageTracker:
    """Judges the changes of this process's partitions; one per worker process.

    ``registry`` builds the registry on first use (the Redis client is made by the worker
    thread that needs it); ``backoff`` and ``sleep`` govern waiting for Redis.
    """

    def __init__(
        self,
        registry: Callable[[], LineageRegistry],
        holds: Holds,
        config: LineageConfig,
        *,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000,
    ) -> None:
        self._make_registry = registry
        self._registry: LineageRegistry | None = None
        self._holds = holds
        self._config = config
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._states: dict[Partition, PartitionState | None] = {}
        self._switches: dict[str, dict[str, Any]] = {}

    def session(self, records: Sequence[SourceRecord]) -> LineageSession:
        """Start judging one batch: loads the states of partitions not seen before."""
        wanted = {(r.topic, r.partition) for r in records}
        with self._lock:
            missing = [p for p in wanted if p not in self._states]
        if missing:
            loaded = self._call("loading partition lineages", lambda r: r.load(missing))
            for partition, state in loaded.items():
                if state is not None and state.rewind is not None:
                    self._hold(partition, state.source, state.rewind.reason)
            with self._lock:
                for partition, state in loaded.items():
                    self._states.setdefault(partition, state)
        return LineageSession(self)

    def restarted(self, topic: str, partition: int) -> None:
        """The partition is read again from the start of a recreated topic.

        The operator's continuity decision: its recorded offsets are forgotten, before
        anything of the new topic is judged.
        """
        where = (topic, partition)
        state = self.state(where)
        if state is None:
            state = self._call("loading a partition lineage", lambda r: r.load([where]))[where]
        if state is not None:
            self.commit({where: forget_offsets(state)})
            log.info(
                "partition lineage offsets forgotten: the topic is read from its start",
                extra={"topic": topic, "partition": partition, "epoch": state.epoch},
            )

    def details(self) -> dict[str, object]:
        """``/readyz``'s ``lineage`` entry (see :meth:`view`)."""
        return {"lineage": self.view()}

    def view(self) -> dict[str, Any]:
        """Per source: the epochs this process reads, partitions held, the last switch."""
        with self._lock:
            states = [(p, s) for p, s in self._states.items() if s is not None]
            switches = dict(self._switches)
        sources: dict[str, dict[str, Any]] = {}
        for (topic, number), state in sorted(states):
            entry = sources.setdefault(state.source, {"epochs": {}, "held": {}})
            entry["epochs"][f"{topic}[{number}]"] = state.epoch
            if state.rewind is not None:
                entry["held"][f"{topic}[{number}]"] = state.rewind.reason
        for source, switch in switches.items():
            sources.setdefault(source, {"epochs": {}, "held": {}})["last_switch"] = switch
        return {"sources": sources}

    # --- used by LineageSession ---------------------------------------------------------

    def state(self, partition: Partition) -> PartitionState | None:
        with self._lock:
            return self._states.get(partition)

    def commit(self, states: dict[Partition, PartitionState]) -> None:
        """Record judged states in Redis, then take them as this process's own."""
        self._call("saving partition lineages", lambda r: r.save(states))
        with self._lock:
            self._states.update(states)
            known = [s for s in self._states.values() if s is not None]
        for label in {labels.SOURCES(state.source) for state in states.values()}:
            mine = [s for s in known if labels.SOURCES(s.source) == label]
            metrics.LINEAGE_EPOCH.labels(label).set(max(s.epoch for s in mine))
            metrics.LINEAGE_HELD.labels(label).set(sum(s.rewind is not None for s in mine))

    def start(self, partition: Partition, source: str, change: Change) -> PartitionState:
        """A partition never judged before, with ``change`` its first.

        Before the source's first switch: in its first lineage (or the floor); its own
        stream then leads it through the switches. After one, in the lineage the source's
        other partitions' evidence places the change in (:func:`place`); a change nothing
        places starts in the first lineage, held in ``ttl`` mode (cause ``lineage``).
        """
        floor = self._config.floor
        base, latest = self._call("registering a source", lambda r: r.ensure(source, floor))
        first = max(base, floor)
        if latest <= first:
            return PartitionState.start(source, first)
        states = self._call("reading the source's lineages", lambda r: r.states(source))
        lineages = [lineage for lineage in known_lineages(states, latest) if lineage.epoch >= first]
        judgement = place(lineages, change)
        topic, number = partition
        where = {"source": source, "topic": topic, "partition": number, "offset": change.offset}
        if judgement.verdict is Verdict.IN_ORDER:
            log.info(
                "partition first read after a source lineage switch starts in its lineage",
                extra={**where, "epoch": judgement.epoch, "reason": judgement.reason},
            )
        else:
            metrics.LINEAGE_VERDICTS.labels(labels.SOURCES(source), judgement.verdict.value).inc()
            log.warning(
                "partition first read after a source lineage switch: cannot tell its lineage",
                extra={**where, "epoch": judgement.epoch, "reason": judgement.reason},
            )
            self._hold(partition, source, judgement.reason)
        return placed(source, lineages, change, judgement)

    def successor(
        self, partition: Partition, state: PartitionState, change: Change, reason: str
    ) -> int:
        """The epoch of the lineage this partition enters (registered by the first to ask)."""
        topic, number = partition
        kind = change.position.kind
        switch = {
            "from_epoch": state.epoch,
            "topic": topic,
            "partition": number,
            "offset": change.offset,
            "from_position": "none" if state.last is None else show(kind, state.last),
            "to_position": str(change.position),
            "reason": reason,
            "at_ms": int(self._clock_ms()),
        }
        floor = self._config.floor
        epoch, assigned, latest = self._call(
            "registering a lineage switch",
            lambda r: r.successor(state.source, state.epoch, floor, switch),
        )
        context = {**switch, "source": state.source, "to_epoch": epoch}
        if assigned:
            metrics.LINEAGE_SWITCHES.labels(labels.SOURCES(state.source)).inc()
            log.warning(
                "source lineage switch: changes from here on sort after the old lineage; "
                "run cdc-cache verify once the new lineage is read",
                extra=context,
            )
        else:
            log.info("partition follows the source's lineage switch", extra=context)
        if latest > epoch:
            log.warning(
                "a later lineage of the source is registered already: this partition lags "
                "behind more than one switch",
                extra={**context, "latest_epoch": latest},
            )
        with self._lock:
            self._switches[state.source] = context
        return epoch

    def verdict(self, partition: Partition, state: PartitionState, judgement: Judgement) -> None:
        """Count, log and hold for a change not simply in log order."""
        verdict = judgement.verdict
        metrics.LINEAGE_VERDICTS.labels(labels.SOURCES(state.source), verdict.value).inc()
        topic, number = partition
        where = {"source": state.source, "topic": topic, "partition": number}
        if verdict is Verdict.UNKNOWN:
            log.warning("source positions went back", extra={**where, "reason": judgement.reason})
            self._hold(partition, state.source, judgement.reason)
        elif verdict is Verdict.LATE:
            log.info("late change of an earlier lineage", extra={**where, **_why(judgement)})
        elif verdict in (Verdict.NEW, Verdict.RESNAPSHOT):
            if verdict is Verdict.RESNAPSHOT:
                log.warning("source re-snapshotted", extra={**where, "reason": judgement.reason})
            self._holds.hold(
                Cause.LINEAGE,
                f"settle:{state.source}",
                f"{state.source}: {judgement.reason}; entries the new snapshot or lineage did "
                f"not rewrite may be stale: ttl mode for {self._config.settle_s:g}s so they "
                "expire",
                for_s=self._config.settle_s,
            )

    def settled(self, partition: Partition, source: str) -> None:
        """The partition's positions compare again: its hold (if any) ends."""
        self._holds.clear(Cause.LINEAGE, _scope(partition, source))

    def _hold(self, partition: Partition, source: str, reason: str) -> None:
        topic, number = partition
        self._holds.hold(
            Cause.LINEAGE,
            _scope(partition, source),
            f"{source} {topic}[{number}]: {reason}; ttl mode until positions pass the newest "
            "again, or source_epoch is raised above the partition's epoch",
        )

    def _call(self, action: str, fn: Callable[[LineageRegistry], T]) -> T:
        def attempt() -> T:
            # Refused credentials or a missing permission are settings to fix (ConfigError,
            # the worker exits 2), never retried as an outage.
            with translated_errors(action):
                if self._registry is None:
                    self._registry = self._make_registry()
                return fn(self._registry)

        return retry_forever(
            attempt,
            backoff=self._backoff,
            is_transient=is_transient,
            on_retry=redis_retry_reporter(action),
            sleep=self._sleep,
        )

    @property
    def floor(self) -> int:
        return self._config.floor

    @property
    def limits(self) -> Limits:
        return self._config.limits


class LineageSession:
    """Judging one batch: :meth:`hint` before decoding, :meth:`epoch_of` after, :meth:`close`.

    Closing records the states, which must happen before the batch is applied.
    """

    def __init__(self, tracker: LineageTracker) -> None:
        self._tracker = tracker
        self._floor = tracker.floor
        self._runs: dict[Partition, Run] = {}

    def hint(self, record: SourceRecord) -> int:
        """The epoch a change of this partition most likely gets (decode with it)."""
        partition = (record.topic, record.partition)
        run = self._runs.get(partition)
        state = run.state if run is not None else self._tracker.state(partition)
        return state.epoch if state is not None else self._tracker.floor

    def epoch_of(self, record: SourceRecord, event: ChangeEvent) -> int:
        """Judge one change and return the epoch its position must carry."""
        tracker = self._tracker
        partition = (record.topic, record.partition)
        run = self._runs.get(partition)
        if run is not None:
            # The hot path: a plain in-order change of a partition judged in this batch.
            if run.epoch >= self._floor and run.take(record.offset, event.position, event.origin):
                return run.epoch
            state: PartitionState | None = run.fold()
        else:
            state = tracker.state(partition)
        change = Change(record.offset, event.position, event.origin)
        if state is None:
            state = tracker.start(partition, event.server or source_of(record.topic), change)
        if change.offset > state.offset:
            state = begin(state, change.offset)
            if state.epoch < tracker.floor:
                state = self._raised(partition, state, change)
        judgement = judge(state, change, tracker.limits)
        epoch = judgement.epoch
        if judgement.verdict is Verdict.NEW:
            epoch = tracker.successor(partition, state, change, judgement.reason)
        if judgement.verdict not in (Verdict.IN_ORDER, Verdict.REPLAYED):
            tracker.verdict(partition, state, judgement)
        new = advance(state, change, judgement, epoch)
        if state.rewind is not None and new.rewind is None:
            tracker.settled(partition, state.source)
        self._runs[partition] = Run(new)
        assert epoch is not None
        return epoch

    def _raised(
        self, partition: Partition, state: PartitionState, change: Change
    ) -> PartitionState:
        """The operator raised ``source_epoch`` above this partition's epoch.

        From this change on, it reads a lineage of that epoch (its hold, if any, ends).
        """
        floor = self._tracker.floor
        log.warning(
            "source_epoch raised above the partition's lineage: changes from here on sort "
            "after everything before",
            extra={"source": state.source, "topic": partition[0], "partition": partition[1],
                   "offset": change.offset, "from_epoch": state.epoch, "to_epoch": floor},
        )  # fmt: skip
        if state.rewind is not None:
            self._tracker.settled(partition, state.source)
        return enter(state, change.offset, floor)

    def close(self) -> None:
        """Record the judged partitions' states (before their changes are applied)."""
        if self._runs:
            self._tracker.commit({p: run.fold() for p, run in self._runs.items()})
            self._runs = {}


def _scope(partition: Partition, source: str) -> str:
    topic, number = partition
    return f"{source}/{topic}[{number}]"


def _why(judgement: Judgement) -> dict[str, Any]:
    return {"reason": judgement.reason, "epoch": judgement.epoch}
