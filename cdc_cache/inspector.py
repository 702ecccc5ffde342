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

**A check** (see :mod:`cdc_cache.sampling` for when): Redis first (every key the row's
images rendered, one pipeline), then the row from the database by primary key (one
query). Reading Redis first means a change committed in between shows as a row that
differs from the newest change read, never as a stale key. When the row differs from
that change, the stream has likely not brought the change yet: the check waits for it
for up to ``settle_s`` (a change that arrives moves the check), then judges the row as it
is. Every key is judged (:mod:`cdc_cache.consistency`); a key the row no longer renders
that still holds a value costs one more query (is there a row it belongs to?) and is
``unexpected`` if not.

**Load.** Database queries are capped at ``inspect_max_db_queries_per_s`` (re-checks
included; a check that must look a key up runs the cap into debt that later checks wait
off); samples at one in ``inspect_sample_every`` changes and ``inspect_max_samples_per_s``.
Nothing is ever written to the cache.

**After the judgement** a stale or unexpected sample is re-checked (0.25 s, doubling to
5 s) until its keys are right, which gives its time to consistency, or until
``inspect_recheck_limit_s`` (then it counts as unresolved and is logged as an error).
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final, Protocol

import orjson
from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition
from redis import exceptions as rex

from cdc_cache import metrics
from cdc_cache.admin import AdminServer, Starting
from cdc_cache.broker_health import BrokerHealth
from cdc_cache.consistency import (
    INCONSISTENT,
    KeyFinding,
    Outcome,
    judge_keys,
    rendered,
    same_projection,
    strays,
    worst,
)
from cdc_cache.envelope import Parse, decode
from cdc_cache.errors import BrokerUnavailable, CdcCacheError, ConfigError, PoisonMessage
from cdc_cache.events import ChangeEvent, Op, Row, SourceRecord
from cdc_cache.kafka_logs import with_logger
from cdc_cache.mode import Flag
from cdc_cache.nines import WINDOWS, Windows, nines_of
from cdc_cache.ops import ValueFormat
from cdc_cache.redact import redact_url
from cdc_cache.redis_apply import Client, is_transient, misconfiguration
from cdc_cache.retry import Backoff, retry_forever, retry_reporter
from cdc_cache.rules import Action, KeyRule, Rules, TableRules
from cdc_cache.sampling import RowId, Sample, Sampler, Skip, TokenBucket, Tracker, recheck_delay
from cdc_cache.schema_registry import SchemaResolver, schema_resolver
from cdc_cache.settings import InspectSettings
from cdc_cache.throttle import Throttle
from cdc_cache.topics import heartbeat_server
from cdc_cache.verify import Database, KeyPattern, Stored, nines, read_keys, row_for_key
from cdc_cache.worker import resolve_topics
from cdc_cache.writer import connect_when_available
from dataflows.invalidation import CONSUMER_DEFAULTS

log = logging.getLogger("cdc_cache.inspect")

EXAMPLES: Final = 20
TTC_KEPT: Final = 2000
_SAMPLED_OPS: Final = frozenset({Op.CREATE, Op.UPDATE, Op.DELETE, Op.READ})
_DEFER_S: Final = 0.2
_POLL_S: Final = 0.1
_MAX_BATCH: Final = 500


class Truth(Protocol):
    """What a check reads: the cache first, then the database."""

    def stored(self, keys: Mapping[str, ValueFormat]) -> dict[str, Stored]: ...

    def row(self, table: str, key: Mapping[str, Any]) -> Row | None: ...

    def owned(self, table: TableRules, primary_key: Sequence[str], key: str) -> bool:
        """Whether a row of ``table`` renders ``key`` (one query)."""
        ...


@dataclass(frozen=True, slots=True)
class Deferred:
    """The check has a doubt a change in flight may explain; it waits (see Inspector).

    The row differs from the newest change read (the stream has not brought the next
    one yet), or a key the row no longer renders holds a value no row renders (another
    row's change that empties it may be in flight).
    """

    queries: int


@dataclass(frozen=True, slots=True)
class Unrenderable:
    """A rule cannot render the row (the worker dead-letters such a change)."""


@dataclass(frozen=True, slots=True)
class Judged:
    """The check's outcome, its keys' findings and the database queries it took."""

    outcome: Outcome
    findings: tuple[KeyFinding, ...]
    queries: int
    renders: Mapping[str, ValueFormat]  # the keys the row renders


def visible(sample: Sample, truth: Truth) -> bool:
    """Whether the cache shows the sample's newest change (no database read).

    Each key its image renders holds the image's projection, and each other key of the
    row is gone.
    """
    try:
        newest = rendered(sample.table, sample.event.image, sample.primary_key)
    except PoisonMessage:
        return False
    stored = truth.stored(sample.keys)
    right = all(f.outcome is Outcome.CONSISTENT for f in judge_keys(newest, stored))
    return right and not strays(sample.keys, newest, stored)


def check(
    sample: Sample, truth: Truth, *, trusting: bool = False
) -> Deferred | Unrenderable | Judged:
    """Judge ``sample``'s keys against its row (see the module docstring for the order).

    A doubt (see :class:`Deferred`) defers the check unless ``trusting`` (the doubt
    outlived ``settle_s``); keys the row renders that none of the images read did are
    then read after the row.
    """
    stored = truth.stored(sample.keys)
    row = truth.row(sample.table.table, sample.event.key)
    try:
        expected = rendered(sample.table, row, sample.primary_key)
        newest = rendered(sample.table, sample.event.image, sample.primary_key)
    except PoisonMessage:
        return Unrenderable()
    if not same_projection(expected, newest):
        if not trusting:
            return Deferred(1)
        unseen = {key: op.format for key, op in expected.items() if key not in stored}
        stored |= truth.stored(unseen) if unseen else {}
    findings = judge_keys(expected, stored)
    queries = 1
    for key in strays(sample.keys, expected, stored):
        queries += 1
        if not truth.owned(sample.table, sample.primary_key, key):
            findings.append(KeyFinding(key, Outcome.UNEXPECTED))
    if not trusting and any(f.outcome is Outcome.UNEXPECTED for f in findings):
        return Deferred(queries)
    renders = {key: op.format for key, op in expected.items()}
    return Judged(worst(findings), tuple(findings), queries, renders)


@dataclass
class Report:
    """What the inspector found: counts, windows, latest inconsistencies. Thread-safe."""

    objective: float
    min_checks: int
    checks: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    unresolved: int = 0
    resolved: int = 0
    pending: int = 0
    windows: Windows = field(default_factory=Windows)
    latest: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EXAMPLES))
    ttc: deque[float] = field(default_factory=lambda: deque(maxlen=TTC_KEPT))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def judged(self, table: str, outcome: Outcome, now: float) -> None:
        with self._lock:
            self.checks[outcome.value] += 1
            self.windows.add(now, inconsistent=outcome in INCONSISTENT)
        metrics.INSPECT_CHECKS.labels(table, outcome.value).inc()

    def skip(self, reason: Skip) -> None:
        with self._lock:
            self.skipped[reason.value] += 1
        metrics.INSPECT_SKIPPED.labels(reason.value).inc()

    def consistent_after(self, seconds: float, *, recovered: bool) -> None:
        with self._lock:
            self.ttc.append(seconds)
            self.resolved += int(recovered)
        metrics.INSPECT_TIME_TO_CONSISTENCY.observe(seconds)

    def gave_up(self, outcome: Outcome) -> None:
        with self._lock:
            self.unresolved += 1
        metrics.INSPECT_UNRESOLVED.labels(outcome.value).inc()

    def example(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.latest.appendleft(entry)

    def publish(self, now: float, pending: int) -> None:
        """Set the gauges (once a second)."""
        metrics.INSPECT_OBJECTIVE.set(self.objective)
        metrics.INSPECT_PENDING.set(pending)
        with self._lock:
            self.pending = pending
            totals = {name: self.windows.totals(span, now) for name, span in WINDOWS.items()}
        for name, (count, bad) in totals.items():
            metrics.INSPECT_WINDOW_CHECKS.labels(name).set(count)
            metrics.INSPECT_NINES.labels(name).set(nines_of(count, bad, self.min_checks))

    def view(self, now: float) -> dict[str, Any]:
        """The report as JSON-ready data (``GET /inspect``)."""
        with self._lock:
            windows = {}
            for name, span in WINDOWS.items():
                count, bad = self.windows.totals(span, now)
                value = nines_of(count, bad, self.min_checks)
                windows[name] = {
                    "checks": count,
                    "inconsistent": bad,
                    "consistency": nines(count, bad) if count else None,
                    "nines": None if math.isnan(value) else ("inf" if math.isinf(value) else value),
                }
            return {
                "objective_nines": self.objective,
                "windows": windows,
                "checks": {o.value: self.checks[o.value] for o in Outcome},
                "skipped": dict(self.skipped),
                "pending": self.pending,
                "recovered": self.resolved,
                "unresolved": self.unresolved,
                "time_to_consistency_s": _quantiles(self.ttc),
                "latest_inconsistencies": list(self.latest),
            }


def _quantiles(values: Sequence[float]) -> dict[str, float | int | None]:
    ordered = sorted(values)
    if not ordered:
        return {"observations": 0, "p50": None, "p99": None, "max": None}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"observations": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": at(1.0)}


def text_page(view: Mapping[str, Any]) -> str:
    """The report for people (``GET /``), as plain text."""
    lines = [f"cdc-cache inspect: objective {view['objective_nines']:g} nines"]
    for name, window in view["windows"].items():
        shown = window["consistency"] or "no checks"
        lines.append(
            f"  {name:<3} {shown:>12}  ({window['checks']} checks, "
            f"{window['inconsistent']} inconsistent)"
        )
    checks = "  ".join(f"{k} {v}" for k, v in view["checks"].items())
    lines.append(f"  checks   {checks}")
    ttc = view["time_to_consistency_s"]
    lines.append(
        f"  time to consistency p50 {ttc['p50']} s, p99 {ttc['p99']} s, max {ttc['max']} s "
        f"({ttc['observations']} samples)"
    )
    lines.append(
        f"  pending {view['pending']}, recovered {view['recovered']}, "
        f"unresolved {view['unresolved']}, skipped {view['skipped'] or 0}"
    )
    lines.append("latest inconsistencies:")
    for entry in view["latest_inconsistencies"]:
        lines.append(
            f"  {entry['at']}  {entry['kind']:<10} {entry['table']}  {entry['key']}  "
            f"age {entry['age_s']} s  {', '.join(entry['fields'])}"
        )
    return "\n".join(lines) + "\n"


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
        self._tables = {
            name: table
            for name, table in rules.tables.items()
            if any(rule.action is Action.SET for rule in table.keys)
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
        """The tables sampled: those with at least one ``set`` rule."""
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
        try:
            decoded = decode(record, epoch=self.settings.source_epoch, parse=self._parse(record))
        except PoisonMessage:
            if count:
                self.report.skip(Skip.UNDECODABLE)
            return None
        return decoded if isinstance(decoded, ChangeEvent) else None

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
        self.report.judged(sample.table.table, result.outcome, now)
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
                    "keys": [f.key for f in result.findings if f.outcome in INCONSISTENT],
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

    def _inconsistent(self, sample: Sample, result: Judged) -> None:
        committed = sample.event.committed_at_ms
        age = None if committed is None else round((self._wall_ms() - committed) / 1000, 3)
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._wall_ms() / 1000))
        for finding in result.findings:
            if finding.outcome not in INCONSISTENT:
                continue
            entry = {
                "at": at,
                "table": sample.table.table,
                "key": finding.key,
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
            for record in records(_POLL_S):
                self.offer(record)
            self.run_due()
            now = self._clock()
            if now - published >= 1.0:
                self.report.publish(now, self.tracker.pending)
                published = now

    def view(self) -> dict[str, Any]:
        return self.report.view(self._clock())


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
        problem = misconfiguration(exc)
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


# --------------------------------------------------------------------------- the edges


class LiveTruth:
    """Redis through the worker's client, the database through ``verify``'s reader.

    The database connection is opened again after any error (a restarted server, a
    dropped connection); each query is counted against the caller's budget.
    """

    def __init__(self, client: Client, dsn: str, patterns: Mapping[KeyRule, KeyPattern]) -> None:
        self._client = client
        self._dsn = dsn
        self._db: Database | None = None
        self._patterns = patterns

    def _database(self) -> Database:
        if self._db is None:
            self._db = Database.connect(self._dsn)
        return self._db

    def _reset(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except Exception:
                log.debug("database connection did not close cleanly", exc_info=True)
            self._db = None

    def connect(self, backoff: Backoff, stop: threading.Event) -> None:
        """Open the database connection, waiting (logged, counted) while it fails."""
        attempt = 0
        while not stop.is_set():
            try:
                self._database()
                return
            except ConfigError:
                raise
            except CdcCacheError as exc:
                attempt += 1
                metrics.RETRIES.labels("database").inc()
                log.warning(
                    "database unavailable, retrying", extra={"attempt": attempt, "error": str(exc)}
                )
                stop.wait(backoff.delay(attempt, random.Random()))

    def stored(self, keys: Mapping[str, ValueFormat]) -> dict[str, Stored]:
        ordered = sorted(keys.items())
        values = read_keys(self._client, ordered)
        return {key: value for (key, _), value in zip(ordered, values, strict=True)}

    def row(self, table: str, key: Mapping[str, Any]) -> Row | None:
        metrics.INSPECT_DB_QUERIES.inc()
        try:
            found = self._database().matching(table, key, as_text=False)
        except Exception:
            self._reset()
            raise
        return found[0] if found else None

    def owned(self, table: TableRules, primary_key: Sequence[str], key: str) -> bool:
        for rule in table.keys:
            pattern = self._patterns.get(rule)
            if pattern is None or pattern.parse(key) is None:
                continue
            metrics.INSPECT_DB_QUERIES.inc()
            try:
                if row_for_key(self._database(), table, primary_key, key, pattern) is not None:
                    return True
            except Exception:
                self._reset()
                raise
        return False

    def ready(self) -> bool:
        return self._db is not None

    def close(self) -> None:
        self._reset()


class KafkaRecords:
    """Every partition of the topics, assigned from their end; records as SourceRecords."""

    def __init__(self, settings: InspectSettings, topics: Sequence[str]) -> None:
        self.health = BrokerHealth()
        config = {
            **CONSUMER_DEFAULTS,
            **with_logger(settings.consumer_kafka()),
            "bootstrap.servers": settings.brokers,
            "group.id": "cdc-cache-inspect",  # never joined: partitions are assigned
            "enable.auto.commit": "false",
            "auto.offset.reset": "latest",  # a sampler loses nothing it must keep
            "error_cb": self.health.on_error,
        }
        self._consumer = Consumer(config)
        assignment = retry_forever(
            lambda: self._partitions(topics),
            backoff=settings.retry_kafka.backoff(),
            is_transient=lambda exc: isinstance(exc, KafkaException | BrokerUnavailable),
            on_retry=retry_reporter("kafka", "waiting for the topics' partitions", log),
        )
        self._consumer.assign(assignment)
        self.partitions = len(assignment)
        self._errors = Throttle(30.0)

    def _partitions(self, topics: Sequence[str]) -> list[TopicPartition]:
        """Every partition of ``topics``, from its end."""
        assignment = []
        for topic in topics:
            meta = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                msg = f"topic {topic} has no partitions to read yet"
                raise BrokerUnavailable(msg)
            assignment += [TopicPartition(topic, p, OFFSET_END) for p in sorted(meta.partitions)]
        return assignment

    def __call__(self, timeout_s: float) -> list[SourceRecord]:
        out = []
        for message in self._consumer.consume(_MAX_BATCH, timeout_s):
            error = message.error()
            if error is not None:
                metrics.CONSUMER_ERRORS.labels(error.name()).inc()
                if self._errors.admit(error.code()) is not None:
                    log.warning("kafka consumer error", extra={"error": error.str()})
                continue
            stamp = message.timestamp()
            out.append(
                SourceRecord(
                    message.topic() or "",
                    message.partition() or 0,
                    message.offset() or 0,
                    message.key(),
                    message.value(),
                    stamp[1] if stamp and stamp[1] >= 0 else None,
                )
            )
        if out:
            self.health.reachable()
        return out

    def close(self) -> None:
        self._consumer.close()


class _Service:
    """The admin API's view of the inspector: its report, and readiness."""

    def __init__(self) -> None:
        self.inspector: Inspector | None = None
        self.truth: LiveTruth | None = None
        self.records: KafkaRecords | None = None

    def view(self) -> dict[str, object]:
        if self.inspector is None:
            return {"starting": True}
        return self.inspector.view()

    def ready(self) -> tuple[bool, dict[str, bool]]:
        checks = {
            "kafka": self.records is not None,
            "redis": self.truth is not None,
            "database": self.truth is not None and self.truth.ready(),
        }
        return all(checks.values()), checks

    def set_flag(self, flag: Flag) -> None:
        msg = "cdc-cache inspect has no mode to set: use cdc-cache mode set"
        raise Starting(msg)

    def json_page(self) -> tuple[HTTPStatus, bytes, str]:
        return HTTPStatus.OK, orjson.dumps(self.view()), "application/json"

    def text_page(self) -> tuple[HTTPStatus, bytes, str]:
        view = self.view()
        text = "cdc-cache inspect: starting\n" if "starting" in view else text_page(view)
        return HTTPStatus.OK, text.encode(), "text/plain; charset=utf-8"


def _parser(resolver: SchemaResolver | None) -> Callable[[SourceRecord], Parse | None]:
    if resolver is None:
        return lambda record: None
    return lambda record: resolver.parser_for([record])


def run_until(settings: InspectSettings, rules: Rules, stop: threading.Event) -> None:
    """Run the inspector until ``stop`` is set (SIGTERM, SIGINT); the admin port opens first.

    ``/healthz`` answers at once and ``/readyz`` says what it waits for (topics, Redis,
    the database).
    """
    service = _Service()
    admin = None
    if settings.inspect_port is not None:
        admin = AdminServer(
            service,
            settings.inspect_port,
            None,
            more_pages={"/inspect": service.json_page, "/": service.text_page},
        ).start()
    try:
        _run(settings, rules, stop, service)
    finally:
        if admin is not None:
            admin.close()


def _run(settings: InspectSettings, rules: Rules, stop: threading.Event, service: _Service) -> None:
    started_ms = time.time() * 1000
    named = set(settings.heartbeat_topics)
    topics = [t for t in resolve_topics(settings) if heartbeat_server(t) is None and t not in named]
    records = KafkaRecords(settings, topics)
    service.records = records
    client = connect_when_available(
        settings.redis_url, settings.retry_redis.backoff(), auth=settings.redis_auth()
    )
    patterns = {
        rule: KeyPattern.of(rule)
        for table in rules.tables.values()
        for rule in table.keys
        if rule.action is Action.SET
    }
    truth = LiveTruth(client, settings.dsn(), patterns)
    truth.connect(settings.retry_redis.backoff(), stop)
    service.truth = truth
    inspector = Inspector(
        settings, rules, truth, parse=_parser(schema_resolver(settings)), started_ms=started_ms
    )
    service.inspector = inspector
    log.info(
        "inspector started",
        extra={
            "topics": list(topics),
            "partitions": records.partitions,
            "tables": inspector.tables,
            "redis": redact_url(settings.redis_url),
            "database": redact_url(settings.dsn()),
            "sample_every": settings.inspect_sample_every,
            "max_samples_per_s": settings.inspect_max_samples_per_s,
            "max_db_queries_per_s": settings.inspect_max_db_queries_per_s,
            "settle_s": settings.inspect_settle_s,
        },
    )
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, frame: stop.set())
    try:
        inspector.run(records, stop)
    finally:
        records.close()
        truth.close()
    log.info("inspector stopped")
