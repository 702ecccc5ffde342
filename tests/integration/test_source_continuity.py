"""A recreated topic or records removed unread never skip changes silently.

On the local stack (tansu, Redis, the dataflow in-process and the real ``cdc-cache run``):
the worker drains a topic, stops, the topic changes under it, and it starts again. Each
scenario ends with every change applied after the documented re-read, or with the cache
held in ttl mode and the alert condition true, never with changes skipped in cdc mode.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import boto3
import orjson
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import cluster_main
from confluent_kafka.admin import AdminClient

from cdc_cache.continuity.model import GONE_AFTER_S
from cdc_cache.continuity.topic_ids import TopicIdentity, TopicIds
from cdc_cache.core import metrics
from cdc_cache.mode.controller import Cause
from cdc_cache.mode.holds import Holds
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.tools.devstack.broker import Broker, S3Store
from dataflows.config import FlowConfig, FlowContext
from dataflows.invalidation import build_flow
from tests.integration.cache import cache_state
from tests.integration.faults import FaultRun, durable_broker, verdict
from tests.integration.probes import metric
from tests.integration.services import ROOT
from tests.integration.topics import produce, unique_topic
from tests.integration.waiting import wait_until
from tests.workload import RULES_YAML, Workload

pytestmark = pytest.mark.integration

PARTITIONS = 2


def recreate_topic(broker: Broker, topic: str, partitions: int, timeout: float = 30) -> None:
    """Delete ``topic`` and create it again under the same name (a new topic id)."""
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.delete_topics([topic], request_timeout=timeout).values():
        future.result(timeout)
    deadline = time.monotonic() + timeout
    while topic in admin.list_topics(timeout=5).topics:
        assert time.monotonic() < deadline, f"{topic} still listed after its deletion"
        time.sleep(0.1)
    broker.create_topics({topic: partitions})


def messages(workload: Workload, transactions: int) -> list:
    return [m for tx in workload.transactions(transactions) for m in tx]


@pytest.mark.parametrize(
    ("continuity", "workers"),
    [(True, 1), (True, 2), (False, 1)],
    ids=["guarded-1-worker", "guarded-2-workers", "bare-source"],
)
def test_a_recreated_topic_is_held_not_skipped(broker, redis_target, tmp_path, continuity, workers):
    """The issue's scenario in-process: a drained topic is recreated and receives more
    changes than it held; the bare source resumes at its old offsets and skips the rest
    in silence (the failure this guards against), the guarded one holds ttl and applies
    nothing it cannot place."""
    topic = unique_topic()
    broker.create_topics({topic: PARTITIONS})
    workload = Workload(seed=31, topic=topic)
    produce(broker.bootstrap, messages(workload, 300))
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)

    def flow(holds: Holds, stop: threading.Event | None = None, tail: bool = False):
        config = FlowConfig(
            rules=parse_rules(RULES_YAML),
            brokers=(broker.bootstrap,),
            topics=(topic,),
            redis_url=redis_target.url,
            tail=tail,
            continuity=continuity,
        )
        return build_flow(config, FlowContext(stop=stop or threading.Event(), holds=holds))

    config = RecoveryConfig(recovery)
    cluster_main(flow(Holds()), [], 0, recovery_config=config)
    assert cache_state(redis_target.client) == workload.expected_cache()

    recreate_topic(broker, topic, PARTITIONS)
    produce(broker.bootstrap, messages(workload, 900))  # past the old offsets
    holds, stop = Holds(), threading.Event()
    runner = threading.Thread(
        target=cluster_main, args=(flow(holds, stop, tail=True), [], 0),
        kwargs={"recovery_config": config, "worker_count_per_proc": workers},
    )  # fmt: skip
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(holds.active()) < PARTITIONS:
            if not continuity and cache_state(redis_target.client) != {}:
                time.sleep(3)  # let the bare source apply what it will
                break
            time.sleep(0.2)
    finally:
        stop.set()
        runner.join(60)
    assert not runner.is_alive()
    expected = workload.expected_cache()
    cached = cache_state(redis_target.client)
    if not continuity:
        assert not holds.active()
        assert cached != expected, "the bare source was expected to skip changes silently"
        return
    assert [h.cause for h in holds.active()] == [Cause.SOURCE_DISCONTINUITY] * PARTITIONS
    reason = holds.active()[0].reason
    assert "deleted or recreated" in reason, reason
    assert reason.count("topic id ") == 2, reason  # both identities named
    assert cached != expected  # nothing of the new topic was applied in the dark


# --- the real worker ----------------------------------------------------------------------


def continuity_cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc_cache", "continuity", *args, "--redis-url", redis_url],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip


def held(run: FaultRun) -> float:
    """Partitions of the run's topic held for a discontinuity (the alert's expression)."""
    return metric(run.metrics_port, "cdc_cache_source_discontinuity", {"topic": run.stream.topic})


def mode(run: FaultRun) -> dict[str, str]:
    raw = run.client.hgetall("cdc:mode")
    return {k.decode(): v.decode() for k, v in raw.items()}


def wait_held(run: FaultRun, partitions: int) -> None:
    wait_until(
        f"{partitions} partition(s) held in ttl mode",
        lambda: (
            held(run) == partitions
            and mode(run).get("mode") == "ttl"
            and mode(run).get("cause") == "source_discontinuity"
        ),
        alive=[run.worker],
        interval=0.2,
    )


def test_a_recreated_topic_holds_ttl_across_restarts_until_the_reread_applied_everything(
    broker, redis_target, tmp_path
):
    run = FaultRun.start(
        "recreated topic", tmp_path, broker, redis_target.url, redis_target.client, seed=61
    )
    try:
        run.stream.produce(broker.bootstrap, run.stream.part(300))
        assert run.wait_consistent().clean
        assert run.worker.terminate() == 0, run.worker.tail()

        recreate_topic(broker, run.stream.topic, 3)
        run.stream.produce(broker.bootstrap, run.stream.part(900))  # past the old offsets
        run.restart()
        wait_held(run, 3)
        assert not verdict(run.client, run.stream).clean, "the new topic was applied unchecked"
        logged = run.worker.log.read_text()
        assert logged.count('"stored_topic_id"') >= 3 and '"kind":"topic_recreated"' in logged
        status = continuity_cli(redis_target.url, "status")
        assert status.returncode == 0 and status.stdout.count("topic_recreated  held") == 3

        run.worker.kill()  # the hold outlives the process: found again at start
        run.restart()
        wait_held(run, 3)

        reread = continuity_cli(redis_target.url, "reread", "--topic", run.stream.topic)
        assert reread.returncode == 0, reread.stderr
        result = run.wait_consistent()
        assert result.clean, f"{result}\n{run.worker.tail()}"
        wait_until(
            "the hold cleared once the re-read caught up",
            lambda: held(run) == 0 and "source_discontinuity" not in mode(run)["holds"],
            alive=[run.worker],
            interval=0.2,
        )
        assert "no source discontinuity" in continuity_cli(redis_target.url, "status").stdout
        assert run.worker.terminate() == 0, run.worker.tail()
    finally:
        run.stop()


class Retention:
    """Removes records from the start of a partition in tansu's S3 storage, as retention
    would (tansu implements neither retention nor DeleteRecords): the record batches below
    a batch boundary go, and the partition's watermark records its new log start."""

    def __init__(self, store: S3Store, topic: str, partition: int) -> None:
        self.s3 = boto3.client(
            "s3", endpoint_url=store.endpoint, **{k.lower(): v for k, v in S3_KEYS.items()}
        )
        self.bucket = store.bucket
        prefix = f"clusters/cdc-cache-dev/topics/{topic}/partitions/{partition:010d}/"
        self.records = prefix + "records/"
        self.watermark = prefix + "watermark.json"

    def high(self) -> int:
        body = self.s3.get_object(Bucket=self.bucket, Key=self.watermark)["Body"].read()
        return int(orjson.loads(body)["high"])

    def batches(self) -> list[int]:
        """The base offsets of the partition's record batches, in order."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.records
        )
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        return sorted(int(key.rsplit("/", 1)[1][:20]) for key in keys)

    def remove_below(self, start: int) -> None:
        for base in self.batches():
            if base < start:
                self.s3.delete_object(Bucket=self.bucket, Key=f"{self.records}{base:020d}.batch")
        watermark = orjson.dumps({"low": start, "high": self.high(), "timestamps": None})
        self.s3.put_object(Bucket=self.bucket, Key=self.watermark, Body=watermark)


S3_KEYS = {"AWS_ACCESS_KEY_ID": "cdc-cache", "AWS_SECRET_ACCESS_KEY": "cdc-cache",
           "REGION_NAME": "us-east-1"}  # fmt: skip


def test_records_removed_before_they_were_read_hold_ttl_with_the_alert_until_accepted(
    redis_server, redis_client, tmp_path
):
    with durable_broker(tmp_path) as (store, durable):
        run = None
        try:
            run = FaultRun.start(
                "records removed unread", tmp_path, durable, redis_server.address(), redis_client,
                seed=67,
            )  # fmt: skip
            run.stream.produce(durable.bootstrap, run.stream.part(200))
            assert run.wait_consistent().clean
            assert run.worker.terminate() == 0, run.worker.tail()

            retention = Retention(store, run.stream.topic, 0)
            read_to = retention.high()  # the worker stopped here on partition 0
            for _ in range(5):  # each flush starts a batch: batch boundaries to cut at
                run.stream.produce(durable.bootstrap, run.stream.part(60))
            unread = [base for base in retention.batches() if base > read_to]
            assert len(unread) >= 3, (read_to, retention.batches())
            retention.remove_below(unread[1])  # two batches the worker never read are gone
            durable.stop()
            durable.start()  # tansu reads the new log start from its storage

            run.restart()
            wait_held(run, 1)
            assert metric(run.metrics_port, "cdc_cache_source_discontinuity",
                          {"topic": run.stream.topic, "partition": "0"}) == 1  # fmt: skip
            assert metric(run.metrics_port, "cdc_cache_source_discontinuities_total",
                          {"kind": "below_log_start"}) == 1  # fmt: skip
            assert not run.wait_consistent(timeout=5).clean  # the removed changes are missing
            logged = run.worker.log.read_text()
            assert f'"stored_offset":{read_to},' in logged and f'"log_start":{unread[1]},' in logged

            refused = continuity_cli(redis_server.address(), "reread", "--topic", run.stream.topic)
            assert refused.returncode == 2 and "re-snapshot" in refused.stderr, refused.stderr
            accepted = continuity_cli(
                redis_server.address(), "accept", "--topic", run.stream.topic, "--yes"
            )
            assert accepted.returncode == 0, accepted.stderr
            wait_until(
                "the hold cleared once the gap was accepted",
                lambda: held(run) == 0 and "source_discontinuity" not in mode(run)["holds"],
                alive=[run.worker],
                interval=0.2,
            )
            assert "the gap was accepted by the operator" in run.worker.log.read_text()
        finally:
            if run is not None:
                run.stop()


def test_a_topic_the_brokers_do_not_know_is_gone_only_once_that_lasted(broker):
    """Brokers answer "unknown topic" for a while (a leader election, metadata on its way):
    a topic created meanwhile is simply known; one that stays unknown is judged gone."""
    clock = [0.0]
    ids = TopicIds({"bootstrap.servers": broker.bootstrap}, clock=lambda: clock[0])
    late, missing = unique_topic(), unique_topic()

    def look(topic: str, step_s: float) -> TopicIdentity | None:
        clock[0] += step_s
        time.sleep(0.05)
        return ids.current(topic)

    unknown = metrics.SOURCE_TOPIC_UNKNOWN.labels(late)
    seen = [look(late, 0.2) for _ in range(40)]  # 8 s by the ids' clock
    assert unknown._value.get() == 1, "the brokers never answered"
    assert seen == [None] * len(seen)  # no identity yet: the partition waits, not paused
    broker.create_topics({late: 1})
    deadline = time.monotonic() + 30
    while (identity := look(late, 0.2)) is None:
        assert time.monotonic() < deadline, "the created topic never showed"
    assert identity.exists and identity.topic_id is not None
    assert unknown._value.get() == 0

    started = clock[0]
    while (identity := look(missing, 1.0)) is None or identity.exists:
        assert time.monotonic() < deadline + 30, "a topic that stays unknown was never gone"
    assert clock[0] - started >= GONE_AFTER_S
