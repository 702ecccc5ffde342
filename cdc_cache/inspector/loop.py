"""``cdc-cache inspect``: the cache's consistency, measured all the time, in nines.

**Where samples come from.** The inspector reads the Debezium topics with its own Kafka
consumer (every partition assigned, no consumer group, from the end). It therefore sees
every change the database committed, whether the worker applied it or not: a sample
stream written by the worker, or its notifications, would only show what the worker did,
and a change it lost would never be sampled. It needs nothing from the worker, and it
sees a sampled row's later changes, which a check must know of so as not to judge a
change still in flight. The cost: one more consumer fetching every record of the topics
(broker egress as for one more consumer group) and a dictionary lookup per record; only
sampled records and later changes of sampled rows are decoded.

**Probes**: until a sample's newest change settled, the cache alone is read (50 ms
after the change was read, doubling) to see when the change became visible: its time to
consistency. They cost Redis a few reads per sample and the database nothing.

**A check** (see :mod:`cdc_cache.inspector.sampling` for when): Redis first (every key the row's
images rendered, one pipeline), then the row from the database by primary key (one
query). Reading Redis first means a change committed in between shows as a row that
differs from the newest change read, never as a stale key. When the row differs from
that change, the stream has likely not brought the change yet: the check waits for it
for up to ``settle_s`` (a change that arrives moves the check), then judges the row as it
is. Every key is judged (:mod:`cdc_cache.inspector.consistency`); a key the row no longer renders
that still holds a value costs one more query (is there a row it belongs to?) and is
``unexpected`` if not. Index keys (zadd, sadd) are judged by the row's membership: each
index any image of the row implied is read for the row's member only (its score, or
presence), judged as ``verify`` judges it; a member left in an index the row no longer
implies costs one query likewise.

**Load.** Database queries are capped at ``inspect_max_db_queries_per_s`` (re-checks
included; a check that must look a key up runs the cap into debt that later checks wait
off); samples at one in ``inspect_sample_every`` changes and ``inspect_max_samples_per_s``.
Nothing is ever written to the cache.

**After the judgement** a stale or unexpected sample is re-checked (0.25 s, doubling to
5 s) until its keys are right, which gives its time to consistency, or until
``inspect_recheck_limit_s`` (then it counts as unresolved and is logged as an error).

Kept in one module: the consumer, the probes and the checks share the samples in
flight; the pure parts are ``sampling``, ``consistency`` and ``nines``, the edges
``edges``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from redis import exceptions as rex

from cdc_cache.core import metrics
from cdc_cache.core.errors import ConfigError, RenderError
from cdc_cache.core.events import ChangeEvent, Op, SourceRecord
from cdc_cache.core.retry import Backoff
from cdc_cache.core.throttle import Throttle
from cdc_cache.inspector.check import Deferred, Judged, Truth, Unrenderable, check, visible
from cdc_cache.inspector.consistency import INCONSISTENT, KeyFinding, Outcome
from cdc_cache.inspector.report import Report
from cdc_cache.inspector.sampling import (
    RowId,
    Sample,
    Sampler,
    Skip,
    TokenBucket,
    Tracker,
    recheck_delay,
)
from cdc_cache.inspector.settings import InspectSettings
from cdc_cache.plan.route import Planned, Rejected, route
from cdc_cache.plan.rules import Action, Rules
from cdc_cache.sink.connection import is_transient, misconfiguration
from cdc_cache.source.envelope import Parse

log = logging.getLogger("cdc_cache.inspect")

_SAMPLED_OPS: Final = frozenset({Op.CREATE, Op.UPDATE, Op.DELETE, Op.READ})
_JUDGED: Final = frozenset({Action.SET, Action.ZADD, Action.SADD})  # keys and index keys
_DEFER_S: Final = 0.2
_POLL_S: Final = 0.1


class Inspector:
    """Samples changes from ``records``, checks them against ``truth``, reports in ``report``.

    ``records()`` returns the records fetched within a short wait (the Kafka edge);
    ``parse`` builds the value parser for a record (Avro through the registry). Single
    threaded: one loop reads, schedules and checks; the HTTP server only reads the report.
    """

    def __init__(
        self,
        settings: InspectSettings,
        rules: Rules,
        truth: Truth,
        *,
        parse: Callable[[SourceRecord], Parse | None] = lambda record: None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], float] = lambda: time.time() * 1000,
        rng: random.Random | None = None,
        started_ms: float | None = None,
    ) -> None:
        self.settings = settings
        self.truth = truth
        self._rules = rules
        self._tables = {
            name: table
            for name, table in rules.tables.items()
            if any(rule.action in _JUDGED for rule in table.keys)
        }
        self._parse = parse
        self._clock = clock
        self._wall_ms = wall_ms
        now = clock()
        self.started_ms = wall_ms() if started_ms is None else started_ms
        self.sampler = Sampler(
            settings.inspect_sample_every,
            settings.inspect_max_samples_per_s,
            now,
            rng or random.Random(),
        )
        rate = settings.inspect_max_db_queries_per_s
        self.queries = TokenBucket(rate, rate, now)
        self.tracker = Tracker(
            settings.inspect_settle_s,
            settings.inspect_recheck_limit_s,
            settings.inspect_max_pending,
        )
        self.report = Report(settings.inspect_objective_nines, settings.inspect_min_checks)
        self._logs = Throttle(1.0, clock)
        self._outage = _Outage(clock)

    @property
    def tables(self) -> list[str]:
        """The tables sampled: those with at least one ``set`` or index (zadd, sadd) rule."""
        return sorted(self._tables)

    # -- intake ---------------------------------------------------------------------------

    def offer(self, record: SourceRecord) -> None:
        """Sample ``record`` (or follow its row's sample); cheap unless it is decoded."""
        if record.value is None:
            return  # a tombstone: the delete before it carries the change
        row: RowId = (record.topic, record.partition, record.key or b"")
        now = self._clock()
        if self.tracker.follows(row):
            event = self._decoded(record)
            if event is not None:
                skipped = self.tracker.update(row, event, now)
                if skipped is not None:
                    self.report.skip(skipped)
            return
        if record.timestamp_ms is not None and record.timestamp_ms < self.started_ms:
            return  # written before the inspector started (a broker without a true "end")
        if not self.sampler.chosen():
            return
        event = self._decoded(record, count=True)
        if event is None or event.op not in _SAMPLED_OPS:
            return
        table = self._tables.get(event.table)
        if table is None:
            return
        if not self.sampler.admit(now):
            self.report.skip(Skip.RATE)
            return
        skipped = self.tracker.start(row, table, event, now)
        if skipped is not None:
            self.report.skip(skipped)

    def _decoded(self, record: SourceRecord, *, count: bool = False) -> ChangeEvent | None:
        """The change as the worker sees it: decoded, values in its table's shape."""
        routed = route(record, self._rules, self.settings.source_epoch, parse=self._parse(record))
        if isinstance(routed, Rejected):
            if count:
                self.report.skip(_skip_of(routed))
            return None
        return routed.event if isinstance(routed, Planned) else None

    # -- checks ---------------------------------------------------------------------------

    def run_due(self, limit: int = 100) -> int:
        """Run up to ``limit`` due checks, as the query budget allows; how many ran."""
        ran = 0
        while ran < limit:
            now = self._clock()
            if self._outage.waiting(now):
                return ran
            sample = self.tracker.next_due(now)
            if sample is None:
                return ran
            if self.tracker.probing(sample, now):
                self._probe(sample, now)
                continue
            if not self.queries.take(now):
                self.tracker.later(sample, now + self.queries.wait_s(now))
                return ran
            self._check(sample, now)
            ran += 1
        return ran

    def _probe(self, sample: Sample, now: float) -> None:
        """Look at the cache alone for the newest change, to time its consistency."""
        try:
            shows = visible(sample, self.truth)
        except ConfigError:
            raise
        except Exception as exc:  # a server to wait for (ConfigError stops, above)
            self._outage.failed(_target_of(exc), exc)
            self.tracker.later(sample, now)
            return
        if shows:
            sample.visible_ms = self._wall_ms()
            self.tracker.later(sample, now)
        else:
            self.tracker.probe_again(sample, now)

    def _check(self, sample: Sample, now: float) -> None:
        since = sample.doubted_since
        trusting = since is not None and now - since >= self.tracker.settle_s
        try:
            result = check(sample, self.truth, trusting=trusting)
        except ConfigError:
            raise
        except Exception as exc:
            self._outage.failed(_target_of(exc), exc)
            self.tracker.later(sample, self._clock() + self._outage.delay())
            return
        self._outage.ended()
        done = self._clock()
        if isinstance(result, Unrenderable):
            self.tracker.drop(sample)
            self.report.skip(Skip.UNRENDERABLE)
            return
        self.queries.charge(done, result.queries - 1)
        if isinstance(result, Deferred):
            self._deferred(sample, done)
            return
        sample.doubted_since = None
        for key, value_format in result.renders.items():
            sample.keys.setdefault(key, value_format)
        for pair, rule in result.implies.items():
            sample.members.setdefault(pair, rule)
        if sample.judged:
            self._rechecked(sample, result, done)
        else:
            self._judged(sample, result, done)

    def _deferred(self, sample: Sample, now: float) -> None:
        """Look again soon; a doubt that outlives ``settle_s`` is judged as it stands.

        A change of the row the stream brings meanwhile moves the check as any later
        change does. Without one, the row is judged as it is: the change was read before
        this sample (a late duplicate was sampled), or the connector lags and the cache
        with it. A stray key no other row's change emptied within ``settle_s`` is
        unexpected.
        """
        if sample.doubted_since is None:
            sample.doubted_since = now
        self.tracker.later(sample, now + _DEFER_S)

    def _judged(self, sample: Sample, result: Judged, now: float) -> None:
        sample.outcome = result.outcome
        sample.judged_at = now
        sample.judged_commit_ms = sample.event.committed_at_ms
        table = sample.table.table
        self.report.judged(table, result.outcome, now)
        for finding in result.findings:
            if finding.index and finding.outcome is Outcome.MISSING:
                self.report.absent_index(table, finding.key, self._at(), finding.fields)
        if result.outcome not in INCONSISTENT:
            self._since_commit(sample, recovered=False)
            self.tracker.drop(sample)
            return
        self._inconsistent(sample, result)
        sample.rechecks = 1
        self.tracker.later(sample, now + recheck_delay(1))

    def _rechecked(self, sample: Sample, result: Judged, now: float) -> None:
        if result.outcome not in INCONSISTENT:
            seconds = self._since_commit(sample, recovered=True)
            log.info(
                "cache keys consistent again",
                extra={
                    "table": sample.table.table,
                    "keys": sorted(sample.keys),
                    "indexes": sorted({key for key, _ in sample.members}),
                    "was": str(sample.outcome),
                    "after_s": seconds,
                },
            )
            self.tracker.drop(sample)
            return
        assert sample.judged_at is not None
        if now - sample.judged_at >= self.tracker.limit_s:
            self.report.gave_up(result.outcome)
            log.error(
                "cache keys still inconsistent after the re-check limit",
                extra={
                    "table": sample.table.table,
                    "keys": [_named(f) for f in result.findings if f.outcome in INCONSISTENT],
                    "kind": result.outcome.value,
                    "position": str(sample.event.position),
                    "limit_s": self.tracker.limit_s,
                },
            )
            self.tracker.drop(sample)
            return
        sample.rechecks += 1
        self.tracker.later(sample, now + recheck_delay(sample.rechecks))

    def _since_commit(self, sample: Sample, *, recovered: bool) -> float | None:
        """Seconds from the judged change's commit until its keys were seen right.

        Seen by a probe before the judgement if one saw it, else by this check.
        """
        committed = sample.judged_commit_ms
        if committed is None:
            return None
        seen = self._wall_ms() if recovered or sample.visible_ms is None else sample.visible_ms
        seconds = max(0.0, (seen - committed) / 1000)
        self.report.consistent_after(seconds, recovered=recovered)
        return round(seconds, 3)

    def _at(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._wall_ms() / 1000))

    def _inconsistent(self, sample: Sample, result: Judged) -> None:
        committed = sample.event.committed_at_ms
        age = None if committed is None else round((self._wall_ms() - committed) / 1000, 3)
        at = self._at()
        for finding in result.findings:
            if finding.outcome not in INCONSISTENT:
                continue
            entry = {
                "at": at,
                "table": sample.table.table,
                "key": finding.key,
                "member": finding.member,
                "kind": finding.outcome.value,
                "age_s": age,
                "fields": list(finding.fields),
                "position": str(sample.event.position),
            }
            self.report.example(entry)
            held_back = self._logs.admit(finding.outcome)
            if held_back is not None:
                log.warning("inconsistent cache key", extra={**entry, "left_out": held_back})

    # -- the loop -------------------------------------------------------------------------

    def run(self, records: Callable[[float], list[SourceRecord]], stop: threading.Event) -> None:
        """Read, sample and check until ``stop`` is set."""
        published = 0.0
        while not stop.is_set():
            due = self.tracker.next_at()
            wait = _POLL_S if due is None else min(_POLL_S, max(0.0, due - self._clock()))
            for record in records(wait):
                self.offer(record)
            self.run_due()
            now = self._clock()
            if now - published >= 1.0:
                self.report.publish(now, self.tracker.pending)
                published = now

    def view(self) -> dict[str, Any]:
        return self.report.view(self._clock())


def _named(finding: KeyFinding) -> str:
    """A finding's key, with the member for an index key's."""
    return finding.key if finding.member is None else f"{finding.key} member {finding.member}"


def _target_of(exc: BaseException) -> str:
    """Which server a failed check waited for: Redis or the database."""
    if isinstance(exc, rex.RedisError | rex.RedisClusterException) or is_transient(exc):
        return "redis"
    return "database"


class _Outage:
    """A server a check needs does not answer: back off (all checks wait), count, log."""

    def __init__(self, clock: Callable[[], float], backoff: Backoff | None = None) -> None:
        self._clock = clock
        self._backoff = backoff or Backoff(0.2, 5.0)
        self._attempt = 0
        self._until = 0.0
        self._throttle = Throttle(30.0, clock)
        self._rng = random.Random()

    def waiting(self, now: float) -> bool:
        return now < self._until

    def delay(self) -> float:
        return max(0.0, self._until - self._clock())

    def failed(self, target: str, exc: BaseException) -> None:
        """A check could not read ``target``: wait (all checks), count and log it.

        Refused Redis credentials or a certificate that does not verify stop the inspector
        (exit 2), as they stop the worker: no wait fixes a setting.
        """
        problem = misconfiguration(exc) if target == "redis" else None
        if problem is not None:
            msg = f"Redis refused the inspector: {problem}"
            raise ConfigError(msg) from None
        self._attempt += 1
        delay = self._backoff.delay(self._attempt, self._rng)
        self._until = self._clock() + delay
        metrics.RETRIES.labels(target).inc()
        held_back = self._throttle.admit(target)
        if held_back is not None:
            log.warning(
                f"{target} unavailable: checks wait",
                extra={"attempt": self._attempt, "error": str(exc), "left_out": held_back},
            )

    def ended(self) -> None:
        if self._attempt:
            log.info("checks resumed", extra={"after_attempts": self._attempt})
            self._throttle.reset()
        self._attempt = 0


def _skip_of(rejected: Rejected) -> Skip:
    """Why a dead-lettered change is not sampled: its row cannot render, or it did not decode."""
    if rejected.event is not None and isinstance(rejected.error, RenderError):
        return Skip.UNRENDERABLE
    return Skip.UNDECODABLE
