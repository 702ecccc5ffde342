"""The DLQ on real tansu and Redis: exactly the poison messages, once per id, and replay.

One topic, one partition, so every message's offset is its index and the expected DLQ
is computed exactly: the undecodable and unrenderable messages, plus every change to a
key whose version key was made unwritable (Redis refuses it with WRONGTYPE).
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
from bytewax.testing import cluster_main
from click.testing import CliRunner
from prometheus_client import REGISTRY

from cdc_cache.app.replay import DlqService, Replayer
from cdc_cache.app.settings import SharedSettings
from cdc_cache.cli import main
from cdc_cache.core.errors import StopRequested
from cdc_cache.core.events import SourceRecord
from cdc_cache.core.keys import ns
from cdc_cache.core.retry import Backoff
from cdc_cache.dlq.entries import entry_id
from cdc_cache.dlq.filters import EntryFilter
from cdc_cache.dlq.topic import DeadLetterWriter, ensure_topic, read_entries
from cdc_cache.plan.cache_ops import SetRow
from cdc_cache.plan.route import Planned, Rejected, route
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.version_store import stored_version
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.process import free_port
from dataflows.config import DlqTarget, FlowConfig
from dataflows.invalidation import build_flow
from tests.integration.cache import cache_state
from tests.integration.topics import POISON, produce, unique_topic
from tests.workload import RULES_YAML, Message, Workload

pytestmark = pytest.mark.integration

RULES_TEXT = RULES_YAML.replace("    watch:", "    sensitive: [note]\n    watch:", 1)
RULES = parse_rules(RULES_TEXT)


def unrenderable(message: Message) -> Message:
    doc = orjson.loads(message.value or b"")
    del doc["after"]["warehouse"]
    return Message(message.topic, message.key, orjson.dumps(doc))


def scenario(topic: str) -> tuple[list[Message], Workload, str]:
    """Messages with poison spliced in, the workload, and the key made unwritable."""
    # Committed a minute ago: replayed within the tombstone TTL, the changes write values.
    workload = Workload(seed=11, topic=topic, ts_ms=int(time.time() * 1000) - 60_000)
    clean = [m for tx in workload.transactions(60) for m in tx]
    touched: dict[str, int] = {}
    for index, message in enumerate(clean):
        routed = route(SourceRecord(topic, 0, index, message.key, message.value), RULES)
        if isinstance(routed, Planned):
            for op in routed.ops:
                touched[getattr(op, "key", "")] = touched.get(getattr(op, "key", ""), 0) + 1
    expected = workload.expected_cache()
    victim = max((k for k in expected), key=lambda k: touched.get(k, 0))
    assert touched[victim] >= 2, "the victim key should see several changes"
    messages = list(clean)
    for at, bad in zip((3, 20, 41), POISON, strict=True):
        messages.insert(at, Message(topic, b'{"id": 1}', bad))
    creates = [m for m in clean if b'"op":"c"' in (m.value or b"")]
    messages.insert(30, unrenderable(creates[2]))
    return messages, workload, victim


def expected_dlq(messages: list[Message], topic: str, victim: str) -> set[tuple[int, str]]:
    out = set()
    for index, message in enumerate(messages):
        routed = route(SourceRecord(topic, 0, index, message.key, message.value), RULES)
        if isinstance(routed, Rejected):
            out.add((index, routed.error.kind))
        elif isinstance(routed, Planned) and any(
            getattr(op, "key", None) == victim for op in routed.ops
        ):
            out.add((index, "redis_refused"))
    return out


def run_flow(broker, redis_url: str, topic: str, dlq_topic: str) -> None:
    flow = build_flow(
        FlowConfig(
            rules=RULES,
            brokers=(broker.bootstrap,),
            topics=(topic,),
            redis_url=redis_url,
            tail=False,
            batch_size=50,
            dlq=DlqTarget(broker.bootstrap, dlq_topic, {}, Backoff(0.05, 0.5)),
            max_value_bytes=1024,
        )
    )
    cluster_main(flow, [], 0)


def test_dlq_holds_exactly_the_poison_and_replay_is_idempotent(
    broker, redis_server, redis_client, tmp_path: Path
):
    topic, dlq_topic = unique_topic(), f"dlq-{uuid.uuid4().hex[:8]}"
    broker.create_topics({topic: 1})
    ensure_topic(broker.bootstrap, dlq_topic, {})
    messages, workload, victim = scenario(topic)
    produce(broker.bootstrap, messages)
    redis_client.rpush(ns().version_key(victim), b"not a position")  # every write to it: WRONGTYPE

    run_flow(broker, redis_server.address(), topic, dlq_topic)

    wanted = expected_dlq(messages, topic, victim)
    entries = read_entries(broker.bootstrap, dlq_topic, {})
    assert {(e["source"]["offset"], e["kind"]) for e in entries} == wanted
    assert len(entries) == len({e["id"] for e in entries}) == len(wanted)
    assert all(e["id"] == entry_id(topic, 0, e["source"]["offset"], e["kind"]) for e in entries)
    refused = [e for e in entries if e["kind"] == "redis_refused"]
    assert all(e["table"] == "inventory.stock" and e["position"] for e in refused)
    assert all(e["message"]["redacted"] == ["note"] for e in refused)
    assert b'"note":' not in b"".join(orjson.dumps(e["message"]) for e in refused).replace(
        b'"note":"***redacted***"', b""
    )
    expected = workload.expected_cache()
    state = cache_state(redis_client)
    assert victim not in state
    assert state == {k: v for k, v in expected.items() if k != victim}

    # Delivered again (as after a crash before a snapshot): same ids, nothing new.
    run_flow(broker, redis_server.address(), topic, dlq_topic)
    again = read_entries(broker.bootstrap, dlq_topic, {})
    assert len(again) == 2 * len(wanted)
    assert {e["id"] for e in again} == {e["id"] for e in entries}

    # Fix the cause, replay the refused changes in order: the key gets the row.
    redis_client.delete(ns().version_key(victim))
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES_TEXT)
    settings = SharedSettings(
        rules=rules_file,
        brokers=broker.bootstrap,
        redis_url=redis_server.address(),
        dlq_topic=dlq_topic,
    )
    service = DlqService(settings, RULES)
    to_replay = service.entries(EntryFilter(kind="redis_refused"))
    assert [e["source"]["offset"] for e in to_replay] == sorted(
        off for off, kind in wanted if kind == "redis_refused"
    )
    first = service.replay(to_replay)
    assert [o.outcome for o in first] == ["applied"] * len(to_replay)
    assert cache_state(redis_client) == expected
    frozen = (redis_client.get(victim), stored_version(redis_client, victim))

    # Replaying again changes nothing: each change is a duplicate of itself or older than
    # what its keys hold now (stale), like the oldest one.
    second = service.replay(to_replay)
    assert {o.outcome for o in second} <= {"stale", "duplicate"}
    assert second[0].outcome == "stale"
    assert (redis_client.get(victim), stored_version(redis_client, victim)) == frozen
    assert cache_state(redis_client) == expected
    listed = {e["id"]: e["outcome"] for e in service.entries(EntryFilter(kind="redis_refused"))}
    assert listed[to_replay[0]["id"]]["replays"] == 2
    assert listed[to_replay[0]["id"]]["outcome"] == "stale"

    # Poison stays poison: its replay fails with the reason and is recorded as such.
    (undecodable, *_) = service.replay(service.entries(EntryFilter(kind="undecodable")))
    assert undecodable.outcome == "failed" and undecodable.detail.startswith("undecodable:")

    # The command line sees the same entries and outcomes.
    flags = [
        f"--rules={rules_file}",
        f"--brokers={broker.bootstrap}",
        f"--redis-url={redis_server.address()}",
        f"--dlq-topic={dlq_topic}",
    ]
    listing = CliRunner().invoke(main, ["dlq", "list", *flags, "--kind", "redis_refused"])
    assert listing.exit_code == 0, listing.output
    lines = [line for line in listing.stdout.splitlines() if line.strip()]
    assert len(lines) == len(to_replay)
    assert all(" stale@" in line or " duplicate@" in line for line in lines)
    shown = CliRunner().invoke(main, ["dlq", "show", to_replay[0]["id"], *flags])
    assert shown.exit_code == 0 and orjson.loads(shown.stdout)["id"] == to_replay[0]["id"]
    replayed = CliRunner().invoke(main, ["dlq", "replay", to_replay[0]["id"], "nope", *flags])
    assert replayed.exit_code == 1  # "nope" is unknown
    assert f"{to_replay[0]['id']}  stale" in replayed.stdout
    as_json = CliRunner().invoke(main, ["dlq", "list", *flags, "--kind", "redis_refused", "--json"])
    assert [e["id"] for e in orjson.loads(as_json.stdout)] == [e["id"] for e in to_replay]
    everything = CliRunner().invoke(
        main, ["dlq", "replay", "--all", *flags, "--kind", "redis_refused", "--json"]
    )
    assert everything.exit_code == 0, everything.output
    outcomes = orjson.loads(everything.stdout)
    assert [o["outcome"] for o in outcomes["outcomes"]] == ["stale"] * len(to_replay)
    assert outcomes["unknown"] == []
    # progress on stderr, not a terminal: the first entry and the last one at least
    progress = everything.stderr.splitlines()
    assert progress[0].startswith(f"replaying dead letters: 1/{len(to_replay)} ")
    assert progress[-1].startswith(f"replaying dead letters: {len(to_replay)}/{len(to_replay)} ")


class _Fetch:
    """The source topic as replay reads it, holding one message."""

    def __init__(self, record: SourceRecord) -> None:
        self.record = record

    def fetch(self, topic: str, partition: int, offset: int) -> SourceRecord | None:
        return self.record


def test_an_old_dead_letter_replayed_after_the_row_was_deleted_does_not_bring_it_back(
    redis_client,
):
    """An insert dead-lettered, then its row updated and deleted; once the delete's tombstone
    is past its horizon (older than the tombstone TTL: swept), the insert is replayed. Written,
    its row would be back in the cache, deleted in the database, until its TTL ends."""
    workload = Workload(seed=4, topic="dbserver1.inventory.stock")  # committed in 2023
    messages = [m for tx in workload.transactions(80) for m in tx]
    records = [SourceRecord(m.topic, 0, n, m.key, m.value) for n, m in enumerate(messages)]
    routed = [route(record, RULES) for record in records]
    deleted = next(r for r in routed if isinstance(r, Planned) and r.event.op.value == "d")
    row_id = deleted.event.key["id"]
    (insert,) = [
        r for r in routed if isinstance(r, Planned) and r.event.op.value == "c"
        and r.event.key["id"] == row_id
    ]  # fmt: skip
    applier = RedisApplier(redis_client)
    applier.apply(
        [op for r in routed if isinstance(r, Planned) and r is not insert for op in r.ops]
    )
    (key,) = [op.key for op in insert.ops if isinstance(op, SetRow)]
    assert redis_client.get(key) is None  # deleted, and its tombstone gates the old insert
    redis_client.delete(ns().version_key(key))  # the tombstone's horizon passed: swept

    outcome = Replayer(RULES, redis_client, _Fetch(insert.record)).replay(
        {"id": "old", "source": {"topic": insert.record.topic, "partition": 0,
                                 "offset": insert.record.offset}}
    )  # fmt: skip

    assert redis_client.get(key) is None, "the deleted row is back in the cache"
    assert "invalidated, not written" in outcome.detail


def retries_kafka_dlq() -> float:
    return REGISTRY.get_sample_value("cdc_cache_retries_total", {"target": "kafka_dlq"}) or 0


def test_dlq_write_waits_out_a_broker_outage_and_loses_nothing(tmp_path: Path):
    port = free_port()
    entries = [
        {
            "id": f"e{n}",
            "kind": "undecodable",
            "source": {"topic": "t", "partition": 0, "offset": n},
        }
        for n in range(3)
    ]
    writer = DeadLetterWriter(
        # Each attempt gives up after 2.5 s; short enough for a quick test, long enough for
        # a loaded machine to connect, get a producer id and write within one attempt.
        f"127.0.0.1:{port}",
        "dlq",
        {"message.timeout.ms": "2500"},
        Backoff(0.05, 0.2),
    )
    before = retries_kafka_dlq()
    done = threading.Event()
    thread = threading.Thread(target=lambda: (writer.write(entries), done.set()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while retries_kafka_dlq() - before < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert retries_kafka_dlq() - before >= 2, "the unacknowledged write was not retried"
    assert not done.is_set(), "write returned while no broker acknowledged it"

    broker = Broker(tmp_path / "late-broker", port)
    try:
        broker.start()  # the producer's metadata requests create the topic
        assert done.wait(90), "write did not finish once the broker was up"
        written = [e["id"] for e in read_entries(broker.bootstrap, "dlq", {})]
        # An attempt that timed out may still have landed: an id may repeat, none is lost.
        assert set(written) == {"e0", "e1", "e2"}
    finally:
        broker.stop()


def test_an_entry_too_large_to_write_is_written_without_its_message_copy(broker):
    """Refused for its size, an entry retried as it was would hold the flow forever."""
    topic = f"dlq-{uuid.uuid4().hex[:8]}"
    ensure_topic(broker.bootstrap, topic, {})
    source = {"topic": "t", "partition": 0, "offset": 7}
    big = {"id": "big", "kind": "undecodable", "reason": "why", "stack": "s", "source": source,
           "message": {"value": {"encoding": "text", "data": "x" * 50_000}}, "withheld": []}  # fmt: skip
    writer = DeadLetterWriter(
        broker.bootstrap, topic, {"message.max.bytes": "20000"}, Backoff(0.05, 0.5)
    )
    small = {"id": "small", "kind": "undecodable", "source": source}
    writer.write([big, small])
    written = {e["id"]: e for e in read_entries(broker.bootstrap, topic, {})}
    assert written["small"] == small
    assert written["big"]["message"] is None and written["big"]["stack"] is None
    assert (written["big"]["reason"], written["big"]["source"]) == ("why", source)
    assert "too large for the DLQ topic" in written["big"]["withheld"][0]


def test_messages_on_the_dlq_topic_that_are_no_entries_are_left_out_not_fatal(broker):
    """Listing read ``entry["source"]["topic"]`` of each, and ``dlq replay --all`` stopped at
    the first message of another shape, leaving every entry after it unreplayed."""
    topic = f"dlq-{uuid.uuid4().hex[:8]}"
    ensure_topic(broker.bootstrap, topic, {})
    good = {"id": "t/0/7/undecodable", "kind": "undecodable",
            "source": {"topic": "t", "partition": 0, "offset": 7}}  # fmt: skip
    others = [{"id": "no-source", "kind": "undecodable"}, [1, 2], {"id": 5, "kind": "x"},
              {**good, "id": "bad-offset", "source": {"topic": "t", "partition": 0, "offset": "7"}}]  # fmt: skip
    produce(broker.bootstrap, [Message(topic, None, orjson.dumps(e)) for e in [*others, good]])
    produce(broker.bootstrap, [Message(topic, None, b"not json")])
    assert read_entries(broker.bootstrap, topic, {}) == [good]


def test_a_stop_request_ends_the_wait_for_the_dlq_broker():
    stop = threading.Event()

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise StopRequested("stop")

    writer = DeadLetterWriter(
        f"127.0.0.1:{free_port()}", "dlq", {"message.timeout.ms": "500"}, Backoff(0.05, 0.2),
        sleep=sleep,
    )  # fmt: skip
    failed: list[BaseException] = []

    def write() -> None:
        try:
            writer.write([{"id": "x"}])
        except StopRequested as exc:
            failed.append(exc)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    time.sleep(0.3)
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and len(failed) == 1
