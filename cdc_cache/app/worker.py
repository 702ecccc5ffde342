"""``cdc-cache run``: the long-running worker process around the dataflow.

Loads and validates everything before touching a message (settings, rules, topics), then
runs the dataflow (``dataflows/``) with recovery until SIGTERM/SIGINT, which stop it
gracefully. The flow gets one :class:`~dataflows.config.FlowConfig`, read here from the
settings, and the live parts this process shares with it.

Kept in one module: the startup steps run in this order, each reported to the readiness
page; what they build lives in the packages below.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import FrameType

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from redis import RedisCluster
from redis import exceptions as rex

from cdc_cache.app.admin import AdminServer
from cdc_cache.app.replay import DlqService
from cdc_cache.app.routes import StartupBackend
from cdc_cache.app.settings import TopicSettings, WorkerSettings
from cdc_cache.app.topic_watch import TopicWatch
from cdc_cache.core import metrics
from cdc_cache.core.errors import ConfigError, StopRequested, chain
from cdc_cache.core.periodic import Periodic
from cdc_cache.core.redact import redact_url
from cdc_cache.core.retry import retry_forever, retry_reporter, stoppable_sleep
from cdc_cache.dlq.topic import ensure_topic
from cdc_cache.fallback.runtime import ModeRuntime
from cdc_cache.fallback.shortening import (
    SHORTEN_KEYS_PER_S,
    managed_prefixes,
    shorten_ttls,
    table_prefixes,
)
from cdc_cache.lineage.model import Limits
from cdc_cache.lineage.registry import LineageRegistry
from cdc_cache.lineage.tracker import LineageConfig, LineageTracker
from cdc_cache.mode.controller import ModeConfig
from cdc_cache.mode.holds import Holds
from cdc_cache.mode.lag import LagTracker
from cdc_cache.mode.tables import TableConfig
from cdc_cache.plan.rules import Rules
from cdc_cache.plan.rules_loader import load_rules
from cdc_cache.sink.connection import (
    Client,
    connect_when_available,
    is_transient,
    misconfiguration,
    redis_retry_reporter,
)
from cdc_cache.sink.failover import ReplicationMonitor
from cdc_cache.sink.memory import MemoryWatch, OomGuard
from cdc_cache.sink.outbox import outbox_sweeper
from cdc_cache.sink.replica_wait import ReplicaRequirement
from cdc_cache.sink.tag_sweep import tag_sweeper
from cdc_cache.sink.tags import Fanout, Shorten
from cdc_cache.sink.version_store import VersionSweeper, migrate_legacy, version_lifetime_ms
from cdc_cache.source.kafka_logs import with_logger
from cdc_cache.source.schema_registry import schema_resolver
from cdc_cache.source.topics import heartbeat_server, named_for
from dataflows.config import DlqTarget, FlowConfig, FlowContext
from dataflows.invalidation import build_flow
from dataflows.run import prepare_recovery, run_flow

log = logging.getLogger("cdc_cache.worker")


def resolve_topics(settings: TopicSettings, wait_s: float = float("inf")) -> list[str]:
    """The explicit topics, or those matching ``topic_pattern``; waits until they exist.

    A connector that has not produced yet has no topics: the worker waits (and says so)
    rather than starting with nothing to read.
    """
    admin = AdminClient(with_logger({"bootstrap.servers": settings.brokers, **settings.kafka}))
    pattern = re.compile(settings.topic_pattern) if settings.topic_pattern else None
    deadline = time.monotonic() + wait_s
    announced = 0.0
    found: list[str]
    while True:
        try:
            existing = set(admin.list_topics(timeout=10).topics)
        except KafkaException as exc:  # brokers unreachable: wait, as for missing topics
            metrics.BROKER_UP.set(0)
            existing, found, missing = set(), [], [f"brokers {settings.brokers}: {exc}"]
        else:
            metrics.BROKER_UP.set(1)
            found, missing = _match_topics(settings, pattern, existing)
        admin.poll(0)  # librdkafka's lines reach the log only when the client is polled
        if not missing:
            beats = _heartbeat_topics_of(settings, existing, found)
            if not beats and not any(heartbeat_server(t) for t in found):
                log.warning(
                    "no Debezium heartbeat topic found for these topics: an idle source will "
                    "look stalled and switch the cache to ttl mode; create the heartbeat topic "
                    "before starting the worker, and name it in heartbeat_topics when the "
                    "topics are routed or renamed (see connectors/README.md)",
                    extra={"topics": found},
                )
            return topics_to_read(settings, existing, found)
        if time.monotonic() >= deadline:
            msg = f"topics not found on {settings.brokers}: {', '.join(missing)}"
            raise TimeoutError(msg)
        if time.monotonic() - announced > 10:
            log.warning("waiting for topics", extra={"missing": missing})
            announced = time.monotonic()
        time.sleep(0.5)


def topics_to_read(settings: TopicSettings, existing: set[str], found: list[str]) -> list[str]:
    """``found`` (the data topics), then their heartbeat and schema-change topics."""
    beats = _heartbeat_topics_of(settings, existing, found)
    return found + beats + schema_change_topics(existing, found + beats)


def _heartbeat_topics_of(
    settings: TopicSettings, existing: set[str], found: list[str]
) -> list[str]:
    named = set(heartbeat_topics(existing, found)) | set(settings.heartbeat_topics)
    return sorted(named - set(found))


def listed_topics(settings: TopicSettings, admin: AdminClient) -> list[str] | None:
    """The topics to read as the brokers list them now.

    None while something is missing or the brokers do not answer: the flow goes on with
    what it reads.
    """
    pattern = re.compile(settings.topic_pattern) if settings.topic_pattern else None
    try:
        existing = set(admin.list_topics(timeout=10).topics)
    except KafkaException:
        return None
    finally:
        admin.poll(0)
    found, missing = _match_topics(settings, pattern, existing)
    return None if missing else topics_to_read(settings, existing, found)


def _match_topics(
    settings: TopicSettings, pattern: re.Pattern[str] | None, existing: set[str]
) -> tuple[list[str], list[str]]:
    """The topics to read among ``existing``, and what is still missing."""
    beats = [t for t in settings.heartbeat_topics if t not in existing]
    if pattern is None:
        return list(settings.topics), [t for t in settings.topics if t not in existing] + beats
    found = sorted(t for t in existing if pattern.fullmatch(t) and not t.startswith("__"))
    return found, ([] if found else [f"/{settings.topic_pattern}/"]) + beats


def heartbeat_topics(existing: set[str], topics: list[str]) -> list[str]:
    """The heartbeat topics of the connectors ``topics`` are named for (``<server>.<db>.<table>``).

    Heartbeats keep an idle source's lag measurable; without them an idle source looks
    stalled after ``lag_slo_s`` and the cache falls back to TTLs. A routed or renamed topic
    does not name its connector: its heartbeat topic is given in ``heartbeat_topics``.
    """
    found = []
    for beat in sorted(existing):
        server = heartbeat_server(beat)
        if server is not None and beat not in topics and any(named_for(server, t) for t in topics):
            found.append(beat)
    return found


def schema_change_topics(existing: set[str], topics: list[str]) -> list[str]:
    """The schema-change topics (``<server>``) of the MySQL connectors feeding ``topics``.

    Their DDL records tell the worker when a table's columns change, before the rows of
    the new shape arrive (see cdc_cache.mode.schema_watch); PostgreSQL connectors write none.
    The connectors are those the topics are named for (``<server>.<db>.<table>``) and
    those whose heartbeat topics are read (routed or renamed topics name none).
    """
    servers = {
        heartbeat_server(t) or t.rsplit(".", 2)[0]
        for t in topics
        if heartbeat_server(t) is not None or t.count(".") >= 2
    }
    return sorted(s for s in servers if s in existing and s not in topics)


def mode_runtime(settings: WorkerSettings, tracker: LagTracker, rules: Rules) -> ModeRuntime:
    """The mode controller of this process (process 0 of a cluster writes the mode)."""
    return ModeRuntime(
        client=connect_when_available(
            settings.redis_url, settings.retry_redis.backoff(), auth=settings.redis_auth()
        ),
        tracker=tracker,
        config=ModeConfig(settings.lag_slo_s, settings.lag_recover_s, settings.mode_window_s),
        fallback_ttl_ms=int(settings.fallback_ttl_s * 1000),
        prefixes=managed_prefixes(rules),
        process=settings.process_index,
        processes=settings.process_count,
        max_consumer_lag=settings.ready_max_consumer_lag,
        table_prefixes=table_prefixes(rules),
        table_config=TableConfig(
            settings.table_fallback_failures, settings.table_fallback_window_s
        ),
        stall_after_s=settings.flow_stall_s,
    )


def prepare_redis_memory(
    settings: WorkerSettings, rules: Rules, runtime: ModeRuntime
) -> MemoryWatch:
    """Check every primary's eviction policy, and move the previous release's versions.

    An eviction policy that may evict versions stops startup (ConfigError, exit 2) unless
    ``eviction_fallback`` opts into invalidations only. Waits while Redis is unreachable.
    """
    client = connect_when_available(
        settings.redis_url, settings.retry_redis.backoff(), auth=settings.redis_auth()
    )
    lifetime_ms = version_lifetime_ms(rules)
    watch = MemoryWatch(
        client,
        fallback=settings.eviction_fallback,
        lifetime_ms=lifetime_ms,
        guard=OomGuard(runtime.holds, settle_s=settings.mode_window_s),
    )

    def prepare() -> None:
        try:
            watch.check()
            migrate_legacy(client, lifetime_ms=lifetime_ms)
        except (rex.RedisError, rex.RedisClusterException) as exc:
            problem = misconfiguration(exc)
            if problem is not None:
                msg = f"Redis refused the memory check: {problem}"
                raise ConfigError(msg) from None
            raise

    retry_forever(
        prepare,
        backoff=settings.retry_redis.backoff(),
        is_transient=is_transient,
        on_retry=redis_retry_reporter("checking the eviction policy"),
    )
    return watch


def lineage_tracker(
    settings: WorkerSettings, holds: Holds, sleep: Callable[[float], None]
) -> LineageTracker | None:
    """The lineage detection of this process, unless ``lineage_detection`` is off."""
    if not settings.lineage_detection:
        return None
    backoff = settings.retry_redis.backoff()

    def registry() -> LineageRegistry:
        client = connect_when_available(
            settings.redis_url, backoff, sleep, auth=settings.redis_auth()
        )
        return LineageRegistry(client)

    limits = Limits(settings.lineage_rewind_files, settings.lineage_rewind_wal_mb << 20)
    config = LineageConfig(settings.source_epoch, limits, settings.lineage_settle_s)
    return LineageTracker(registry, holds, config, backoff=backoff, sleep=sleep)


def replication_monitor(
    settings: WorkerSettings, runtime: ModeRuntime, prefixes: list[str]
) -> ReplicationMonitor:
    """The watch over this process's Redis primaries: replica lag, failovers, their cost."""
    client = connect_when_available(
        settings.redis_url, settings.retry_redis.backoff(), auth=settings.redis_auth()
    )
    fallback_ttl_ms = int(settings.fallback_ttl_s * 1000)

    def shorten(keep_going: Callable[[], bool]) -> int:
        return shorten_ttls(
            client, prefixes, fallback_ttl_ms, keys_per_s=SHORTEN_KEYS_PER_S, keep_going=keep_going
        )

    return ReplicationMonitor(
        client,
        runtime.holds,
        tracked=settings.redis_replicas > 0,
        shorten=shorten,
        hold_s=settings.fallback_ttl_s,
    )


def fanout_fallback(settings: WorkerSettings) -> Shorten:
    """What a tag invalidation above ``fanout_limit`` does: the fallback TTL under prefixes."""
    fallback_ttl_ms = int(settings.fallback_ttl_s * 1000)

    def shorten(client: Client, prefixes: Sequence[str], pace: Callable[[float], object]) -> int:
        return shorten_ttls(
            client, prefixes, fallback_ttl_ms, keys_per_s=SHORTEN_KEYS_PER_S, sleep=pace
        )

    return shorten


def _config_error_in(exc: BaseException) -> ConfigError | None:
    return next((error for error in chain(exc) if isinstance(error, ConfigError)), None)


def prepare_dlq(settings: WorkerSettings) -> None:
    """Create the DLQ topic if it is missing, waiting (with backoff) for the brokers."""
    retry_forever(
        lambda: ensure_topic(settings.brokers, settings.dlq_topic, settings.kafka),
        backoff=settings.retry_kafka.backoff(),
        on_retry=retry_reporter("kafka_dlq", "waiting for the DLQ topic", log),
    )


def flow_config(settings: WorkerSettings, rules: Rules, topics: list[str]) -> FlowConfig:
    """What the flow is built from, read once from the settings."""
    return FlowConfig(
        rules=rules,
        brokers=tuple(settings.brokers.split(",")),
        topics=tuple(topics),
        redis_url=settings.redis_url,
        redis_auth=settings.redis_auth(),
        kafka=settings.kafka,
        kafka_consumer=settings.kafka_consumer,
        batch_size=settings.batch_size,
        source_epoch=settings.source_epoch,
        max_value_bytes=settings.max_value_bytes,
        fanout=Fanout(settings.fanout_limit, settings.fanout_page, fanout_fallback(settings)),
        backoff=settings.retry_redis.backoff(),
        dlq=DlqTarget(
            settings.brokers,
            settings.dlq_topic,
            settings.producer_kafka(),
            settings.retry_kafka.backoff(),
        ),
        process=settings.process_index,
        processes=settings.process_count,
    )


def run(settings: WorkerSettings) -> None:
    """Run the worker until interrupted; returns after a graceful stop.

    The admin port opens as soon as the rules are loaded: ``/healthz`` answers and
    ``/readyz`` names the wait (topics, DLQ topic, Redis) until the flow runs.
    """
    rules = load_rules(settings.rules, settings.table_identity)
    warn_if_wire_by_default(rules)
    startup = StartupBackend()
    admin = None
    if settings.metrics_port is not None:
        token = settings.admin_token.get_secret_value() if settings.admin_token else None
        dlq = DlqService(settings, rules)
        admin = AdminServer(
            startup, settings.metrics_port, token, dlq=dlq, details=startup.details
        ).start()
    try:
        _run(settings, rules, startup)
    finally:
        if admin is not None:
            admin.close()
    log.info("worker stopped")


def warn_if_wire_by_default(rules: Rules) -> None:
    """Say at start that values are cached as Debezium ships them because nothing chose so."""
    if rules.implicit_wire:
        log.warning(
            "rules version 1: values are cached as Debezium ships them (dates as day "
            "numbers, decimals as base64...); set 'version: 2' to cache rows in the "
            "application's shape, or 'defaults: {values: wire}' to keep them (README: Values)",
            extra={"rules": rules.path, "tables": list(rules.implicit_wire)},
        )


def _run(settings: WorkerSettings, rules: Rules, startup: StartupBackend) -> None:
    stop = threading.Event()
    schemas = schema_resolver(settings, stoppable_sleep(stop, "the schema registry"))
    if schemas is not None:
        # First: TLS or credentials to fix stop the start, before any wait on Kafka or Redis
        # (a registry that does not answer is waited for, logged and counted).
        schemas.check()
    recovery = prepare_recovery(
        settings.recovery_dir,
        settings.recovery_partitions,
        settings.process_count,
        settings.process_index,
    )
    topics = resolve_topics(settings)
    startup.passed("topics")
    prepare_dlq(settings)
    startup.passed("dlq_topic")
    tracker = LagTracker(lambda: time.time() * 1000)
    runtime = mode_runtime(settings, tracker, rules)
    memory = prepare_redis_memory(settings, rules, runtime)
    sweepers: list[VersionSweeper | Periodic] = []
    if runtime.leader:
        sweepers.append(VersionSweeper(memory.client))
        if rules.tags:
            sweepers.append(tag_sweeper(memory.client, version_lifetime_ms(rules)))
        if isinstance(memory.client, RedisCluster):
            sweepers.append(outbox_sweeper(memory.client))
    monitor = replication_monitor(settings, runtime, managed_prefixes(rules))
    startup.passed("redis")
    replicas = (
        ReplicaRequirement(
            settings.redis_replicas, settings.redis_replicas_timeout_ms, monitor.registry
        )
        if settings.redis_replicas
        else None
    )
    lineage = lineage_tracker(settings, runtime.holds, stoppable_sleep(stop, "Redis"))
    context = FlowContext(
        stop=stop,
        lag=tracker,
        ttl_cap_ms=runtime.ttl_cap_ms,
        holds=runtime.holds,
        schemas=schemas,
        invalidate_only=memory.invalidate_only,
        memory=memory.guard,
        tables=runtime.tables,
        replicas=replicas,
        lineage=lineage,
    )
    log.info(
        "worker starting",
        extra={
            "topics": topics,
            "tables": sorted(rules.tables),
            "workers": settings.workers,
            "recovery_dir": str(settings.recovery_dir),
            "redis": redact_url(settings.redis_url),
            "message_format": settings.message_format,
            "redis_replicas": settings.redis_replicas,
        },
    )
    running = [threading.Event()]  # the stop of the flow that runs now
    stop_flows = _stop_on_signals(stop, running)
    watch = topic_watch(settings, runtime.leader)
    runtime.start(on_failure=stop_flows)
    memory.start()
    for sweeper in sweepers:
        sweeper.start()
    monitor.start()
    startup.started(runtime, lineage.details if lineage is not None else None)
    try:
        _run_flows(
            settings, rules, topics, context, recovery=recovery, running=running, watch=watch
        )
        if runtime.failure is not None:
            msg = "the mode thread failed (see the log); restart: it resumes from recovery"
            raise RuntimeError(msg) from runtime.failure
    finally:
        watch.close()
        monitor.close()
        runtime.close()
        memory.close()
        for sweeper in sweepers:
            sweeper.close()


def _stop_on_signals(stop: threading.Event, running: list[threading.Event]) -> Callable[[], None]:
    """SIGTERM and SIGINT stop the flows gracefully; returns that stop, for other callers."""

    def stop_flows() -> None:
        stop.set()
        running[0].set()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("stopping: finishing the current batch", extra={"signal": signum})
        stop_flows()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop_flows


def _run_flows(
    settings: WorkerSettings,
    rules: Rules,
    topics: list[str],
    context: FlowContext,
    *,
    recovery: Path | None,
    running: list[threading.Event],
    watch: TopicWatch,
) -> None:
    """Run the flow until a stop request; each time new topics appear, run it again on them.

    ``running[0]`` is the stop of the flow that runs now (a signal sets it);
    ``context.stop`` is the process's.
    """
    stop = context.stop
    while not stop.is_set():
        restart = running[0] = threading.Event()
        if stop.is_set():  # a signal came before this flow's stop was in place
            break
        watch.follow(topics, restart)
        flow = build_flow(flow_config(settings, rules, topics), replace(context, stop=restart))
        _run_once(
            partial(
                run_flow,
                flow,
                workers=settings.workers,
                process_id=settings.process_id,
                addresses=settings.addresses,
                epoch_interval_ms=settings.epoch_interval_ms,
                recovery=recovery,
            ),
            stop,
            restart,
        )
        if not restart.is_set():
            break  # the sources ended without a stop request: nothing more to read
        topics = watch.wanted()


def _run_once(run: Callable[[], None], stop: threading.Event, restart: threading.Event) -> None:
    """Run the flow until it ends: a stop request, or ``restart`` for new topics."""
    try:
        run()
    except Exception as exc:
        if not restart.is_set():
            # A setting problem found mid-stream (credentials rotated, ACL narrowed) comes
            # wrapped in the engine's error: report it as the config error it is.
            config = _config_error_in(exc)
            if config is not None:
                raise ConfigError(str(config)) from exc
            raise
        # Stopped mid-retry: progress was not recorded past the unapplied batch.
        msg = "stopped before the pending batch was applied; it is replayed on restart"
        if stop.is_set():
            raise StopRequested(msg) from exc
        log.warning(msg, extra={"error": str(exc)})


def topic_watch(settings: WorkerSettings, leader: bool) -> TopicWatch:
    """Looks for new topics every ``topic_refresh_s``; a cluster shares process 0's list."""
    admin = AdminClient(with_logger({"bootstrap.servers": settings.brokers, **settings.kafka}))
    board = None
    if len(settings.addresses) > 1:
        board = connect_when_available(
            settings.redis_url, settings.retry_redis.backoff(), auth=settings.redis_auth()
        )
    return TopicWatch(
        lambda: listed_topics(settings, admin), settings.topic_refresh_s, leader=leader, board=board
    )
