"""``cdc-cache run`` as a real process: SIGKILL mid-stream, restart, nothing lost or stale."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.flowkit import cache_state, produce, unique_topic, wait_until_equal
from tests.workload import RULES_YAML, Workload

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Worker:
    def __init__(self, tmp_path: Path, brokers: str, redis_url: str, topic: str, workers: int):
        rules = tmp_path / "rules.yaml"
        rules.write_text(RULES_YAML)
        self.argv = [
            sys.executable,
            "-m",
            "cdc_cache",
            "run",
            "--rules",
            str(rules),
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--redis-url",
            redis_url,
            "--recovery-dir",
            str(tmp_path / "recovery"),
            "--workers",
            str(workers),
        ]
        self.log = tmp_path / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, "CDC_CACHE_EPOCH_INTERVAL_MS": "500"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.starts += 1

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_mid_stream_then_restart_ends_exactly_at_the_database_state(
    broker, redis_target, tmp_path, workers
):
    topic = unique_topic()
    broker.create_topics({topic: 3})
    workload = Workload(seed=10 + workers, topic=topic)
    messages = [m for tx in workload.transactions(6000) for m in tx]
    worker = Worker(tmp_path, broker.bootstrap, redis_target.url, topic, workers)
    worker.start()
    pool = ThreadPoolExecutor(1)
    producer = pool.submit(produce, broker.bootstrap, messages, pace_s=0.05)
    rnd = random.Random(workers)
    kills = 0
    try:
        while not producer.done() and kills < 3:
            time.sleep(rnd.uniform(1.0, 2.0))
            if not cache_state(redis_target.client):
                continue  # not consuming yet: a kill now proves nothing
            worker.kill()
            kills += 1
            worker.start()
        producer.result()
        assert kills >= 2, "the stream ended before the worker could be killed mid-stream"

        state = wait_until_equal(redis_target.client, workload.expected_cache())
        assert state == workload.expected_cache(), worker.log.read_text()[-3000:]
        assert not list(redis_target.client.scan_iter(match="sku:*"))
        assert worker.terminate() == 0, worker.log.read_text()[-3000:]

        # a graceful stop resumes where it ended: more changes, a restart, the new state
        produce(broker.bootstrap, [m for tx in workload.transactions(300) for m in tx])
        worker.start()
        state = wait_until_equal(redis_target.client, workload.expected_cache())
        assert state == workload.expected_cache(), worker.log.read_text()[-3000:]
        assert worker.terminate() == 0, worker.log.read_text()[-3000:]
    finally:
        pool.shutdown(cancel_futures=True)
        if worker.proc is not None and worker.proc.poll() is None:
            worker.kill()
