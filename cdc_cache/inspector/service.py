"""``cdc-cache inspect`` as a process: its admin port, its edges, its loop, until stopped."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from http import HTTPStatus

import orjson

from cdc_cache.app.admin import AdminServer
from cdc_cache.app.routes import Starting
from cdc_cache.app.worker import resolve_topics
from cdc_cache.core.events import SourceRecord
from cdc_cache.core.redact import redact_url
from cdc_cache.inspector.edges import KafkaRecords, LiveTruth
from cdc_cache.inspector.loop import Inspector
from cdc_cache.inspector.report import text_page
from cdc_cache.inspector.settings import InspectSettings
from cdc_cache.mode.controller import Flag
from cdc_cache.plan.rules import Action, Rules
from cdc_cache.sink.connection import connect_when_available
from cdc_cache.source.envelope import Parse
from cdc_cache.source.schema_registry import SchemaResolver, schema_resolver
from cdc_cache.source.topics import heartbeat_server
from cdc_cache.tools.verify_judge import KeyPattern

log = logging.getLogger("cdc_cache.inspect")


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
