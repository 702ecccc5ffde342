"""The worker waits for what it needs at start instead of exiting: brokers, topics, Redis;
its admin port answers meanwhile and says what it waits for."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest

from cdc_cache.app.load import load_settings
from cdc_cache.app.worker import resolve_topics
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.process import free_port, port_open
from cdc_cache.tools.devstack.redis import RedisServer
from tests.integration.probes import admin_get, metric
from tests.integration.services import worker
from tests.integration.topics import unique_topic
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration


def test_brokers_that_start_late_are_waited_for(tmp_path: Path) -> None:
    port = free_port()
    broker = Broker(tmp_path, port)
    settings = load_settings(
        rules=Path("r.yaml"), topics=("db1.inv.stock",), brokers=f"127.0.0.1:{port}"
    )

    def start_late() -> None:
        time.sleep(1.5)
        broker.start()
        broker.create_topics({"db1.inv.stock": 1})

    starter = threading.Thread(target=start_late)
    starter.start()
    try:
        started = time.monotonic()
        assert resolve_topics(settings, wait_s=60) == ["db1.inv.stock"]
        assert time.monotonic() - started >= 1.5
    finally:
        starter.join()
        broker.stop()


def test_heartbeat_topics_are_found_by_name_or_given_and_waited_for(broker: Broker) -> None:
    run = unique_topic().split(".")[0]
    server = f"{run}.eu.db1"  # a dotted topic.prefix
    named, shared = f"{server}.inv.stock", f"{run}.inv.cdc"
    beats = f"__debezium-heartbeat.{server}"
    broker.create_topics({named: 1, shared: 1, beats: 1, f"__debezium-heartbeat.{run}.eu": 1})
    by_name = load_settings(rules=Path("r.yaml"), topics=(named,), brokers=broker.bootstrap)
    assert resolve_topics(by_name, wait_s=10) == [named, beats]
    routed = load_settings(
        rules=Path("r.yaml"), topics=(shared,), brokers=broker.bootstrap, heartbeat_topics=[beats]
    )
    assert resolve_topics(routed, wait_s=10) == [shared, beats]
    missing = load_settings(
        rules=Path("r.yaml"),
        topics=(shared,),
        brokers=broker.bootstrap,
        heartbeat_topics=[f"__debezium-heartbeat.{run}.gone"],
    )
    with pytest.raises(TimeoutError, match=rf"__debezium-heartbeat\.{run}\.gone"):
        resolve_topics(missing, wait_s=0.5)


def test_unreachable_brokers_are_named_when_the_wait_ends() -> None:
    settings = load_settings(
        rules=Path("r.yaml"), topics=("t",), brokers=f"127.0.0.1:{free_port()}"
    )
    with pytest.raises(TimeoutError, match=r"brokers 127\.0\.0\.1:\d+"):
        resolve_topics(settings, wait_s=0.5)


def _readiness(port: int) -> tuple[int, dict[str, bool]]:
    status, body = admin_get(port, "/readyz")
    return status, orjson.loads(body)["checks"]


def test_admin_port_answers_while_the_worker_waits_and_names_the_wait(
    tmp_path: Path,
) -> None:
    broker = Broker(tmp_path / "broker", free_port())
    redis = RedisServer(tmp_path / "redis", free_port())
    topic = unique_topic()
    dlq_topic = f"{topic.split('.')[0]}.dlq"
    service = worker(tmp_path, broker.bootstrap, redis.address(), [topic])
    port = free_port()
    service.env.update({"CDC_CACHE_METRICS_PORT": str(port), "CDC_CACHE_DLQ_TOPIC": dlq_topic})
    service.start()
    try:
        wait_until("the admin port", lambda: port_open(port), alive=[service], interval=0.2)
        assert admin_get(port, "/healthz")[0] == 200
        status, checks = _readiness(port)
        assert status == 503 and checks["topics"] is False, checks
        assert metric(port, "cdc_cache_broker_up") == 0  # no broker yet

        broker.start()  # brokers, but not the topic yet: still waiting for topics
        wait_until(
            "brokers seen",
            lambda: metric(port, "cdc_cache_broker_up") == 1,
            alive=[service],
            interval=0.2,
        )
        assert _readiness(port) == (503, {
            "topics": False, "dlq_topic": False, "redis": False, "flow": False
        })  # fmt: skip
        broker.create_topics({topic: 2})  # the worker creates the DLQ topic itself

        def waiting_for_redis() -> bool:
            return _readiness(port)[1] == {
                "topics": True, "dlq_topic": True, "redis": False, "flow": False
            }  # fmt: skip

        wait_until("waiting for Redis", waiting_for_redis, alive=[service], interval=0.2)
        assert metric(port, "cdc_cache_retries_total", {"target": "redis"}) > 0
        assert admin_get(port, "/healthz")[0] == 200

        redis.start()
        wait_until(
            "ready", lambda: admin_get(port, "/readyz")[0] == 200, alive=[service], interval=0.2
        )
        assert _readiness(port)[1] == {"redis": True, "kafka_caught_up": True, "lineage": True}
        assert orjson.loads(admin_get(port, "/mode")[1])["mode"] == "cdc"
    finally:
        service.stop()
        redis.stop()
        broker.stop()
