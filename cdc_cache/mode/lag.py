"""Connector lag and consumer lag per Kafka partition, from what the consumer sees.

Pure bookkeeping (no I/O): the dataflow feeds it what it applied — the commit time of each
change, each heartbeat, and the offset applied up to, once the batch is in Redis — and
what its sources see — the high watermark and next offset while fetching — and a clock;
:meth:`LagTracker.report` turns that into lag figures. Changes count once applied, not
once read: a worker that reads on while its writes are stuck (a thread that does not
hold the sink, Redis refusing a batch that is retried) lags, as its cache does.

Connector lag of a partition is now minus the newest source time seen on it (a source
time ahead of this worker's clock is reported as such, since it hides that much lag). An
idle partition has no new changes, so a connector's heartbeats keep it fresh, but only
while the partition is caught up (nothing unapplied below its high watermark, what was
read included): a heartbeat proves the connector is current, not that this worker has
applied the connector's backlog. A partition from which nothing at all arrived has its
lag counted from when it was first tracked, and ``silent_s`` (time since the last
message or heartbeat) tells a stalled connector apart from a slow one.

Which connector feeds a topic is learned from its records (a change's ``source.name``, a
heartbeat's server), not only read from its name: a topic that routing renamed or shares
between tables keeps its idle partitions fresh through the heartbeats of the connectors
seen on its other partitions. A topic fed by several connectors is only as fresh as the
least fresh of them. Names come from messages, so their number is bounded: past
:data:`MAX_FEEDERS` connectors seen on one topic, or :data:`MAX_SERVERS` sending
heartbeats, a topic's lag counts from its changes alone (the later connectors'
heartbeats are not kept), which may read lag that is not there but never hides any.

The same bookkeeping tells whether the flow itself moves (:func:`flow_stall`): a source
partition is polled again and again, idle or not, so one not polled for long means its
dataflow thread is stuck; and messages read or waiting that stay unapplied while none are
applied mean its writes are. A write waiting to retry is neither: it is counted and
logged where it waits.

Kept in one module: the lag figures and the flow's progress come from the same
per-partition bookkeeping, kept under one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from cdc_cache.source.topics import heartbeat_server, servers_named_in

Clock = Callable[[], float]
"""Milliseconds since the epoch (``time.time() * 1000`` in production)."""

MAX_FEEDERS = 32
"""Connectors seen on one topic beyond which its heartbeats no longer count."""
MAX_SERVERS = 256
"""Connectors whose heartbeats are kept."""
_TOO_MANY = "\x00too many connectors"
"""A feeder that never sends a heartbeat: its topic's lag counts from changes alone."""


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """Lag figures of one topic partition at one instant."""

    topic: str
    partition: int
    connector_lag_s: float
    silent_s: float
    consumer_lag: int | None
    """Messages below the high watermark not yet applied; None until a fetch showed it."""
    ahead_s: float = 0.0
    """How far the last source time seen lies ahead of this worker's clock (0 when it
    does not): a source or connector clock ahead by at least that much. The lag counts
    such a time as now, so it reads low by the skew, and the fallback engages late."""
    unpolled_s: float | None = None
    """Since its source partition was last polled (None: no flow reads it now)."""
    stuck_s: float = 0.0
    """How long messages have waited unapplied with none applied meanwhile (0: none wait)."""


@dataclass(frozen=True, slots=True)
class LagReport:
    """Every tracked partition's lag; the controller looks at the worst one."""

    partitions: tuple[PartitionLag, ...]
    waited_s: float | None = None
    """Since the last wait of a write to retry ended (0 while one runs; None: none did)."""

    def worst(self) -> PartitionLag | None:
        """The partition with the largest connector lag (None when nothing is tracked)."""
        return max(self.partitions, key=lambda p: p.connector_lag_s, default=None)

    def caught_up(self, max_consumer_lag: int) -> bool:
        """True when every partition's watermark is known and its backlog is small."""
        return all(
            p.consumer_lag is not None and p.consumer_lag <= max_consumer_lag
            for p in self.partitions
        )


@dataclass(slots=True)
class _Partition:
    tracked_ms: float
    contact_ms: float
    newest_ms: float | None = None
    high: int | None = None
    next_offset: int | None = None
    applied: int | None = None  # the offset after the last one applied (None: unknown)
    latest_ms: float | None = None  # the last source time seen, as it came (maybe ahead)
    polled_ms: float | None = None  # the last poll of its source partition (None: unread)
    moved_ms: float = 0.0  # the last time it had nothing unapplied or applied some more

    def consumer_lag(self) -> int | None:
        if self.high is None or self.next_offset is None:
            return None
        done = self.next_offset if self.applied is None else min(self.applied, self.next_offset)
        return max(0, self.high - done)


@dataclass(slots=True)
class _Server:
    """The newest heartbeat of one connector (its topic prefix)."""

    emitted_ms: float | None
    contact_ms: float
    learned: bool = False
    """Read by another process (see :meth:`LagTracker.learn_heartbeats`)."""
    latest_ms: float | None = None
    """The heartbeat's time as it came (maybe ahead of this worker's clock)."""


@dataclass
class LagTracker:
    """Thread-safe: source partitions of several worker threads feed one tracker."""

    clock_ms: Clock
    _partitions: dict[tuple[str, int], _Partition] = field(default_factory=dict)
    _servers: dict[str, _Server] = field(default_factory=dict)
    _feeds: dict[str, set[str]] = field(default_factory=dict)
    """Topic → the connectors whose records were seen on it."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _waited_until_ms: float | None = None

    def track(self, topic: str, partition: int, resume: int | None = None) -> None:
        """Start watching a partition (its lag counts from now until something arrives).

        ``resume`` is the offset it is read from: what lies past it is not applied yet.
        """
        with self._lock:
            part = self._part(topic, partition)
            part.applied = resume
            part.polled_ms = part.moved_ms = self.clock_ms()

    def polled(self, topic: str, partition: int, *, paused: bool = False) -> None:
        """The flow asked a source partition for its next batch: its thread turns.

        ``paused``: the partition reads nothing on purpose (a discontinuity awaits an
        operator, under its own hold), so what waits there is not stuck.
        """
        with self._lock:
            part = self._part(topic, partition)
            part.polled_ms = self.clock_ms()
            if paused:
                part.moved_ms = part.polled_ms
            _settle(part, part.polled_ms)

    def released(self, topic: str, partition: int) -> None:
        """A source partition is closed: no flow polls it until it is tracked again."""
        with self._lock:
            self._part(topic, partition).polled_ms = None

    def waited(self, seconds: float) -> None:
        """A write waits ``seconds`` to retry (Redis refused, a replica lags...)."""
        with self._lock:
            self._waited_until_ms = self.clock_ms() + seconds * 1000

    def record(
        self,
        topic: str,
        partition: int,
        committed_at_ms: int | None = None,
        servers: Collection[str] = (),
        applied_to: int | None = None,
    ) -> None:
        """Messages were applied; ``committed_at_ms`` is the source commit time of a change.

        ``servers`` are the connectors the messages named (``source.name``);
        ``applied_to`` the offset after the last of them. A commit time later than now
        counts as now: kept as the newest, one message stamped in the future would read as
        no lag until then, whatever the partition's backlog. How far ahead it was is kept
        apart, until a later time replaces it (``ahead_s``).
        """
        with self._lock:
            part = self._part(topic, partition)
            part.contact_ms = now = self.clock_ms()
            if applied_to is not None:
                if part.applied is None or applied_to > part.applied:
                    part.moved_ms = now
                part.applied = applied_to
            _settle(part, now)
            if committed_at_ms is not None:
                committed = min(committed_at_ms, now)
                part.newest_ms = max(part.newest_ms or committed, committed)
                part.latest_ms = committed_at_ms
            if servers:
                feeds = self._feeds.setdefault(topic, set())
                if not feeds.issuperset(servers):
                    feeds.update(servers)
                    if len(feeds) > MAX_FEEDERS:
                        self._feeds[topic] = {_TOO_MANY}

    def heartbeat(
        self, topic: str, partition: int, emitted_at_ms: int | None, server: str | None = None
    ) -> None:
        """A heartbeat of connector ``server`` (by default, the one its topic is named for).

        Emitted later than now, it counts as now (see :meth:`record`).
        """
        server = server or heartbeat_server(topic)
        self.record(topic, partition, emitted_at_ms, () if server is None else (server,))
        if server is not None:
            with self._lock:
                if self._full(server):
                    return
                now = self.clock_ms()
                emitted = None if emitted_at_ms is None else min(emitted_at_ms, now)
                self._servers[server] = _Server(emitted, now, latest_ms=emitted_at_ms)

    def heartbeats(self) -> dict[str, tuple[float | None, float]]:
        """The newest heartbeat of each connector read here: (emitted ms, ms it was read).

        Those learned from other processes are left out: passed on again, an old copy
        could overwrite the newer one its reader shares meanwhile.
        """
        with self._lock:
            return {
                name: (beat.emitted_ms, beat.contact_ms)
                for name, beat in self._servers.items()
                if not beat.learned
            }

    def learn_heartbeats(self, beats: Mapping[str, tuple[float | None, float]]) -> None:
        """Heartbeats other processes read, each kept where it is newer than the one here.

        A connector's heartbeats land in one partition, read by one process.
        """
        with self._lock:
            for name, (emitted, contact) in beats.items():
                known = self._servers.get(name)
                if known is None and self._full(name):
                    continue
                if known is None or contact > known.contact_ms:
                    seen = [emitted, known.emitted_ms if known else None]
                    newest = max((ms for ms in seen if ms is not None), default=None)
                    self._servers[name] = _Server(newest, contact, learned=True)

    def offsets(
        self, topic: str, partition: int, high: int | None, next_offset: int | None
    ) -> None:
        """The high watermark and the next offset to read, as seen while fetching."""
        with self._lock:
            part = self._part(topic, partition)
            if high is not None:
                part.high = high
            if next_offset is not None:
                part.next_offset = next_offset
            _settle(part, self.clock_ms())

    def report(self) -> LagReport:
        """Lag of every tracked partition, now."""
        with self._lock:
            now = self.clock_ms()
            items = sorted(self._partitions.items())
            until = self._waited_until_ms
            waited = None if until is None else max(0.0, now - until) / 1000
            lags = tuple(self._lag(t, n, part, now) for (t, n), part in items)
            return LagReport(lags, waited)

    def _full(self, server: str) -> bool:
        """True when ``server`` is new and :data:`MAX_SERVERS` heartbeats are kept already."""
        return server not in self._servers and len(self._servers) >= MAX_SERVERS

    def _part(self, topic: str, partition: int) -> _Partition:
        part = self._partitions.get((topic, partition))
        if part is None:
            now = self.clock_ms()
            part = self._partitions[(topic, partition)] = _Partition(now, now, moved_ms=now)
        return part

    def _lag(self, topic: str, number: int, part: _Partition, now: float) -> PartitionLag:
        newest, contact, latest = part.newest_ms, part.contact_ms, [part.latest_ms]
        consumer_lag = part.consumer_lag()
        beats = self._heartbeats_of(topic)
        if beats and consumer_lag == 0:
            emitted = [beat.emitted_ms for beat in beats if beat.emitted_ms is not None]
            if len(emitted) == len(beats):
                oldest = min(emitted)
                newest = max(newest or oldest, oldest)
            contact = max(contact, min(beat.contact_ms for beat in beats))
            latest += [beat.latest_ms for beat in beats]
        since = part.tracked_ms if newest is None else newest
        return PartitionLag(
            topic,
            number,
            connector_lag_s=max(0.0, now - since) / 1000,
            silent_s=max(0.0, now - contact) / 1000,
            consumer_lag=consumer_lag,
            ahead_s=max([0.0, *(ms - now for ms in latest if ms is not None)]) / 1000,
            unpolled_s=None if part.polled_ms is None else max(0.0, now - part.polled_ms) / 1000,
            stuck_s=max(0.0, now - part.moved_ms) / 1000 if consumer_lag else 0.0,
        )

    def _heartbeats_of(self, topic: str) -> list[_Server]:
        """The heartbeats of every connector feeding ``topic``; empty unless all sent some.

        The feeders are those seen on the topic and those it is named for
        (``<server>.<db>.<table>``, ``__debezium-heartbeat.<server>``, and ``<server>``: its
        schema-change topic, idle between DDL statements). A heartbeat topic's own
        partitions belong to its connector too: heartbeats all land in one of them, and the
        others must not read as stalled.
        """
        named = servers_named_in(self._servers, topic)
        if topic in self._servers:  # the schema-change topic (named_for leaves it out)
            named.add(topic)
        feeders = self._feeds.get(topic, set()) | named
        beats = [self._servers.get(name) for name in feeders]
        return [beat for beat in beats if beat is not None] if None not in beats else []


def _settle(part: _Partition, now: float) -> None:
    """Nothing waits unapplied (or the high watermark is unknown): nothing is stuck."""
    if not part.consumer_lag():
        part.moved_ms = now


def flow_stall(report: LagReport, bound_s: float) -> str | None:
    """Why the flow does not move (None: it does, or nothing tells otherwise).

    A source partition not polled for ``bound_s`` (its dataflow thread is stuck), or one
    whose messages waited unapplied that long while none were applied (the writes are).
    An idle partition is polled and has nothing waiting, so it never counts; nor does any
    partition while a write waits to retry, or waited within ``bound_s`` (the attempt
    after it runs): that wait is counted and logged where it happens, and the lag says
    what it costs.
    """
    if report.waited_s is not None and report.waited_s < bound_s:
        return None
    for part in report.partitions:
        where = f"{part.topic}[{part.partition}]"
        if part.unpolled_s is not None and part.unpolled_s > bound_s:
            return f"{where} not polled for {part.unpolled_s:.0f}s: its dataflow thread is stuck"
        if part.stuck_s > bound_s:
            return (
                f"{where}: {part.consumer_lag} messages unapplied and none applied for "
                f"{part.stuck_s:.0f}s: the flow's writes are stuck"
            )
    return None
