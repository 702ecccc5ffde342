"""Fault-injection harness: a change stream with poison and duplicates, the worker as a real
process, and the checks every scenario ends with.

A scenario produces :class:`Stream` parts while it injects its fault, then
:meth:`FaultRun.finish` waits until the cache is consistent with the table the stream
describes and the dead-letter topic holds exactly the injected poison, and adds the
scenario's row to the table the suite prints at the end of the session.

Given a MariaDB, a run also keeps the stream's table there (:class:`Mirror`: changes
committed just before they are produced, as a connector would read them) and runs
``cdc-cache inspect`` beside the worker, whose consistency (checked 1 s after each change
was read) goes into the row too.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka import Message as KafkaMessage
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from redis.cluster import RedisCluster

from cdc_cache.core.events import SourceRecord
from cdc_cache.core.keys import escape_value, ns, version_field
from cdc_cache.plan.cache_ops import DeleteKey, SetRow
from cdc_cache.plan.route import Planned, route
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.encoding import version_of
from cdc_cache.sink.versions import parse_stored
from cdc_cache.tools.demo import Scrape, scrape
from cdc_cache.tools.devstack.broker import Broker, S3Store
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.process import free_port, port_open
from tests.integration.cache import cache_state
from tests.integration.fixtures_stack import scratch_database
from tests.integration.probes import admin_get, inspection, metric, settled_inspection, wait_ready
from tests.integration.scenario_table import Row, ScenarioTable
from tests.integration.services import INSPECT_DB_QUERIES_PER_S, Service, inspector, worker
from tests.integration.topics import produce, unique_topic
from tests.workload import Message, Workload, rules_for

WATCHED = ("id", "sku_id", "warehouse", "qty")  # the watch list of tests.workload.RULES_YAML
SKUS = range(1, 61)  # the sku ids the workload draws from
AVAILABILITY = "sku:{sku}:availability"  # the rules' delete-only key
APP_FILLED = b"filled by the application"
MIRROR_BATCH = 50  # changes committed to the mirror in one transaction, before produced

# --- the stream ---------------------------------------------------------------------------


def _undecodable(base: dict[str, Any], rnd: random.Random) -> tuple[bytes | None, bytes]:
    raw = rnd.choice([b"{not json", b"\x00\xff", b'{"op": "u", "source": {}}', b"[1, 2]"])
    return orjson.dumps({"id": rnd.randint(1, 10_000)}), raw


def _no_primary_key(base: dict[str, Any], rnd: random.Random) -> tuple[bytes | None, bytes]:
    return None, orjson.dumps(base)  # a well-formed change of a table without a key


def _render_failed(base: dict[str, Any], rnd: random.Random) -> tuple[bytes | None, bytes]:
    row = {k: v for k, v in base["after"].items() if k != "sku_id"}  # the key needs sku_id
    return orjson.dumps({"id": row["id"]}), orjson.dumps({**base, "after": row})


POISON_KINDS = {
    "undecodable": _undecodable,
    "no_primary_key": _no_primary_key,
    "render_failed": _render_failed,
}


class Mirror:
    """The stream's ``stock`` table in a MariaDB database of its own (dropped on close)."""

    DDL = (
        "CREATE TABLE {schema}.stock (id INT PRIMARY KEY, sku_id INT NOT NULL, "
        "warehouse VARCHAR(32) NOT NULL, qty INT, note VARCHAR(64))"
    )

    def __init__(self, mariadb: MariaDB) -> None:
        with ExitStack() as stack:
            self.db = stack.enter_context(scratch_database(mariadb, "f", self.DDL))
            self._conn = stack.enter_context(closing(mariadb.connect()))  # closed first
            self._open = stack.pop_all()
        self.dsn = f"{mariadb.dsn()}/{self.db}"

    def commit(self, messages: list[Message]) -> None:
        """Commit the changes ``messages`` describe, in order, in one transaction."""
        self._conn.begin()
        with self._conn.cursor() as cur:
            for message in messages:
                change = orjson.loads(message.value or b"{}")
                if change["after"] is None:
                    cur.execute(
                        f"DELETE FROM {self.db}.stock WHERE id = %s", (change["before"]["id"],)
                    )
                    continue
                cur.execute(
                    f"INSERT INTO {self.db}.stock (id, sku_id, warehouse, qty, note) "
                    "VALUES (%s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE sku_id = "
                    "VALUES(sku_id), warehouse = VALUES(warehouse), qty = VALUES(qty), "
                    "note = VALUES(note)",
                    tuple(change["after"][c] for c in ("id", "sku_id", "warehouse", "qty", "note")),
                )
        self._conn.commit()

    def close(self) -> None:
        self._open.close()


@dataclass
class Stream:
    """Transactions in commit order, produced with poison and duplicates mixed in.

    ``transactions`` is the history the database went through (what the cache must end
    up reflecting); ``poison`` maps each injected poison message's (topic, partition,
    offset), as the broker acknowledged it, to the DLQ kind it must be filed under. With
    a ``mirror``, each change is committed there just before its first delivery (50 at a
    time) and carries that moment as its commit time (re-deliveries repeat its bytes).
    """

    topic: str
    seed: int
    db: str = "inventory"
    mirror: Mirror | None = None
    workload: Workload = field(init=False)
    transactions: list[list[Message]] = field(default_factory=list)
    poison: dict[tuple[str, int, int], str] = field(default_factory=dict)
    changes: int = 0  # change messages produced, duplicates included
    duplicates: int = 0

    def __post_init__(self) -> None:
        self.workload = Workload(seed=self.seed, topic=self.topic, db=self.db)
        self.rnd = random.Random(self.seed)
        self._committed: dict[Message, Message] = {}  # as generated -> as delivered

    def part(
        self, transactions: int, *, poison: int = 0, redeliver: float = 0.0
    ) -> list[tuple[Message, str | None]]:
        """The next ``transactions`` commits; a ``redeliver`` share of them is delivered
        again later in the part (at-least-once), and ``poison`` bad messages are spread
        over it. Each message comes with the poison kind it was made as, or None."""
        fresh = self.workload.transactions(transactions)
        self.transactions.extend(fresh)
        out: list[tuple[Message, str | None]] = []
        for index, tx in enumerate(fresh):
            out.extend((m, None) for m in tx)
            if index > 5 and self.rnd.random() < redeliver:
                # A connector re-sends what it had not committed: recent changes, from the
                # same binlog file or the one before.
                recent = [t for t in fresh[max(0, index - 20) : index] if _file(t) >= _file(tx) - 1]
                again = self.rnd.choice(recent or [tx])
                out.extend((m, None) for m in again)
                self.duplicates += len(again)
        inserts = [m for tx in fresh for m in tx if m.value and b'"op":"c"' in m.value]
        kinds = sorted(POISON_KINDS)
        for number in range(poison):
            kind = kinds[number % len(kinds)]
            bad = self._poison(kind, self.rnd.choice(inserts))
            out.insert(self.rnd.randrange(1, len(out)), (bad, kind))
        return out

    def failover(
        self, server_id: int = 2, binlog_file: int = 1
    ) -> list[tuple[Message, str | None]]:
        """The source's failover to a replica with a lower binlog numbering.

        The snapshot the connector publishes first (see Workload.failover); later parts
        come from the new server.
        """
        return [(m, None) for m in self.workload.failover(server_id, binlog_file)]

    def again(
        self, part: list[tuple[Message, str | None]], share: float
    ) -> list[tuple[Message, str | None]]:
        """The first ``share`` of ``part``, to deliver once more (a producer re-sending
        from an older offset); its poison lands at new offsets, so it is poison again."""
        section = part[: int(len(part) * share)]
        self.duplicates += sum(1 for m, kind in section if kind is None)
        return section

    def _poison(self, kind: str, insert: Message) -> Message:
        """A bad message modelled on a real insert, at a position no real change has."""
        base = orjson.loads(insert.value or b"{}")
        base["source"]["pos"] += 1
        base["after"] = {**base["after"], "id": 100_000 + self.rnd.randint(0, 10**6)}
        key, value = POISON_KINDS[kind](base, self.rnd)
        return Message(self.topic, key, value)  # type: ignore[arg-type]  # key may be None

    def produce(
        self, bootstrap: str, part: list[tuple[Message, str | None]], pace_s: float = 0.0
    ) -> None:
        """Produce ``part`` in order, noting where each poison message landed."""

        def delivered(index: int, message: KafkaMessage) -> None:
            kind = part[index][1]
            if kind is not None:
                where = (str(message.topic()), int(message.partition()), int(message.offset()))
                self.poison[where] = kind

        self.changes += sum(1 for m, kind in part if kind is None and m.value is not None)
        produce(bootstrap, self._committed_first(part), pace_s=pace_s, delivered=delivered)

    def _committed_first(self, part: list[tuple[Message, str | None]]) -> Iterator[Message]:
        """The messages as delivered: with a mirror, each batch of 50 is committed there
        first (one transaction), each change stamped with that moment as its commit time."""
        for start in range(0, len(part), MIRROR_BATCH):
            batch = part[start : start + MIRROR_BATCH]
            fresh = list(
                dict.fromkeys(
                    m
                    for m, kind in batch
                    if kind is None and m.value is not None and m not in self._committed
                )
            )
            if self.mirror is not None and fresh:
                now_ms = int(time.time() * 1000)
                for message in fresh:
                    change = orjson.loads(message.value or b"{}")
                    change["source"]["ts_ms"], change["ts_ms"] = now_ms, now_ms
                    self._committed[message] = Message(
                        message.topic, message.key, orjson.dumps(change)
                    )
                self.mirror.commit([self._committed[m] for m in fresh])
            yield from (self._committed.get(m, m) for m, _ in batch)

    # -- the state it implies -------------------------------------------------------------

    def fates(self) -> dict[str, str]:
        """For every ``stock:`` key a change touched: ``row`` (holds a row), ``deleted``
        (its row was deleted) or ``moved`` (its row moved to another key)."""
        fates: dict[str, str] = {}
        for message in self._changes():
            change = orjson.loads(message.value or b"{}")
            before, after = change["before"], change["after"]
            if before is not None:
                fates[_stock_key(before)] = "deleted" if after is None else "moved"
            if after is not None:
                fates[_stock_key(after)] = "row"
        return fates

    def invalidated_skus(self) -> set[int]:
        """The skus whose availability key a change must have deleted (the rules delete
        it on every insert, delete and update of a watched column)."""
        skus = set()
        for message in self._changes():
            change = orjson.loads(message.value or b"{}")
            before, after = change["before"], change["after"]
            if before is None or after is None:
                skus.add((after or before)["sku_id"])
            elif any(before[c] != after[c] for c in WATCHED):
                skus.add(after["sku_id"])
        return skus

    def last_versions(self) -> dict[str, str]:
        """For every key the stream's changes touch, the version its last change leaves
        (planned by the worker's own planner): once Redis holds them all, every change
        has been applied, whatever eviction or invalidation did to the values."""
        rules = parse_rules(rules_for(self.db))
        versions: dict[str, str] = {}
        for message in self._changes():
            routed = route(SourceRecord(self.topic, 0, 0, message.key, message.value), rules)
            assert isinstance(routed, Planned), routed
            for op in routed.ops:
                if isinstance(op, SetRow | DeleteKey):
                    versions[op.key] = max(versions.get(op.key, ""), version_of(op))
        return versions

    def _changes(self) -> Iterator[Message]:
        return (m for tx in self.transactions for m in tx if m.value is not None)


def _file(transaction: list[Message]) -> int:
    """The binlog file sequence a transaction was written to."""
    value = orjson.loads(next(m.value for m in transaction if m.value is not None))
    return int(value["source"]["file"].rsplit(".", 1)[1])


def _stock_key(row: dict[str, Any]) -> str:
    return f"stock:{escape_value(row['sku_id'])}:{escape_value(row['warehouse'])}"


# --- the checks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """How the cache differs from what the stream's history implies."""

    stale: list[str]  # holds a value the table does not have (or never had)
    missing: list[str]  # a row's key without its value: a lost write
    lost: list[str]  # an invalidated key still holding a value: a lost invalidation
    resurrected: list[str]  # the key of a deleted row holding a value again

    @property
    def clean(self) -> bool:
        return not (self.stale or self.missing or self.lost or self.resurrected)


def stored_versions(client: Redis | RedisCluster, keys: list[str]) -> dict[str, str | None]:
    """The version Redis holds for each of ``keys`` (None: none)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hget(ns().version_key(key), version_field(key))
    raw = pipe.execute()
    return {
        k: parse_stored(v)[1] if v is not None else None for k, v in zip(keys, raw, strict=True)
    }


def consumer_lags(port: int) -> dict[tuple[str, str], float]:
    """The worker's consumer lag per topic partition, as its /metrics shows it."""
    status, body = admin_get(port, "/metrics")
    assert status == 200, body
    return {
        (s.labels["topic"], s.labels["partition"]): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == "cdc_cache_consumer_lag_messages"
    }


def fill_availability(client: Redis | RedisCluster) -> None:
    """Cache every sku's availability as an application would before the stream starts."""
    for sku in SKUS:  # one key at a time: on a cluster they live in different slots
        client.set(AVAILABILITY.format(sku=sku), APP_FILLED)


def verdict(client: Redis | RedisCluster, stream: Stream) -> Verdict:
    expected = stream.workload.expected_cache()
    cached = cache_state(client)
    fates = stream.fates()
    stale = [k for k, v in cached.items() if k in expected and v != expected[k]]
    stale += [k for k in cached if k not in expected and fates.get(k) not in ("deleted", "moved")]
    lost = [k for k in cached if k not in expected and fates.get(k) == "moved"]
    lost += [
        AVAILABILITY.format(sku=sku)
        for sku in sorted(stream.invalidated_skus())
        if client.exists(AVAILABILITY.format(sku=sku))
    ]
    return Verdict(
        stale=sorted(stale),
        missing=sorted(k for k in expected if k not in cached),
        lost=sorted(lost),
        resurrected=sorted(k for k in cached if k not in expected and fates.get(k) == "deleted"),
    )


def read_dlq(bootstrap: str, topic: str, expected: int, *, idle_s: float = 2.0,
             timeout: float = 60) -> list[dict[str, Any]]:  # fmt: skip
    """Every entry on the dead-letter topic: read from the beginning until ``expected``
    distinct ids arrived and nothing more came for ``idle_s`` (tansu's ListOffsets
    cannot tell where the topic ends), or until ``timeout``."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"dlq-check-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        entries: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                entries.append(orjson.loads(message.value() or b"null"))
                last = time.monotonic()
            elif len({e.get("id") for e in entries}) >= expected and (
                time.monotonic() - last > idle_s
            ):
                break
        return entries
    finally:
        consumer.close()


def dlq_by_source(entries: list[dict[str, Any]]) -> dict[tuple[str, int, int], str]:
    """Each distinct dead-lettered source message (topic, partition, offset) and its kind."""
    return {
        (e["source"]["topic"], e["source"]["partition"], e["source"]["offset"]): e["kind"]
        for e in entries
    }


# --- one run ------------------------------------------------------------------------------


@contextmanager
def durable_broker(tmp_path: Path) -> Iterator[tuple[S3Store, Broker]]:
    """A tansu broker keeping its log on a local S3 server (tansu's memory storage dies
    with it), so it can be stopped and started again; both are stopped afterwards."""
    store = S3Store(tmp_path / "s3", free_port())
    store.start()
    durable = Broker.on_s3(tmp_path / "broker", free_port(), store)
    try:
        durable.start()
        yield store, durable
    finally:
        durable.stop()
        store.stop()


UNGATED_WORKER = "tests.integration.ungated_worker"  # the injected bug: no version gate


@dataclass
class Inspection:
    """``cdc-cache inspect`` beside a run's worker, comparing with the stream's mirror."""

    service: Service
    port: int
    mirror: Mirror

    def report(self) -> dict[str, Any]:
        return inspection(self.port)

    def settled(self, timeout: float = 90) -> dict[str, Any]:
        """The report once every sample was judged and every re-check ended."""
        return settled_inspection(self.port, self.service, timeout)

    def stop(self) -> None:
        self.service.stop()
        self.mirror.close()


@dataclass
class FaultRun:
    """A worker (a real ``cdc-cache run`` with its admin port) consuming one stream, and
    with a MariaDB, the inspector beside it."""

    name: str
    broker: Broker
    client: Redis | RedisCluster
    stream: Stream
    worker: Service
    metrics_port: int
    dlq_topic: str
    inspection: Inspection | None = None
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(
        cls,
        name: str,
        tmp_path: Path,
        broker: Broker,
        redis_url: str,
        client: Redis | RedisCluster,
        *,
        seed: int,
        workers: int = 1,
        env: dict[str, str] | None = None,
        mariadb: MariaDB | None = None,
        ungated: bool = False,
        inspect: dict[str, str] | None = None,
    ) -> FaultRun:
        """With ``mariadb``, the inspector runs too (``inspect``: its flags); ``ungated``
        runs the worker with the injected bug (see ``tests/integration/ungated_worker.py``)."""
        topic = unique_topic()
        dlq_topic = f"{topic.split('.')[0]}.dlq"
        broker.create_topics({topic: 3, dlq_topic: 1})
        fill_availability(client)
        mirror = Mirror(mariadb) if mariadb is not None else None
        db = mirror.db if mirror is not None else f"f_{uuid.uuid4().hex[:8]}"
        rules = rules_for(db)
        service = worker(
            tmp_path, broker.bootstrap, redis_url, [topic], rules=rules, workers=workers
        )
        if ungated:
            service.argv[2] = UNGATED_WORKER
        port = free_port()
        service.env["CDC_CACHE_METRICS_PORT"] = str(port)
        service.env["CDC_CACHE_DLQ_TOPIC"] = dlq_topic
        watching = None
        if mirror is not None:
            inspect_port = free_port()
            watcher = inspector(
                tmp_path, broker.bootstrap, redis_url, [topic], mirror.dsn, inspect_port,
                rules=rules, options=inspect,
            )  # fmt: skip
            watching = Inspection(watcher, inspect_port, mirror)
        service.env.update(env or {})
        stream = Stream(topic, seed, db, watching.mirror if watching else None)
        run = cls(name, broker, client, stream, service, port, dlq_topic, watching)
        try:
            if watching is not None:
                watching.service.start()
            run.restart()
            if watching is not None:
                wait_ready(watching.service, watching.port)
        except BaseException:
            run.stop()  # a run that never started is no test's to stop: its mirror goes too
            raise
        return run

    def restart(self, timeout: float = 60) -> None:
        """Start the worker and wait until its admin port answers."""
        self.worker.start()
        deadline = time.monotonic() + timeout
        while not port_open(self.metrics_port):
            self.worker.check_alive()
            assert time.monotonic() < deadline, f"no admin port:\n{self.worker.tail()}"
            time.sleep(0.1)

    def metrics(self) -> Scrape:
        self.worker.check_alive()
        return scrape(self.metrics_port)

    def applied(self) -> float:
        return self.metrics().events.get("applied", 0.0)

    def wait_consistent(self, timeout: float = 90) -> Verdict:
        """Poll until the cache matches the history (the worker must stay alive)."""
        deadline = time.monotonic() + timeout
        while True:
            self.worker.check_alive()
            result = verdict(self.client, self.stream)
            if result.clean or time.monotonic() > deadline:
                return result
            time.sleep(0.3)

    def wait_settled(self, timeout: float = 90) -> None:
        """Wait until Redis holds the version of every key's last change: every change
        was applied (values may have been evicted or invalidated; versions are not, and
        a set Redis took only as an invalidation leaves its position as a delete)."""
        wanted = self.stream.last_versions()
        keys = sorted(wanted)
        deadline = time.monotonic() + timeout
        while True:
            self.worker.check_alive()
            held = stored_versions(self.client, keys)
            # the position must match; the rank may not, for a set applied as a delete
            behind = [k for k in keys if (held[k] or "")[:-1] != wanted[k][:-1]]
            if not behind:
                return
            assert time.monotonic() < deadline, (
                f"{len(behind)} keys without their last version, e.g. "
                f"{[(k, held[k], wanted[k]) for k in behind[:3]]}\n{self.worker.tail()}"
            )
            time.sleep(0.3)

    def wait_drained(self, quiet_s: float = 3.0, timeout: float = 90) -> None:
        """Wait until every partition was consumed to its end for ``quiet_s`` (for Redis
        under a policy that may evict the versions :meth:`wait_settled` reads)."""
        deadline = time.monotonic() + timeout
        drained_since: float | None = None
        while True:
            self.worker.check_alive()
            lags = consumer_lags(self.metrics_port)
            if len(lags) == 3 and not any(lags.values()):
                drained_since = drained_since or time.monotonic()
                if time.monotonic() - drained_since >= quiet_s:
                    return
            else:
                drained_since = None
            assert time.monotonic() < deadline, f"not drained: {lags}\n{self.worker.tail()}"
            time.sleep(0.3)

    def conclude(
        self,
        table: ScenarioTable,
        faults: str,
        *,
        timeout: float = 90,
        settle: str | None = None,
    ) -> tuple[Verdict, list[dict[str, Any]], dict[str, Any] | None]:
        """Wait (up to ``timeout``) for a consistent cache, read the DLQ and the
        inspector's settled report, and add the scenario's row to ``table``.

        With ``settle`` (``versions`` or ``drained``, for Redis under memory pressure) the
        worker is waited for instead of a cache equal to the history, since eviction and
        memory refusals may take values; keys without their value are counted apart.
        """
        if settle is None:
            result = self.wait_consistent(timeout)
        else:
            if settle == "versions":
                self.wait_settled(timeout)
            else:
                self.wait_drained(timeout=timeout)
            result = verdict(self.client, self.stream)
        entries = read_dlq(self.broker.bootstrap, self.dlq_topic, len(self.stream.poison))
        inspected = self.inspection.settled() if self.inspection is not None else None
        table.rows.append(
            Row(
                self.name,
                self.stream.changes,
                faults,
                len(result.stale),
                len(result.lost),
                len(result.missing),
                len(result.resurrected),
                len({e.get("id") for e in entries}),
                len(entries),
                len(self.stream.poison),
                time.monotonic() - self.started,
                inspected,
            )
        )
        return result, entries, inspected

    def finish(self, table: ScenarioTable, faults: str, *, settle: str | None = None) -> Verdict:
        """The closing checks: a consistent cache, exactly the poison in the DLQ, and (with
        the inspector) every sampled change judged and every inconsistency it saw gone.

        With ``settle`` (see :meth:`conclude`) keys without their value are allowed and
        counted; nothing stale, lost or resurrected is.
        """
        result, entries, inspected = self.conclude(table, faults, settle=settle)
        filed = dlq_by_source(entries)
        ids = {e.get("id") for e in entries}
        if settle is None:
            assert result.clean, f"{result}\n{self.worker.tail()}"
        else:
            damage = (result.stale, result.lost, result.resurrected)
            assert damage == ([], [], []), f"{result}\n{self.worker.tail()}"
        assert filed == self.stream.poison, (
            f"DLQ holds {len(filed)} source messages, {len(self.stream.poison)} were injected:"
            f" missing {sorted(set(self.stream.poison) - set(filed))[:5]},"
            f" unexpected {sorted(set(filed) - set(self.stream.poison))[:5]},"
            f" kinds {sorted(set(filed.items()) ^ set(self.stream.poison.items()))[:5]}"
        )
        assert len(ids) == len(filed), "a re-delivered failure must keep its id"
        if inspected is not None:
            assert self.inspection is not None
            assert sum(inspected["checks"].values()) > 0, self.inspection.service.tail()
            assert inspected["unresolved"] == 0, f"{inspected}\n{self.inspection.service.tail()}"
            queries = metric(self.inspection.port, "cdc_cache_inspect_db_queries_total")
            budget = INSPECT_DB_QUERIES_PER_S * (time.monotonic() - self.started + 1)
            assert 0 < queries <= budget, "the database load stays within its budget"
        return result

    def stop(self) -> None:
        self.worker.stop()
        if self.inspection is not None:
            self.inspection.stop()
