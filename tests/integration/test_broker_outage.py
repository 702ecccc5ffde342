"""A broker outage shows in the worker's metrics and logs, and its end does too.

A real ``cdc-cache run`` reads from tansu on S3 storage (so the log survives the broker's
restart); the broker is stopped and started again while /metrics is watched.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis import Redis

from cdc_cache.tools.devstack.redis import RedisServer
from tests.integration.faults import FaultRun, durable_broker
from tests.integration.probes import metric
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration


def outage_errors(port: int) -> float:
    return sum(
        metric(port, "cdc_cache_consumer_errors_total", {"code": code})
        for code in ("_ALL_BROKERS_DOWN", "_TRANSPORT")
    )


def test_a_broker_outage_and_its_end_show_on_metrics(
    redis_server: RedisServer, redis_client: Redis, tmp_path: Path
) -> None:
    with durable_broker(tmp_path) as (_, durable):
        run = None
        try:
            run = FaultRun.start(
                "broker outage", tmp_path, durable, redis_server.address(), redis_client, seed=47
            )
            port = run.metrics_port
            run.stream.produce(durable.bootstrap, run.stream.part(200))
            assert run.wait_consistent().clean
            wait_until(
                "brokers up",
                lambda: metric(port, "cdc_cache_broker_up") == 1,
                alive=[run.worker],
                interval=0.2,
            )
            assert outage_errors(port) == 0

            durable.stop()
            stopped = time.monotonic()
            noticed = wait_until(
                "the outage on /metrics",
                lambda: metric(port, "cdc_cache_broker_up") == 0 and outage_errors(port) > 0,
                alive=[run.worker],
                interval=0.2,
            )
            time.sleep(3)  # librdkafka keeps retrying meanwhile: its errors are logged sparingly
            log = run.worker.log.read_text()
            logged = log.count('"kafka client error"')
            assert 1 <= logged <= 4, run.worker.tail()
            # librdkafka's own lines come through the JSON log too, and as sparingly
            raw = [line for line in log.splitlines() if line.startswith("%")]
            assert not raw, run.worker.tail()
            assert 1 <= log.count('"logger":"cdc_cache.kafka"') <= 12, run.worker.tail()

            durable.start()
            down_s = time.monotonic() - stopped
            back = wait_until(
                "brokers up again, with no record to fetch",
                lambda: metric(port, "cdc_cache_broker_up") == 1,
                alive=[run.worker],
                interval=0.2,
            )
            assert "brokers reachable again" in run.worker.log.read_text()
            run.stream.produce(durable.bootstrap, run.stream.part(200))
            result = run.wait_consistent()
            assert result.clean, f"{result}\n{run.worker.tail()}"
            print(
                f"outage seen on /metrics after {noticed:.1f} s, broker down {down_s:.1f} s, "
                f"up again on /metrics {back:.1f} s after its restart, {logged} log lines"
            )
        finally:
            if run is not None:
                run.stop()
