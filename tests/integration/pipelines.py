"""A whole pipeline per test: MariaDB, the Debezium runner, the worker and the inspector."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.process import free_port
from tests.integration.fixtures_stack import scratch_database
from tests.integration.probes import wait_ready
from tests.integration.services import debezium, inspector, worker
from tests.integration.sql_workload import DDL, rules_for

# Statements for scratch_database that write ``<schema>.dbz_heartbeat`` every second
# (MariaDB's event scheduler). An idle MySQL source sends no Debezium heartbeats: a
# scheduled write keeps the binlog moving, as ``deploy/mysql/inventory.sql`` does for the
# compose stack. The event goes with the database.
HEARTBEATS = (
    "CREATE TABLE {schema}.dbz_heartbeat (id INT PRIMARY KEY, ts DATETIME(3))",
    "SET GLOBAL event_scheduler = ON",
    "CREATE EVENT {schema}.dbz_heartbeat ON SCHEDULE EVERY 1 SECOND DO "
    "INSERT INTO {schema}.dbz_heartbeat VALUES (1, NOW(3)) ON DUPLICATE KEY UPDATE ts = NOW(3)",
)


class Pipeline:
    """The Debezium runner and the worker for one table ``<schema>.stock`` of a test."""

    PARTITIONS = 3

    def __init__(
        self,
        tmp_path: Path,
        *,
        source: str,
        db_port: int,
        dsn: str,
        schema: str,
        broker: Broker,
        redis_url: str,
        registry_url: str | None = None,
        rules: str | None = None,
    ) -> None:
        """With ``registry_url`` the changes travel as Avro (AvroConverter, that registry);
        ``rules`` replaces the workload's (``{schema}`` filled in)."""
        self.schema = schema
        self.dsn = dsn
        self.redis_url = redis_url
        self.rules = rules.format(schema=schema) if rules else rules_for(schema)
        self.rules_file = tmp_path / "rules.yaml"  # written by worker()
        self.prefix = prefix = f"p{uuid.uuid4().hex[:6]}"
        self.topic = topic = f"{prefix}.{schema}.stock"
        broker.create_topics({topic: self.PARTITIONS})  # the worker starts before any change
        self.debezium = debezium(
            tmp_path,
            source=source,
            db_port=db_port,
            brokers=broker.bootstrap,
            prefix=prefix,
            databases=schema,
            options=[
                f"--partitions={self.PARTITIONS}",
                "--no-schemas",
                *(
                    ["--format=avro", f"--schema-registry-url={registry_url}"]
                    if registry_url
                    else []
                ),
            ],
        )
        avro = {"CDC_CACHE_MESSAGE_FORMAT": "avro", "CDC_CACHE_SCHEMA_REGISTRY_URL": registry_url}
        self.worker = worker(
            tmp_path,
            broker.bootstrap,
            redis_url,
            [topic],
            rules=self.rules,
            env=avro if registry_url else None,
        )
        self.inspect_port = free_port()
        self.inspector = inspector(
            tmp_path,
            broker.bootstrap,
            redis_url,
            [topic],
            dsn,
            self.inspect_port,
            rules=self.rules,
            env=avro if registry_url else None,
        )
        self.services = [self.debezium, self.worker, self.inspector]

    def start(self) -> None:
        """Every service, returning once the inspector reads its topics: it samples from
        their end, so a change committed before that would never be judged."""
        for service in self.services:
            service.start()
        wait_ready(self.inspector, self.inspect_port, timeout=120)

    def stop(self) -> None:
        for service in self.services:
            service.stop()


@contextmanager
def mariadb_pipeline(
    tmp_path: Path,
    mariadb: MariaDB,
    broker: Broker,
    redis_url: str,
    *,
    prefix: str = "e2e",
    registry_url: str | None = None,
    rules: str | None = None,
) -> Iterator[Pipeline]:
    """A :class:`Pipeline` over a fresh MariaDB database (dropped afterwards)."""
    with scratch_database(mariadb, prefix, DDL, charset="utf8mb4") as schema:
        line = Pipeline(
            tmp_path,
            source="mariadb",
            db_port=mariadb.port,
            dsn=f"mysql://root@127.0.0.1:{mariadb.port}/{schema}",
            schema=schema,
            broker=broker,
            redis_url=redis_url,
            registry_url=registry_url,
            rules=rules,
        )
        try:
            yield line
        finally:
            line.stop()
