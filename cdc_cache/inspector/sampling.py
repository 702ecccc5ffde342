"""Which changes ``cdc-cache inspect`` samples, and when each sample is looked at (pure).

A sample follows one row (its Kafka topic, partition and key): the change that was
sampled, then every later change of the same row the inspector reads, so a check always
judges the row's newest known state and only once that state is ``settle_s`` old. A row
that never stays quiet that long is given up (``busy_row``) rather than judged while a
change is in flight. Until then the cache alone is probed (``probe_s`` after the change
was read, doubling) to see when the change became visible: its time to consistency.
Time is passed in, never read, so all of it is tested without clocks.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from enum import StrEnum

from cdc_cache.core.errors import PoisonMessage
from cdc_cache.core.events import ChangeEvent
from cdc_cache.inspector.consistency import Outcome, implications
from cdc_cache.plan.cache_ops import ValueFormat
from cdc_cache.plan.rules import KeyRule, TableRules
from cdc_cache.tools.index_judge import Pair

RowId = tuple[str, int, bytes]
"""A row as the stream knows it: topic, partition and the record's key bytes."""


class Skip(StrEnum):
    """Why a change was not sampled, or a sample ended without a check."""

    RATE = "rate"  # over max_samples_per_s
    BACKLOG = "backlog"  # max_pending samples already in flight
    BUSY_ROW = "busy_row"  # the row kept changing for longer than the re-check limit
    UNDECODABLE = "undecodable"  # the worker dead-letters it; nothing to check
    UNRENDERABLE = "unrenderable"  # a rule cannot render the row: dead-lettered too


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; may run into debt.

    Debt makes the limit hold on average when one step needs more than was saved (a check
    that must also look up a key's row): the next steps wait it off.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = max(burst, 1.0)
        self._tokens = self._burst
        self._at = now

    def _refill(self, now: float) -> None:
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now

    def take(self, now: float, count: float = 1.0) -> bool:
        """Take ``count`` tokens if that many are there."""
        self._refill(now)
        if self._tokens < count:
            return False
        self._tokens -= count
        return True

    def charge(self, now: float, count: float) -> None:
        """Take ``count`` tokens whatever is left (possibly into debt)."""
        self._refill(now)
        self._tokens -= count

    def wait_s(self, now: float) -> float:
        """Seconds until one token is there."""
        self._refill(now)
        return max(0.0, (1.0 - self._tokens) / self._rate)


class Sampler:
    """One change in ``every``, at most ``max_per_s`` a second."""

    def __init__(self, every: int, max_per_s: float, now: float, rng: random.Random) -> None:
        self._every = every
        self._bucket = TokenBucket(max_per_s, max_per_s, now)
        self._rng = rng

    def chosen(self) -> bool:
        """Whether the next change falls in the 1-in-``every`` share (no rate spent)."""
        return self._every == 1 or self._rng.randrange(self._every) == 0

    def admit(self, now: float) -> bool:
        """Spend one sample of the rate; False when the rate is used up."""
        return self._bucket.take(now)


@dataclass
class Sample:
    """A sampled row: its newest known change and the keys any of its images rendered.

    ``members``: the index memberships (index key, member) any of its images implied.
    It is either waiting for its judgement or, judged inconsistent, being re-checked.
    """

    row: RowId
    table: TableRules
    primary_key: tuple[str, ...]
    event: ChangeEvent
    keys: dict[str, ValueFormat]
    first_seen: float
    received: float
    due: float
    outcome: Outcome | None = None  # the first judgement, once made
    judged_at: float | None = None
    judged_commit_ms: int | None = None
    rechecks: int = 0
    doubted_since: float | None = None  # since when its checks had a doubt (a change in flight?)
    changes: int = 1
    probes: int = 0  # looks at the cache since the newest change was read
    visible_ms: float | None = None  # when a probe first found the newest change applied
    members: dict[Pair, KeyRule] = field(default_factory=dict)

    @property
    def judged(self) -> bool:
        return self.outcome is not None


@dataclass
class Tracker:
    """The samples in flight, by row, in the order they come due."""

    settle_s: float
    limit_s: float
    max_pending: int
    probe_s: float = 0.05
    _samples: dict[RowId, Sample] = field(default_factory=dict)
    _heap: list[tuple[float, int, RowId]] = field(default_factory=list)
    _pushed: int = 0

    @property
    def pending(self) -> int:
        return len(self._samples)

    def follows(self, row: RowId) -> bool:
        """Whether a sample follows this row (its changes must be read)."""
        return row in self._samples

    def start(self, row: RowId, table: TableRules, event: ChangeEvent, now: float) -> Skip | None:
        """Follow ``row`` from ``event``; why not, when it cannot be followed."""
        if len(self._samples) >= self.max_pending:
            return Skip.BACKLOG
        primary_key = tuple(event.key)
        sample = Sample(row, table, primary_key, event, {}, now, now, now + self.probe_s)
        _add_keys(sample, event)
        self._samples[row] = sample
        self._schedule(sample)
        return None

    def update(self, row: RowId, event: ChangeEvent, now: float) -> Skip | None:
        """A later change of a followed row: its check waits until this one settled.

        Gives the sample up (``busy_row``) when it was not judged within ``limit_s`` of
        being sampled because the row never stayed quiet for ``settle_s``.
        """
        sample = self._samples[row]
        _add_keys(sample, event)
        sample.changes += 1
        if event.position > sample.event.position:
            sample.event = event
        if not sample.judged and now - sample.first_seen > self.settle_s + self.limit_s:
            self.drop(sample)
            return Skip.BUSY_ROW
        sample.received = now
        sample.doubted_since = None
        sample.probes = 0
        sample.visible_ms = None
        self.at(sample, now + (self.settle_s if sample.judged else self.probe_s))
        return None

    def settles_at(self, sample: Sample) -> float:
        """When the sample's newest change will have settled."""
        return sample.received + self.settle_s

    def probing(self, sample: Sample, now: float) -> bool:
        """Whether the sample is still being probed (not judged, newest change unsettled)."""
        return not sample.judged and now < self.settles_at(sample)

    def probe_again(self, sample: Sample, now: float) -> None:
        """The newest change is not visible yet: the next probe, twice as late."""
        sample.probes += 1
        self.at(sample, min(now + self.probe_s * 2**sample.probes, self.settles_at(sample)))

    def at(self, sample: Sample, when: float) -> None:
        """Look at ``sample`` at ``when``."""
        sample.due = when
        self._schedule(sample)

    def next_at(self) -> float | None:
        """When the earliest look is due (possibly one that moved since), if any."""
        return self._heap[0][0] if self._heap else None

    def next_due(self, now: float) -> Sample | None:
        """The next sample whose check is due, if any."""
        while self._heap and self._heap[0][0] <= now:
            due, _, row = heapq.heappop(self._heap)
            sample = self._samples.get(row)
            if sample is not None and sample.due == due:
                return sample
        return None

    def later(self, sample: Sample, at: float) -> None:
        """Check ``sample`` at ``at``, never before its newest change settled."""
        self.at(sample, max(at, self.settles_at(sample)))

    def drop(self, sample: Sample) -> None:
        """Stop following ``sample``'s row."""
        self._samples.pop(sample.row, None)

    def _schedule(self, sample: Sample) -> None:
        self._pushed += 1
        heapq.heappush(self._heap, (sample.due, self._pushed, sample.row))
        if len(self._heap) > 4 * max(len(self._samples), 64):
            self._compact()

    def _compact(self) -> None:
        """Drop heap entries of samples that moved or ended (they are skipped lazily)."""
        self._heap = [
            entry
            for entry in self._heap
            if (s := self._samples.get(entry[2])) is not None and s.due == entry[0]
        ]
        heapq.heapify(self._heap)


def _add_keys(sample: Sample, event: ChangeEvent) -> None:
    """Note the ``set`` keys and the index memberships of the change's images.

    An image that cannot render them (a PostgreSQL before image without REPLICA IDENTITY
    FULL, a row with a NULL score of a zadd index) adds none; the check skips a sample
    whose newest image, or row, the rules cannot render.
    """
    for image in (event.before, event.after):
        try:
            keys, members = implications(sample.table, image, sample.primary_key)
            for key, op in keys.items():
                sample.keys[key] = op.format
            for pair, (rule, _) in members.items():
                sample.members[pair] = rule
        except PoisonMessage:
            continue


def recheck_delay(rechecks: int, first_s: float = 0.25, max_s: float = 5.0) -> float:
    """Seconds before re-check number ``rechecks`` (1-based) of a wrong key: doubling."""
    return float(min(max_s, first_s * 2.0 ** max(rechecks - 1, 0)))
