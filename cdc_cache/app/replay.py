"""Replay dead letters through the worker's own path: decode → plan → version-gated apply.

The message is read again from its source topic at the entry's offset (the entry's copy
may be redacted), routed with the same rules, size limit and epoch as the worker (the
epoch its partition's lineage state recorded for that offset, so a change of an old
lineage replays as stale), and
written by the same :class:`~cdc_cache.sink.writer.CacheWriter`. Version gating makes a
replay idempotent: replaying twice reports ``duplicate`` the second time, and an entry
older than the key's current version reports ``stale``; neither changes the cache.
Each replay's outcome is kept per entry id in the Redis hash ``cdc:dlq:replays``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import orjson

from cdc_cache.app.settings import SharedSettings
from cdc_cache.core import metrics
from cdc_cache.core.errors import StopRequested
from cdc_cache.core.events import ChangeEvent, SourceRecord
from cdc_cache.core.keys import ns
from cdc_cache.core.retry import Backoff
from cdc_cache.dlq.age import INVALIDATED, writes_values
from cdc_cache.dlq.entries import Failure, iso_utc, public_reason, record_of
from cdc_cache.dlq.filters import EntryFilter, latest_by_id
from cdc_cache.dlq.topic import SourceReader, read_entries
from cdc_cache.fallback.store import ModeStore
from cdc_cache.lineage.registry import LineageRegistry
from cdc_cache.mode.holds import Holds
from cdc_cache.plan.route import Control, EpochOf, Planned, route
from cdc_cache.plan.rules import Rules
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.connection import Client, connect
from cdc_cache.sink.memory import MemoryWatch, OomGuard
from cdc_cache.sink.tags import TagStore
from cdc_cache.sink.version_store import version_lifetime_ms
from cdc_cache.sink.writer import CacheWriter
from cdc_cache.source.schema_registry import SchemaResolver, schema_resolver

log = logging.getLogger("cdc_cache.replay")

# A replay is an operator's request: an unreachable Redis fails it after this long
# (the outcome says so) rather than holding the request forever.
REPLAY_REDIS_WAIT_S = 30.0


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """What one replay did: applied | stale | duplicate | no_op | failed, and why."""

    id: str
    outcome: str
    detail: str
    at: str
    replays: int = 1


class SourceFetch(Protocol):
    """Reads one message back from its topic (None when the topic no longer holds it)."""

    def fetch(self, topic: str, partition: int, offset: int) -> SourceRecord | None: ...


class OutcomeStore:
    """The last replay outcome of each entry, in one Redis hash keyed by entry id."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def record(self, outcome: ReplayOutcome) -> ReplayOutcome:
        """Store ``outcome`` (counting the entry's replays); returns what was stored."""
        previous = self.get(outcome.id)
        stored = ReplayOutcome(
            outcome.id,
            outcome.outcome,
            outcome.detail,
            outcome.at,
            int(previous.get("replays", 0)) + 1 if previous else 1,
        )
        self._client.hset(ns().dlq_outcomes, stored.id, orjson.dumps(asdict(stored)))
        return stored

    def get(self, entry_id: str) -> dict[str, Any] | None:
        """The stored outcome of ``entry_id``, if it was ever replayed."""
        raw = self._client.hget(ns().dlq_outcomes, entry_id)
        return orjson.loads(raw) if raw else None

    def all(self) -> dict[str, dict[str, Any]]:
        """Every stored outcome by entry id."""
        raw = self._client.hgetall(ns().dlq_outcomes)
        return {key.decode(): orjson.loads(value) for key, value in raw.items()}


class Replayer:
    """Replays entries one at a time; ``clock_ms`` stamps the outcomes."""

    def __init__(
        self,
        rules: Rules,
        client: Client,
        source: SourceFetch,
        *,
        epoch: int = 0,
        max_value_bytes: int | None = None,
        backoff: Backoff | None = None,
        schemas: SchemaResolver | None = None,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000,
        invalidate_only: bool = False,
        lineage: LineageRegistry | None = None,
    ) -> None:
        self._rules = rules
        self._lineage = lineage
        self._client = client
        self._source = source
        self._epoch = epoch
        self._max_value_bytes = max_value_bytes
        self._backoff = backoff or Backoff(initial=0.1, maximum=2.0)
        self._schemas = schemas
        self._clock_ms = clock_ms
        self._invalidate_only = invalidate_only
        self.outcomes = OutcomeStore(client)

    def replay(self, entry: dict[str, Any]) -> ReplayOutcome:
        """Replay ``entry`` and record its outcome."""
        outcome, detail = self._run(entry)
        metrics.DLQ_REPLAYS.labels(outcome).inc()
        result = ReplayOutcome(str(entry["id"]), outcome, detail, iso_utc(self._clock_ms()))
        stored = self.outcomes.record(result)
        log.info("dead letter replayed", extra={"id": stored.id, "outcome": outcome})
        return stored

    def _run(self, entry: dict[str, Any]) -> tuple[str, str]:
        source = entry["source"]
        where = f"{source['topic']}[{source['partition']}]@{source['offset']}"
        record = self._source.fetch(
            str(source["topic"]), int(source["partition"]), int(source["offset"])
        )
        if record is None:
            try:
                record = record_of(entry)
            except ValueError as exc:
                return "failed", f"{where} is no longer in its topic, and {exc}"
        parse = self._schemas.parser_for([record]) if self._schemas is not None else None
        routed = route(
            record,
            self._rules,
            self._epoch,
            self._max_value_bytes,
            parse,
            epoch_of=epoch_of(self._lineage, self._epoch),
        )
        if isinstance(routed, Control):
            return "no_op", f"a {type(routed.item).__name__.lower()} record: nothing to apply"
        if not isinstance(routed, Planned):
            return "failed", self._reason(Failure(routed.error, routed.table, routed.event))
        failures: list[Failure] = []
        values = writes_values(routed.event, self._rules, self._clock_ms())
        invalidate_only = self._invalidate_only or not values
        applier = RedisApplier(self._client, invalidate_only=lambda: invalidate_only)
        writer = CacheWriter(
            applier,
            self._backoff,
            sleep=_deadline_sleep(REPLAY_REDIS_WAIT_S),
            ttl_cap_ms=self._ttl_cap_ms,
            reject=failures.extend,
            tags=TagStore(self._client, applier) if routed.dependencies else None,
            expiring=True,  # one change: its row's expiry, if any, measured now
        )
        try:
            written = writer.write([routed])
        except StopRequested as exc:
            return "failed", str(exc)
        if failures:
            return "failed", self._reason(failures[0])
        detail = f"position {routed.event.position}"
        return written[0].outcome, detail if values else f"{detail}; {INVALIDATED}"

    def _reason(self, failure: Failure) -> str:
        """Why the replay failed, with the table's sensitive values scrubbed as in entries."""
        return (
            f"{failure.error.kind}: {public_reason(failure, self._rules.sensitive(failure.table))}"
        )

    def _ttl_cap_ms(self) -> int | None:
        """The TTL mode's cap, as the worker applies it (read from ``cdc:mode``)."""
        record = ModeStore(self._client).record()
        if record.get("mode") != "ttl":
            return None
        cap = record.get("fallback_ttl_ms", "")
        return int(cap) if cap.isdigit() else None


def epoch_of(lineage: LineageRegistry | None, epoch: int) -> EpochOf:
    """The epoch the worker gave (or gives) a message's position.

    Its partition's lineage state at that offset, never below the operator's ``epoch``.
    """

    def of(record: SourceRecord, _event: ChangeEvent) -> int:
        if lineage is None:
            return epoch
        found = lineage.epoch_at((record.topic, record.partition), record.offset)
        return max(found, epoch) if found is not None else epoch

    return of


def _deadline_sleep(limit_s: float) -> Callable[[float], None]:
    deadline = time.monotonic() + limit_s

    def sleep(seconds: float) -> None:
        if time.monotonic() + seconds > deadline:
            msg = f"Redis unavailable for {limit_s:g} s; replay again once it answers"
            raise StopRequested(msg)
        time.sleep(seconds)

    return sleep


class DlqService:
    """Listing, inspecting and replaying dead letters, for the CLI and the admin page.

    Clients are built on first use; the DLQ topic is read to its end on each listing.
    """

    def __init__(self, settings: SharedSettings, rules: Rules, read_timeout_s: float = 30) -> None:
        self._settings = settings
        self._rules = rules
        self._read_timeout_s = read_timeout_s
        self._client: Client | None = None

    def _redis(self) -> Client:
        if self._client is None:
            self._client = connect(self._settings.redis_url, self._settings.redis_auth())
        return self._client

    def entries(self, where: EntryFilter | None = None) -> list[dict[str, Any]]:
        """Entries (one per id, the latest written) with their last replay outcome."""
        settings = self._settings
        raw = read_entries(
            settings.brokers, settings.dlq_topic, settings.consumer_kafka(), self._read_timeout_s
        )
        chosen = [e for e in latest_by_id(raw) if where is None or where.matches(e)]
        outcomes = OutcomeStore(self._redis()).all() if chosen else {}
        for entry in chosen:
            entry["outcome"] = outcomes.get(entry["id"])
        return chosen

    def entry(self, entry_id: str) -> dict[str, Any] | None:
        """One entry by id, or None."""
        found = self.entries(EntryFilter(ids=frozenset({entry_id})))
        return found[0] if found else None

    def replay(
        self,
        entries: Sequence[dict[str, Any]],
        progress: Callable[[int, int, str], None] | None = None,
    ) -> list[ReplayOutcome]:
        """Replay ``entries`` in order; returns each one's recorded outcome.

        ``progress(done, total, last outcome)`` hears of each entry replayed.
        """
        if not entries:
            return []
        settings = self._settings
        watch = MemoryWatch(
            self._redis(),
            fallback=settings.eviction_fallback,
            lifetime_ms=version_lifetime_ms(self._rules),
            guard=OomGuard(Holds(), settle_s=0),
        )
        watch.check()  # an unsafe eviction policy: refused, or invalidations only
        source = SourceReader(settings.brokers, settings.consumer_kafka())
        try:
            replayer = Replayer(
                self._rules,
                self._redis(),
                source,
                epoch=settings.source_epoch,
                max_value_bytes=settings.max_value_bytes,
                backoff=settings.retry_redis.backoff(),
                schemas=schema_resolver(settings),
                invalidate_only=watch.invalidate_only(),
                lineage=LineageRegistry(self._redis()) if settings.lineage_detection else None,
            )
            outcomes: list[ReplayOutcome] = []
            for entry in entries:
                outcomes.append(replayer.replay(entry))
                if progress is not None:
                    last = outcomes[-1]
                    progress(len(outcomes), len(entries), f"{last.id} {last.outcome}")
            return outcomes
        finally:
            source.close()
