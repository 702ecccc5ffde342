"""Two ``cdc-cache run`` processes as one Bytewax cluster, each on its own empty recovery
directory: each creates only its share of the store, the cluster resumes from them, and so
does one process given every partition (a rescaled cluster)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from cdc_cache.tools.devstack.process import free_port
from tests.integration.cache import wait_until_equal
from tests.integration.services import Service, worker
from tests.integration.topics import produce, unique_topic
from tests.workload import Workload

pytestmark = pytest.mark.integration


def _cluster(tmp_path: Path, bootstrap: str, redis_url: str, topic: str) -> list[Service]:
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    services = []
    for process_id in range(2):
        home = tmp_path / f"process-{process_id}"
        home.mkdir(exist_ok=True)
        service = worker(
            home, bootstrap, redis_url, [topic], env={"CDC_CACHE_RECOVERY_PARTITIONS": "3"}
        )
        service.argv += ["--process-id", str(process_id)]
        service.argv += [arg for address in addresses for arg in ("--address", address)]
        services.append(service)
    return services


def _stop_all(services: list[Service]) -> None:
    """SIGTERM every process first (a cluster stops together), then wait for each."""
    for service in services:
        assert service.proc is not None and service.running(), service.tail()
        os.killpg(service.proc.pid, signal.SIGTERM)
    for service in services:
        assert service.proc is not None
        assert service.proc.wait(30) == 0, service.tail()


def test_each_process_creates_its_share_and_the_cluster_resumes_from_them_rescaled_too(
    broker, redis_server, redis_client, tmp_path
):
    topic = unique_topic()
    broker.create_topics({topic: 3})
    workload = Workload(seed=51, topic=topic)
    services = _cluster(tmp_path, broker.bootstrap, redis_server.address(), topic)
    try:
        for service in services:
            service.start()
        produce(broker.bootstrap, [m for tx in workload.transactions(1000) for m in tx])
        state = wait_until_equal(redis_client, workload.expected_cache())
        assert state == workload.expected_cache(), services[0].tail()
        _stop_all(services)
        held = [
            sorted(p.name for p in (tmp_path / f"process-{i}" / "recovery").glob("part-*.sqlite3"))
            for i in range(2)
        ]
        assert held == [["part-0.sqlite3", "part-2.sqlite3"], ["part-1.sqlite3"]]

        produce(broker.bootstrap, [m for tx in workload.transactions(300) for m in tx])
        for service in services:
            service.start()
        state = wait_until_equal(redis_client, workload.expected_cache())
        assert state == workload.expected_cache(), services[1].tail()
        for service in services:
            service.check_alive()  # resumed: no missing or inconsistent partitions
        _stop_all(services)
    finally:
        for service in services:
            service.stop()

    # Rescaled to one process holding every recovery partition: it resumes, the sink's
    # partition of the process that is gone included.
    home = tmp_path / "process-0"
    (tmp_path / "process-1/recovery/part-1.sqlite3").rename(home / "recovery/part-1.sqlite3")
    single = worker(home, broker.bootstrap, redis_server.address(), [topic])
    produce(broker.bootstrap, [m for tx in workload.transactions(300) for m in tx])
    single.start()
    try:
        state = wait_until_equal(redis_client, workload.expected_cache())
        assert state == workload.expected_cache(), single.tail()
        single.check_alive()
        assert single.terminate() == 0, single.tail()
    finally:
        single.stop()
