"""``cdc-cache run``: the long-running worker process around the dataflow.

Loads and validates everything before touching a message (settings, rules, topics), then
runs the Bytewax dataflow with recovery until SIGTERM/SIGINT, which stop it gracefully.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import FrameType

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from confluent_kafka.admin import AdminClient
from prometheus_client import start_http_server

from cdc_cache.errors import StopRequested
from cdc_cache.rules import load_rules
from cdc_cache.settings import WorkerSettings
from dataflows.invalidation import build_flow

log = logging.getLogger("cdc_cache.worker")


def resolve_topics(settings: WorkerSettings, wait_s: float = float("inf")) -> list[str]:
    """The explicit topics, or those matching ``topic_pattern``; waits until they exist.

    A connector that has not produced yet has no topics: the worker waits (and says so)
    rather than starting with nothing to read.
    """
    config: dict[str, str | int | float | bool] = {
        "bootstrap.servers": settings.brokers,
        **settings.kafka,
    }
    admin = AdminClient(config)
    pattern = re.compile(settings.topic_pattern) if settings.topic_pattern else None
    deadline = time.monotonic() + wait_s
    announced = 0.0
    while True:
        existing = set(admin.list_topics(timeout=10).topics)
        if pattern is not None:
            found = sorted(t for t in existing if pattern.fullmatch(t) and not t.startswith("__"))
            missing = [] if found else [f"/{settings.topic_pattern}/"]
        else:
            found = list(settings.topics)
            missing = [t for t in settings.topics if t not in existing]
        if not missing:
            return found
        if time.monotonic() >= deadline:
            msg = f"topics not found on {settings.brokers}: {', '.join(missing)}"
            raise TimeoutError(msg)
        if time.monotonic() - announced > 10:
            log.warning("waiting for topics", extra={"missing": missing})
            announced = time.monotonic()
        time.sleep(0.5)


def prepare_recovery(settings: WorkerSettings) -> RecoveryConfig | None:
    """Create the recovery partitions on first start; reuse them on every later one."""
    if settings.recovery_dir is None:
        return None
    directory = Path(settings.recovery_dir)
    directory.mkdir(parents=True, exist_ok=True)
    if not any(directory.glob("part-*.sqlite3")):
        init_db_dir(directory, settings.recovery_partitions)
        log.info(
            "initialised recovery store",
            extra={"dir": str(directory), "partitions": settings.recovery_partitions},
        )
    return RecoveryConfig(directory)


def run(settings: WorkerSettings) -> None:
    """Run the worker until interrupted; returns after a graceful stop."""
    rules = load_rules(settings.rules)
    topics = resolve_topics(settings)
    recovery = prepare_recovery(settings)
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port)
    stop = threading.Event()
    flow = build_flow(
        rules=rules,
        brokers=settings.brokers.split(","),
        topics=topics,
        redis_url=settings.redis_url,
        kafka_config=settings.kafka,
        batch_size=settings.batch_size,
        source_epoch=settings.source_epoch,
        stop=stop,
    )
    log.info(
        "worker starting",
        extra={
            "topics": topics,
            "tables": sorted(rules.tables),
            "workers": settings.workers,
            "recovery_dir": str(settings.recovery_dir),
            "redis": _redacted(settings.redis_url),
        },
    )

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("stopping: finishing the current batch", extra={"signal": signum})
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        cli_main(
            flow,
            workers_per_process=settings.workers,
            process_id=settings.process_id,
            addresses=settings.addresses or None,
            epoch_interval=timedelta(milliseconds=settings.epoch_interval_ms),
            recovery_config=recovery,
        )
    except Exception as exc:
        if not stop.is_set():
            raise
        # Stopped mid-retry: progress was not recorded past the unapplied batch.
        msg = "stopped before the pending batch was applied; it is replayed on restart"
        raise StopRequested(msg) from exc
    log.info("worker stopped")


def _redacted(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)
